"""Fuzzing the provider parsers and the SSE reader (issue 16): whatever a server sends, a call ends
in a `ModelResponse` whose fields have their declared types, or in a `ProviderError`, never another
exception.

The answers go through the real `complete()` path (an ``httpx2.MockTransport`` stands in for the
network), plain and streamed, for both wire formats. Inputs are arbitrary bytes, arbitrary JSON, and
JSON shaped like the APIs' answers with arbitrary values at every level, which reaches the deep
branches that random bytes never do. Example counts stay modest so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from executus_core import Message, ModelRequest, ModelSettings, ProviderError
from executus_core.config import load_settings
from executus_core.providers._http import HttpModel, iter_sse
from executus_core.providers.anthropic import create_anthropic
from executus_core.providers.openai import create_openai
from executus_core.types import ModelResponse, ToolSpec

from . import replies

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with any subset of ``fields``, each either its own shape or any JSON value."""
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()})


def listed(item: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.one_of(item, item, item, json_values), max_size=3)


KNOWN = ["stop", "tool_calls", "length", "end_turn", "tool_use", "t", "call_1"]
words = st.one_of(st.sampled_from(KNOWN), st.sampled_from(KNOWN), st.text(max_size=6))
counts = st.one_of(st.integers(min_value=-5, max_value=10**6), st.integers(0, 99), json_values)
arguments = st.one_of(st.just('{"a": 1}'), st.just(""), st.text(max_size=30), json_values.map(json.dumps))
function = shaped({"name": words, "arguments": arguments})
tool_call = shaped({"id": words, "index": st.integers(0, 3), "type": words, "function": function})
openai_usage = shaped(
    {
        "prompt_tokens": counts,
        "completion_tokens": counts,
        "prompt_tokens_details": shaped({"cached_tokens": counts}),
        "completion_tokens_details": shaped({"reasoning_tokens": counts}),
        "prompt_cache_hit_tokens": counts,
    }
)
openai_message = shaped(
    {
        "role": words,
        "content": st.text(max_size=20) | listed(shaped({"type": words, "text": st.text(max_size=10)})),
        "refusal": st.text(max_size=10),
        "tool_calls": listed(tool_call),
    }
)
openai_answer = shaped(
    {
        "choices": listed(
            shaped({"index": st.integers(0, 2), "message": openai_message, "finish_reason": words})
        ),
        "usage": openai_usage,
        "model": words,
        "error": shaped({"message": st.text(max_size=20)}),
    }
)
openai_chunk = shaped(
    {
        "choices": listed(
            shaped(
                {
                    "index": st.integers(0, 2),
                    "delta": shaped(
                        {
                            "content": st.text(max_size=10),
                            "refusal": st.text(max_size=5),
                            "tool_calls": listed(tool_call),
                        }
                    ),
                    "finish_reason": words,
                }
            )
        ),
        "usage": openai_usage,
        "model": words,
        "error": shaped({"message": st.text(max_size=20)}),
    }
)
anthropic_block = shaped(
    {
        "type": st.sampled_from(["text", "tool_use", "thinking", "redacted_thinking", "server_tool_use"]),
        "text": st.text(max_size=10),
        "id": words,
        "name": words,
        "input": json_values,
        "thinking": st.text(max_size=10),
        "signature": st.text(max_size=10),
        "data": st.text(max_size=10),
    }
)
anthropic_usage = shaped(
    {
        "input_tokens": counts,
        "output_tokens": counts,
        "cache_read_input_tokens": counts,
        "cache_creation_input_tokens": counts,
    }
)
anthropic_answer = shaped(
    {
        "type": st.sampled_from(["message", "error"]),
        "content": listed(anthropic_block),
        "stop_reason": words,
        "usage": anthropic_usage,
        "model": words,
        "error": shaped({"message": st.text(max_size=20)}),
    }
)
anthropic_event = shaped(
    {
        "type": st.sampled_from(
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
                "ping",
                "error",
            ]
        ),
        "index": st.integers(0, 3) | json_values,
        "content_block": anthropic_block,
        "delta": shaped(
            {
                "type": st.sampled_from(
                    ["text_delta", "input_json_delta", "thinking_delta", "signature_delta"]
                ),
                "text": st.text(max_size=10),
                "partial_json": st.text(max_size=10),
                "thinking": st.text(max_size=10),
                "signature": st.text(max_size=10),
                "stop_reason": words,
            }
        ),
        "message": shaped({"model": words, "usage": anthropic_usage}),
        "usage": anthropic_usage,
        "error": shaped({"message": st.text(max_size=20)}),
    }
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside ``value`` (keys and indexes, depth first), itself included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


DELETE = object()


def mutate(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of ``value`` with the thing at ``path`` replaced by ``new`` (or removed: `DELETE`)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if rest or new is not DELETE:
            copy[head] = mutate(value[head], rest, new)
        else:
            del copy[head]
        return copy
    copy_list = list(value)
    if rest or new is not DELETE:
        copy_list[head] = mutate(value[head], rest, new)
    else:
        del copy_list[head]
    return copy_list


def mutated(template: Any) -> st.SearchStrategy[Any]:
    """``template`` (a real answer) with one to three of its parts replaced by any JSON, or removed.

    Real answers mutated a little reach the deep branches of a parser that random JSON never does.
    """
    places = paths(template)[1:]  # the root replaced is what test_arbitrary_json covers
    change = st.tuples(st.sampled_from(places), st.one_of(json_values, st.just(DELETE)))

    def apply(changes: list[tuple[tuple[Any, ...], Any]]) -> Any:
        out = template
        for path, new in changes:
            # an earlier change may have removed or replaced this place
            with contextlib.suppress(KeyError, IndexError, TypeError):
                out = mutate(out, path, new)
        return out

    return st.lists(change, min_size=1, max_size=3).map(apply)


def dumps(value: Any) -> bytes:
    """JSON as a server may write it: the standard library's, which writes integers of any size."""
    return json.dumps(value).encode()


def sse_bytes(events: list[Any], names: list[bytes] | None = None) -> bytes:
    out = []
    for i, event in enumerate(events):
        head = b"event: " + names[i] + b"\n" if names and i < len(names) else b""
        out.append(head + b"data: " + dumps(event) + b"\n\n")
    return b"".join(out)


class Harness:
    """One event loop and one model per wire format, answering through a MockTransport."""

    def __init__(self) -> None:
        self.status = 200
        self.chunks: list[bytes] = []
        self.content_type = "application/json"
        transport = httpx2.MockTransport(self._answer)
        table = {
            "max_retries": 0,
            "transport": transport,
            "endpoints": {
                "local": {"api": "openai", "base_url": "http://127.0.0.1:9/v1"},
                "claude": {"api": "anthropic", "base_url": "http://127.0.0.1:9", "estimate_usage": True},
            },
        }
        self.settings = load_settings({"providers": table}, read_pyproject=False, environ={})
        self.openai = create_openai("m", self.settings, endpoint="local")
        self.anthropic = create_anthropic("m", self.settings, endpoint="claude")
        self.loop = asyncio.new_event_loop()

    async def _answer(self, request: httpx2.Request) -> httpx2.Response:
        chunks = list(self.chunks)

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return httpx2.Response(self.status, headers={"content-type": self.content_type}, content=body())

    def call(self, model: HttpModel, chunks: list[bytes], *, stream: bool, status: int = 200) -> None:
        """Send one request answered by ``chunks``; fail unless it ends as the contract says."""
        self.status, self.chunks = status, chunks
        self.content_type = "text/event-stream" if stream else "application/json"
        request = ModelRequest(
            messages=[Message.user("hi")],
            tools=[ToolSpec(name="t")],
            settings=ModelSettings(stream=stream),
            emit=lambda _type, _data: None,
        )
        try:
            response = self.loop.run_until_complete(model.complete(request))
        except ProviderError as exc:
            str(exc), exc.to_dict()  # an error must render too
            return
        assert isinstance(response, ModelResponse)
        # Every field holds what it declares: validation of a dump must accept it as it is.
        again = ModelResponse.model_validate(response.model_dump())
        assert again == response
        assert all(isinstance(w, str) for w in response.warnings)

    def close(self) -> None:
        self.loop.run_until_complete(self.openai.aclose())
        self.loop.run_until_complete(self.anthropic.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets: the chunk boundaries a network may make."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if data[a:b]]


cuts = st.lists(st.integers(0, 10_000), max_size=6)


@FUZZ
@given(
    data=st.binary(max_size=400), where=cuts, stream=st.booleans(), status=st.sampled_from([200, 400, 500])
)
def test_arbitrary_bytes(harness: Harness, data: bytes, where: list[int], stream: bool, status: int) -> None:
    for model in (harness.openai, harness.anthropic):
        harness.call(model, split(data, where), stream=stream, status=status)


@FUZZ
@given(value=json_values, status=st.sampled_from([200, 404, 503]))
def test_arbitrary_json(harness: Harness, value: Any, status: int) -> None:
    for model in (harness.openai, harness.anthropic):
        harness.call(model, [dumps(value)], stream=False, status=status)
        harness.call(model, [sse_bytes([value, value])], stream=True, status=status)


@FUZZ
@given(answer=openai_answer)
def test_openai_shaped_answers(harness: Harness, answer: dict[str, Any]) -> None:
    harness.call(harness.openai, [dumps(answer)], stream=False)


@FUZZ
@given(events=st.lists(openai_chunk, max_size=5), done=st.booleans(), where=cuts)
# found: an error event whose message is not a string made the error's str() raise TypeError
@example(events=[{"error": {"message": [None]}}], done=False, where=[])
# found: a float token count went into Usage unchecked
@example(
    events=[{"choices": [{"delta": {"content": "x"}}], "usage": {"prompt_tokens": 1.5}}], done=True, where=[]
)
def test_openai_shaped_streams(harness: Harness, events: list[Any], done: bool, where: list[int]) -> None:
    data = sse_bytes(events) + (b"data: [DONE]\n\n" if done else b"")
    harness.call(harness.openai, split(data, where), stream=True)


@FUZZ
@given(answer=anthropic_answer)
def test_anthropic_shaped_answers(harness: Harness, answer: dict[str, Any]) -> None:
    harness.call(harness.anthropic, [dumps(answer)], stream=False)


@FUZZ
# found: an event name that is not UTF-8 raised UnicodeDecodeError
@example(events=[{}], names=[b"\x80"], where=[])
# found: a string token count raised TypeError when added up
@example(
    events=[{"type": "message_start", "message": {"usage": {"input_tokens": "5"}}}, {"type": "message_stop"}],
    names=[],
    where=[],
)
@given(
    events=st.lists(anthropic_event, max_size=6),
    names=st.lists(st.binary(max_size=6) | st.sampled_from([b"message_stop", b"error"]), max_size=6),
    where=cuts,
)
def test_anthropic_shaped_streams(
    harness: Harness, events: list[Any], names: list[bytes], where: list[int]
) -> None:
    names = [n.replace(b"\n", b"").replace(b"\r", b"") for n in names]
    harness.call(harness.anthropic, split(sse_bytes(events, names), where), stream=True)


@FUZZ
@given(data=st.binary(max_size=300), where=cuts, limit=st.integers(1, 64))
def test_the_sse_reader(data: bytes, where: list[int], limit: int) -> None:
    chunks = split(data, where)

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def read() -> list[tuple[bytes, bytes]]:
        response = httpx2.Response(200, content=body())
        return [pair async for pair in iter_sse(response, max_event_bytes=limit, max_body_bytes=limit * 4)]

    try:
        events = asyncio.run(read())
    except ProviderError:
        return
    for name, payload in events:
        assert isinstance(name, bytes) and isinstance(payload, bytes) and len(payload) <= limit


OPENAI_TEMPLATES = [replies.OPENAI_HELLO, replies.OPENAI_TOOL_CALL, replies.OPENAI_PARALLEL]
OPENAI_STREAM_TEMPLATES = [
    [orjson.loads(e.split(b"data: ", 1)[1]) for e in events if b"[DONE]" not in e]
    for events in (replies.OPENAI_STREAM_HELLO, replies.OPENAI_STREAM_PARALLEL)
]
ANTHROPIC_TEMPLATES = [replies.ANTHROPIC_TOOL_USE, replies.ANTHROPIC_PARALLEL, replies.ANTHROPIC_THINKING]
ANTHROPIC_STREAM_TEMPLATES = [
    [orjson.loads(e.split(b"data: ", 1)[1]) for e in replies.anthropic_stream(message)]
    for message in (replies.ANTHROPIC_PARALLEL, replies.ANTHROPIC_THINKING)
]


@FUZZ
@given(answer=st.one_of(*(mutated(t) for t in OPENAI_TEMPLATES)))
def test_openai_answers_mutated(harness: Harness, answer: Any) -> None:
    harness.call(harness.openai, [dumps(answer)], stream=False)


@FUZZ
@given(events=st.one_of(*(mutated(t) for t in OPENAI_STREAM_TEMPLATES)), where=cuts)
def test_openai_streams_mutated(harness: Harness, events: Any, where: list[int]) -> None:
    data = sse_bytes(events if isinstance(events, list) else [events]) + b"data: [DONE]\n\n"
    harness.call(harness.openai, split(data, where), stream=True)


@FUZZ
@given(answer=st.one_of(*(mutated(t) for t in ANTHROPIC_TEMPLATES)))
def test_anthropic_answers_mutated(harness: Harness, answer: Any) -> None:
    harness.call(harness.anthropic, [dumps(answer)], stream=False)


@FUZZ
@given(events=st.one_of(*(mutated(t) for t in ANTHROPIC_STREAM_TEMPLATES)), where=cuts)
def test_anthropic_streams_mutated(harness: Harness, events: Any, where: list[int]) -> None:
    data = sse_bytes(events if isinstance(events, list) else [events])
    harness.call(harness.anthropic, split(data, where), stream=True)
