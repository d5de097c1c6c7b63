"""What a budget costs per run: one ``check`` and one ``commit`` of executus-budget-redis, at 1, 100
and 1,000 runs in flight at once against one caller (the worst case: every run touches the same
keys), on Redis and on the embedded SQLite.

    python -m bench.budget                       # Redis at EXECUTUS_TEST_REDIS_URL or 127.0.0.1:6379
    python -m bench.budget --url redis://cache:6379/0 --runs 20000 --json bench/results/budget.json

For each level it prints, per run: wall time (what a run waits), this process's CPU, and Redis's
own CPU in the scripts (from ``INFO commandstats``), plus the runs per second one process reaches.
Keys go under a prefix of their own, deleted at the end. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

LEVELS = (1, 100, 1000)


def _redis_script_usec(url: str) -> tuple[int, float]:
    """``(calls, usec)`` of EVALSHA so far, from Redis's own accounting."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
    finally:
        client.close()
    return int(stats.get("calls", 0)), float(stats.get("usec", 0.0))


async def _level(budget: Any, in_flight: int, runs: int) -> dict[str, float]:
    from executus_core import Usage

    caller = f"bench-{uuid.uuid4().hex[:8]}"
    usage = Usage(input_tokens=120, output_tokens=30)
    per_task = max(1, runs // in_flight)
    started = asyncio.Event()

    async def one(task: int) -> None:
        await started.wait()
        for n in range(per_task):
            run_id = f"{task}-{n}"
            await budget.check(caller, run_id=run_id)
            await budget.commit(caller, 0.5, usage, run_id=run_id)

    # Warm up: the pool's connections and the scripts, outside the measurement.
    await asyncio.gather(*(budget.check(caller, run_id=f"warm-{i}") for i in range(min(in_flight, 50))))
    await asyncio.gather(
        *(budget.commit(caller, 0.1, usage, run_id=f"warm-{i}") for i in range(min(in_flight, 50)))
    )
    tasks = [asyncio.create_task(one(t)) for t in range(in_flight)]
    await asyncio.sleep(0)
    cpu, wall = time.process_time(), time.perf_counter()
    started.set()
    await asyncio.gather(*tasks)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done = per_task * in_flight
    return {
        "in_flight": in_flight,
        "runs": done,
        "wall_us_per_run": wall / done * 1e6,
        "cpu_us_per_run": cpu / done * 1e6,
        "runs_per_second": done / wall,
    }


async def _bench(backend: str, url: str, runs: int) -> list[dict[str, Any]]:
    from executus_budget_redis import RedisBudget, SQLiteBudget

    prefix = f"executus:bench:{uuid.uuid4().hex[:8]}:"
    limits = {"max_runs": 10**9, "max_tokens": 10**12, "max_concurrent": 10**6, "key_prefix": prefix}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for in_flight in LEVELS:
            budget: Any
            if backend == "redis":
                budget = RedisBudget(url=url, max_connections=50, timeout=10, **limits)
                before = _redis_script_usec(url)
            else:
                budget = SQLiteBudget(path=str(Path(tmp) / "budget.sqlite3"), timeout=10, **limits)
            try:
                row: dict[str, Any] = {"backend": backend, **await _level(budget, in_flight, runs)}
            finally:
                await budget.aclose()
            if backend == "redis":
                calls, usec = _redis_script_usec(url)
                # two scripts per run (check, commit), plus the warm-up's
                row["redis_us_per_run"] = (usec - before[1]) / max(1, (calls - before[0]) / 2)
            rows.append(row)
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            for start in range(0, len(keys), 500):
                client.unlink(*keys[start : start + 500])
        finally:
            client.close()
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    head = f"{'backend':8} {'in flight':>9} {'runs':>7} {'wall µs/run':>12} {'client CPU µs/run':>18} {'Redis µs/run':>13} {'runs/s':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        redis_us = f"{r['redis_us_per_run']:.0f}" if "redis_us_per_run" in r else "—"
        print(
            f"{r['backend']:8} {r['in_flight']:>9,} {r['runs']:>7,} {r['wall_us_per_run']:>12.0f} "
            f"{r['cpu_us_per_run']:>18.0f} {redis_us:>13} {r['runs_per_second']:>9,.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the budget benchmark and print the table (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("EXECUTUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis to measure against (keys under a prefix of their own, deleted at the end)",
    )
    parser.add_argument("--runs", type=int, default=10_000, help="check + commit pairs per level")
    parser.add_argument("--backends", default="redis,sqlite", help="comma-separated: redis, sqlite")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for backend in args.backends.split(","):
        rows += asyncio.run(_bench(backend.strip(), args.url, args.runs))
    _print(rows)
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
