"""The cyclic GC at high concurrency: executus and the bare loop, GC as it is beside ``gc.freeze()``.

``python -m bench.gcmodes [--concurrency 5000] [--rounds 3] [--modes default,freeze,off]`` starts the
bench server, then in each round runs one fresh measuring process (`bench.client`, concurrent mode,
10-step runs) per client and GC mode, interleaved (executus and the bare httpx2 loop alternate, and
so do the modes), and reports the median CPU per step of each, the ratio to the bare loop in the same
mode, and the number of collections during the batch. Issue 17's target: executus at 5,000
concurrent runs at most 1.2x the bare loop.

``freeze`` calls `gc.freeze` after the warm-up batch, as a host would after its start-up; ``off``
disables the cyclic GC for the batch (a reference, not a recommendation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

from bench.run import Server, _cpus, log, run_case

CLIENTS = ("bare_httpx2", "executus")


def measure(concurrency: int, rounds: int, modes: list[str], timeout: float = 900.0) -> dict[str, Any]:
    """Median figures per (client, mode), and the ratios to the bare loop."""
    client_cpu, server_cpu = _cpus()
    found: dict[str, dict[str, list[dict[str, Any]]]] = {c: {m: [] for m in modes} for c in CLIENTS}
    with Server(server_cpu, max_seconds=timeout * rounds * len(modes) * 2 + 60) as server:
        for index in range(rounds):
            order = CLIENTS if index % 2 == 0 else tuple(reversed(CLIENTS))
            for mode in modes if index % 2 == 0 else list(reversed(modes)):
                for client in order:
                    args = [
                        "--client", client, "--url", server.url, "--mode", "concurrent", "--n", "10",
                        "--concurrency", str(concurrency), "--warmup", "20", "--gc", mode,
                    ]  # fmt: skip
                    result = run_case(args, timeout, client_cpu)
                    log(
                        f"round {index + 1} {client} gc={mode}: {json.dumps(result.get('concurrent', result))}"
                    )
                    if "concurrent" in result:
                        found[client][mode].append(result["concurrent"])
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "rounds": rounds,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cases": {},
    }
    for client in CLIENTS:
        for mode in modes:
            cases = found[client][mode]
            if not cases:
                continue
            out["cases"][f"{client}/{mode}"] = {
                "cpu_us_per_step": statistics.median(c["cpu_us_per_step"] for c in cases),
                "steps_per_second": statistics.median(c["steps_per_second"] for c in cases),
                "gc_collections": statistics.median(c["gc_collections"] for c in cases),
                "gc_full_collections": statistics.median(c.get("gc_full_collections", 0) for c in cases),
                "gc_cpu_us_per_step": statistics.median(c.get("gc_cpu_us_per_step", 0) for c in cases),
                "gc_collected_per_step": statistics.median(c.get("gc_collected_per_step", 0) for c in cases),
                "memory_per_run_bytes": statistics.median(c["memory_per_run_bytes"] for c in cases),
                "errors": sum(c["errors"] for c in cases),
                "samples": [c["cpu_us_per_step"] for c in cases],
            }
    for mode in modes:
        bare, ours = out["cases"].get(f"bare_httpx2/{mode}"), out["cases"].get(f"executus/{mode}")
        if bare and ours:
            ours["x_bare_same_mode"] = ours["cpu_us_per_step"] / bare["cpu_us_per_step"]
        default = out["cases"].get("bare_httpx2/default")
        if default and ours:
            ours["x_bare_default"] = ours["cpu_us_per_step"] / default["cpu_us_per_step"]
    return out


def table(found: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    load = found.get("load_average")
    lines = [
        f"**The cyclic GC at {found['concurrency']:,} concurrent 10-step runs** (medians of "
        f"{found['rounds']} fresh processes each, interleaved"
        + (f"; load average {load[0]:.1f} at the end" if load else "")
        + "):",
        "",
        "| client / GC | CPU us/step | x bare (same GC) | x bare (GC as is) | collections | memory/run KiB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, case in found["cases"].items():
        same = f"{case['x_bare_same_mode']:.2f}x" if "x_bare_same_mode" in case else "-"
        default = f"{case['x_bare_default']:.2f}x" if "x_bare_default" in case else "-"
        lines.append(
            f"| {name} | {case['cpu_us_per_step']:,.0f} | {same} | {default} | {case['gc_collections']:,.0f} "
            f"| {case['memory_per_run_bytes'] / 1024:,.0f} | {case['errors']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.gcmodes``: measure and print the table (or the JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gcmodes", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="default,freeze")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = parser.parse_args(argv)
    found = measure(args.concurrency, args.rounds, [m.strip() for m in args.modes.split(",") if m.strip()])
    print(json.dumps(found, indent=2) if args.json else table(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
