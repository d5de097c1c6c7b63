"""anthropic: what goes on the wire and what comes back, against the loopback server."""

from __future__ import annotations

import copy
from collections.abc import Callable

import orjson
import pytest

from executus_core import Message, ModelRequest, ModelSettings, ProviderResponseError, ToolCall
from executus_core.providers.anthropic import AnthropicModel
from executus_core.types import ToolSpec, Usage

from .conftest import ANTHROPIC_KEY, messages_bytes
from .replies import (
    ANTHROPIC_HELLO,
    ANTHROPIC_PARALLEL,
    ANTHROPIC_THINKING,
    ANTHROPIC_TOOL_USE,
    THINKING_SIGNATURE,
    anthropic_message,
)
from .server import LoopbackServer, Reply

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather in a given location",
    parameters={
        "type": "object",
        "properties": {"location": {"type": "string", "description": "The city and state"}},
        "required": ["location"],
    },
)

AnthropicFactory = Callable[..., AnthropicModel]


async def test_a_plain_answer(server: LoopbackServer, anthropic_model: AnthropicFactory) -> None:
    server.add(Reply(json=ANTHROPIC_HELLO, headers={"request-id": "req_018EeWyXxfu5pfWkrYcMdjWG"}))
    response = await anthropic_model().complete(
        ModelRequest(messages=[Message.system("Be brief."), Message.user("Hello, Claude")])
    )
    assert response.text == "Hi! My name is Claude."
    assert response.finish_reason == "stop" and response.model == "claude-sonnet-4-5-20250929"
    # cached input counts inside input_tokens: 472 + 100 written + 2048 read
    assert response.usage == Usage(
        input_tokens=2620, output_tokens=89, thinking_tokens=0, cached_input_tokens=2048
    )
    assert response.provider_data is None
    seen = server.requests[0]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    # the system prompt is the top-level system field, not a message
    assert seen.json == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, Claude"}]}],
    }


async def test_tool_use_then_result_with_identical_history_bytes(
    server: LoopbackServer, anthropic_model: AnthropicFactory
) -> None:
    server.add(Reply(json=ANTHROPIC_TOOL_USE), Reply(json=ANTHROPIC_HELLO))
    model = anthropic_model()
    transcript = [Message.system("You report the weather."), Message.user("Weather in SF?")]
    first = await model.complete(ModelRequest(messages=transcript, tools=[WEATHER]))
    assert first.finish_reason == "tool_calls"
    assert first.text == "I'll check the current weather in San Francisco for you."
    assert first.tool_calls == [
        ToolCall(
            id="toolu_01A09q90qw90lq917835lq9",
            name="get_weather",
            arguments={"location": "San Francisco, CA"},
        )
    ]
    transcript.append(first.to_message())
    transcript.append(Message.tool("toolu_01A09q90qw90lq917835lq9", "15 degrees"))
    await model.complete(ModelRequest(messages=transcript, tools=[WEATHER]))

    one, two = server.requests
    assert one.json["tools"] == [
        {"name": "get_weather", "description": WEATHER.description, "input_schema": WEATHER.parameters}
    ]
    assert two.json["system"] == "You report the weather."
    assert two.json["messages"][1:] == [
        {"role": "assistant", "content": ANTHROPIC_TOOL_USE["content"]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                    "content": "15 degrees",
                }
            ],
        },
    ]
    assert messages_bytes(two.body).startswith(messages_bytes(one.body))


async def test_parallel_results_share_one_user_turn_and_errors_are_marked(
    server: LoopbackServer, anthropic_model: AnthropicFactory
) -> None:
    server.add(Reply(json=ANTHROPIC_PARALLEL), Reply(json=ANTHROPIC_HELLO))
    model = anthropic_model()
    transcript = [Message.user("Weather and time in SF?")]
    response = await model.complete(ModelRequest(messages=transcript))
    assert [c.name for c in response.tool_calls] == ["get_weather", "get_time"]
    assert response.text is None
    transcript.append(response.to_message())
    transcript.append(Message.tool("toolu_01A09q90qw90lq917835lq9", "15 degrees"))
    transcript.append(Message.tool("toolu_01B09q90qw90lq917835lq8", "error: no clock", is_error=True))
    await model.complete(ModelRequest(messages=transcript))
    sent = server.requests[1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_01B09q90qw90lq917835lq8",
            "content": "error: no clock",
            "is_error": True,
        },
    ]


async def test_thinking_blocks_are_kept_and_sent_back_unchanged(
    server: LoopbackServer, anthropic_model: AnthropicFactory
) -> None:
    server.add(Reply(json=ANTHROPIC_THINKING), Reply(json=ANTHROPIC_HELLO))
    model = anthropic_model()
    thinking = ModelSettings(thinking={"type": "enabled", "budget_tokens": 10000})
    transcript = [Message.user("Weather in Paris?")]
    response = await model.complete(ModelRequest(messages=transcript, settings=thinking))
    assert response.provider_data == {"anthropic": {"content": ANTHROPIC_THINKING["content"]}}
    assert response.tool_calls[0].arguments == {"location": "Paris"}
    transcript.append(response.to_message())
    transcript.append(Message.tool("toolu_01Thinking", "18 degrees"))
    await model.complete(ModelRequest(messages=transcript, settings=thinking))
    one, two = (r.json for r in server.requests)
    assert two["messages"][1] == {"role": "assistant", "content": ANTHROPIC_THINKING["content"]}
    assert two["messages"][1]["content"][0]["signature"] == THINKING_SIGNATURE
    # max_tokens is raised above the thinking budget when not set explicitly
    assert one["thinking"] == {"type": "enabled", "budget_tokens": 10000} and one["max_tokens"] > 10000


async def test_max_tokens_and_the_version_come_from_settings(
    server: LoopbackServer, anthropic_model: AnthropicFactory
) -> None:
    server.add(Reply(json=ANTHROPIC_HELLO), Reply(json=ANTHROPIC_HELLO))
    model = anthropic_model(endpoints={"claude": {"max_tokens": 1024, "anthropic_version": "2023-01-01"}})
    await model.complete(ModelRequest(messages=[Message.user("hi")]))
    await model.complete(
        ModelRequest(messages=[Message.user("hi")], settings=ModelSettings(max_tokens=50, temperature=0.5))
    )
    one, two = server.requests
    assert one.json["max_tokens"] == 1024 and one.headers["anthropic-version"] == "2023-01-01"
    assert two.json["max_tokens"] == 50 and two.json["temperature"] == 0.5


async def test_a_steer_after_tool_results_joins_their_user_turn(
    server: LoopbackServer, anthropic_model: AnthropicFactory
) -> None:
    server.add(Reply(json=ANTHROPIC_HELLO))
    call = ToolCall(id="toolu_1", name="get_weather", arguments={"location": "Rome"})
    transcript = [
        Message.system("Be brief."),
        Message.user("Weather?"),
        Message.assistant(None, [call]),
        Message.tool("toolu_1", "20 degrees"),
        Message.system("Wrap up now."),  # a critic's steer, mid-transcript
    ]
    await anthropic_model().complete(ModelRequest(messages=transcript))
    body = server.requests[0].json
    assert body["system"] == "Be brief."
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "20 degrees"},
            {"type": "text", "text": "Wrap up now."},
        ],
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"upstream connect error", "not valid JSON"),
        (orjson.dumps({**ANTHROPIC_HELLO, "content": None}), "no content"),
        (orjson.dumps(anthropic_message([{"type": "text", "text": "x"}], "sleepy")), "'sleepy'"),
        (orjson.dumps({"type": "error", "error": {"type": "api_error", "message": "Internal"}}), "Internal"),
        (
            orjson.dumps(anthropic_message([{"type": "tool_use", "id": "t", "input": {}}], "tool_use")),
            "no name",
        ),
    ],
    ids=["text", "no-content", "unknown-stop", "error-with-200", "tool-without-name"],
)
async def test_answers_that_break_the_api_are_response_errors(
    server: LoopbackServer, anthropic_model: AnthropicFactory, body: bytes, expected: str
) -> None:
    server.add(Reply(body=body, headers={"request-id": "req_bad"}))
    with pytest.raises(ProviderResponseError) as caught:
        await anthropic_model().complete(ModelRequest(messages=[Message.user("hi")]))
    assert expected in str(caught.value)
    assert caught.value.provider == "claude" and caught.value.request_id == "req_bad"


async def test_tool_input_that_is_not_an_object_becomes_a_tool_error(
    server: LoopbackServer, anthropic_model: AnthropicFactory
) -> None:
    odd = copy.deepcopy(ANTHROPIC_TOOL_USE)
    odd["content"][1]["input"] = "San Francisco"
    server.add(Reply(json=odd))
    response = await anthropic_model().complete(ModelRequest(messages=[Message.user("hi")]))
    assert response.tool_calls[0].arguments == {}
    assert response.tool_calls[0].arguments_error == "expected a JSON object, got str"
