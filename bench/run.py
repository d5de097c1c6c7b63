"""The orchestrator behind ``python -m bench`` (and ``scripts/bench``): run every case, report.

It starts the scripted server in a process of its own (pinned to the last CPU when there are two or
more), then one measuring process per client and case (pinned to the first CPU), collects their JSON,
measures import and `Executor` build times in fresh interpreters, profiles executus at N = 50, and
writes the results as JSON (machine, Python and package versions included), a table on stdout and,
where matplotlib is installed, the plot. The server is always terminated, whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.clients import CLIENTS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
QUICK_OUTPUT = ROOT / "bench" / "results" / "quick.json"
"""Where ``--quick`` writes: not a tracked file, so a smoke run never changes the published figures."""
DOCS_PAGE = ROOT / "docs" / "performance.md"
DOCS_PLOT = ROOT / "docs" / "performance-cpu-per-step.svg"
PEERS = ("openai_agents", "pydantic_ai")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure: the full run, or the quick smoke run."""

    name: str
    ns: tuple[int, ...]
    runs: tuple[int, ...]  # measured runs per length, for each of ns
    warmup: int
    concurrency: tuple[int, ...]
    concurrent_n: int
    concurrent_repeats: int
    peer_repeats_at_largest: int  # the peers take minutes per 1,000-run batch: fewer repeats there
    concurrent_warmup: int
    profile_n: int
    profile_runs: int
    import_repeats: int
    case_timeout: float
    coldstart_rounds: int  # interleaved rounds of bench.coldstart (batteries on / off)
    # The heavy host (bench.heavy): the SQL batteries' rows, durable runs at scale, recovery, the GC.
    battery_clients: tuple[str, ...]
    battery_ns: tuple[int, ...]
    battery_runs: tuple[int, ...]
    battery_concurrency: tuple[int, ...]
    battery_repeats: int
    battery_baseline: bool  # measure the bare loop and the core again in the section (else: reuse)
    durable_concurrency: tuple[int, ...]
    durable_backends: tuple[str, ...]
    durable_timeout: float
    recovery_runs: int
    recovery_concurrency: tuple[int, ...]  # empty: no recovery, only the cost of a save
    step_lengths: tuple[int, ...]
    step_backends: tuple[str, ...]
    gc_concurrency: int  # 0: no GC section
    gc_rounds: int
    gc_modes: tuple[str, ...]
    transport_ns: tuple[int, ...]  # empty: no transport section (the main comparison has the row)
    transport_runs: tuple[int, ...]


FULL = Plan(
    name="full",
    ns=(10, 50, 200),
    runs=(21, 7, 3),
    warmup=2,
    concurrency=(200, 1000),
    concurrent_n=10,
    concurrent_repeats=3,
    peer_repeats_at_largest=1,
    concurrent_warmup=20,
    profile_n=50,
    profile_runs=5,
    import_repeats=5,
    case_timeout=300.0,
    coldstart_rounds=5,
    battery_clients=("sql_audit_sqlite", "sql_checkpoint_sqlite", "sql_both_sqlite", "sql_both_postgres"),
    battery_ns=(10, 200),
    battery_runs=(21, 3),
    battery_concurrency=(200,),
    battery_repeats=3,
    battery_baseline=True,
    durable_concurrency=(1000, 5000),
    durable_backends=("postgres", "sqlite"),
    durable_timeout=1200.0,
    recovery_runs=1000,
    recovery_concurrency=(8, 64),
    step_lengths=(10, 500),
    step_backends=("sqlite", "postgres"),
    gc_concurrency=5000,
    gc_rounds=2,
    gc_modes=("default", "freeze"),
    transport_ns=(10, 200),
    transport_runs=(21, 3),
)
QUICK = Plan(
    name="quick",
    ns=(10, 50),
    runs=(3, 1),
    warmup=1,
    concurrency=(20, 50),
    concurrent_n=10,
    concurrent_repeats=1,
    peer_repeats_at_largest=1,
    concurrent_warmup=5,
    profile_n=10,
    profile_runs=1,
    import_repeats=1,
    case_timeout=60.0,
    coldstart_rounds=0,  # the cold start takes a dozen fresh processes: the full run only
    # The heavy host, small: SQLite only (no PostgreSQL needed), no recovery, no GC section.
    battery_clients=("sql_both_sqlite",),
    battery_ns=(10,),
    battery_runs=(3,),
    battery_concurrency=(20,),
    battery_repeats=1,
    battery_baseline=False,
    durable_concurrency=(),
    durable_backends=("sqlite",),
    durable_timeout=60.0,
    recovery_runs=0,
    recovery_concurrency=(),
    step_lengths=(10,),
    step_backends=("sqlite",),
    gc_concurrency=0,
    gc_rounds=0,
    gc_modes=(),
    transport_ns=(),
    transport_runs=(),
)
SECTIONS = (
    "clients",
    "profile",
    "imports",
    "coldstart",
    "budget",
    "transport",
    "batteries",
    "durable",
    "recovery",
    "gc",
)
"""What one run measures, in order; ``--sections`` picks some (the others are kept from ``--output``)."""


_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"bench [{time.monotonic() - _STARTED:5.0f}s]: {message}", file=sys.stderr, flush=True)


# --- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_bytes": _memory_total(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cpus() -> tuple[int | None, int | None]:
    """(client CPU, server CPU): separate cores when there are two or more, else no pinning."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[-1]


# --- the server -------------------------------------------------------------------------------


class Server:
    """The scripted server in its own process; a context manager that always terminates it."""

    def __init__(self, cpu: int | None, max_seconds: float) -> None:
        command = [sys.executable, "-m", "bench.server", "--port", "0", "--max-seconds", str(max_seconds)]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Server:
        # stdin stays open while we live: the server stops when it closes, even if we are killed.
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.__exit__()
            raise RuntimeError(f"the bench server did not start (it said {line!r}); see its stderr above")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        # Closing its stdin asks it to stop; a signal, then a kill, if it does not.
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


# --- the measuring processes ------------------------------------------------------------------


def run_case(args: list[str], timeout: float, cpu: int | None) -> dict[str, Any]:
    """Run ``python -m bench.client ARGS`` and return its JSON (or an error naming what happened)."""
    command = [sys.executable, "-m", "bench.client", *args]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g}s: {' '.join(args)}"}
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        stderr = done.stderr.decode(errors="replace")[-2000:]
        return {"error": f"the measuring process exited {done.returncode} without a result: {stderr}"}
    return result


def _median_concurrent(found: list[dict[str, Any]]) -> dict[str, Any]:
    cases = [r["concurrent"] for r in found]
    out = dict(cases[0])
    for key in ("wall_seconds", "steps_per_second", "runs_per_second", "cpu_us_per_step"):
        out[key] = statistics.median(c[key] for c in cases)
    for key in ("rss_before_bytes", "peak_rss_bytes", "memory_per_run_bytes"):
        out[key] = statistics.median(c[key] for c in cases)
    out["errors"] = max(c["errors"] for c in cases)
    out["first_error"] = next((c["first_error"] for c in cases if c["first_error"]), None)
    out["repeats"] = len(cases)
    out["cpu_us_per_step_all"] = [c["cpu_us_per_step"] for c in cases]
    if any("extras" in r for r in found):  # what a battery client saw, per repeat
        out["extras"] = [r.get("extras") for r in found]
    return out


def measure_clients(plan: Plan, clients: list[str], url: str, cpu: int | None) -> dict[str, dict[str, Any]]:
    """Every client's sequential and concurrent figures (or why it has none)."""
    out: dict[str, dict[str, Any]] = {}
    seq_args = [
        "--ns",
        ",".join(map(str, plan.ns)),
        "--runs",
        ",".join(map(str, plan.runs)),
        "--warmup",
        str(plan.warmup),
    ]
    for name in clients:
        started = time.monotonic()
        log(f"{name}: sequential runs of {', '.join(map(str, plan.ns))} steps")
        result = run_case(
            ["--client", name, "--url", url, "--mode", "sequential", *seq_args], plan.case_timeout, cpu
        )
        entry: dict[str, Any] = {"client": name}
        if "unavailable" in result:
            entry["unavailable"] = result["unavailable"]
            log(f"{name}: not measured: {result['unavailable']}")
        elif "error" in result:
            entry["error"] = result["error"]
            entry["traceback"] = result.get("traceback")
            log(f"{name}: failed: {result['error']}")
        else:
            entry.update({k: result[k] for k in ("label", "versions", "sequential", "extras") if k in result})
            if "provider" in result:
                entry["provider"] = result["provider"]
            entry["concurrent"] = {}
            entry["seconds_spent"] = time.monotonic() - started
        out[name] = entry
    # Concurrent cases: fresh process per repeat (clean high-water mark), clients interleaved so
    # a noisy moment on the machine does not land on one client only.
    for concurrency in plan.concurrency:
        repeats: dict[str, list[dict[str, Any]]] = {n: [] for n in clients if "sequential" in out[n]}
        for repeat in range(plan.concurrent_repeats):
            for name in repeats:
                largest = concurrency == max(plan.concurrency)
                if name in PEERS and largest and repeat >= plan.peer_repeats_at_largest:
                    continue
                log(
                    f"{name}: {concurrency} concurrent runs of {plan.concurrent_n} steps (repeat {repeat + 1})"
                )
                started = time.monotonic()
                result = run_case(
                    [
                        "--client",
                        name,
                        "--url",
                        url,
                        "--mode",
                        "concurrent",
                        "--concurrency",
                        str(concurrency),
                        "--n",
                        str(plan.concurrent_n),
                        "--warmup",
                        str(plan.concurrent_warmup),
                    ],
                    plan.case_timeout,
                    cpu,
                )
                out[name]["seconds_spent"] = out[name].get("seconds_spent", 0.0) + time.monotonic() - started
                if "concurrent" in result:
                    repeats[name].append(result)
                else:
                    out[name]["concurrent"][str(concurrency)] = {
                        "concurrency": concurrency,
                        "error": result.get("error") or result.get("unavailable"),
                    }
                    log(f"{name}: {concurrency} concurrent runs failed: {result.get('error')}")
        for name, found in repeats.items():
            if found:
                out[name]["concurrent"][str(concurrency)] = _median_concurrent(found)
    return out


# --- import and build times -------------------------------------------------------------------

_IMPORT_SNIPPET = """
import json, time
t0 = time.perf_counter()
import {module}
t1 = time.perf_counter()
print(json.dumps({{"import_seconds": t1 - t0}}))
"""

_EXECUTOR_SNIPPET = """
import json, time, warnings
t0 = time.perf_counter()
import executus_core
t1 = time.perf_counter()
from executus_core import Executor
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    first = Executor()
t2 = time.perf_counter()
builds = []
for _ in range(20):
    s = time.perf_counter()
    Executor()
    builds.append(time.perf_counter() - s)
builds.sort()
print(json.dumps({
    "import_seconds": t1 - t0,
    "first_build_seconds": t2 - t1,
    "build_seconds": builds[len(builds) // 2],
    "plugins": [r.name for r in first.plugins],
}))
"""

IMPORTS = {
    "executus_core": "executus_core",
    "httpx2": "httpx2",
    "openai_agents": "agents",
    "pydantic_ai": "pydantic_ai",
}


def _python(code: str, timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g}s"}
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        return {"error": last[0]}
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def measure_imports(plan: Plan) -> dict[str, Any]:
    """Import time of each library (fresh interpreter each time) and the time to build an Executor."""
    out: dict[str, Any] = {}
    for label, module in IMPORTS.items():
        found = [_python(_IMPORT_SNIPPET.format(module=module), 60) for _ in range(plan.import_repeats)]
        ok = [f["import_seconds"] for f in found if "import_seconds" in f]
        if ok:
            out[label] = {"module": module, "import_seconds": statistics.median(ok), "repeats": len(ok)}
        else:
            out[label] = {"module": module, "unavailable": found[0].get("error")}
    builds = [_python(_EXECUTOR_SNIPPET, 60) for _ in range(plan.import_repeats)]
    ok_builds = [b for b in builds if "build_seconds" in b]
    if ok_builds:
        out["executor"] = {
            "import_seconds": statistics.median(b["import_seconds"] for b in ok_builds),
            "first_build_seconds": statistics.median(b["first_build_seconds"] for b in ok_builds),
            "build_seconds": statistics.median(b["build_seconds"] for b in ok_builds),
            "plugins": ok_builds[0]["plugins"],
            "repeats": len(ok_builds),
        }
    else:
        out["executor"] = {"error": builds[0].get("error")}
    return out


def measure_budget(timeout: float = 1800.0) -> dict[str, Any]:
    """``python -m bench.budget`` in a process of its own: a check and a commit per run, on Redis
    and on the embedded SQLite store (the full run only: it writes keys to the test Redis, under a
    prefix of its own that it deletes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="executus-bench-budget-") as tmp:
        out = Path(tmp) / "budget.json"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.budget", "--json", str(out)],
                cwd=ROOT,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:g}s"}
        if done.returncode != 0 or not out.exists():
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            return {"error": f"bench.budget exited {done.returncode}: {tail[0]}"}
        found: dict[str, Any] = json.loads(out.read_text())
        found["table"] = done.stdout.decode(errors="replace").strip()
        return found


# --- targets ----------------------------------------------------------------------------------

FAR_BELOW = 1 / 3  # "far below both peers": at most a third of each peer's CPU per step


def _cpu(results: dict[str, Any], client: str, case: str, key: str) -> float | None:
    entry = results.get(client, {})
    try:
        value = entry[case][key]["cpu_us_per_step"]
    except (KeyError, TypeError):
        return None
    return float(value) if value is not None else None


def targets(plan: Plan, clients: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's targets, each with the figures it compares and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "met": met, "detail": detail})

    small, large = str(plan.ns[0]), str(plan.ns[-1])
    lo, hi = str(plan.concurrency[0]), str(plan.concurrency[-1])
    for case, key, limit, name in (
        ("sequential", small, 1.3, f"within 1.3x of the bare loop's CPU per step at N = {small}"),
        ("sequential", large, 1.0, f"at or below the bare loop's CPU per step at N = {large}"),
        ("concurrent", lo, 1.5, f"within 1.5x of the bare loop at {lo} concurrent runs"),
    ):
        ours, bare = _cpu(clients, "executus", case, key), _cpu(clients, "bare_httpx2", case, key)
        if ours is None or bare is None:
            add(name, None, "not measured")
        else:
            ratio = ours / bare
            add(name, ratio <= limit, f"{ours:.0f} vs {bare:.0f} us per step: {ratio:.2f}x")
    big = clients.get("executus", {}).get("concurrent", {}).get(hi)
    name = f"{hi} concurrent runs with no error, memory per run reported"
    if not big or "errors" not in big:
        add(name, None if not big else False, (big or {}).get("error") or "not measured")
    else:
        add(
            name,
            big["errors"] == 0,
            f"{big['errors']} errors; {big['memory_per_run_bytes'] / 1024:.0f} KiB per run, "
            f"peak RSS {big['peak_rss_bytes'] / 2**20:.0f} MiB",
        )
    worst: list[str] = []
    met: bool | None = True
    for peer in PEERS:
        if "sequential" not in clients.get(peer, {}):
            met = None if met is not False else met
            worst.append(f"{peer}: not measured")
            continue
        ratios = []
        for case, keys in (("sequential", plan.ns), ("concurrent", plan.concurrency)):
            for k in map(str, keys):
                ours, theirs = _cpu(clients, "executus", case, k), _cpu(clients, peer, case, k)
                if ours is not None and theirs is not None:
                    ratios.append((theirs / ours, f"{case} {k}"))
        if not ratios:
            worst.append(f"{peer}: no common case")
            met = None if met is not False else met
            continue
        low = min(ratios)
        if low[0] < 1 / FAR_BELOW:
            met = False
        worst.append(f"{peer} spends {low[0]:.1f}x executus's CPU per step at its closest ({low[1]})")
    add("far below both peers everywhere (at most 1/3 of each peer's CPU per step)", met, "; ".join(worst))
    return out


# --- the profile ------------------------------------------------------------------------------


def measure_profile(plan: Plan, url: str, cpu: int | None) -> dict[str, Any]:
    """cProfile of executus (and of the bare loop, for comparison) at N = ``plan.profile_n``."""
    out: dict[str, Any] = {}
    for name in ("executus", "bare_httpx2"):
        log(f"{name}: profile at N = {plan.profile_n}")
        result = run_case(
            [
                "--client",
                name,
                "--url",
                url,
                "--mode",
                "profile",
                "--n",
                str(plan.profile_n),
                "--runs",
                str(plan.profile_runs),
                "--warmup",
                str(plan.warmup),
            ],
            plan.case_timeout,
            cpu,
        )
        out[name] = result.get("profile") or {"error": result.get("error") or result.get("unavailable")}
    return out


# --- main -------------------------------------------------------------------------------------


def _plots(results: dict[str, Any], beside: Path, update_docs: bool) -> None:
    """The plot beside the JSON, and in docs/ when publishing."""
    from bench import report

    for path in (beside, DOCS_PLOT) if update_docs else (beside,):
        why = report.plot(results, path)
        log(f"wrote {path}" if why is None else f"no plot: {why}")
        if why is not None:
            return


def _print(results: dict[str, Any]) -> None:
    """Every table of ``results`` on stdout."""
    from bench import coldstart, heavy, report

    print(report.text(results))
    if "cases" in results.get("coldstart", {}):
        print("\n" + coldstart.table(results["coldstart"]))
    if "table" in results.get("budget", {}):
        print("\n**Budget** (executus-budget-redis, per run; python -m bench.budget):\n")
        print(results["budget"]["table"])
    found = heavy.text(results)
    if found:
        print("\n" + found)


def _publish(source: Path, *, plot: bool, update_docs: bool) -> int:
    from bench import report

    results = json.loads(source.read_text())
    if update_docs and results.get("plan", {}).get("name") != "full":
        raise SystemExit(
            f"{source} holds a {results.get('plan', {}).get('name')} run; the docs take a full run"
        )
    _print(results)
    if plot:
        _plots(results, source.with_suffix(".svg"), update_docs)
    if update_docs:
        report.update_docs(results, DOCS_PAGE)
        log(f"updated {DOCS_PAGE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bench``: run the benchmarks, print the table, write the JSON (and the plot)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="executus's benchmarks (see docs/performance.md)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (< 1 minute): small cases, few repeats"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"the JSON to write (default: {DEFAULT_OUTPUT.relative_to(ROOT)}; "
        f"with --quick, {QUICK_OUTPUT.relative_to(ROOT)}, which git ignores)",
    )
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help=f"comma-separated subset of: {', '.join(CLIENTS)}"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of executus")
    parser.add_argument(
        "--sections",
        default=None,
        help=f"measure only these (comma-separated: {', '.join(SECTIONS)}); the other sections of "
        "--output's last run of the same plan are kept, each with its own date and load",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the generated tables in docs/performance.md and its plot from this run",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="measure nothing: print, plot and (with --update-docs) publish the results in FILE",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return _publish(args.from_json, plot=not args.no_plot, update_docs=args.update_docs)
    plan = QUICK if args.quick else FULL
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown:
        parser.error(f"unknown client(s) {', '.join(unknown)}; known: {', '.join(CLIENTS)}")
    output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    if args.update_docs and args.quick:
        parser.error("--update-docs takes the full run's figures; drop --quick")

    from bench import heavy, report

    sections = [x.strip() for x in args.sections.split(",") if x.strip()] if args.sections else list(SECTIONS)
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if args.sections and args.update_docs:
        parser.error("--update-docs takes a whole run; drop --sections")
    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": dataclasses.asdict(plan),
        "machine": machine(),
    }
    if args.sections and output.exists():
        # Some sections only: the others are kept from the last run's file, each with its own date and load.
        kept = json.loads(output.read_text())
        if kept.get("plan", {}).get("name") == plan.name:
            results = {**kept, "plan": results["plan"]}
            results.setdefault("sections_run", {})
    client_cpu, server_cpu = _cpus()
    results["pinning"] = {"client_cpu": client_cpu, "server_cpu": server_cpu}
    on_server = [
        x for x in ("clients", "profile", "transport", "batteries", "durable", "recovery") if x in sections
    ]
    if on_server:
        with Server(server_cpu, max_seconds=plan.case_timeout * 40 + plan.durable_timeout * 8) as server:
            log(
                f"server at {server.url} (pid {server.process.pid if server.process else '?'}); plan {plan.name}"
            )
            if "clients" in sections:
                section = heavy.stamp()
                results["clients"] = measure_clients(plan, clients, server.url, client_cpu)
                results.setdefault("sections_run", {})["clients"] = {
                    **section,
                    "load_average_at_end": heavy.load_average(),
                }
            if "profile" in sections and not args.no_profile and "executus" in clients:
                results["profile"] = measure_profile(plan, server.url, client_cpu)
            if "transport" in sections and plan.transport_ns:
                results["transport"] = heavy.measure_transport(plan, server.url, client_cpu)
            if "batteries" in sections and plan.battery_clients:
                reuse = None if plan.battery_baseline else results.get("clients")
                results["batteries"] = heavy.measure_batteries(plan, server.url, client_cpu, reuse)
            if "durable" in sections and plan.durable_concurrency:
                results["durable"] = heavy.measure_durable(plan, server.url, client_cpu)
            if "recovery" in sections and (plan.recovery_concurrency or plan.step_lengths):
                results["recovery"] = heavy.measure_recovery(plan, server.url, client_cpu)
    if "gc" in sections and plan.gc_concurrency:
        results["gc"] = heavy.measure_gc(plan)
    if "imports" in sections:
        log("import and build times")
        results["imports"] = measure_imports(plan)
    from bench import coldstart

    if "coldstart" in sections and plan.coldstart_rounds:
        log("cold start with the batteries, and without")
        try:
            results["coldstart"] = coldstart.measure(plan.coldstart_rounds)
        except RuntimeError as exc:
            results["coldstart"] = {"error": str(exc)}
    if (
        "budget" in sections and plan.name == "full"
    ):  # --quick stays quick and writes nothing outside bench/results
        log("budget: a check and a commit per run (bench.budget)")
        results["budget"] = measure_budget()
    results.setdefault("clients", {})
    results["targets"] = targets(plan, results["clients"])
    results["heavy_targets"] = heavy.targets(results)
    results["seconds"] = time.monotonic() - started
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(output)
    _print(results)
    log(f"wrote {output}")
    if not args.no_plot:
        _plots(results, output.with_suffix(".svg"), args.update_docs)
    if args.update_docs:
        report.update_docs(results, DOCS_PAGE)
        log(f"updated {DOCS_PAGE}")
    failed = [n for n, e in results["clients"].items() if "error" in e and n not in PEERS]
    failed += [n for n, e in (results.get("batteries") or {}).get("clients", {}).items() if "error" in e]
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0
