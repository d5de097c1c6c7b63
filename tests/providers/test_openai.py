"""openai: what goes on the wire and what comes back, against the loopback server."""

from __future__ import annotations

import copy
from collections.abc import Callable

import orjson
import pytest

from executus_core import ConfigError, Message, ModelRequest, ModelSettings, ProviderResponseError, ToolCall
from executus_core.providers.openai import OpenAIModel
from executus_core.types import ToolSpec, Usage

from .conftest import OPENAI_KEY, messages_bytes
from .replies import OPENAI_HELLO, OPENAI_PARALLEL, OPENAI_TOOL_CALL, openai_completion
from .server import LoopbackServer, Reply

WEATHER = ToolSpec(
    name="get_current_weather",
    description="Get the current weather in a given location.",
    parameters={
        "type": "object",
        "properties": {"location": {"type": "string", "description": "The city and state"}},
        "required": ["location"],
    },
)

OpenAIFactory = Callable[..., OpenAIModel]


async def test_a_plain_answer(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=OPENAI_HELLO, headers={"x-request-id": "req_123"}))
    model = openai_model()
    response = await model.complete(ModelRequest(messages=[Message.system("Be brief."), Message.user("hi")]))
    assert response.text == "Hello! How can I assist you today?"
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.usage == Usage(
        input_tokens=1117, output_tokens=46, thinking_tokens=12, cached_input_tokens=1024
    )
    seen = server.requests[0]
    assert seen.method == "POST" and seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert seen.headers["content-type"] == "application/json"
    # the system prompt stays in place, as the first message
    assert seen.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    }


async def test_tool_call_then_result_with_identical_history_bytes(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(json=OPENAI_TOOL_CALL), Reply(json=OPENAI_HELLO))
    model = openai_model()
    transcript = [Message.system("You report the weather."), Message.user("Weather in Boston?")]
    first = await model.complete(ModelRequest(messages=transcript, tools=[WEATHER]))
    assert first.finish_reason == "tool_calls" and first.text is None
    assert first.tool_calls == [
        ToolCall(id="call_abc123", name="get_current_weather", arguments={"location": "Boston, MA"})
    ]
    transcript.append(first.to_message())
    transcript.append(Message.tool("call_abc123", "22 C, sunny", name="get_current_weather"))
    await model.complete(ModelRequest(messages=transcript, tools=[WEATHER]))

    one, two = server.requests
    # tool schemas, as the API wants them
    assert one.json["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location.",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    sent = two.json["messages"]
    assert sent[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_abc123",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": '{"location":"Boston, MA"}'},
            }
        ],
    }
    assert sent[3] == {"role": "tool", "tool_call_id": "call_abc123", "content": "22 C, sunny"}
    # the earlier messages are the very same bytes on the second step
    assert messages_bytes(two.body).startswith(messages_bytes(one.body))


async def test_each_message_is_serialized_once(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=OPENAI_HELLO), Reply(json=OPENAI_HELLO))
    model = openai_model()
    transcript = [Message.user("hi")]
    await model.complete(ModelRequest(messages=transcript))
    cached = transcript[0]._wire["openai"]
    await model.complete(ModelRequest(messages=transcript))
    assert transcript[0]._wire["openai"] is cached  # reused, not rebuilt
    assert transcript == [Message.user("hi")]  # and the transcript itself is untouched


async def test_parallel_tool_calls_keep_their_order(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(json=OPENAI_PARALLEL), Reply(json=OPENAI_HELLO))
    model = openai_model()
    transcript = [Message.user("Weather in SF and Tokyo?")]
    response = await model.complete(ModelRequest(messages=transcript, tools=[WEATHER]))
    assert [(c.id, c.arguments) for c in response.tool_calls] == [
        ("call_PpTvZ3oXG8MbW1FMJ4w1rN4m", {"location": "San Francisco, CA"}),
        ("call_Y1HVPE56Wk8qJ6ktjpqBDc9S", {"location": "Tokyo, JP"}),
    ]
    transcript.append(response.to_message())
    transcript += [Message.tool(c.id, f"weather {i}") for i, c in enumerate(response.tool_calls)]
    await model.complete(ModelRequest(messages=transcript, tools=[WEATHER]))
    sent = server.requests[1].json["messages"]
    assert [m.get("tool_call_id") for m in sent] == [
        None,
        None,
        "call_PpTvZ3oXG8MbW1FMJ4w1rN4m",
        "call_Y1HVPE56Wk8qJ6ktjpqBDc9S",
    ]
    assert len(sent[1]["tool_calls"]) == 2


async def test_arguments_that_are_not_json_become_a_tool_error(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    broken = copy.deepcopy(OPENAI_TOOL_CALL)
    broken["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"location": "Bost'
    listed = copy.deepcopy(OPENAI_TOOL_CALL)
    listed["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '["Boston"]'
    server.add(Reply(json=broken), Reply(json=listed), Reply(json=OPENAI_HELLO))
    model = openai_model()
    transcript = [Message.user("Weather?")]
    response = await model.complete(ModelRequest(messages=transcript))
    (call,) = response.tool_calls
    assert call.arguments == {} and call.arguments_error and "line 1" in call.arguments_error
    (listed_call,) = (await model.complete(ModelRequest(messages=transcript))).tool_calls
    assert listed_call.arguments_error == "expected a JSON object, got list"
    # the model's own text goes back, so it can see what it got wrong
    transcript.append(response.to_message())
    transcript.append(Message.tool(call.id, "error: not valid JSON", is_error=True))
    await model.complete(ModelRequest(messages=transcript))
    sent = server.requests[2].json["messages"][1]
    assert sent["tool_calls"][0]["function"]["arguments"] == '{"location": "Bost'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "not valid JSON"),
        (b'{"id": "chatcmpl-1", "choices": [', "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (orjson.dumps({**OPENAI_HELLO, "choices": []}), "no choices"),
        (orjson.dumps({"error": {"message": "model overloaded"}}), "no choices"),
        (orjson.dumps(openai_completion({"role": "assistant", "content": "x"}, "banana")), "'banana'"),
        (orjson.dumps({**OPENAI_HELLO, "choices": [{"index": 0, "finish_reason": "stop"}]}), "no message"),
    ],
    ids=["html", "truncated", "array", "empty-choices", "error-with-200", "unknown-finish", "no-message"],
)
async def test_answers_that_break_the_api_are_response_errors(
    server: LoopbackServer, openai_model: OpenAIFactory, body: bytes, expected: str
) -> None:
    server.add(Reply(body=body, headers={"x-request-id": "req_bad"}))
    with pytest.raises(ProviderResponseError) as caught:
        await openai_model().complete(ModelRequest(messages=[Message.user("hi")]))
    error = caught.value
    assert expected in str(error)
    assert error.provider == "local" and error.request_id == "req_bad" and error.status_code == 200
    assert error.endpoint.startswith("http://127.0.0.1:") and error.endpoint.endswith("/v1")
    assert len(server.requests) == 1  # never retried: the same request would get the same answer


async def test_what_compatible_servers_send_is_read(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    # Content as text parts, arguments as an object, no tool call id, no finish reason, no usage,
    # a finish reason spelled the TGI way.
    server.add(
        Reply(
            json={
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": [{"type": "text", "text": "Let me look."}],
                            "tool_calls": [
                                {
                                    "function": {
                                        "name": "get_current_weather",
                                        "arguments": {"location": "Oslo"},
                                    }
                                }
                            ],
                        }
                    }
                ]
            }
        ),
        Reply(json=openai_completion({"role": "assistant", "content": "Done."}, "eos_token", usage={})),
        Reply(json=openai_completion({"role": "assistant", "content": ""}, "length")),
    )
    model = openai_model()
    first = await model.complete(ModelRequest(messages=[Message.user("hi")]))
    assert first.text == "Let me look." and first.finish_reason == "tool_calls" and first.usage == Usage()
    (call,) = first.tool_calls
    assert (
        call.arguments == {"location": "Oslo"}
        and call.id.startswith("call_")
        and call.arguments_error is None
    )
    second = await model.complete(ModelRequest(messages=[Message.user("hi")]))
    assert second.text == "Done." and second.finish_reason == "stop"
    third = await model.complete(ModelRequest(messages=[Message.user("hi")]))
    assert third.text is None and third.finish_reason == "length"


async def test_model_settings_become_body_fields(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=OPENAI_HELLO))
    settings = ModelSettings(max_tokens=100, temperature=0.2, top_p=0.9, tool_choice="auto")
    await openai_model().complete(ModelRequest(messages=[Message.user("hi")], settings=settings))
    body = server.requests[0].json
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["tool_choice"]) == (
        100,
        0.2,
        0.9,
        "auto",
    )
    with pytest.raises(ConfigError, match="messages"):
        await openai_model().complete(
            ModelRequest(messages=[Message.user("hi")], settings=ModelSettings(messages=[]))
        )


async def test_tool_only_content_can_be_null(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=OPENAI_HELLO))
    model = openai_model(endpoints={"local": {"tool_only_content": "null"}})
    call = ToolCall(id="c1", name="get_current_weather", arguments={})
    transcript = [Message.user("hi"), Message.assistant(None, [call]), Message.tool("c1", "ok")]
    await model.complete(ModelRequest(messages=transcript))
    assert server.requests[0].json["messages"][1]["content"] is None


async def test_preview_is_the_body_without_credentials(openai_model: OpenAIFactory) -> None:
    model = openai_model()
    request = ModelRequest(messages=[Message.user("hi")], tools=[WEATHER])
    preview = model.preview(request)
    assert preview == orjson.loads(model.body(request))
    assert OPENAI_KEY not in repr(preview) and OPENAI_KEY not in repr(model)
