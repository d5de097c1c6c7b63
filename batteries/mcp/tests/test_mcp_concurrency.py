"""50 runs at once through the real agent loop, sharing one MCP server: one start, every call
answered to the run that made it, over stdio and over HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from mcp_helpers import http_server, log_lines, stdio_server

from executus_core import Agent, Executor, ModelRequest, ModelResponse, RunStatus, ToolCall
from executus_core.testing import ScriptedModel

RUNS = 50


def _ask_echo(request: ModelRequest) -> ModelResponse:
    prompt = request.messages[-1].content
    return ModelResponse(
        tool_calls=[ToolCall(id="c1", name="demo__echo", arguments={"text": f"run {prompt}"})]
    )


def _answer(request: ModelRequest) -> ModelResponse:
    return ModelResponse(text=f"the server said: {request.messages[-1].content}")


async def _fifty_runs(tools: Any) -> list[Any]:
    echo = await tools.resolve("demo/echo")
    model = ScriptedModel([_ask_echo, _answer], per_run=True)
    agent = Agent(name="echoer", model=model, tools=echo)
    async with Executor(entry_points=False) as executor:
        return list(
            await asyncio.gather(
                *(executor.run(agent, str(index), caller_id=f"c{index}") for index in range(RUNS))
            )
        )


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_fifty_concurrent_runs_share_one_server(
    new_toolset: Any, call_log: Path, transport: str
) -> None:
    env = {"MCP_TEST_LOG": str(call_log)}
    if transport == "stdio":
        tools = new_toolset({"demo": stdio_server(env=env)})
        results = await _fifty_runs(tools)
    else:
        with http_server(env=env) as server:
            tools = new_toolset({"demo": {"url": server.url}})
            results = await _fifty_runs(tools)

    assert [r.status for r in results] == [RunStatus.OK] * RUNS, [r.error for r in results if r.error]
    assert [r.output for r in results] == [f"the server said: run {index}" for index in range(RUNS)]
    calls = log_lines(call_log)
    assert sorted(line[2] for line in calls) == sorted(f"run {index}" for index in range(RUNS))
    assert len({line[0] for line in calls}) == 1  # one server process answered them all
    assert tools.servers["demo"].starts == 1
