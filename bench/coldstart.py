"""Cold start with the batteries installed, beside the same with them disabled (issue 17).

``python -m bench.coldstart [--rounds N] [--json]`` times, in fresh processes, each of:

- ``executus plugins`` (loads every plugin, builds an `Executor` to see which ports each fills);
- ``executus run --model scripted:... "hi"`` (one offline run: no server, no API key);
- the first ``Executor()`` in a process, after ``import executus_core`` (timed inside the process);

once with every installed battery enabled and once with ``EXECUTUS_DISABLE`` naming them all.
The two modes alternate within each round (A, B, A, B, ...) so that a machine whose load changes
during the measurement changes both alike; the figures are medians over the rounds. Targets: the
commands within 1.3x of the disabled mode, the first ``Executor()`` at most 50 ms beyond it.

Side-effect free: every process gets a temporary data directory and working directory, removed
at the end. `bench.run` (``scripts/bench``) calls `measure` and prints `table`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COMMAND_RATIO = 1.3
"""Cold ``executus plugins`` / ``executus run`` with the batteries: at most this times without them."""
EXECUTOR_EXTRA_SECONDS = 0.050
"""The first ``Executor()`` with the batteries: at most this much beyond the core's alone."""

_FIRST_EXECUTOR = """
import json, time, warnings
import executus_core
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    executus_core.Executor()
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def battery_names() -> list[str]:
    """The installed plugins that are not the core's own (what ``EXECUTUS_DISABLE`` turns off)."""
    from executus_core.plugins import installed_plugin_names

    return installed_plugin_names()


def _timed(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> float | None:
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"{' '.join(argv[1:4])} failed ({done.returncode}): {tail[0]}")
    if argv[1:2] == ["-c"]:  # the in-process figure, not the interpreter's start-up
        return float(json.loads(done.stdout.decode().strip().splitlines()[-1])["seconds"])
    return elapsed


def measure(rounds: int = 7, timeout: float = 120.0, beside: str | None = None) -> dict[str, Any]:
    """Medians (seconds) of each case with the batteries on and off, their ratio, and the targets.

    ``beside``: a ``PYTHONPATH`` (another checkout's root and battery directories) measured as a
    third mode, ``"beside"``, with the batteries on: an earlier version, for before/after figures.
    """
    batteries = battery_names()
    cli = [sys.executable, "-m", "executus_core.cli"]
    cases = {
        "executus plugins": [*cli, "plugins"],
        "executus run (scripted, 1 step)": [*cli, "run", "--model", "scripted:replay.json", "hi"],
        "first Executor()": [sys.executable, "-c", _FIRST_EXECUTOR],
    }
    names = ["on", "off"] + (["beside"] if beside else [])
    seconds: dict[str, dict[str, list[float]]] = {case: {name: [] for name in names} for case in cases}
    with tempfile.TemporaryDirectory(prefix="executus-coldstart-") as tmp:
        work = Path(tmp)
        (work / "replay.json").write_text('[{"text": "hello"}]')
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("EXECUTUS_") or key.startswith("EXECUTUS_TEST_")
        }
        base["EXECUTUS_DATA_DIR"] = str(work / "data")
        modes = {"on": dict(base), "off": {**base, "EXECUTUS_DISABLE": ",".join(batteries)}}
        if beside:
            modes["beside"] = {**base, "PYTHONPATH": beside}
        for _ in range(rounds):
            for case, argv in cases.items():
                for mode, env in modes.items():
                    found = _timed(argv, env, work, timeout)
                    if found is not None:
                        seconds[case][mode].append(found)
    out: dict[str, Any] = {
        "rounds": rounds,
        "batteries": batteries,
        "beside": beside,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cases": {},
    }
    for case, found in seconds.items():
        on = statistics.median(found["on"]) if found["on"] else None
        off = statistics.median(found["off"]) if found["off"] else None
        entry: dict[str, Any] = {"on_seconds": on, "off_seconds": off, "samples": found}
        if found.get("beside"):
            entry["beside_seconds"] = statistics.median(found["beside"])
        if on is not None and off is not None:
            entry["ratio"] = on / off
            if case == "first Executor()":
                entry["target"] = f"<= {EXECUTOR_EXTRA_SECONDS * 1000:.0f} ms beyond the core's"
                entry["met"] = on - off <= EXECUTOR_EXTRA_SECONDS
            else:
                entry["target"] = f"<= {COMMAND_RATIO}x without the batteries"
                entry["met"] = on <= off * COMMAND_RATIO
        out["cases"][case] = entry
    return out


def table(found: dict[str, Any]) -> str:
    """The results as a Markdown table (the shape docs/performance.md uses)."""
    load = found.get("load_average")
    lines = [
        f"**Cold start** (fresh process each time; medians of {found['rounds']} interleaved rounds; "
        f"batteries: {', '.join(found['batteries']) or 'none installed'}"
        + (f"; load average {load[0]:.1f} at the end" if load else "")
        + "):",
        "",
        "| what | with the batteries | without | ratio | target | met |"
        + (" with the batteries, before |" if found.get("beside") else ""),
        "|---|---:|---:|---:|---|---|" + ("---:|" if found.get("beside") else ""),
    ]
    for case, entry in found["cases"].items():
        on, off = entry.get("on_seconds"), entry.get("off_seconds")
        if on is None or off is None:
            lines.append(f"| {case} | - | - | - | - | no figures |")
            continue
        ratio = entry["ratio"]
        lines.append(
            f"| {case} | {on * 1000:,.0f} ms | {off * 1000:,.0f} ms | {ratio:.2f}x | {entry['target']} "
            f"| {'met' if entry['met'] else 'NOT met'} |"
            + (f" {entry['beside_seconds'] * 1000:,.0f} ms |" if "beside_seconds" in entry else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.coldstart``: measure and print the table (or the JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument(
        "--beside",
        default=None,
        metavar="PYTHONPATH",
        help="also time another checkout (its root and batteries/* on PYTHONPATH) with the batteries on",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = parser.parse_args(argv)
    found = measure(args.rounds, beside=args.beside)
    print(json.dumps(found, indent=2) if args.json else table(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
