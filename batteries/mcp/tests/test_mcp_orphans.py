"""No MCP server outlives its host: a host killed with SIGKILL (nothing in it can run) leaves no
server, no guard and no grandchild behind, even with a server that ignores its stdin closing and
SIGTERM; and a normal close stops such a server too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mcp_helpers import log_lines, pid_alive, stdio_server, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc for process parents"
)

HOST = textwrap.dedent(
    """
    import asyncio, json, sys
    from executus_mcp import McpSettings, McpToolSet

    async def main():
        tools = McpToolSet(McpSettings.model_validate({"servers": {"demo": json.loads(sys.argv[1])}}))
        found = {t.name: t for t in await tools.resolve("demo")}
        pid = await found["demo__pid"]({})
        asyncio.ensure_future(found["demo__hang"]({}))  # a call in flight when the host dies
        await asyncio.sleep(0.3)
        print(json.dumps({"server": int(pid)}), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def _grandchild(call_log: Path) -> int:
    (line,) = [entry for entry in log_lines(call_log) if entry[1] == "grandchild"]
    return int(line[2])


def test_sigkill_of_the_host_leaves_no_orphans(tmp_path: Path, call_log: Path) -> None:
    server = stdio_server(env={"MCP_TEST_IGNORE_EOF": "1", "MCP_TEST_LOG": call_log})
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, json.dumps(server)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert host.stdout is not None
        ready = json.loads(host.stdout.readline())
        server_pid = ready["server"]
        guard_pid = _parent(server_pid)
        grandchild_pid = _grandchild(call_log)
        assert _parent(guard_pid) == host.pid  # host -> guard -> server -> grandchild
        assert all(pid_alive(pid) for pid in (server_pid, guard_pid, grandchild_pid))

        host.send_signal(signal.SIGKILL)
        host.wait(10)

        # SIGTERM first (the server ignores it, its child does not), SIGKILL after the guard's grace.
        wait_until(lambda: not pid_alive(grandchild_pid), 5, "the server's child to die")
        wait_until(lambda: not pid_alive(server_pid), 8, "the server to die")
        wait_until(lambda: not pid_alive(guard_pid), 8, "the guard to die")
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


async def test_close_stops_a_server_that_ignores_stdin_and_sigterm(new_toolset: Any, call_log: Path) -> None:
    tools = new_toolset({"demo": stdio_server(env={"MCP_TEST_IGNORE_EOF": "1", "MCP_TEST_LOG": call_log})})
    (pid,) = await tools.resolve("demo/pid")
    server_pid = int(await pid({}))
    guard_pid = _parent(server_pid)
    grandchild_pid = _grandchild(call_log)

    await tools.aclose()

    for pid_ in (server_pid, guard_pid, grandchild_pid):
        wait_until(lambda pid_=pid_: not pid_alive(pid_), 3, f"process {pid_} to be gone after close")
    assert tools.servers["demo"].state.value == "closed"
    assert os.getpid() != guard_pid
