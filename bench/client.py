"""The measuring process: one client, one case, in a process of its own.

The orchestrator (`bench.run`) starts one of these per client and case, so every figure comes from
the same process layout: this process runs the client, the server runs in another. CPU time is
``time.process_time()`` of this process; memory is its RSS high-water mark. The last line written
to stdout is one JSON object: the figures, or ``{"unavailable": ...}`` / ``{"error": ...}``.

Modes:

- ``sequential``: after warm-up runs, ``runs`` runs of each ``n`` one after the other, each timed;
- ``concurrent``: after a small warm-up batch, ``concurrency`` runs of ``n`` steps at once;
- ``profile``: ``runs`` runs of ``n`` steps under cProfile, summarized by function and by package.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.metadata
import io
import json
import os
import pstats
import resource
import statistics
import sys
import time
import traceback
from typing import Any

from bench.clients import BenchClient, load, options
from bench.workload import check_answer

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int:
    """This process's resident set size now, in bytes (Linux: /proc/self/statm)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def peak_rss() -> int:
    """This process's RSS high-water mark, in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def versions(packages: list[str]) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None where not installed)."""
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


async def _checked_run(name: str, client: BenchClient, n: int) -> None:
    before = client.counter.calls
    text = await client.run(n)
    check_answer(name, n, text, client.counter.calls - before)


async def sequential(
    name: str, client: BenchClient, ns: list[int], runs: list[int], warmup: int
) -> dict[str, Any]:
    """Median CPU and wall time per model call for runs of each ``n``, one run at a time."""
    cases: dict[str, Any] = {}
    for index, (n, count) in enumerate(zip(ns, runs, strict=True)):
        # The first length warms the process up; later ones need one run to reach their own sizes.
        for _ in range(warmup if index == 0 else min(warmup, 1)):
            await _checked_run(name, client, n)
        cpu: list[float] = []
        wall: list[float] = []
        for _ in range(count):
            before = client.counter.calls
            w0, c0 = time.perf_counter(), time.process_time()
            text = await client.run(n)
            c1, w1 = time.process_time(), time.perf_counter()
            check_answer(name, n, text, client.counter.calls - before)
            calls = n + 1
            cpu.append((c1 - c0) / calls * 1e6)
            wall.append((w1 - w0) / calls * 1e6)
        cases[str(n)] = {
            "n": n,
            "model_calls_per_run": n + 1,
            "runs": count,
            "cpu_us_per_step": statistics.median(cpu),
            "wall_us_per_step": statistics.median(wall),
            "cpu_us_per_step_min": min(cpu),
            "cpu_us_per_step_max": max(cpu),
        }
    return {"sequential": cases}


async def concurrent(
    name: str, client: BenchClient, n: int, concurrency: int, warmup: int, gc_mode: str = "default"
) -> dict[str, Any]:
    """``concurrency`` runs of ``n`` steps at once: throughput, CPU per step, memory.

    ``gc_mode``: ``"default"`` leaves Python's cyclic GC as it is; ``"freeze"`` calls `gc.freeze`
    after the warm-up (what a host does once it has started up: the objects made so far are never
    walked again by a collection); ``"off"`` disables the cyclic GC during the batch (a reference).
    """
    if warmup:
        before = client.counter.calls
        texts = await asyncio.gather(*(client.run(n) for _ in range(warmup)))
        for text in texts:
            check_answer(name, n, text, n)
        if client.counter.calls - before != warmup * n:
            raise RuntimeError(
                f"{name}: the warm-up batch executed {client.counter.calls - before} tool calls"
            )
    gc.collect()
    if gc_mode == "freeze":
        gc.freeze()
    elif gc_mode == "off":
        gc.disable()
    # CPU spent inside collections, timed by the collector's own callbacks.
    gc_cpu = [0.0, 0.0]  # [total, start of the current collection]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_cpu[1] = time.thread_time()
        else:
            gc_cpu[0] += time.thread_time() - gc_cpu[1]

    gc.callbacks.append(on_gc)
    collections_before = sum(stat["collections"] for stat in gc.get_stats())
    collected_before = sum(stat["collected"] for stat in gc.get_stats())
    full_before = gc.get_stats()[2]["collections"]
    rss_before = current_rss()
    before = client.counter.calls
    w0, c0 = time.perf_counter(), time.process_time()
    outcomes = await asyncio.gather(*(client.run(n) for _ in range(concurrency)), return_exceptions=True)
    c1, w1 = time.process_time(), time.perf_counter()
    gc.callbacks.remove(on_gc)
    collections = sum(stat["collections"] for stat in gc.get_stats()) - collections_before
    collected = sum(stat["collected"] for stat in gc.get_stats()) - collected_before
    full = gc.get_stats()[2]["collections"] - full_before
    gc.enable()
    gc.unfreeze()
    peak = peak_rss()
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    wrong = 0
    for outcome in outcomes:
        if not isinstance(outcome, BaseException):
            try:
                check_answer(name, n, outcome, n)
            except RuntimeError:
                wrong += 1
    calls = client.counter.calls - before
    steps = concurrency * (n + 1)
    first = errors[0] if errors else None
    return {
        "concurrent": {
            "n": n,
            "concurrency": concurrency,
            "gc": gc_mode,
            "gc_collections": collections,
            "gc_full_collections": full,
            "gc_cpu_us_per_step": gc_cpu[0] / (concurrency * (n + 1)) * 1e6,
            "gc_collected_per_step": collected / (concurrency * (n + 1)),
            "model_calls": steps,
            "errors": len(errors) + wrong,
            "first_error": None if first is None else f"{type(first).__name__}: {first}"[:500],
            "tool_calls": calls,
            "expected_tool_calls": concurrency * n,
            "wall_seconds": w1 - w0,
            "steps_per_second": steps / (w1 - w0),
            "runs_per_second": concurrency / (w1 - w0),
            "cpu_us_per_step": (c1 - c0) / steps * 1e6,
            "rss_before_bytes": rss_before,
            "peak_rss_bytes": peak,
            "memory_per_run_bytes": max(0, peak - rss_before) / concurrency,
        }
    }


_GROUPS = (
    ("executus_core", "executus_core"),
    ("httpx2", "httpx2"),
    ("httpcore2", "httpcore2"),
    ("h11 (HTTP/1.1 parser)", "h11"),
    ("anyio + sniffio", "anyio"),
    ("anyio + sniffio", "sniffio"),
    ("pydantic", "pydantic"),
    ("pydantic", "pydantic_core"),
    ("json (stdlib)", "json"),
    ("asyncio", "asyncio"),
    ("contextlib", "contextlib"),
    ("bench (client code)", "bench"),
    ("openai SDK", "openai"),
    ("OpenAI Agents SDK", "agents"),
    ("pydantic-ai", "pydantic_ai"),
)


def _group(filename: str) -> str:
    """The package a profiled function belongs to (C functions count as builtins)."""
    if filename.startswith(("~", "<")):
        return "builtins (C: socket, select, dict, isinstance, ...)"
    for label, marker in _GROUPS:
        if f"/{marker}/" in filename or filename.endswith(f"/{marker}.py"):
            return label
    return "other Python"


def _where(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    short = filename
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in short:
            short = short.split(marker, 1)[1]
            break
    return f"{short}:{line}:{func}"


async def profile(name: str, client: BenchClient, n: int, runs: int, warmup: int, top: int) -> dict[str, Any]:
    """``runs`` runs of ``n`` steps under cProfile: the top functions (own time) and time by package."""
    for _ in range(warmup):
        await _checked_run(name, client, n)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        await _checked_run(name, client, n)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values()) or 1e-12
    steps = runs * (n + 1)
    by_group: dict[str, float] = {}
    for key, (_cc, _nc, tt, _ct, _callers) in entries.items():
        group = _group(key[0])
        by_group[group] = by_group.get(group, 0.0) + tt
    own = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    cumulative = sorted(
        (item for item in entries.items() if "executus_core" in item[0][0]),
        key=lambda item: item[1][3],
        reverse=True,
    )[:top]
    return {
        "profile": {
            "n": n,
            "runs": runs,
            "model_calls": steps,
            "profiled_us_per_step": total / steps * 1e6,
            "by_package": {
                k: {"share": v / total, "us_per_step": v / steps * 1e6}
                for k, v in sorted(by_group.items(), key=lambda kv: kv[1], reverse=True)
            },
            "top_own_time": [
                {
                    "function": _where(key),
                    "calls_per_step": nc / steps,
                    "own_us_per_step": tt / steps * 1e6,
                    "share": tt / total,
                }
                for key, (_cc, nc, tt, _ct, _callers) in own
            ],
            "executus_cumulative": [
                {
                    "function": _where(key),
                    "calls_per_step": nc / steps,
                    "cumulative_us_per_step": ct / steps * 1e6,
                    "share": ct / total,
                }
                for key, (_cc, nc, _tt, ct, _callers) in cumulative
            ],
        }
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    try:
        module = load(args.client)
        label, create_options = options(args.client)
        t0 = time.perf_counter()
        client: BenchClient = await module.create(args.url, **create_options)
        setup = time.perf_counter() - t0
    except ImportError as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {
        "client": args.client,
        "label": label or module.LABEL,
        "versions": versions(module.PACKAGES),
        "setup_seconds": setup,
    }
    provider = getattr(client, "model_provider", None)
    if provider is not None:
        out["provider"] = provider
    try:
        if args.mode == "sequential":
            ns = [int(x) for x in args.ns.split(",")]
            runs = [int(x) for x in args.runs.split(",")]
            out.update(await sequential(args.client, client, ns, runs, args.warmup))
        elif args.mode == "concurrent":
            out.update(await concurrent(args.client, client, args.n, args.concurrency, args.warmup, args.gc))
        else:
            out.update(await profile(args.client, client, args.n, int(args.runs), args.warmup, args.top))
    finally:
        await client.aclose()
    extras = getattr(client, "extras", None)  # what a battery client saw, read after it closed
    if extras is not None:
        out["extras"] = extras()
    out["peak_rss_bytes"] = peak_rss()
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m bench.client --client NAME --url URL --mode MODE ...``."""
    parser = argparse.ArgumentParser(prog="python -m bench.client", description="one measured client case")
    parser.add_argument("--client", required=True)
    parser.add_argument("--url", required=True, help="the server's base URL, http://127.0.0.1:PORT/v1")
    parser.add_argument("--mode", choices=["sequential", "concurrent", "profile"], required=True)
    parser.add_argument("--ns", default="10,50,200", help="sequential: run lengths")
    parser.add_argument("--runs", default="20,5,3", help="sequential: runs per length; profile: runs")
    parser.add_argument("--n", type=int, default=10, help="concurrent/profile: steps per run")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs (per length, or the batch size)")
    parser.add_argument(
        "--gc", choices=["default", "freeze", "off"], default="default", help="concurrent: the cyclic GC"
    )
    parser.add_argument("--top", type=int, default=25, help="profile: functions to list")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    try:
        result = asyncio.run(main_async(args))
    except Exception as exc:
        result = {
            "client": args.client,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
