"""A real MCP server for the battery's tests, written with the SDK's own server API (`MCPServer`).

Run it as ``python mcp_server_app.py`` (stdio) or ``python mcp_server_app.py --http PORT``
(streamable HTTP on 127.0.0.1). Options, from the environment so a test can set them per server:

- ``MCP_TEST_PAGE_SIZE``: serve ``tools/list`` in pages of this many tools (a middleware, the
  SDK's own way to shape a method's answer);
- ``MCP_TEST_LOG``: a file each call appends ``<pid> <tool> <argument>`` to, so a test can count
  how many times a call really ran;
- ``MCP_TEST_IGNORE_EOF``: keep the process alive after its stdin closes (a badly behaved server,
  for the orphan tests), and start a grandchild ``sleep`` that would outlive it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import anyio
import mcp_types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("executus-test", version="1.0")

PAGE_SIZE = int(os.environ.get("MCP_TEST_PAGE_SIZE", "0"))
LOG = os.environ.get("MCP_TEST_LOG")


def record(tool: str, argument: object = "") -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{os.getpid()} {tool} {argument}\n")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    record("add", f"{a}+{b}")
    return a + b


@server.tool(annotations=mcp_types.ToolAnnotations(read_only_hint=True))
def echo(text: str) -> str:
    """Say the text back."""
    record("echo", text)
    return text


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
def header(name: str, ctx: Context) -> str:
    """The value of an HTTP request header (empty when there is none, or no HTTP)."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return "" if headers is None else str(headers.get(name, ""))


@server.tool()
async def slow(seconds: float, tag: str = "") -> str:
    """Sleep, then answer (a long call a test can interrupt)."""
    record("slow", tag)
    await anyio.sleep(seconds)
    record("slow-done", tag)
    return f"done {tag}"


@server.tool()
async def hang() -> str:
    """Never answer."""
    record("hang")
    try:
        await anyio.sleep(3600)
    except anyio.get_cancelled_exc_class():
        record("hang-cancelled")  # the client's notifications/cancelled reached the server
        raise
    return "unreachable"


@server.tool()
def fail(reason: str) -> str:
    """Fail with the given reason (a `ToolError`: the server passes its message on)."""
    raise ToolError(reason)


@server.tool()
def picture() -> list[Any]:
    """A caption and a 4-byte image."""
    data = base64.b64encode(b"\x89PNG").decode()
    return [
        mcp_types.TextContent(type="text", text="a tiny picture"),
        mcp_types.ImageContent(type="image", data=data, mime_type="image/png"),
    ]


async def _changed(ctx: Context) -> None:
    # 2026-07-28 sessions hear of it through subscriptions/listen; handshake-era ones by notification.
    await ctx.notify_tools_changed()
    with contextlib.suppress(Exception):
        await ctx.request_context.session.send_tool_list_changed()


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool called NAME that says hello, and tell the client the tool list changed."""

    def hello() -> str:
        return f"hello from {name}"

    server.add_tool(hello, name=name, description=f"Say hello from {name}.")
    await _changed(ctx)
    return f"added {name}"


@server.tool()
async def shrink(name: str, ctx: Context) -> str:
    """Remove the tool NAME, and tell the client the tool list changed."""
    server.remove_tool(name)
    await _changed(ctx)
    return f"removed {name}"


@server.tool()
def die() -> str:
    """Exit at once, mid-call (a crash)."""
    record("die")
    os._exit(3)


for index in range(int(os.environ.get("MCP_TEST_EXTRA_TOOLS", "0"))):

    def extra(index: int = index) -> int:
        return index

    server.add_tool(extra, name=f"extra_{index:02d}", description=f"Extra tool {index}.")


class Paginate:
    """Serve tools/list in pages of PAGE_SIZE (the cursor is the next index)."""

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method != "tools/list":
            return await call_next(ctx)
        params = dict(ctx.params or {})
        start = int(params.pop("cursor", None) or 0)
        result = await call_next(replace(ctx, params=params or None))
        tools = result.tools if hasattr(result, "tools") else result["tools"]
        page = tools[start : start + PAGE_SIZE]
        following = str(start + PAGE_SIZE) if start + PAGE_SIZE < len(tools) else None
        if hasattr(result, "tools"):
            return result.model_copy(update={"tools": page, "next_cursor": following})
        return {**result, "tools": page, "nextCursor": following}


if PAGE_SIZE:
    server.middleware.append(Paginate())


def main() -> None:
    if os.environ.get("MCP_TEST_IGNORE_EOF"):
        # A server that outlives its stdin, with a child of its own: only killing the group ends them.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "300"])
        if LOG:
            with open(LOG, "a") as f:
                f.write(f"{os.getpid()} grandchild {child.pid}\n")
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
    if os.environ.get("MCP_TEST_IGNORE_EOF"):
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
