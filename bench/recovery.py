"""Durable runs after a crash, and what a checkpoint costs as the transcript grows.

``python -m bench.recovery [--runs 1000] [--concurrency 8,64] [--json FILE]`` measures, against the
bench server (`bench.server`, started here):

- **recovery**: a child process starts ``--runs`` 10-step runs with checkpoint-sql on PostgreSQL
  (a schema of its own in the bench database), and every run's tool blocks at step 5; once all of
  them are blocked there (each has saved its transcript up to that call), the child is SIGKILLed.
  When the dead worker's leases have lapsed, this process builds an `Executor` on the same store
  and calls `Executor.recover` until no interrupted run is left: the wall time and CPU that takes,
  how many runs ended ``ok``, and the checkpoint rows left not ``completed``. Once per
  ``recovery_concurrency`` given with ``--concurrency``.
- **steps**: one run of 10 steps and one of 500 with checkpoint-sql alone, on SQLite and on
  PostgreSQL, every save timed (`bench.clients.executus_sql.TimedCheckpointer`): CPU per save
  (``time.process_time``: aiosqlite's thread included), wall latency per save and the bytes of
  the messages each save writes (their JSON), around step 10 and around step 500; and on
  PostgreSQL the size of the runs table after the 500-step run (dead tuples of its updates).

Not a test: the figures depend on the machine. `bench.run` (``scripts/bench``) runs it in a
process of its own and prints `table`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.workload import PROMPT

ROOT = Path(__file__).resolve().parent.parent
BLOCK_AT = 5
"""The step whose tool call never returns in the child: every run is interrupted there."""
LEASE_SECONDS = 3.0
"""The child's lease: how soon after the kill its runs can be taken over."""


def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# --- the crashing child -------------------------------------------------------------------------


async def _crash_child(url: str, schema: str, runs: int, steps: int) -> None:
    from bench.clients.executus_sql import SqlClient

    os.environ["OPENAI_BASE_URL"] = url
    os.environ["OPENAI_API_KEY"] = "bench"
    client = SqlClient(
        backend="postgres",
        parts=("checkpoint",),
        schema=schema,
        extra={"checkpoint_sql": {"lease_seconds": LEASE_SECONDS}},
        block_at=BLOCK_AT,
    )
    agent = client.agent(steps)
    tasks = [
        asyncio.create_task(client.executor.run(agent, PROMPT, caller_id=f"bench-{i % 50}"))
        for i in range(runs)
    ]
    started = time.monotonic()
    while client.blocked.calls < runs:
        done = [t for t in tasks if t.done()]
        if done:
            result = done[0].result()
            raise RuntimeError(f"a run ended before it was killed: {result.status.value}: {result.error}")
        await asyncio.sleep(0.05)
    print(f"BLOCKED {runs} {time.monotonic() - started:.3f}", flush=True)
    await asyncio.Event().wait()  # SIGKILLed here


def crash(url: str, schema: str, runs: int, steps: int, timeout: float = 600.0) -> dict[str, Any]:
    """Start the child, wait until every run is blocked in its tool, SIGKILL it."""
    command = [sys.executable, "-m", "bench.recovery", "--child", "--url", url, "--schema", schema]
    command += ["--runs", str(runs), "--steps", str(steps)]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line or line.startswith(b"BLOCKED"):
                break
        if not line.startswith(b"BLOCKED"):
            child.kill()
            _, err = child.communicate(timeout=30)
            raise RuntimeError(
                f"the crashing child did not block its runs: {err.decode(errors='replace')[-800:]}"
            )
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        killed_at = time.monotonic()
        return {"runs": runs, "started_seconds": float(line.split()[2]), "killed_at": killed_at}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


async def _recover(url: str, schema: str, runs: int, steps: int, concurrency: int) -> dict[str, Any]:
    from bench.clients.executus_sql import SqlClient

    os.environ["OPENAI_BASE_URL"] = url
    os.environ["OPENAI_API_KEY"] = "bench"
    client = SqlClient(
        backend="postgres",
        parts=("checkpoint",),
        schema=schema,
        extra={"recovery_concurrency": concurrency},
    )
    agent = client.agent(steps)
    statuses: dict[str, int] = {}
    rounds = 0
    try:
        at_start = client.checkpoint_statuses()  # what the dead worker left: its live runs
        interrupted = at_start.get("live", 0)
        c0, w0 = time.process_time(), time.perf_counter()
        ended = empty = 0
        # Until every interrupted run ended, or three calls in a row found none (what is left is
        # backing off after a failed resume, and is reported as not completed).
        while ended < interrupted and empty < 3:
            rounds += 1
            results = await client.executor.recover(agents={agent.id: agent})
            for result in results:
                statuses[result.status.value] = statuses.get(result.status.value, 0) + 1
            ended += len(results)
            empty = 0 if results else empty + 1
            if not results:
                await asyncio.sleep(0.5)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        reruns = client.counter.calls
    finally:
        await client.executor.shutdown()
    rows = client.checkpoint_statuses()
    return {
        "recovery_concurrency": concurrency,
        "runs": runs,
        "checkpointed_at_kill": interrupted,
        "runs_without_checkpoint": runs - sum(at_start.values()),
        "ended": ended,
        "statuses": statuses,
        "recover_calls": rounds,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "runs_per_second": ended / wall if wall else None,
        "tool_calls_after_resume": reruns,
        "checkpoint_rows": rows,
        "not_completed": sum(c for s, c in rows.items() if s != "completed"),
    }


def recovery(url: str, runs: int, steps: int, concurrency: int) -> dict[str, Any]:
    """One crash of ``runs`` runs and their recovery at ``concurrency``, in a fresh schema."""
    from bench.clients.executus_sql import postgres_admin

    schema = f"bench_rec_{uuid.uuid4().hex[:8]}"
    postgres_admin(f"CREATE SCHEMA {schema}")
    try:
        load_before = _load()
        crashed = crash(url, schema, runs, steps)
        # The dead worker's leases lapse LEASE_SECONDS after its last save or heartbeat.
        time.sleep(max(0.0, LEASE_SECONDS + 1.0 - (time.monotonic() - crashed["killed_at"])))
        found = asyncio.run(_recover(url, schema, runs, steps, concurrency))
        found["crash_seconds"] = crashed["started_seconds"]
        found["load_average_before"] = load_before
        found["load_average_after"] = _load()
        return found
    finally:
        with contextlib.suppress(Exception):  # clean-up only: the schema's name is random
            postgres_admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# --- a save's cost as the transcript grows ------------------------------------------------------


def _window(values: list[float], start: int, end: int) -> float | None:
    part = values[max(0, start) : max(0, end)]
    return statistics.median(part) if part else None


async def _steps(url: str, backend: str, lengths: list[int]) -> dict[str, Any]:
    from bench.clients.executus_sql import SqlClient, postgres_admin

    os.environ["OPENAI_BASE_URL"] = url
    os.environ["OPENAI_API_KEY"] = "bench"
    client = SqlClient(backend=backend, parts=("checkpoint",))
    out: dict[str, Any] = {"backend": backend, "load_average_before": _load(), "runs": {}}
    try:
        await client.run(10)  # warm-up: connections, schema, statement caches
        saves = client.saves
        saves.track_cpu = saves.track_bytes = True
        for n in lengths:
            saves.cpu.clear()
            saves.latency.clear()
            saves.bytes.clear()
            c0, w0 = time.process_time(), time.perf_counter()
            await client.run(n)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            count = len(saves.cpu)
            # Two saves a step (the model's answer, then the tool's result): saves 2k-2, 2k-1 are step k's.
            at: dict[str, Any] = {}
            for step in sorted({10, n}):
                lo, hi = 2 * step - 6, 2 * step + 4
                if step == n:
                    lo, hi = count - 10, count
                at[str(step)] = {
                    "cpu_us_per_save": (_window(saves.cpu, lo, hi) or 0) * 1e6,
                    "wall_us_per_save": (_window(saves.latency, lo, hi) or 0) * 1e6,
                    "bytes_per_save": _window([float(b) for b in saves.bytes], lo, hi),
                }
            out["runs"][str(n)] = {
                "steps": n,
                "saves": count,
                "cpu_us_per_step": cpu / (n + 1) * 1e6,
                "wall_us_per_step": wall / (n + 1) * 1e6,
                "save_cpu_share": sum(saves.cpu) / cpu if cpu else None,
                "at_step": at,
            }
    finally:
        await client.executor.shutdown()  # the server backends exit and report their table stats
    try:
        if backend == "postgres":
            await asyncio.sleep(1.0)
            table = f"{client.schema}.executus_checkpoint_runs"
            size = postgres_admin(f"SELECT pg_total_relation_size('{table}')")[0][0]
            stats = postgres_admin(
                "SELECT n_tup_upd, n_tup_hot_upd, n_dead_tup FROM pg_stat_user_tables "
                f"WHERE schemaname = '{client.schema}' AND relname = 'executus_checkpoint_runs'"
            )
            out["runs_table_bytes"] = int(size)
            if stats:
                out["runs_table_updates"], out["runs_table_hot_updates"], out["runs_table_dead"] = map(
                    int, stats[0]
                )
    finally:
        client.cleanup()
    out["load_average_after"] = _load()
    return out


# --- command line -------------------------------------------------------------------------------


def measure(
    url: str, runs: int, concurrencies: list[int], backends: list[str], lengths: list[int]
) -> dict[str, Any]:
    """Recovery at each concurrency, then the per-save cost on each backend."""
    out: dict[str, Any] = {"runs": runs, "block_at": BLOCK_AT, "lease_seconds": LEASE_SECONDS}
    out["recovery"] = []
    for concurrency in concurrencies:
        try:
            out["recovery"].append(recovery(url, runs, 10, concurrency))
        except Exception as exc:
            out["recovery"].append(
                {"recovery_concurrency": concurrency, "error": f"{type(exc).__name__}: {exc}"}
            )
    out["steps"] = []
    for backend in backends:
        try:
            out["steps"].append(asyncio.run(_steps(url, backend, lengths)))
        except Exception as exc:
            out["steps"].append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"})
    return out


def table(found: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    lines = [
        f"**Recovery** of {found['runs']:,} interrupted 10-step runs on PostgreSQL (checkpoint-sql; a "
        f"child process SIGKILLed with every run blocked in its tool at step {found['block_at']}; "
        f"`Executor.recover()` once its {found['lease_seconds']:g} s leases lapsed):",
        "",
        "| recovery_concurrency | interrupted (of runs started) | ended ok | not completed | wall s | runs/s | CPU s | load before/after |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in found.get("recovery", []):
        if "error" in r:
            lines.append(f"| {r['recovery_concurrency']} | failed: {r['error']} | | | | | | |")
            continue
        load = f"{(r['load_average_before'] or [0])[0]:.1f} / {(r['load_average_after'] or [0])[0]:.1f}"
        lines.append(
            f"| {r['recovery_concurrency']} | {r.get('checkpointed_at_kill', '?')} of {r['runs']:,} | "
            f"{r['statuses'].get('ok', 0):,} of {r['ended']:,} | "
            f"{r['not_completed']} | {r['wall_seconds']:.1f} | {r['runs_per_second']:.0f} | "
            f"{r['cpu_seconds']:.1f} | {load} |"
        )
    lines += [
        "",
        "**A checkpoint save as the transcript grows** (checkpoint-sql alone, one run at a time; "
        "medians of the saves around that step; bytes = the JSON of the messages a save writes):",
        "",
        "| backend | run | step | CPU us/save | wall us/save | bytes/save | run CPU us/step | load |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in found.get("steps", []):
        if "error" in s:
            lines.append(f"| {s['backend']} | failed: {s['error']} | | | | | | |")
            continue
        load = f"{(s['load_average_before'] or [0])[0]:.1f}"
        for n, run in s["runs"].items():
            for step, at in run["at_step"].items():
                lines.append(
                    f"| {s['backend']} | {n} steps | {step} | {at['cpu_us_per_save']:,.0f} | "
                    f"{at['wall_us_per_save']:,.0f} | {at['bytes_per_save'] or 0:,.0f} | "
                    f"{run['cpu_us_per_step']:,.0f} | {load} |"
                )
        if "runs_table_bytes" in s:
            lines.append(
                f"| {s['backend']} | runs table after these runs | | | | "
                f"{s['runs_table_bytes']:,} | {s.get('runs_table_hot_updates', '?')} of "
                f"{s.get('runs_table_updates', '?')} updates HOT | |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.recovery``: measure and print the tables (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs interrupted by the crash")
    parser.add_argument("--concurrency", default="8", help="recovery_concurrency values, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgres", help="steps: comma-separated backends")
    parser.add_argument("--lengths", default="10,500", help="steps: run lengths")
    parser.add_argument("--no-recovery", action="store_true", help="only the per-save figures")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--url", default=None, help="a running bench server (default: start one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--schema", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if args.child:
        asyncio.run(_crash_child(args.url, args.schema, args.runs, args.steps))
        return 0
    concurrencies = [] if args.no_recovery else [int(c) for c in args.concurrency.split(",") if c]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    lengths = [int(n) for n in args.lengths.split(",") if n]

    def run(url: str) -> dict[str, Any]:
        return measure(url, args.runs, concurrencies, backends, lengths)

    if args.url:
        found = run(args.url)
    else:
        from bench.run import Server, _cpus

        with Server(_cpus()[1], max_seconds=3600) as server:
            found = run(server.url)
    print(table(found))
    if args.json:
        args.json.write_text(json.dumps(found, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
