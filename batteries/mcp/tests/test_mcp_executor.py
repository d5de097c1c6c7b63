"""End to end through `Executor.run`: an agent names ``mcp:SERVER`` (or ``mcp:SERVER/TOOL``), the
core resolves it through the installed plugin, the model calls the server's tools, and shutdown
stops the servers. The plugin reads ``[tool.executus.mcp]`` from ``EXECUTUS_MCP__*`` here."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from executus_mcp import McpSettings, McpToolSet, plugin
from mcp_helpers import eventually, log_lines, pid_alive, stdio_server

from executus_core import Agent, Executor, ModelRequest, ModelResponse, RunStatus, ToolCall, hookimpl
from executus_core.testing import ScriptedModel


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``servers({"demo": stdio_server()}, call_timeout=1)``: configure the plugin through the environment."""

    def configure(table: dict[str, Any], **limits: Any) -> None:
        monkeypatch.setenv("EXECUTUS_MCP__SERVERS", json.dumps(table))
        for key, value in limits.items():
            monkeypatch.setenv(f"EXECUTUS_MCP__{key.upper()}", json.dumps(value))

    return configure


def executor(**settings: Any) -> Executor:
    return Executor(plugins=[plugin], entry_points=False, settings=settings or None)


def calls(*steps: tuple[str, dict[str, Any]]) -> list[Any]:
    """A script: each step calls one tool; then the model answers with the last tool result."""
    script: list[Any] = [
        ModelResponse(tool_calls=[ToolCall(id=f"c{index}", name=name, arguments=arguments)])
        for index, (name, arguments) in enumerate(steps)
    ]
    script.append(lambda request: ModelResponse(text=f"done: {request.messages[-1].content}"))
    return script


async def test_an_agent_names_a_server_and_the_model_calls_its_tools(servers: Any, call_log: Path) -> None:
    servers({"demo": stdio_server(env={"MCP_TEST_LOG": str(call_log)})})
    model = ScriptedModel(calls(("demo__add", {"a": 40, "b": 2})))
    async with executor() as ex:
        assert ex.toolsets["mcp"].prefix == "mcp"
        result = await ex.run(Agent(name="calc", model=model, tools=["mcp:demo"]), "40+2?", caller_id="u1")
    assert result.status is RunStatus.OK, result.error
    assert result.output == "done: 42"
    offered = {spec.name: spec for spec in model.requests[0].tools}
    assert {"demo__add", "demo__echo", "demo__grow"} <= set(offered)
    assert offered["demo__add"].parameters["required"] == ["a", "b"]
    assert [line[1:] for line in log_lines(call_log)] == [["add", "40+2"]]


async def test_one_tool_by_name_and_a_failed_call_goes_back_to_the_model(servers: Any) -> None:
    servers({"demo": stdio_server()})
    model = ScriptedModel(calls(("demo__fail", {"reason": "the disk is full"})))
    async with executor() as ex:
        result = await ex.run(Agent(name="a", model=model, tools=["mcp:demo/fail"]), "go", caller_id="u1")
    assert result.status is RunStatus.OK, result.error
    assert [spec.name for spec in model.requests[0].tools] == ["demo__fail"]
    tool_message = model.requests[1].messages[-1]
    assert tool_message.role == "tool" and tool_message.is_error
    assert "failed: McpToolError: " in (tool_message.content or "")
    assert (tool_message.content or "").endswith("the disk is full")


async def test_a_tool_list_change_mid_run_reaches_the_next_run(servers: Any) -> None:
    servers({"demo": stdio_server()})
    async with executor() as ex:
        first = ScriptedModel(calls(("demo__grow", {"name": "fresh"})))
        result = await ex.run(Agent(name="a", model=first, tools=["mcp:demo"]), "grow", caller_id="u1")
        assert result.output == "done: added fresh"
        conn = ex.toolsets["mcp"].servers["demo"]
        await eventually(lambda: any(t.name == "fresh" for t in conn.cached_tools or []), 5, "the new list")
        second = ScriptedModel(calls(("demo__fresh", {})))
        result = await ex.run(Agent(name="a", model=second, tools=["mcp:demo"]), "hi", caller_id="u1")
    assert result.status is RunStatus.OK and result.output == "done: hello from fresh"
    assert "demo__fresh" in {spec.name for spec in second.requests[0].tools}
    assert conn.starts == 1


async def test_unknown_and_unavailable_servers_end_the_run_naming_them(servers: Any) -> None:
    servers({"demo": stdio_server(), "gone": {"command": "executus-no-such-mcp-server"}})
    model = ScriptedModel([ModelResponse(text="never asked")])
    async with executor() as ex:
        unknown = await ex.run(Agent(name="a", model=model, tools=["mcp:nope"]), "hi", caller_id="u1")
        gone = await ex.run(Agent(name="a", model=model, tools=["mcp:gone"]), "hi", caller_id="u1")
    assert unknown.status is RunStatus.ERROR and "no MCP server named 'nope'" in (unknown.error or "")
    assert "configured: demo, gone" in (unknown.error or "")
    assert gone.status is RunStatus.ERROR
    assert "MCP server 'gone' (executus-no-such-mcp-server) could not start" in (gone.error or "")
    assert model.requests == []  # refused before any model call


async def test_a_server_that_is_not_required_lets_the_run_go_on(servers: Any) -> None:
    servers(
        {"demo": stdio_server(), "gone": {"command": "executus-no-such-mcp-server", "required": False}},
    )
    model = ScriptedModel(calls(("demo__echo", {"text": "still here"})))
    async with executor() as ex:
        result = await ex.run(
            Agent(name="a", model=model, tools=["mcp:gone", "mcp:demo"]), "hi", caller_id="u1"
        )
    assert result.status is RunStatus.OK and result.output == "done: still here"
    assert not any(spec.name.startswith("gone__") for spec in model.requests[0].tools)


async def test_the_run_s_deadline_cuts_a_hung_call_and_the_server_hears_of_it(
    servers: Any, call_log: Path
) -> None:
    servers({"demo": stdio_server(env={"MCP_TEST_LOG": str(call_log)})}, call_timeout=60)
    model = ScriptedModel(calls(("demo__hang", {})))
    async with executor() as ex:
        started = time.monotonic()
        result = await ex.run(
            Agent(name="a", model=model, tools=["mcp:demo"], hard_timeout=1.0), "x", caller_id="u1"
        )
        assert time.monotonic() - started < 5
        assert result.status is RunStatus.TIMEOUT
        await eventually(
            lambda: [line[1] for line in log_lines(call_log)] == ["hang", "hang-cancelled"], 5, "cancel"
        )


async def test_shutdown_stops_every_server_it_started(servers: Any, tmp_path: Path) -> None:
    servers({"demo": stdio_server()})
    model = ScriptedModel(calls(("demo__pid", {})))
    async with executor() as ex:
        result = await ex.run(Agent(name="a", model=model, tools=["mcp:demo"]), "pid?", caller_id="u1")
        server_pid = int((result.output or "").removeprefix("done: "))
        assert pid_alive(server_pid)
    await eventually(lambda: not pid_alive(server_pid), 5, "the server to stop at shutdown")
    assert ex.toolsets["mcp"].servers["demo"].state.value == "closed"


async def test_fifty_runs_naming_the_server_share_one_process(servers: Any, call_log: Path) -> None:
    servers({"demo": stdio_server(env={"MCP_TEST_LOG": str(call_log)})})

    def ask(request: ModelRequest) -> ModelResponse:
        text = f"run {request.messages[-1].content}"
        return ModelResponse(tool_calls=[ToolCall(id="c1", name="demo__echo", arguments={"text": text})])

    model = ScriptedModel([ask, lambda r: ModelResponse(text=r.messages[-1].content)], per_run=True)
    agent = Agent(name="echo", model=model, tools=["mcp:demo/echo"])
    async with executor() as ex:
        results = await asyncio.gather(*(ex.run(agent, str(i), caller_id=f"c{i}") for i in range(50)))
        assert ex.toolsets["mcp"].servers["demo"].starts == 1
    assert [r.output for r in results] == [f"run {i}" for i in range(50)]
    assert len({line[0] for line in log_lines(call_log)}) == 1


def test_the_entry_point_registers_the_tool_set(monkeypatch: pytest.MonkeyPatch) -> None:
    (entry,) = [e for e in importlib.metadata.entry_points(group="executus") if e.name == "mcp"]
    assert entry.value == "executus_mcp.plugin"
    monkeypatch.setenv("EXECUTUS_MCP__SERVERS", json.dumps({"demo": stdio_server()}))
    others = [e.name for e in importlib.metadata.entry_points(group="executus") if e.name != "mcp"]
    with Executor(disable=others) as ex:
        assert list(ex.toolsets["mcp"].servers) == ["demo"]
        assert "mcp:*" in ex.provides["mcp"]
    assert sys.executable  # the guard runs the server with this interpreter


async def test_a_host_registers_its_own_tool_set_from_a_plugin_object() -> None:
    """The pattern the docs give for settings made in code (the plugin reads only env and pyproject)."""

    class McpTools:
        def __init__(self, table: dict[str, Any]) -> None:
            self.toolset = McpToolSet(McpSettings.model_validate(table))

        @hookimpl
        def executus_register_tools(self, register: Any) -> None:
            register(self.toolset)

    host = McpTools({"servers": {"fs": stdio_server()}})
    model = ScriptedModel(calls(("fs__echo", {"text": "mine"})))
    async with Executor(plugins=[host], entry_points=False) as ex:
        result = await ex.run(Agent(name="a", model=model, tools=["mcp:fs/echo"]), "hi", caller_id="u1")
    assert result.output == "done: mine"
    assert host.toolset.servers["fs"].state.value == "closed"  # the executor's shutdown stopped it
