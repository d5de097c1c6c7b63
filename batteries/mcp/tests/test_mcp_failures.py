"""What goes wrong with MCP servers, on real ones: a server killed mid-call, a crash between calls,
a hung call, a run's deadline, a server that cannot start (refuse or go on), one that never greets."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from executus_mcp import (
    McpCallTimeout,
    McpConnectionLost,
    McpServerUnavailable,
    ServerState,
)
from mcp_helpers import eventually, log_lines, pid_alive, stdio_server, tool_context


async def _pid(tools: Any) -> int:
    (pid,) = await tools.resolve("demo/pid")
    return int(await pid({}))


async def test_a_server_killed_mid_call_fails_that_call_once_and_restarts_for_the_next(
    new_toolset: Any, call_log: Path
) -> None:
    tools = new_toolset({"demo": stdio_server(env={"MCP_TEST_LOG": call_log})})
    conn = tools.servers["demo"]
    first_pid = await _pid(tools)
    (slow,) = await tools.resolve("demo/slow")
    call = asyncio.create_task(slow({"seconds": 30, "tag": "once"}))
    await eventually(lambda: [line[1] for line in log_lines(call_log)] == ["slow"], 10, "the call to start")

    started = time.monotonic()
    os.kill(first_pid, signal.SIGKILL)
    with pytest.raises(McpConnectionLost, match="was not sent again and may or may not have taken effect"):
        await call
    assert time.monotonic() - started < 5

    # The next call starts a new server; the interrupted call was never sent again.
    (add,) = await tools.resolve("demo/add")
    assert await add({"a": 1, "b": 2}) == "3"
    second_pid = await _pid(tools)
    assert second_pid != first_pid and conn.starts == 2
    calls = [line[1:] for line in log_lines(call_log)]
    assert calls == [["slow", "once"], ["add", "1+2"]]


async def test_a_crash_between_calls_is_not_the_next_call_s_error(new_toolset: Any) -> None:
    tools = new_toolset({"demo": stdio_server()})
    conn = tools.servers["demo"]
    first_pid = await _pid(tools)
    os.kill(first_pid, signal.SIGKILL)
    for _ in range(250):  # the session sees its transport end, without any call
        if conn.state is ServerState.LOST:
            break
        await asyncio.sleep(0.02)
    assert conn.state is ServerState.LOST

    (add,) = await tools.resolve("demo/add")
    assert await add({"a": 20, "b": 22}) == "42"
    assert conn.starts == 2 and await _pid(tools) != first_pid


async def test_a_crash_inside_a_call_is_a_lost_connection(new_toolset: Any, call_log: Path) -> None:
    tools = new_toolset({"demo": stdio_server(env={"MCP_TEST_LOG": call_log})})
    (die,) = await tools.resolve("demo/die")
    with pytest.raises(McpConnectionLost, match="'die'"):
        await die({})
    (echo,) = await tools.resolve("demo/echo")
    assert await echo({"text": "back"}) == "back"
    assert [line[1] for line in log_lines(call_log)] == ["die", "echo"]


async def test_a_hung_call_is_cut_by_call_timeout_and_the_session_survives(
    new_toolset: Any, call_log: Path
) -> None:
    tools = new_toolset({"demo": stdio_server(call_timeout=0.5, env={"MCP_TEST_LOG": call_log})})
    (hang,) = await tools.resolve("demo/hang")
    started = time.monotonic()
    with pytest.raises(
        McpCallTimeout, match=r"'hang' on MCP server 'demo' did not answer within 0.5s \(call_timeout\)"
    ):
        await hang({})
    assert 0.45 < time.monotonic() - started < 3
    # The server was told to stop working on it.
    await eventually(
        lambda: [line[1] for line in log_lines(call_log)][1:] == ["hang-cancelled"], 5, "the cancel"
    )
    (add,) = await tools.resolve("demo/add")
    assert await add({"a": 1, "b": 1}) == "2"
    assert tools.servers["demo"].starts == 1


async def test_a_call_never_outlives_the_run_s_deadline(new_toolset: Any) -> None:
    tools = new_toolset({"demo": stdio_server()}, call_timeout=60)
    (hang,) = await tools.resolve("demo/hang")
    started = time.monotonic()
    with pytest.raises(McpCallTimeout, match="what was left of the run's time"):
        await hang.fn({}, tool_context(seconds_left=0.4))
    assert time.monotonic() - started < 3
    with pytest.raises(McpCallTimeout, match="the run's deadline has passed"):
        await hang.fn({}, tool_context(seconds_left=0))


async def test_a_server_that_cannot_start_is_an_error_naming_it(new_toolset: Any) -> None:
    tools = new_toolset({"gone": {"command": "executus-no-such-mcp-server", "args": ["--flag"]}})
    with pytest.raises(McpServerUnavailable) as caught:
        await tools.resolve("gone")
    message = str(caught.value)
    assert message.startswith("MCP server 'gone' (executus-no-such-mcp-server --flag) could not start")
    assert "No such file or directory" in message  # what the program said (or the guard, for it)
    assert "required = false" in message
    assert caught.value.server == "gone" and tools.servers["gone"].state is ServerState.FAILED


async def test_a_server_that_cannot_start_is_skipped_when_not_required(
    new_toolset: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tools = new_toolset(
        {"gone": {"command": sys.executable, "args": ["-c", "import sys; sys.exit('no token configured')"]}},
        required=False,
    )
    with caplog.at_level(logging.WARNING, logger="executus_mcp"):
        assert await tools.resolve("gone") == []
    assert "no token configured" in caplog.text
    assert "the run goes on without its tools" in caplog.text


async def test_a_server_that_never_greets_is_cut_by_connect_timeout(new_toolset: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    tools = new_toolset({"mute": {"command": sys.executable, "args": ["-c", script], "connect_timeout": 0.5}})
    started = time.monotonic()
    with pytest.raises(
        McpServerUnavailable, match=r"did not finish starting within 0.5s \(connect_timeout\)"
    ):
        await tools.resolve("mute")
    assert time.monotonic() - started < 8
    # The program that never answered was stopped, not left behind.
    pid = int(pid_file.read_text())
    for _ in range(300):
        if not pid_alive(pid):
            break
        await asyncio.sleep(0.02)
    assert not pid_alive(pid)


async def test_a_missing_environment_variable_is_named(new_toolset: Any) -> None:
    tools = new_toolset({"demo": stdio_server(env={"TOKEN": "${EXECUTUS_TEST_MCP_UNSET_VARIABLE}"})})
    with pytest.raises(McpServerUnavailable, match="EXECUTUS_TEST_MCP_UNSET_VARIABLE is not set"):
        await tools.resolve("demo")


async def test_failed_starts_are_not_repeated_by_every_caller_at_once(new_toolset: Any) -> None:
    tools = new_toolset({"gone": {"command": "executus-no-such-mcp-server"}})
    results = await asyncio.gather(*(tools.resolve("gone") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, McpServerUnavailable) for r in results)
    assert tools.servers["gone"].starts == 1
