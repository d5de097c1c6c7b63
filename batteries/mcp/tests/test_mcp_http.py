"""A streamable HTTP MCP server on loopback, in a process each test starts and kills by PID: a call
round trip with headers, a tool list that changes, and a server killed mid-call then back."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from executus_mcp import McpConnectionLost, McpServerUnavailable, ServerState
from mcp_helpers import eventually, http_server, log_lines


async def test_round_trip_over_http_with_headers(new_toolset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTUS_TEST_MCP_TOKEN", "s3cret")
    with http_server() as server:
        tools = new_toolset(
            {"web": {"url": server.url, "headers": {"Authorization": "Bearer ${EXECUTUS_TEST_MCP_TOKEN}"}}}
        )
        resolved = {t.name: t for t in await tools.resolve("web")}
        assert await resolved["web__add"]({"a": 40, "b": 2}) == "42"
        assert await resolved["web__header"]({"name": "authorization"}) == "Bearer s3cret"
        conn = tools.servers["web"]
        assert conn.state is ServerState.READY and conn.protocol_version == "2026-07-28"
        assert conn.target == server.url


async def test_a_tool_list_that_changes_over_http(new_toolset: Any) -> None:
    with http_server() as server:
        tools = new_toolset({"web": {"url": server.url}})
        (grow,) = await tools.resolve("web/grow")
        assert await grow({"name": "late"}) == "added late"
        conn = tools.servers["web"]
        for _ in range(200):
            if any(t.name == "late" for t in conn.cached_tools or []):
                break
            await asyncio.sleep(0.02)
        (late,) = await tools.resolve("web/late")
        assert await late({}) == "hello from late"
        assert conn.starts == 1


async def test_an_http_server_killed_mid_call_then_back(new_toolset: Any, call_log: Path) -> None:
    with http_server(env={"MCP_TEST_LOG": str(call_log)}) as server:
        tools = new_toolset({"web": {"url": server.url, "connect_timeout": 3}}, call_timeout=20)
        (slow,) = await tools.resolve("web/slow")
        (add,) = await tools.resolve("web/add")
        call = asyncio.create_task(slow({"seconds": 30, "tag": "once"}))
        await eventually(
            lambda: [line[1] for line in log_lines(call_log)] == ["slow"], 10, "the call to start"
        )
        started = time.monotonic()
        server.kill()
        with pytest.raises(McpConnectionLost) as caught:
            await call
        assert time.monotonic() - started < 10
        assert "the call was not sent again" in str(caught.value)

        # Down: a clear error naming the server (and its URL), not a hang.
        with pytest.raises(McpServerUnavailable, match=rf"MCP server 'web' \({server.url}\)"):
            await add({"a": 1, "b": 1})

        server.start()  # the same port again
        await asyncio.sleep(1.1)  # past the pause after a failed start
        assert await add({"a": 1, "b": 1}) == "2"
        assert [line[1:] for line in log_lines(call_log)] == [["slow", "once"], ["add", "1+1"]]


async def test_a_server_that_restarted_and_forgot_the_session(new_toolset: Any, call_log: Path) -> None:
    """A handshake-era HTTP session is gone after a restart: the server answers 404, runs nothing, and
    the call goes to a new session (the spec's rule), once."""
    with http_server(env={"MCP_TEST_LOG": str(call_log)}) as server:
        tools = new_toolset({"web": {"url": server.url, "mode": "legacy"}})
        (echo,) = await tools.resolve("web/echo")
        assert await echo({"text": "before"}) == "before"
        server.kill()
        server.start()
        assert await echo({"text": "after"}) == "after"
        conn = tools.servers["web"]
        assert conn.starts == 2 and conn.protocol_version == "2025-11-25"
    assert [line[1:] for line in log_lines(call_log)] == [["echo", "before"], ["echo", "after"]]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "clean-stop"])
async def test_list_changes_still_arrive_after_the_server_restarts(new_toolset: Any, stop: int) -> None:
    """On a 2026-07-28 session list changes arrive on a subscriptions/listen stream; after the server
    restarts (crashed, or stopped cleanly), changes on the new server still reach the cache."""
    with http_server() as server:
        tools = new_toolset({"web": {"url": server.url}})
        (grow,) = await tools.resolve("web/grow")
        conn = tools.servers["web"]
        assert conn.protocol_version == "2026-07-28"
        server.kill(stop)
        server.start()
        await asyncio.sleep(2.5)  # the old stream ends; the transport finds the new server
        assert await grow({"name": "after_restart"}) == "added after_restart"
        await eventually(
            lambda: any(t.name == "after_restart" for t in conn.cached_tools or []),
            10,
            "the change to arrive",
        )
