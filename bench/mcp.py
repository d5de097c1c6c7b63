"""What executus-mcp adds to a tool call: the battery's `Tool` beside the SDK's bare `Client.call_tool`,
on the same stdio server, one call at a time and 50 at once.

    python -m bench.mcp                       # 500 calls each way
    python -m bench.mcp --calls 2000 --json bench/results/mcp.json

For each way it prints, per call: wall time and this process's CPU (the client's share; the server
is another process). The server is the SDK's `MCPServer` with one ``echo`` tool. The battery's path
includes what a run pays: the session lookup, the limits, the result turned into the model's text.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

SERVER = """
from mcp.server.mcpserver import MCPServer
server = MCPServer("bench", log_level="WARNING")

@server.tool()
def echo(text: str) -> str:
    "Say the text back."
    return text

server.run()
"""

CONCURRENCY = 50


async def _measure(call: Any, calls: int, concurrency: int) -> dict[str, float]:
    async def worker(count: int, tag: int) -> None:
        for index in range(count):
            await call(f"{tag}-{index}")

    await call("warm-up")
    wall, cpu = time.perf_counter(), time.process_time()
    per = max(1, calls // concurrency)
    await asyncio.gather(*(worker(per, tag) for tag in range(concurrency)))
    done = per * concurrency
    return {
        "calls": done,
        "wall_us_per_call": (time.perf_counter() - wall) / done * 1e6,
        "cpu_us_per_call": (time.process_time() - cpu) / done * 1e6,
    }


async def bare_sdk(calls: int, concurrency: int) -> dict[str, float]:
    from mcp import Client, StdioServerParameters

    async with Client(StdioServerParameters(command=sys.executable, args=["-c", SERVER])) as client:

        async def call(text: str) -> None:
            result = await client.call_tool("echo", {"text": text})
            assert result.content[0].text == text  # type: ignore[union-attr]

        return await _measure(call, calls, concurrency)


async def battery(calls: int, concurrency: int) -> dict[str, float]:
    from executus_mcp import McpSettings, McpToolSet

    toolset = McpToolSet(
        McpSettings.model_validate(
            {"servers": {"bench": {"command": sys.executable, "args": ["-c", SERVER]}}}
        )
    )
    try:
        (echo,) = await toolset.resolve("bench/echo")

        async def call(text: str) -> None:
            assert await echo({"text": text}) == text

        return await _measure(call, calls, concurrency)
    finally:
        await toolset.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per way and level (default 500)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    rows: dict[str, dict[str, float]] = {}
    for concurrency in (1, CONCURRENCY):
        for name, way in (("bare SDK Client.call_tool", bare_sdk), ("executus-mcp Tool", battery)):
            rows[f"{name}, {concurrency} at once"] = asyncio.run(way(args.calls, concurrency))
    print(f"{'way':<45} {'calls':>6} {'wall µs/call':>13} {'client CPU µs/call':>19}")
    for name, row in rows.items():
        print(
            f"{name:<45} {row['calls']:>6.0f} {row['wall_us_per_call']:>13.0f} {row['cpu_us_per_call']:>19.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
