"""A stdio MCP server, end to end through the battery: a call round trip, the server's schemas and
names, a paginated tool list, and a tool list that changes while the server runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from executus_mcp import McpNameError, McpToolError, ServerState
from mcp import Client, StdioServerParameters
from mcp_helpers import log_lines, stdio_server, tool_context


async def test_round_trip_names_schemas_and_one_start(new_toolset: Any, call_log: Path) -> None:
    tools = new_toolset({"demo": stdio_server(env={"MCP_TEST_LOG": call_log})})
    conn = tools.servers["demo"]
    assert conn.state is ServerState.IDLE  # nothing starts before a run names the server

    resolved = {t.name: t for t in await tools.resolve("demo")}

    assert {"demo__add", "demo__echo", "demo__slow", "demo__grow"} <= set(resolved)
    add = resolved["demo__add"]
    assert add.description == "Add two integers."
    assert add.spec.parameters["properties"].keys() == {"a", "b"}
    assert add.spec.parameters["required"] == ["a", "b"]
    assert await add({"a": 2, "b": 40}) == "42"
    assert await resolved["demo__echo"]({"text": "héllo"}) == "héllo"
    # One tool by name; the server is not started again.
    (only,) = await tools.resolve("demo/echo")
    assert only.name == "demo__echo"
    assert conn.state is ServerState.READY and conn.starts == 1
    assert conn.protocol_version == "2026-07-28"
    assert [line[1:] for line in log_lines(call_log)] == [["add", "2+40"], ["echo", "héllo"]]


async def test_the_handshake_era_works_too(new_toolset: Any) -> None:
    tools = new_toolset({"old": stdio_server(mode="legacy")})
    (add,) = await tools.resolve("old/add")
    assert await add({"a": 1, "b": 1}) == "2"
    assert tools.servers["old"].protocol_version == "2025-11-25"


async def test_a_failed_call_is_a_tool_error_naming_the_reason(new_toolset: Any) -> None:
    tools = new_toolset({"demo": stdio_server()})
    (fail,) = await tools.resolve("demo/fail")
    with pytest.raises(McpToolError, match="no such customer") as caught:
        await fail({"reason": "no such customer"})
    assert caught.value.server == "demo" and caught.value.tool == "fail"
    # Arguments the server's schema rejects come back as the server's error too.
    (add,) = await tools.resolve("demo/add")
    with pytest.raises(McpToolError, match="a"):
        await add({"a": "not a number", "b": 1})


async def test_images_become_artifacts_of_the_run(new_toolset: Any) -> None:
    tools = new_toolset({"demo": stdio_server()})
    (picture,) = await tools.resolve("demo/picture")
    context = tool_context(call_id="c7")
    text = await picture.fn({}, context)
    assert text.startswith("a tiny picture\n[image/png, 4 bytes, attached to the run as")
    (artifact,) = context.artifacts
    assert artifact.content == b"\x89PNG" and artifact.media_type == "image/png"
    assert artifact.name in text


async def test_unknown_server_and_tool_say_what_exists(new_toolset: Any) -> None:
    tools = new_toolset({"demo": stdio_server(), "other": stdio_server()})
    with pytest.raises(McpNameError, match=r"no MCP server named 'nope'.*configured: demo, other"):
        await tools.resolve("nope")
    with pytest.raises(McpNameError, match=r"offers no tool named 'nope' \(it offers: add, echo"):
        await tools.resolve("demo/nope")
    assert tools.servers["other"].state is ServerState.IDLE


async def test_a_paginated_tool_list_is_read_to_the_end(new_toolset: Any) -> None:
    env = {"MCP_TEST_PAGE_SIZE": 3, "MCP_TEST_EXTRA_TOOLS": 10}
    tools = new_toolset(
        {"paged": stdio_server(env=env), "whole": stdio_server(env={"MCP_TEST_EXTRA_TOOLS": 10})}
    )
    paged = [t.name.removeprefix("paged__") for t in await tools.resolve("paged")]
    whole = [t.name.removeprefix("whole__") for t in await tools.resolve("whole")]
    assert len(whole) >= 20 and "extra_09" in whole
    assert paged == whole  # every page, in order, nothing twice
    # The server really pages: its first page, asked for directly with the SDK's client.
    server = stdio_server(env=env)
    params = StdioServerParameters(command=server["command"], args=server["args"], env=server["env"])
    async with Client(params) as client:
        first = await client.list_tools()
    assert len(first.tools) == 3 and first.next_cursor == "3"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_tool_list_that_changes_mid_run(new_toolset: Any, mode: str) -> None:
    """2026-07-28 sessions learn of it through subscriptions/listen, handshake-era ones through
    notifications/tools/list_changed; either way the cache follows without a restart."""
    tools = new_toolset({"demo": stdio_server(mode=mode)})
    conn = tools.servers["demo"]
    run_tools = {t.name: t for t in await tools.resolve("demo")}
    assert "demo__fresh" not in run_tools

    assert await run_tools["demo__grow"]({"name": "fresh"}) == "added fresh"
    for _ in range(200):  # the notification arrives on its own; no call asks for the list
        if any(t.name == "fresh" for t in conn.cached_tools or []):
            break
        await asyncio.sleep(0.02)
    next_run = {t.name: t for t in await tools.resolve("demo")}
    assert await next_run["demo__fresh"]({}) == "hello from fresh"

    # Taken away while a run still holds it: the run's next call says so, without a round trip.
    assert await next_run["demo__shrink"]({"name": "fresh"}) == "removed fresh"
    for _ in range(200):
        if not any(t.name == "fresh" for t in conn.cached_tools or []):
            break
        await asyncio.sleep(0.02)
    with pytest.raises(McpToolError, match="no longer offers the tool 'fresh'"):
        await next_run["demo__fresh"]({})
    assert "demo__fresh" not in {t.name for t in await tools.resolve("demo")}
    assert conn.starts == 1


async def test_only_read_only_or_idempotent_tools_rerun_after_a_crash(new_toolset: Any) -> None:
    """A recovered run re-executes an in-flight call only when the server says that is harmless."""
    tools = new_toolset({"demo": stdio_server()})
    resolved = {t.name: t for t in await tools.resolve("demo")}
    assert resolved["demo__echo"].on_resume == "rerun"  # readOnlyHint
    assert resolved["demo__add"].on_resume == "ask"  # no hint: it may have taken effect
