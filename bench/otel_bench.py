"""What executus-otel costs per step: client CPU with the battery on, beside the core alone.

Run: ``.venv/bin/python -m bench.otel_bench`` (about 2 minutes on 2 cores; ``--quick`` for a smoke
run). Needs executus-otel installed (``scripts/bootstrap`` does it). It starts the scripted model
server of `bench.server` and a minimal OTLP/HTTP receiver, each in a process of its own (pinned to
the last CPU), then measures each configuration in fresh measuring processes (pinned to the first
CPU), the same workload as ``bench.run``: runs of ``n`` steps of one ``lookup`` tool call each.

Configurations:

- ``core``: an `Executor` with no ports (what ``bench.run`` calls executus);
- ``null_recorder``: an audit whose recorder does nothing: what the core spends feeding any
  recorder (run events, its queue and task), which is not the battery's own cost;
- ``otel_spans``: executus-otel making every span, into a batch processor whose exporter drops them
  (the recorder and the SDK, no export);
- ``otel_otlp``: executus-otel with its own provider exporting over OTLP/HTTP to the loopback
  receiver (protobuf encoding and HTTP included: they run in the SDK's thread, in this process);
- ``otel_otlp_content``: the same with ``capture_content = true`` (answers, tool arguments and
  results on the spans, masked).

CPU is ``time.process_time()`` of the measuring process — every thread, the exporter's included —
over a batch of runs and a final flush of the spans, divided by the model calls (``n + 1`` a run).
Each figure is the median of ``--repeat`` processes. Results go to ``bench/results/otel.json``.

On a shared machine CPU seconds are noisy; ``--instructions`` counts instructions instead, with
valgrind's callgrind (every thread of the measuring process; unaffected by other load): each
configuration runs twice, with 20 and 60 sequential runs, and the difference divided by the steps
between them is the instructions a step costs (about 10 minutes for the five configurations).
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
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "otel.json"
QUICK_OUTPUT = ROOT / "bench" / "results" / "quick.otel.json"
"""Where ``--quick`` writes: an ignored file, so a smoke run never changes the published figures."""
CONFIGS = ("core", "null_recorder", "otel_spans", "otel_otlp", "otel_otlp_content")


# --- the OTLP receiver ------------------------------------------------------------------------


class _Sink(asyncio.Protocol):
    """Reads HTTP/1.1 requests (keep-alive) and answers each with 200 and an empty protobuf body."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n"
        b"connection: keep-alive\r\n\r\n"
    )
    received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            _Sink.received += length
            self.transport.write(self.RESPONSE)


async def _serve_sink() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    # Stop when the parent closes our stdin (or goes away), or on a signal.
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True
    ).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


class _Process:
    """A helper process that prints ``READY <port>``; always terminated on exit."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"{' '.join(command)} did not start (it said {line!r})")
        self.port = int(line.split()[1])

    def close(self) -> None:
        process = self.process
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# --- the measuring process --------------------------------------------------------------------


async def _measure(config: str, url: str, sink: str, n: int, runs: int, concurrency: int) -> dict[str, Any]:
    from bench.clients.executus import ExecutusClient
    from bench.workload import check_answer

    os.environ["OPENAI_BASE_URL"] = url
    os.environ["OPENAI_API_KEY"] = "bench"
    client = ExecutusClient()
    audit = None
    if config != "core":
        from executus_otel import OtelAudit, OtelSettings
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        from executus_core import Executor
        from executus_core.testing import PortPlugin

        if config == "null_recorder":

            class NullRecorder:
                def on_step(self, iteration: int, response: Any) -> None: ...
                def on_tool(self, call: Any, result: str) -> None: ...
                def log_event(self, type: str, payload: Any) -> None: ...
                def log_error(self, message: str) -> None: ...
                async def close(self, stats: Any) -> None: ...

            class NullAudit:
                async def start_run(self, info: Any) -> NullRecorder:
                    return NullRecorder()

            await client.executor.shutdown()
            client.executor = Executor(plugins=[PortPlugin(audit=NullAudit())], entry_points=False)
        elif config == "otel_spans":

            class Drop(SpanExporter):
                def export(self, spans: Any) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(Drop()))
            audit = OtelAudit(tracer_provider=provider)
        else:
            settings = OtelSettings(
                tracer_provider="own", endpoint=sink, capture_content=config == "otel_otlp_content"
            )
            audit = OtelAudit(settings)
        if audit is not None:
            await client.executor.shutdown()
            client.executor = Executor(plugins=[PortPlugin(audit=audit)], entry_points=False)

    async def flush() -> None:
        if audit is not None and audit.provider is not None:
            await asyncio.to_thread(audit.provider.force_flush, 30_000)  # type: ignore[attr-defined]

    async def batch(count: int, at_once: bool) -> float:
        before = client.counter.calls
        c0 = time.process_time()
        if at_once:
            texts = await asyncio.gather(*(client.run(n) for _ in range(count)))
        else:
            texts = [await client.run(n) for _ in range(count)]
        await flush()
        cpu = time.process_time() - c0
        for text in texts:
            check_answer(config, n, text, n)
        if client.counter.calls - before != count * n:
            raise RuntimeError(
                f"{config}: {client.counter.calls - before} tool calls for {count} runs of {n}"
            )
        return cpu / (count * (n + 1)) * 1e6

    await batch(max(5, runs // 10), at_once=False)  # warm-up: imports, pools, caches
    sequential = await batch(runs, at_once=False)
    await batch(max(5, concurrency // 10), at_once=True)
    concurrent = await batch(concurrency, at_once=True)
    failed = audit.exporter.failed_spans if audit is not None and audit.exporter is not None else 0
    await client.aclose()
    return {
        "config": config,
        "n": n,
        "runs": runs,
        "concurrency": concurrency,
        "sequential_cpu_us_per_step": sequential,
        "concurrent_cpu_us_per_step": concurrent,
        "failed_spans": failed,
    }


def _measure_in_process(args: list[str], cpu: int | None, timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.otel_bench", *args]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        found: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(
            f"the measuring process exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}"
        ) from None
    return found


# --- the orchestrator -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otel_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer runs, one process each")
    parser.add_argument("--repeat", type=int, default=3, help="measuring processes per configuration")
    parser.add_argument("--n", type=int, default=10, help="tool calls a run (steps: n + 1)")
    parser.add_argument("--runs", type=int, default=200, help="runs measured one after the other")
    parser.add_argument("--concurrency", type=int, default=200, help="runs measured at once")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per step with callgrind instead"
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="the configurations to measure")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--sink-url", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if args.sink:
        asyncio.run(_serve_sink())
        return 0
    if args.measure:
        result = asyncio.run(
            _measure(args.measure, args.url, args.sink_url, args.n, args.runs, args.concurrency)
        )
        print(json.dumps(result))
        return 0
    return _orchestrate(args)


def _warmup_runs(runs: int) -> int:
    return max(5, runs // 10)  # as `_measure` warms up


def _instructions(args: argparse.Namespace, configs: list[str], url: str, sink_url: str) -> dict[str, Any]:
    """Instructions per step of each configuration, from two callgrind runs of different lengths."""
    import re
    import shutil

    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    sizes = (20, 60)
    steps = (sizes[1] + _warmup_runs(sizes[1]) - sizes[0] - _warmup_runs(sizes[0])) * (args.n + 1)
    found: dict[str, Any] = {}
    for config in configs:
        counts = []
        for runs in sizes:
            command = [
                "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                sys.executable, "-m", "bench.otel_bench", "--measure", config, "--url", url,
                "--sink-url", sink_url, "--n", str(args.n), "--runs", str(runs), "--concurrency", "1",
            ]  # fmt: skip
            done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=1800, check=False)
            collected = re.search(rb"Collected : (\d+)", done.stderr)
            if done.returncode != 0 or collected is None:
                raise RuntimeError(
                    f"callgrind of {config} failed: {done.stderr.decode(errors='replace')[-2000:]}"
                )
            counts.append(int(collected.group(1)))
        found[config] = (counts[1] - counts[0]) / steps
        print(f"{config:20} {found[config] / 1e6:8.3f} M instructions/step", file=sys.stderr)
    return found


def _orchestrate(args: argparse.Namespace) -> int:
    from bench.run import Server, _cpus

    if args.quick:
        args.repeat, args.runs, args.concurrency = 1, 30, 50
        if args.output == DEFAULT_OUTPUT:
            args.output = QUICK_OUTPUT
    client_cpu, server_cpu = _cpus()
    sink_command = [sys.executable, "-m", "bench.otel_bench", "--sink"]
    if server_cpu is not None:
        sink_command += ["--cpu", str(server_cpu)]
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or ("core" not in configs and not args.instructions):
        raise SystemExit(
            f"--configs: unknown {unknown}, or no core to compare with; known: {', '.join(CONFIGS)}"
        )
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    sink = _Process(sink_command)
    try:
        with Server(server_cpu, max_seconds=3600) as server:
            sink_url = f"http://127.0.0.1:{sink.port}"
            print(f"model server {server.url}, OTLP receiver {sink_url}", file=sys.stderr)
            if args.instructions:
                counted = _instructions(args, configs, server.url, sink_url)
                return _report_instructions(args, counted)
            for round_ in range(args.repeat):
                for config in configs:  # interleaved, so a noisy moment spreads over every config
                    found = _measure_in_process(
                        [
                            "--measure", config, "--url", server.url, "--sink-url", sink_url,
                            "--n", str(args.n), "--runs", str(args.runs), "--concurrency", str(args.concurrency),
                        ],
                        client_cpu,
                        timeout=600,
                    )  # fmt: skip
                    results[config].append(found)
                    print(
                        f"round {round_ + 1}/{args.repeat} {config:18} sequential "
                        f"{found['sequential_cpu_us_per_step']:7.1f} µs/step, {args.concurrency} at once "
                        f"{found['concurrent_cpu_us_per_step']:7.1f} µs/step",
                        file=sys.stderr,
                    )
    finally:
        sink.close()
    summary = {
        config: {
            "sequential_cpu_us_per_step": statistics.median(r["sequential_cpu_us_per_step"] for r in found),
            "concurrent_cpu_us_per_step": statistics.median(r["concurrent_cpu_us_per_step"] for r in found),
            "failed_spans": sum(r["failed_spans"] for r in found),
        }
        for config, found in results.items()
    }
    core = summary["core"]
    base = summary.get("null_recorder", core)
    print(f"\nclient CPU per step (µs), n = {args.n}, median of {args.repeat}:")
    print(
        "(+core: over the core alone; +recorder: over a recorder that does nothing, the battery's own share)"
    )
    at_once = f"{args.concurrency} at once"
    print(
        f"{'configuration':20} {'one at a time':>14} {'+core':>8} {'+recorder':>10} "
        f"{at_once:>14} {'+core':>8} {'+recorder':>10}"
    )
    for config, row in summary.items():
        seq, conc = row["sequential_cpu_us_per_step"], row["concurrent_cpu_us_per_step"]
        print(
            f"{config:20} {seq:14.1f} {seq - core['sequential_cpu_us_per_step']:+8.1f} "
            f"{seq - base['sequential_cpu_us_per_step']:+10.1f} {conc:14.1f} "
            f"{conc - core['concurrent_cpu_us_per_step']:+8.1f} {conc - base['concurrent_cpu_us_per_step']:+10.1f}"
        )
    if any(row["failed_spans"] for row in summary.values()):
        print(
            "warning: some spans were not exported; the figures for that configuration are off",
            file=sys.stderr,
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "n": args.n,
                "runs": args.runs,
                "concurrency": args.concurrency,
                "repeat": args.repeat,
                "pinning": {"client_cpu": client_cpu, "server_cpu": server_cpu},
                "summary": summary,
                "processes": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {args.output}", file=sys.stderr)
    return 0


def _report_instructions(args: argparse.Namespace, counted: dict[str, float]) -> int:
    core = counted.get("core")
    base = counted.get("null_recorder", core)
    print(f"\ninstructions per step (callgrind, millions), n = {args.n}, runs one at a time:")
    print(f"{'configuration':20} {'per step':>9} {'+core':>8} {'+recorder':>10}")
    for config, value in counted.items():
        plus_core = f"{(value - core) / 1e6:+8.3f}" if core is not None else ""
        plus_base = f"{(value - base) / 1e6:+10.3f}" if base is not None else ""
        print(f"{config:20} {value / 1e6:9.3f} {plus_core} {plus_base}")
    output = args.output.with_name(args.output.stem + "-instructions.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"n": args.n, "instructions_per_step": counted}, indent=2) + "\n")
    print(f"written to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
