"""Typed output: `Agent(output_type=...)` ends the run with `Result.output` validated as that type.

With the scripted model (no native structured output: the ``final_result`` tool), with a model that
takes the schema natively (JSON text), and through the loopback OpenAI-compatible and Anthropic
servers; a bad first answer goes back to the model and the second is taken.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from executus_core import Agent, Executor, ModelResponse, RunStatus, ToolCall
from executus_core.testing import ScriptedModel

from .conftest import add, answer, call
from .providers.conftest import ANTHROPIC_KEY, OPENAI_KEY
from .providers.replies import anthropic_message, openai_completion
from .providers.server import LoopbackServer, Reply


class Weather(BaseModel):
    city: str
    celsius: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


def final(arguments: dict[str, Any], call_id: str = "f1") -> ModelResponse:
    return ModelResponse(tool_calls=[ToolCall(id=call_id, name="final_result", arguments=arguments)])


class NativeScripted(ScriptedModel):
    """A scripted model that takes the schema natively (as the openai: provider does)."""

    supports_output_schema = True


async def run(agent: Agent, prompt: str = "go", **kwargs: Any) -> Any:
    async with Executor(entry_points=False) as ex:
        return await ex.run(agent, prompt, caller_id="u1", **kwargs)


async def test_a_bad_answer_goes_back_and_the_good_one_is_the_output() -> None:
    model = ScriptedModel([final({"city": "Oslo"}), final({"city": "Oslo", "celsius": -3.5}, "f2")])
    result = await run(Agent(name="w", model=model, output_type=Weather))
    assert result.status is RunStatus.OK, result.error
    assert result.output == Weather(city="Oslo", celsius=-3.5)
    assert json.loads(result.text) == {"city": "Oslo", "celsius": -3.5}
    first, second = model.requests
    assert [t.name for t in first.tools] == ["final_result"]
    assert first.tools[0].parameters["required"] == ["city", "celsius"]
    told = next(m for m in second.messages if m.role == "tool")
    assert told.is_error and "celsius: Field required" in (told.content or "")


async def test_tools_then_a_typed_answer() -> None:
    model = ScriptedModel([call("add", a=2, b=3), final({"x": 5, "y": 0})])
    result = await run(Agent(name="p", model=model, tools=[add], output_type=Point))
    assert result.status is RunStatus.OK and result.output == Point(x=5, y=0)
    assert [t.name for t in model.requests[0].tools] == ["add", "final_result"]


async def test_a_simple_type_is_wrapped_in_result() -> None:
    model = ScriptedModel([final({"result": [1, 2, 3]})])
    result = await run(Agent(name="l", model=model, output_type=list[int]))
    assert result.status is RunStatus.OK and result.output == [1, 2, 3]
    assert model.requests[0].tools[0].parameters["required"] == ["result"]


async def test_a_native_model_answers_json_text_and_a_bad_one_is_corrected() -> None:
    model = NativeScripted(
        [
            answer('{"city": "Oslo", "celsius": "cold"}'),
            answer('```json\n{"city": "Oslo", "celsius": 2}\n```'),
        ]
    )
    result = await run(Agent(name="w", model=model, output_type=Weather))
    assert result.status is RunStatus.OK, result.error
    assert result.output == Weather(city="Oslo", celsius=2)
    first, second = model.requests
    assert first.output_schema is not None and first.output_schema["title"] == "Weather"
    assert first.tools == []  # no final_result tool: the schema went natively
    assert second.messages[-1].role == "user" and "celsius" in (second.messages[-1].content or "")


async def test_retries_are_bounded_and_end_in_the_validation_message() -> None:
    model = ScriptedModel([final({"city": 1}), final({"city": 2}, "f2"), final({"city": 3}, "f3")])
    result = await run(Agent(name="w", model=model, output_type=Weather, output_retries=1))
    assert result.status is RunStatus.ERROR
    assert "did not match output_type tests.test_typed_output:Weather after 2 tries" in (result.error or "")
    assert len(model.requests) == 2


async def test_output_type_from_a_toml_style_string() -> None:
    agent = Agent.model_validate(
        {"name": "w", "model": "x", "output_type": "tests.test_typed_output:Weather"}
    )
    assert agent.output_type is Weather
    assert agent.spec()["output_type"] == "tests.test_typed_output:Weather"
    with pytest.raises(ValueError, match="cannot be imported"):
        Agent.model_validate({"name": "w", "output_type": "tests.test_typed_output:Nope"})


async def test_a_typed_child_returns_its_json_to_the_parent() -> None:
    child = Agent(
        name="weather", model=ScriptedModel([final({"city": "Rome", "celsius": 20})]), output_type=Weather
    )
    parent_model = ScriptedModel([call("agent__weather", prompt="Rome?"), answer("done")])
    async with Executor(entry_points=False) as ex:
        ex.register_agent(child)
        result = await ex.run(
            Agent(name="lead", model=parent_model, subagent_palette=["weather"]), "go", caller_id="u1"
        )
    assert result.status is RunStatus.OK
    told = next(m for m in result.messages if m.role == "tool")
    assert json.loads(told.content or "") == {"city": "Rome", "celsius": 20}


# --- through the loopback servers ---------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = await LoopbackServer().start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
async def executor(server: LoopbackServer) -> AsyncIterator[Executor]:
    settings = {
        "providers": {
            "retry_base_seconds": 0.001,
            "endpoints": {
                "local": {"api": "openai", "base_url": f"{server.url}/v1", "api_key": OPENAI_KEY},
                "claude": {"api": "anthropic", "base_url": server.url, "api_key": ANTHROPIC_KEY},
            },
        }
    }
    async with Executor(entry_points=False, settings=settings) as ex:
        yield ex


async def test_openai_gets_response_format_and_its_json_is_validated(
    server: LoopbackServer, executor: Executor
) -> None:
    server.add(
        Reply(json=openai_completion({"role": "assistant", "content": '{"city": "Oslo"}'})),
        Reply(json=openai_completion({"role": "assistant", "content": '{"city": "Oslo", "celsius": 4}'})),
    )
    result = await executor.run(
        Agent(name="w", model="local:gpt-4o-mini", output_type=Weather), "Oslo?", caller_id="u1"
    )
    assert result.status is RunStatus.OK, result.error
    assert result.output == Weather(city="Oslo", celsius=4)
    form = server.requests[0].json["response_format"]
    assert form["type"] == "json_schema" and form["json_schema"]["schema"]["title"] == "Weather"
    assert "celsius: Field required" in server.requests[1].json["messages"][-1]["content"]


async def test_anthropic_answers_through_the_final_result_tool(
    server: LoopbackServer, executor: Executor
) -> None:
    server.add(
        Reply(
            json=anthropic_message(
                [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "final_result",
                        "input": {"city": "Oslo", "celsius": 1},
                    }
                ],
                "tool_use",
            )
        )
    )
    result = await executor.run(
        Agent(name="w", model="claude:claude-sonnet-4-5", output_type=Weather), "Oslo?", caller_id="u1"
    )
    assert result.status is RunStatus.OK, result.error
    assert result.output == Weather(city="Oslo", celsius=1)
    assert [t["name"] for t in server.requests[0].json["tools"]] == ["final_result"]
