"""The heavy host: executus with the SQL batteries, durable runs at scale, recovery, the cyclic GC.

`bench.run` (``scripts/bench``) calls these after the main comparison; each section records the
load average at its start and end next to its figures, as the machine is shared.

- `measure_batteries`: per-step client CPU of audit-sql and checkpoint-sql (`bench.clients.
  executus_sql`) on SQLite and PostgreSQL, beside the bare httpx2 loop and the core alone, measured
  in the same section, against the same server: sequential runs and runs at once.
- `measure_durable`: thousands of concurrent 10-step runs with audit + checkpoint in one process:
  runs ok, runs with warnings (`Result.warnings`), lost saves (a save that raised, or a checkpoint
  row not ``completed`` afterwards), audit spill files, wall time, save latency p50/p99.
- `measure_recovery`: `bench.recovery` (1,000 runs interrupted by a SIGKILL, then
  `Executor.recover()`; a save's cost at step 10 and step 500).
- `measure_gc`: `bench.gcmodes` (the core and the bare loop at 5,000 runs, GC as is and frozen).
- `measure_transport`: the core on the default httpx2 transport and on ``transport = "aiohttp"``,
  beside the bare loop and the floor, in one section (the main comparison has the row too).

`targets` turns the figures into the targets of the heavy host, each met or not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.clients import BATTERY_CLIENTS

ROOT = Path(__file__).resolve().parent.parent

SQLITE_N10 = 2.0
"""Audit + checkpoint on SQLite: at most this times the bare loop per step, 10-step runs."""
SQLITE_N200 = 1.5
"""... and at most this at 200-step runs and at 200 runs at once."""
POSTGRES_NO_WORSE = 1.1
"""PostgreSQL "no worse than SQLite": at most this times SQLite's ratio (the noise of one run)."""
SAVE_CPU_US = 150.0
"""One checkpoint save: at most this much client CPU."""
GC_RATIO = 1.2
"""The core at 5,000 concurrent runs: at most this times the bare loop per step."""
MEMORY_PER_RUN = 64 * 1024
"""The core's memory per run at the largest concurrency."""


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages now (what ``uptime`` prints)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def stamp() -> dict[str, Any]:
    """When and under what load a section starts."""
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
    }


def _end(found: dict[str, Any], started: float) -> dict[str, Any]:
    found["load_average_at_end"] = load_average()
    found["seconds"] = time.monotonic() - started
    return found


# --- sections -----------------------------------------------------------------------------------


def measure_batteries(
    plan: Any, url: str, cpu: int | None, reuse: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The batteries' rows beside the bare loop and the core, all in this section (or, given
    ``reuse``, the main section's figures of those two, measured earlier in the same run)."""
    from bench.run import log, measure_clients

    started, out = time.monotonic(), stamp()
    sub = dataclasses.replace(
        plan,
        ns=plan.battery_ns,
        runs=plan.battery_runs,
        concurrency=plan.battery_concurrency,
        concurrent_repeats=plan.battery_repeats,
    )
    baseline = ["bare_httpx2", "executus"]
    reused = {n: reuse[n] for n in baseline if reuse and "sequential" in reuse.get(n, {})}
    clients = [n for n in baseline if n not in reused] + list(plan.battery_clients)
    log(f"batteries: {', '.join(clients)}" + (f" (reusing {', '.join(reused)})" if reused else ""))
    out["plan"] = {"ns": list(sub.ns), "runs": list(sub.runs), "concurrency": list(sub.concurrency)}
    out["reused"] = list(reused)
    out["clients"] = {**reused, **measure_clients(sub, clients, url, cpu)}
    return _end(out, started)


def measure_durable(plan: Any, url: str, cpu: int | None) -> dict[str, Any]:
    """Each (backend, concurrency): one fresh process running that many 10-step runs at once."""
    from bench.run import log, run_case

    started, out = time.monotonic(), stamp()
    out["cases"] = []
    for concurrency in plan.durable_concurrency:
        for backend in plan.durable_backends:
            client = f"sql_both_{backend}"
            log(f"durable: {concurrency} concurrent 10-step runs, audit + checkpoint on {backend}")
            before = load_average()
            args = ["--client", client, "--url", url, "--mode", "concurrent", "--n", "10"]
            args += ["--concurrency", str(concurrency), "--warmup", "20"]
            result = run_case(args, plan.durable_timeout, cpu)
            case: dict[str, Any] = {
                "backend": backend,
                "concurrency": concurrency,
                "load_average_before": before,
                "load_average_after": load_average(),
            }
            if "concurrent" in result:
                case.update(result["concurrent"])
                case["extras"] = result.get("extras", {})
            else:
                case["error"] = result.get("error") or result.get("unavailable")
                log(f"durable: {backend} at {concurrency} failed: {case['error']}")
            out["cases"].append(case)
    return _end(out, started)


def measure_recovery(plan: Any, url: str, cpu: int | None) -> dict[str, Any]:
    """``python -m bench.recovery`` in a process of its own, against ``url``."""
    from bench.run import log

    started, out = time.monotonic(), stamp()
    log(f"recovery: {plan.recovery_runs} interrupted runs; saves at steps {plan.step_lengths}")
    with tempfile.TemporaryDirectory(prefix="executus-bench-recovery-") as tmp:
        target = Path(tmp) / "recovery.json"
        command = [sys.executable, "-m", "bench.recovery", "--url", url, "--json", str(target)]
        command += ["--runs", str(plan.recovery_runs), "--backends", ",".join(plan.step_backends)]
        command += ["--lengths", ",".join(map(str, plan.step_lengths))]
        if plan.recovery_concurrency:
            command += ["--concurrency", ",".join(map(str, plan.recovery_concurrency))]
        else:
            command += ["--no-recovery"]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=plan.durable_timeout * 2)
        except subprocess.TimeoutExpired:
            out["error"] = "timed out"
            return _end(out, started)
        if done.returncode != 0 or not target.exists():
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:] or ["?"]
            out["error"] = f"bench.recovery exited {done.returncode}: {' | '.join(tail)}"
            return _end(out, started)
        out.update(json.loads(target.read_text()))
    return _end(out, started)


TRANSPORT_CLIENTS = ("floor", "bare_httpx2", "executus", "executus_aiohttp")


def measure_transport(plan: Any, url: str, cpu: int | None) -> dict[str, Any]:
    """The two transports of the core beside the bare loop and the floor, interleaved."""
    from bench.run import log, measure_clients

    started, out = time.monotonic(), stamp()
    sub = dataclasses.replace(plan, ns=plan.transport_ns, runs=plan.transport_runs)
    log(f"transport: {', '.join(TRANSPORT_CLIENTS)}")
    out["plan"] = {"ns": list(sub.ns), "runs": list(sub.runs), "concurrency": list(sub.concurrency)}
    out["clients"] = measure_clients(sub, list(TRANSPORT_CLIENTS), url, cpu)
    return _end(out, started)


def transport_rows(section: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per step client CPU (x the bare loop) and throughput at once, per client."""
    ns = [str(n) for n in section["plan"]["ns"]]
    conc = [str(c) for c in section["plan"]["concurrency"]]
    header = ["client"] + [f"{n}-step runs, CPU us/step" for n in ns]
    header += [f"{c} at once, CPU us/step" for c in conc] + [f"{c} at once, steps/s" for c in conc]
    labels = {
        "floor": "floor (asyncio streams + orjson)",
        "bare_httpx2": "bare httpx2 loop",
        "executus": "executus, httpx2 transport (default)",
        "executus_aiohttp": 'executus, transport = "aiohttp"',
    }
    rows = []
    for name in TRANSPORT_CLIENTS:
        entry = section["clients"].get(name)
        if entry is None:
            continue
        if "sequential" not in entry:
            why = entry.get("error") or entry.get("unavailable")
            rows.append([labels[name], f"not measured: {why}"] + [""] * (len(header) - 2))
            continue
        row = [labels[name]]
        for case, keys in (("sequential", ns), ("concurrent", conc)):
            for key in keys:
                ours, bare = _cpu(section, name, case, key), _cpu(section, "bare_httpx2", case, key)
                row.append(
                    "-" if ours is None else f"{ours:,.0f} ({ours / bare:.2f}x)" if bare else f"{ours:,.0f}"
                )
        for key in conc:
            found = entry.get("concurrent", {}).get(key, {})
            row.append(f"{found['steps_per_second']:,.0f}" if "steps_per_second" in found else "-")
        rows.append(row)
    return header, rows


def measure_gc(plan: Any) -> dict[str, Any]:
    """``bench.gcmodes``: the core and the bare loop at ``gc_concurrency`` runs, per GC mode."""
    from bench import gcmodes
    from bench.run import log

    started, out = time.monotonic(), stamp()
    log(
        f"gc: {plan.gc_concurrency} concurrent runs, modes {', '.join(plan.gc_modes)}, {plan.gc_rounds} rounds"
    )
    out.update(gcmodes.measure(plan.gc_concurrency, plan.gc_rounds, list(plan.gc_modes)))
    return _end(out, started)


# --- figures ------------------------------------------------------------------------------------


def _cpu(section: dict[str, Any], client: str, case: str, key: str) -> float | None:
    try:
        return float(section["clients"][client][case][key]["cpu_us_per_step"])
    except (KeyError, TypeError):
        return None


def _loadtxt(load: list[float] | None) -> str:
    return f"{load[0]:.1f}" if load else "?"


def battery_rows(section: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per step, client CPU (x the bare loop of this section): sequential lengths, then at once."""
    ns = [str(n) for n in section["plan"]["ns"]]
    conc = [str(c) for c in section["plan"]["concurrency"]]
    header = ["per step, client CPU us (x bare loop)"]
    header += [f"{n}-step runs" for n in ns] + [f"{c} runs at once" for c in conc]
    rows = []
    names = ["bare_httpx2", "executus", *[n for n in BATTERY_CLIENTS if n in section["clients"]]]
    labels = {"bare_httpx2": "bare httpx2 loop", "executus": "core alone"}
    for name in names:
        entry = section["clients"].get(name)
        if entry is None:
            continue
        label = labels.get(name) or BATTERY_CLIENTS.get(name, (name,))[0]
        if "sequential" not in entry:
            rows.append(
                [label, f"not measured: {entry.get('error') or entry.get('unavailable')}"]
                + [""] * (len(header) - 2)
            )
            continue
        row = [label]
        for case, keys in (("sequential", ns), ("concurrent", conc)):
            for key in keys:
                ours, bare = _cpu(section, name, case, key), _cpu(section, "bare_httpx2", case, key)
                if ours is None:
                    row.append("-")
                else:
                    row.append(f"{ours:,.0f} ({ours / bare:.2f}x)" if bare else f"{ours:,.0f}")
        rows.append(row)
    return header, rows


def durable_rows(section: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per (backend, concurrency)."""
    header = [
        "runs at once",
        "database",
        "runs ok",
        "runs with warnings",
        "lost saves",
        "checkpoints not completed",
        "spill files",
        "wall s",
        "save p50 / p99 ms",
        "CPU us/step",
        "load before / after",
    ]
    rows = []
    for case in section.get("cases", []):
        head = [f"{case['concurrency']:,}", case["backend"]]
        load = f"{_loadtxt(case.get('load_average_before'))} / {_loadtxt(case.get('load_average_after'))}"
        if "error" in case:
            rows.append([*head, f"failed: {case['error']}"[:200], "", "", "", "", "", "", "", load])
            continue
        extras = case.get("extras") or {}
        saves = extras.get("saves") or {}
        warmup = (extras.get("runs") or case["concurrency"]) - case["concurrency"]
        ok = (extras.get("statuses") or {}).get("ok", 0) - warmup  # the warm-up batch is in the counts
        # (its checkpoints and warnings are in the other counts too: 20 runs, all ended ok)
        p50, p99 = saves.get("p50_ms"), saves.get("p99_ms")
        rows.append(
            [
                *head,
                f"{max(0, ok):,} of {case['concurrency']:,}",
                f"{extras.get('runs_with_warnings', '?')}",
                f"{extras.get('lost_saves', '?')}",
                f"{extras.get('checkpoints_not_completed', '?')}",
                f"{extras.get('spill_files', '?')}",
                f"{case['wall_seconds']:.1f}",
                f"{p50:,.1f} / {p99:,.1f}" if p50 is not None and p99 is not None else "-",
                f"{case['cpu_us_per_step']:,.0f}",
                load,
            ]
        )
    return header, rows


def _shape(warning: str) -> str:
    """A warning with its run ids, schema, paths and counts blanked, so alike ones read as one."""
    import re

    found = re.sub(r"[0-9a-f]{32}", "<run>", warning)
    found = re.sub(r"bench_[0-9a-f]+", "<schema>", found)
    found = re.sub(r"/tmp/\S+", "<file>", found)
    found = re.sub(r"\b\d+ trail rows", "N trail rows", found)
    return found[:200]


def durable_warnings(section: dict[str, Any]) -> list[str]:
    """The kinds of warning the runs got (at most three per case), and what a save raised."""
    lines = []
    for case in section.get("cases", []):
        extras = case.get("extras") or {}
        kinds = sorted({_shape(w) for w in extras.get("first_warnings") or []})
        for warning in kinds[:3]:
            lines.append(f"{case['backend']} at {case['concurrency']:,}: {warning}")
        if extras.get("saves", {}).get("errors_by_type"):
            raised = ", ".join(f"{k} x{v:,}" for k, v in extras["saves"]["errors_by_type"].items())
            lines.append(f"{case['backend']} at {case['concurrency']:,}: saves that raised: {raised}")
    return lines


def gc_rows(section: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per client and GC mode."""
    header = [
        "client / GC",
        "CPU us/step",
        "x bare (same GC)",
        "x bare (GC as is)",
        "in collections us/step",
        "collections (full)",
        "garbage objects/step",
        "memory/run KiB",
        "errors",
    ]
    rows = []
    for name, case in section.get("cases", {}).items():
        same = f"{case['x_bare_same_mode']:.2f}x" if "x_bare_same_mode" in case else "-"
        default = f"{case['x_bare_default']:.2f}x" if "x_bare_default" in case else "-"
        rows.append(
            [
                name,
                f"{case['cpu_us_per_step']:,.0f}",
                same,
                default,
                f"{case['gc_cpu_us_per_step']:,.0f}" if "gc_cpu_us_per_step" in case else "-",
                f"{case['gc_collections']:,.0f} ({case.get('gc_full_collections', 0):,.0f})",
                f"{case.get('gc_collected_per_step', 0):,.1f}",
                f"{case['memory_per_run_bytes'] / 1024:,.0f}",
                str(case["errors"]),
            ]
        )
    return header, rows


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The heavy host's targets, each with its figures and whether it is met (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "met": met, "detail": detail})

    batteries = results.get("batteries") or {}
    ratios: dict[str, dict[str, float]] = {}
    if "clients" in batteries:
        for client in ("sql_both_sqlite", "sql_both_postgres"):
            for case, key in (("sequential", "10"), ("sequential", "200"), ("concurrent", "200")):
                ours, bare = _cpu(batteries, client, case, key), _cpu(batteries, "bare_httpx2", case, key)
                if ours is not None and bare:
                    ratios.setdefault(client, {})[f"{case} {key}"] = ours / bare
    sqlite = ratios.get("sql_both_sqlite", {})
    for key, limit, label in (
        ("sequential 10", SQLITE_N10, "10-step runs"),
        ("sequential 200", SQLITE_N200, "200-step runs"),
        ("concurrent 200", SQLITE_N200, "200 runs at once"),
    ):
        name = f"audit + checkpoint on SQLite within {limit}x the bare loop per step, {label}"
        if key in sqlite:
            add(name, sqlite[key] <= limit, f"{sqlite[key]:.2f}x")
        else:
            add(name, None, "not measured")
    postgres = ratios.get("sql_both_postgres", {})
    if postgres and sqlite:
        worse = [f"{k}: {postgres[k]:.2f}x vs {sqlite[k]:.2f}x" for k in postgres if k in sqlite]
        met = all(postgres[k] <= sqlite[k] * POSTGRES_NO_WORSE for k in postgres if k in sqlite)
        add("audit + checkpoint on PostgreSQL no worse than on SQLite", met, "; ".join(worse))
    else:
        add("audit + checkpoint on PostgreSQL no worse than on SQLite", None, "not measured")

    recovery = results.get("recovery") or {}
    saves = []
    for steps in recovery.get("steps", []):
        for n, run in (steps.get("runs") or {}).items():
            for step, at in run["at_step"].items():
                saves.append((at["cpu_us_per_save"], f"{steps['backend']} step {step} of {n}"))
    if saves:
        worst = max(saves)
        add(
            f"a checkpoint save at most {SAVE_CPU_US:.0f} us of client CPU",
            worst[0] <= SAVE_CPU_US,
            f"worst {worst[0]:,.0f} us ({worst[1]}); best {min(saves)[0]:,.0f} us",
        )
    else:
        add(f"a checkpoint save at most {SAVE_CPU_US:.0f} us of client CPU", None, "not measured")

    durable = results.get("durable") or {}
    for case in durable.get("cases", []):
        name = f"{case['concurrency']:,} durable runs on {case['backend']}: 0 warnings, 0 lost saves, 0 spill files"
        if "error" in case:
            add(name, False, f"failed: {case['error']}"[:200])
            continue
        extras = case.get("extras") or {}
        saves_ = extras.get("saves") or {}
        counts = (
            extras.get("runs_with_warnings"),
            extras.get("lost_saves"),
            extras.get("spill_files"),
            extras.get("checkpoints_not_completed"),
        )
        met = None if None in counts else counts == (0, 0, 0, 0) and case.get("errors", 1) == 0
        p50, p99 = saves_.get("p50_ms"), saves_.get("p99_ms")
        add(
            name,
            met,
            f"{counts[0]} runs with warnings, {counts[1]} lost saves, {counts[2]} spill files, "
            f"{counts[3]} checkpoints not completed, {case.get('errors')} runs not ok; "
            f"save p50 {p50 or 0:,.1f} ms, p99 {p99 or 0:,.1f} ms",
        )

    gc = (results.get("gc") or {}).get("cases", {})
    core, bare = gc.get("executus/default"), gc.get("bare_httpx2/default")
    name = f"core at {(results.get('gc') or {}).get('concurrency', 5000):,} concurrent runs within {GC_RATIO}x the bare loop"
    if core and bare:
        ratio = core["cpu_us_per_step"] / bare["cpu_us_per_step"]
        frozen = gc.get("executus/freeze")
        extra = (
            f"; with gc.freeze(): {frozen['x_bare_default']:.2f}x"
            if frozen and "x_bare_default" in frozen
            else ""
        )
        add(
            name,
            ratio <= GC_RATIO,
            f"{ratio:.2f}x ({core['cpu_us_per_step']:,.0f} vs {bare['cpu_us_per_step']:,.0f} us){extra}",
        )
        add(
            f"core's memory per run at most {MEMORY_PER_RUN // 1024} KiB at that concurrency",
            core["memory_per_run_bytes"] <= MEMORY_PER_RUN,
            f"{core['memory_per_run_bytes'] / 1024:,.0f} KiB",
        )
    else:
        add(name, None, "not measured")
    return out


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    from bench.report import _text_table as table

    return table(header, rows)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    from bench.report import _md_table as table

    return table(header, rows)


def _when(section: dict[str, Any]) -> str:
    return (
        f"measured {section.get('started_at', '?')}, load average {_loadtxt(section.get('load_average_at_start'))} "
        f"at the start, {_loadtxt(section.get('load_average_at_end'))} at the end"
    )


HEAVY_START = "<!-- bench:heavy:start -->"
HEAVY_END = "<!-- bench:heavy:end -->"


def update_docs(results: dict[str, Any], page: Path) -> bool:
    """Fill the heavy host's generated block of ``page`` (between its markers); False without them."""
    import re

    content = page.read_text()
    if HEAVY_START not in content or HEAVY_END not in content:
        return False
    block = f"{HEAVY_START}\n{text(results, markdown=True)}\n{HEAVY_END}"
    pattern = re.escape(HEAVY_START) + ".*?" + re.escape(HEAVY_END)
    page.write_text(re.sub(pattern, lambda _: block, content, flags=re.S))
    return True


def text(results: dict[str, Any], markdown: bool = False) -> str:
    """The heavy host's sections as printed tables (or Markdown for docs/performance.md)."""
    table = _md_table if markdown else _text_table
    parts: list[str] = []

    def title(line: str) -> str:
        return f"**{line}**:\n" if markdown else line

    batteries = results.get("batteries")
    if batteries and "clients" in batteries:
        parts += [
            title(f"The SQL batteries, per step ({_when(batteries)})"),
            table(*battery_rows(batteries)),
            "",
        ]
    durable = results.get("durable")
    if durable and durable.get("cases"):
        parts += [
            title(f"Durable runs at scale: 10-step runs, audit + checkpoint, one process ({_when(durable)})")
        ]
        parts += [table(*durable_rows(durable))]
        warnings = durable_warnings(durable)
        if warnings:
            parts += (
                ["", "Warnings seen (kinds), and what the saves raised:", ""]
                if markdown
                else ["warnings seen:"]
            )
            parts += [f"- {w}" for w in warnings]
        parts += [""]
    recovery = results.get("recovery")
    if recovery:
        if "error" in recovery:
            parts += [f"Recovery: failed: {recovery['error']}", ""]
        else:
            from bench.recovery import table as recovery_table

            parts += [
                title(f"Recovery and the cost of a save ({_when(recovery)})"),
                recovery_table(recovery),
                "",
            ]
    transport = results.get("transport")
    if transport and "clients" in transport:
        parts += [title(f"The transport ({_when(transport)})"), table(*transport_rows(transport)), ""]
    gc = results.get("gc")
    if gc and gc.get("cases"):
        parts += [
            title(f"The cyclic GC at {gc['concurrency']:,} concurrent 10-step runs ({_when(gc)})"),
            table(*gc_rows(gc)),
            "",
        ]
    found = targets(results)
    if found:
        mark = {True: "met", False: "MISSED", None: "not measured"}
        parts += [
            title("Targets of the heavy host"),
            table(
                ["target", "result", "figures"], [[t["target"], mark[t["met"]], t["detail"]] for t in found]
            ),
        ]
    return "\n".join(parts)
