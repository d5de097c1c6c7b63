"""Streaming (SSE): deltas become run events, and the final response equals the non-streamed one."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from executus_core import Message, ModelRequest, ModelSettings, ProviderResponseError
from executus_core.providers.anthropic import AnthropicModel
from executus_core.providers.openai import OpenAIModel

from .replies import (
    ANTHROPIC_HELLO,
    ANTHROPIC_PARALLEL,
    ANTHROPIC_THINKING,
    ANTHROPIC_TOOL_USE,
    OPENAI_HELLO,
    OPENAI_PARALLEL,
    OPENAI_STREAM_HELLO,
    OPENAI_STREAM_PARALLEL,
    anthropic_stream,
)
from .server import LoopbackServer, Reply, sse

STREAM = ModelSettings(stream=True)


class Events:
    """Collects what a provider emits, as `ModelRequest.emit` would hand it to the run."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, type: str, data: dict[str, Any]) -> None:
        self.seen.append((type, data))

    def texts(self) -> list[str]:
        return [d["text"] for t, d in self.seen if t == "model.delta" and "text" in d]

    def tool_pieces(self, index: int) -> str:
        return "".join(
            d["tool_call"]["arguments"]
            for t, d in self.seen
            if t == "model.delta" and "tool_call" in d and d["tool_call"]["index"] == index
        )


def request(settings: ModelSettings, emit: Events | None = None) -> ModelRequest:
    return ModelRequest(messages=[Message.user("hi")], settings=settings, emit=emit)


@pytest.mark.parametrize("split", [False, True], ids=["whole-events", "events-split-across-reads"])
@pytest.mark.parametrize(
    ("plain", "events"),
    [(OPENAI_HELLO, OPENAI_STREAM_HELLO), (OPENAI_PARALLEL, OPENAI_STREAM_PARALLEL)],
    ids=["text", "parallel-tool-calls"],
)
async def test_openai_stream_equals_the_plain_answer(
    server: LoopbackServer,
    openai_model: Callable[..., OpenAIModel],
    plain: dict[str, Any],
    events: list[bytes],
    split: bool,
) -> None:
    server.add(Reply(json=plain), Reply(events=events, split=split))
    model = openai_model()
    expected = await model.complete(request(ModelSettings()))
    emitted = Events()
    streamed = await model.complete(request(STREAM, emitted))
    assert streamed == expected
    assert streamed.usage.cached_input_tokens == 1024 and streamed.usage.thinking_tokens == 12
    body = server.requests[1].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert server.requests[1].headers["accept"] == "text/event-stream"
    if expected.text:
        assert "".join(emitted.texts()) == expected.text and len(emitted.texts()) == 3
    for index, call in enumerate(expected.tool_calls):
        # argument progress arrives piece by piece, as the server split it
        assert (
            emitted.tool_pieces(index)
            == OPENAI_PARALLEL["choices"][0]["message"]["tool_calls"][index]["function"]["arguments"]
        )
        assert any(d["tool_call"]["id"] == call.id for _, d in emitted.seen if "tool_call" in d)


async def test_openai_stream_without_usage_option(
    server: LoopbackServer, openai_model: Callable[..., OpenAIModel]
) -> None:
    server.add(Reply(events=OPENAI_STREAM_HELLO[:-2] + OPENAI_STREAM_HELLO[-1:]))
    model = openai_model(endpoints={"local": {"stream_usage": False}})
    response = await model.complete(request(STREAM))
    assert "stream_options" not in server.requests[0].json
    assert (
        response.text == OPENAI_HELLO["choices"][0]["message"]["content"] and response.usage.input_tokens == 0
    )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(events=OPENAI_STREAM_PARALLEL[:4], cut=True), "cut off"),  # the connection drops
        (Reply(events=OPENAI_STREAM_PARALLEL[:4]), "cut off"),  # the body ends, no finish, no [DONE]
        (Reply(events=[sse(b"[DONE]")]), "no choices"),
        (Reply(events=[OPENAI_STREAM_HELLO[0], b"data: {not json\n\n"]), "not valid JSON"),
        (
            Reply(events=[OPENAI_STREAM_HELLO[0], sse({"error": {"message": "The server had an error"}})]),
            "The server had an error",
        ),
    ],
    ids=["connection-dropped", "ended-early", "no-choices", "bad-event", "error-event"],
)
async def test_openai_streams_that_break_are_response_errors(
    server: LoopbackServer, openai_model: Callable[..., OpenAIModel], reply: Reply, expected: str
) -> None:
    server.add(reply)
    with pytest.raises(ProviderResponseError, match=expected):
        await openai_model().complete(request(STREAM))
    assert len(server.requests) == 1  # a stream that was already answering is not retried


@pytest.mark.parametrize("split", [False, True], ids=["whole-events", "events-split-across-reads"])
@pytest.mark.parametrize(
    "plain",
    [ANTHROPIC_HELLO, ANTHROPIC_TOOL_USE, ANTHROPIC_PARALLEL, ANTHROPIC_THINKING],
    ids=["text", "tool-use", "parallel-tool-use", "thinking"],
)
async def test_anthropic_stream_equals_the_plain_answer(
    server: LoopbackServer, anthropic_model: Callable[..., AnthropicModel], plain: dict[str, Any], split: bool
) -> None:
    server.add(Reply(json=plain), Reply(events=anthropic_stream(plain), split=split))
    model = anthropic_model()
    expected = await model.complete(request(ModelSettings()))
    emitted = Events()
    streamed = await model.complete(request(STREAM, emitted))
    assert streamed == expected
    assert server.requests[1].json["stream"] is True
    if expected.text:
        assert "".join(emitted.texts()) == expected.text
    for index, block in enumerate(plain["content"]):
        if block["type"] == "tool_use":
            assert emitted.tool_pieces(index) == json.dumps(block["input"])
        if block["type"] == "thinking":
            thought = "".join(d["thinking"] for t, d in emitted.seen if "thinking" in d)
            assert thought == block["thinking"]


@pytest.mark.parametrize(
    ("events", "cut", "expected"),
    [
        (anthropic_stream(ANTHROPIC_TOOL_USE)[:6], True, "cut off"),
        (anthropic_stream(ANTHROPIC_TOOL_USE)[:-1], False, "without message_stop"),
        (
            [
                anthropic_stream(ANTHROPIC_HELLO)[0],
                sse(
                    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"
                ),
            ],
            False,
            "Overloaded",
        ),
    ],
    ids=["connection-dropped", "ended-early", "error-event"],
)
async def test_anthropic_streams_that_break_are_response_errors(
    server: LoopbackServer,
    anthropic_model: Callable[..., AnthropicModel],
    events: list[bytes],
    cut: bool,
    expected: str,
) -> None:
    server.add(Reply(events=events, cut=cut))
    with pytest.raises(ProviderResponseError, match=expected):
        await anthropic_model().complete(request(STREAM))


async def test_streamed_tool_input_that_is_not_json_becomes_a_tool_error(
    server: LoopbackServer, anthropic_model: Callable[..., AnthropicModel]
) -> None:
    events = anthropic_stream(ANTHROPIC_TOOL_USE)
    # drop the last input_json_delta piece: the input ends mid-object
    last_piece = max(i for i, e in enumerate(events) if b"input_json_delta" in e)
    server.add(Reply(events=events[:last_piece] + events[last_piece + 1 :]))
    response = await anthropic_model().complete(request(STREAM))
    (call,) = response.tool_calls
    assert call.arguments == {} and call.arguments_error
