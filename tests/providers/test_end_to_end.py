"""Whole runs through `Executor.run` against the loopback server: the providers as a host uses them."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from executus_core import Agent, Executor, ModelSettings, RunEvent, RunStatus
from executus_core.providers import _http

from ..conftest import add
from .conftest import ANTHROPIC_KEY, OPENAI_KEY
from .replies import anthropic_message, anthropic_stream, openai_completion
from .server import LoopbackServer, Reply


def openai_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return openai_completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ],
        },
        "tool_calls",
    )


@pytest.fixture
async def executor(server: LoopbackServer) -> AsyncIterator[Executor]:
    settings = {
        "port_timeout": 1.0,
        "providers": {
            "retry_base_seconds": 0.001,
            "endpoints": {
                "local": {"api": "openai", "base_url": f"{server.url}/v1", "api_key": OPENAI_KEY},
                "claude": {"api": "anthropic", "base_url": server.url, "api_key": ANTHROPIC_KEY},
            },
        },
    }
    async with Executor(entry_points=False, settings=settings) as ex:
        yield ex


async def test_an_agent_with_a_tool_runs_two_steps(server: LoopbackServer, executor: Executor) -> None:
    server.add(
        Reply(json=openai_call("call_1", "add", '{"a": 2, "b": 40}')),
        Reply(json=openai_completion({"role": "assistant", "content": "2 + 40 = 42."})),
    )
    agent = Agent(name="calc", instructions="Use the tool.", model="local:gpt-4o-mini", tools=[add])
    result = await executor.run(agent, "What is 2 + 40?", caller_id="u1")
    assert result.status is RunStatus.OK, result.error
    assert result.output == "2 + 40 = 42."
    assert result.stats.steps == 2 and result.stats.tool_calls == 1
    assert result.stats.input_tokens == 2 * 1117 and result.stats.output_tokens == 2 * 46
    one, two = server.requests
    assert one.json["messages"] == [
        {"role": "system", "content": "Use the tool."},
        {"role": "user", "content": "What is 2 + 40?"},
    ]
    assert one.json["tools"][0]["function"]["name"] == "add"
    assert one.json["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]
    assert two.json["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    # the first step's messages are resent byte for byte
    first = one.body[one.body.index(b'"messages":[') : one.body.index(b'],"tools"')]
    assert two.body[two.body.index(b'"messages":[') :].startswith(first)


async def test_anthropic_agent_runs_two_steps(server: LoopbackServer, executor: Executor) -> None:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 1, "b": 2}}
    server.add(
        Reply(json=anthropic_message([tool_use], "tool_use")),
        Reply(json=anthropic_message([{"type": "text", "text": "3"}])),
    )
    agent = Agent(name="calc", instructions="Use the tool.", model="claude:claude-sonnet-4-5", tools=[add])
    result = await executor.run(agent, "1 + 2?", caller_id="u1")
    assert result.status is RunStatus.OK, result.error
    assert result.output == "3"
    second = server.requests[1].json
    assert second["system"] == "Use the tool."
    assert second["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "3"}],
    }


async def test_bad_arguments_go_back_to_the_model_which_corrects_itself(
    server: LoopbackServer, executor: Executor
) -> None:
    server.add(
        Reply(json=openai_call("call_1", "add", '{"a": 2, "b": ')),
        Reply(json=openai_call("call_2", "add", '{"a": 2, "b": 40}')),
        Reply(json=openai_completion({"role": "assistant", "content": "42"})),
    )
    result = await executor.run(Agent(name="calc", model="local:m", tools=[add]), "2+40?", caller_id="u1")
    assert result.status is RunStatus.OK and result.output == "42"
    error = server.requests[1].json["messages"][2]
    assert error["tool_call_id"] == "call_1" and "not valid JSON" in error["content"]
    assert server.requests[2].json["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_2",
        "content": "42",
    }


async def test_streamed_run_reports_deltas_and_retries_as_events(
    server: LoopbackServer, executor: Executor
) -> None:
    message = anthropic_message([{"type": "text", "text": "Streaming works."}])
    server.add(Reply(503, json={"error": {"message": "busy"}}), Reply(events=anthropic_stream(message)))
    events: list[RunEvent] = []
    agent = Agent(name="s", model="claude:claude-sonnet-4-5", model_settings=ModelSettings(stream=True))
    result = await executor.run(agent, "hi", caller_id="u1", on_event=events.append)
    assert result.status is RunStatus.OK and result.output == "Streaming works."
    types = [e.type for e in events]
    assert "model.retry" in types and types.index("model.retry") < types.index("step")
    deltas = [e.data["text"] for e in events if e.type == "model.delta"]
    assert "".join(deltas) == "Streaming works."


async def test_a_provider_failure_ends_the_run_with_a_clear_error(
    server: LoopbackServer, executor: Executor
) -> None:
    server.add(
        Reply(401, json={"error": {"message": "Incorrect API key provided"}}, headers={"x-request-id": "r1"})
    )
    result = await executor.run(Agent(name="a", model="local:m"), "hi", caller_id="u1")
    assert result.status is RunStatus.ERROR
    assert result.error and "refused the API key" in result.error and "request id r1" in result.error
    assert OPENAI_KEY not in result.model_dump_json()


async def test_a_cut_stream_ends_the_run_with_an_error(server: LoopbackServer, executor: Executor) -> None:
    events = anthropic_stream(anthropic_message([{"type": "text", "text": "never finished"}]))
    server.add(Reply(events=events[:4], cut=True))
    agent = Agent(name="s", model="claude:claude-sonnet-4-5", model_settings=ModelSettings(stream=True))
    result = await executor.run(agent, "hi", caller_id="u1")
    assert result.status is RunStatus.ERROR and result.error and "cut off" in result.error


async def test_a_dry_run_shows_the_body_without_sending_it(
    server: LoopbackServer, executor: Executor
) -> None:
    agent = Agent(name="calc", instructions="Be brief.", model="local:gpt-4o-mini", tools=[add])
    result = await executor.run(agent, "2+40?", caller_id="u1", dry_run=True)
    assert result.status is RunStatus.DRY_RUN
    assert result.request is not None and result.request["model"] == "gpt-4o-mini"
    assert result.request["messages"][0] == {"role": "system", "content": "Be brief."}
    assert OPENAI_KEY not in orjson.dumps(result.request).decode()
    assert server.requests == []


async def test_shutdown_closes_the_pooled_clients(server: LoopbackServer) -> None:
    settings = {"providers": {"endpoints": {"local": {"base_url": f"{server.url}/v1"}}}}
    server.add(Reply(json=openai_completion({"role": "assistant", "content": "hi"})))
    async with Executor(entry_points=False, settings=settings) as ex:
        result = await ex.run(Agent(name="a", model="local:m"), "hi", caller_id="u1")
        assert result.ok, result.error
        endpoint = _http._pools[ex.settings].endpoints["local"]
        assert endpoint._client is not None
    assert endpoint._client is None


async def test_many_runs_share_the_endpoint(server: LoopbackServer, executor: Executor) -> None:
    import asyncio

    reply = openai_completion({"role": "assistant", "content": "ok"})
    server.add(*[Reply(json=copy.deepcopy(reply)) for _ in range(20)])
    results = await asyncio.gather(
        *(executor.run(Agent(name="a", model="local:m"), f"hi {i}", caller_id="u1") for i in range(20))
    )
    assert all(r.ok for r in results)
    assert sorted(r.json["messages"][0]["content"] for r in server.requests) == sorted(
        f"hi {i}" for i in range(20)
    )
