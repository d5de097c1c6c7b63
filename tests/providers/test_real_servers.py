"""What real OpenAI-compatible servers need (issue 19): found against llama-cpp-python's server.

Each test replays what that server did to the loopback server: a 500 for ``"content": null``,
tools ignored without ``tool_choice``, an empty 200 stream, no usage, arguments that are not JSON.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from executus_core import Message, ModelRequest, ModelSettings, ProviderResponseError, ProviderStatusError
from executus_core.providers.anthropic import AnthropicModel
from executus_core.providers.openai import OpenAIModel
from executus_core.types import ToolCall, ToolSpec, Usage

from .replies import (
    ANTHROPIC_TOOL_USE,
    OPENAI_HELLO,
    OPENAI_STREAM_HELLO,
    OPENAI_TOOL_CALL,
    anthropic_stream,
    openai_completion,
)
from .server import LoopbackServer, Reply, sse

OpenAIFactory = Callable[..., OpenAIModel]

ECHO = ToolSpec(name="echo", description="Echo the text.", parameters={"type": "object", "properties": {}})

# What llama-cpp-python's server 0.3.36 answered (HTTP 500) to an assistant message with
# "content": null, as captured (only the site-packages path shortened): FastAPI's validation dump,
# one line per member of the message union.
LLAMA_CPP_NULL_CONTENT = orjson.loads(
    (Path(__file__).parent / "captured" / "llama_cpp_null_content_500.json").read_bytes()
)


def tool_transcript() -> list[Message]:
    call = ToolCall(id="c1", name="echo", arguments={"text": "hi"})
    return [Message.user("echo hi"), Message.assistant(None, [call]), Message.tool("c1", "hi")]


async def test_a_tool_only_message_is_sent_with_empty_content(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(json=OPENAI_HELLO))
    await openai_model().complete(ModelRequest(messages=tool_transcript(), tools=[ECHO]))
    assert server.requests[0].json["messages"][1]["content"] == ""


async def test_tool_choice_auto_is_sent_when_tools_are_declared(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(*(Reply(json=OPENAI_HELLO) for _ in range(4)))
    model = openai_model()
    await model.complete(ModelRequest(messages=[Message.user("hi")], tools=[ECHO]))
    await model.complete(ModelRequest(messages=[Message.user("hi")]))
    chosen = {"type": "function", "function": {"name": "echo"}}
    await model.complete(
        ModelRequest(messages=[Message.user("hi")], tools=[ECHO], settings=ModelSettings(tool_choice=chosen))
    )
    await model.complete(
        ModelRequest(messages=[Message.user("hi")], tools=[ECHO], settings=ModelSettings(tool_choice="none"))
    )
    with_tools, without, agent_choice, agent_none = (seen.json for seen in server.requests)
    assert with_tools["tool_choice"] == "auto"
    assert "tool_choice" not in without
    assert agent_choice["tool_choice"] == chosen and agent_none["tool_choice"] == "none"
    assert model.preview(ModelRequest(messages=[Message.user("hi")], tools=[ECHO]))["tool_choice"] == "auto"


async def test_a_500_validation_error_is_not_retried_and_names_the_setting(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(500, json=LLAMA_CPP_NULL_CONTENT), Reply(json=OPENAI_HELLO))
    model = openai_model(endpoints={"local": {"tool_only_content": "null"}})
    with pytest.raises(ProviderStatusError) as caught:
        await model.complete(ModelRequest(messages=tool_transcript(), tools=[ECHO]))
    error = caught.value
    assert len(server.requests) == 1  # the same body would fail the same way
    assert not error.retryable and error.status_code == 500
    assert 'tool_only_content = "empty"' in str(error)
    said = error.provider_message or ""
    assert len(LLAMA_CPP_NULL_CONTENT["error"]["message"]) > 1600 and len(said) < 700
    assert said.startswith("7 validation errors:")
    assert said.endswith("[cut: the server sent 1,637 characters]")


async def test_other_500s_are_still_retried(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(500, json={"error": {"message": "CUDA out of memory"}}), Reply(json=OPENAI_HELLO))
    assert (await openai_model().complete(ModelRequest(messages=[Message.user("hi")]))).text
    assert len(server.requests) == 2


async def test_an_empty_200_stream_after_tool_choice_says_so(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(events=[]), Reply(events=[]))
    model = openai_model()
    stream = ModelSettings(stream=True)
    with pytest.raises(ProviderResponseError) as caught:
        await model.complete(ModelRequest(messages=[Message.user("hi")], tools=[ECHO], settings=stream))
    assert "empty stream" in str(caught.value) and "tool_choice" in str(caught.value)
    assert "turn streaming off" in str(caught.value)
    with pytest.raises(ProviderResponseError) as plain:
        await model.complete(ModelRequest(messages=[Message.user("hi")], settings=stream))
    assert "empty stream" in str(plain.value) and "tool_choice" not in str(plain.value)


async def test_no_usage_is_a_warning(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    no_usage = {k: v for k, v in OPENAI_HELLO.items() if k != "usage"}
    server.add(Reply(json=no_usage), Reply(json=no_usage), Reply(json=OPENAI_HELLO))
    model = openai_model()
    first = await model.complete(ModelRequest(messages=[Message.user("hi")]))
    second = await model.complete(ModelRequest(messages=[Message.user("hi")]))
    assert first.usage == Usage()
    (warning,) = first.warnings
    assert "endpoint 'local' reported no token usage" in warning and "estimate_usage = true" in warning
    assert second.warnings == first.warnings  # the same text, so a run reports it once
    assert (await model.complete(ModelRequest(messages=[Message.user("hi")]))).warnings == []


async def test_a_stream_without_usage_is_a_warning(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(events=OPENAI_STREAM_HELLO[:-2] + OPENAI_STREAM_HELLO[-1:]))
    response = await openai_model().complete(
        ModelRequest(messages=[Message.user("hi")], settings=ModelSettings(stream=True))
    )
    assert response.text and response.usage == Usage()
    assert ["no token usage" in w for w in response.warnings] == [True]


async def test_estimate_usage_estimates_and_says_so(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    no_usage = {k: v for k, v in OPENAI_HELLO.items() if k != "usage"}
    server.add(Reply(json=no_usage))
    model = openai_model(endpoints={"local": {"estimate_usage": True}})
    response = await model.complete(ModelRequest(messages=[Message.user("hi " * 400)]))
    sent = len(server.requests[0].body)
    answer = len(OPENAI_HELLO["choices"][0]["message"]["content"])  # type: ignore[index]
    assert response.usage.input_tokens == -(-sent // 4) and response.usage.output_tokens == -(-answer // 4)
    (warning,) = response.warnings
    assert "estimated" in warning and "not counted by the server" in warning


async def test_an_empty_answer_is_a_warning(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=openai_completion({"role": "assistant", "content": ""})))
    response = await openai_model("gemma").complete(ModelRequest(messages=[Message.user("hi")]))
    assert response.text is None and response.tool_calls == []
    assert response.warnings == [
        "model local:gemma answered with neither text nor a tool call (finish reason stop)"
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_arguments_that_are_not_json_are_kept_as_sent(
    server: LoopbackServer, openai_model: OpenAIFactory, stream: bool
) -> None:
    sent = '{"text": "hi", oops'
    broken = copy.deepcopy(OPENAI_TOOL_CALL)
    broken["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = sent
    call = {"index": 0, "id": "c9", "type": "function", "function": {"name": "echo", "arguments": sent}}
    events = [
        sse({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]}),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        sse(b"[DONE]"),
    ]
    server.add(Reply(events=events) if stream else Reply(json=broken))
    request = ModelRequest(messages=[Message.user("hi")], tools=[ECHO], settings=ModelSettings(stream=stream))
    (got,) = (await openai_model().complete(request)).tool_calls
    assert got.arguments == {} and got.arguments_error and got.raw_arguments == sent


async def test_good_arguments_carry_no_raw_copy(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=OPENAI_TOOL_CALL))
    (got,) = (await openai_model().complete(ModelRequest(messages=[Message.user("hi")]))).tool_calls
    assert got.arguments == {"location": "Boston, MA"} and got.raw_arguments is None


async def test_anthropic_streamed_input_that_is_not_json_is_kept_as_sent(
    server: LoopbackServer, anthropic_model: Callable[..., AnthropicModel]
) -> None:
    events = anthropic_stream(ANTHROPIC_TOOL_USE)
    pieces = [i for i, e in enumerate(events) if b"input_json_delta" in e]
    streamed = "".join(
        orjson.loads(events[i].split(b"data: ", 1)[1])["delta"]["partial_json"] for i in pieces[:-1]
    )
    server.add(Reply(events=events[: pieces[-1]] + events[pieces[-1] + 1 :]))  # the input ends mid-object
    response = await anthropic_model().complete(
        ModelRequest(messages=[Message.user("hi")], settings=ModelSettings(stream=True))
    )
    (got,) = response.tool_calls
    assert got.arguments == {} and got.arguments_error and got.raw_arguments == streamed
