"""Nothing a server sends is read without a bound (issue 16 item 7): lines, events, bodies, errors.

Memory is measured with tracemalloc around the call: the loopback server lives in the same process,
but it writes one repeated piece and waits for the client to read (``drain``), so it holds next to
nothing, and what the peak shows is the client's buffering.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import orjson
import pytest

from executus_core import Message, ModelRequest, ModelSettings, ProviderResponseError, ProviderStatusError
from executus_core.providers._http import iter_sse
from executus_core.providers.anthropic import AnthropicModel
from executus_core.providers.openai import OpenAIModel

from .replies import ANTHROPIC_HELLO, OPENAI_HELLO, OPENAI_STREAM_HELLO
from .server import LoopbackServer, Reply, sse

MiB = 1024 * 1024
PIECE = b"x" * (256 * 1024)
STREAM = ModelSettings(stream=True)

OpenAIFactory = Callable[..., OpenAIModel]


async def peak_during(
    model: OpenAIModel | AnthropicModel, server: LoopbackServer, call: Callable[[], Awaitable[Any]]
) -> tuple[int, BaseException | None]:
    """The peak of traced memory above the start while ``call`` runs, and what it raised.

    One small call goes first, untraced, so opening the client (imports, the TLS context) is not
    counted: what is left is what the answer makes the client hold.
    """
    server.replies.appendleft(
        Reply(json=ANTHROPIC_HELLO if isinstance(model, AnthropicModel) else OPENAI_HELLO)
    )
    await model.complete(hi())
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    raised: BaseException | None = None
    try:
        await call()
    except Exception as exc:
        raised = exc
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak, raised


def hi(stream: bool = False) -> ModelRequest:
    return ModelRequest(messages=[Message.user("hi")], settings=STREAM if stream else ModelSettings())


async def test_a_400_mib_sse_line_is_refused_with_memory_bounded(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    # one `data:` line of 400 MiB that never ends: before, the reader buffered all of it
    server.add(Reply(events=[b"data: "], repeat=(PIECE, 1600)))
    model = openai_model()
    peak, raised = await peak_during(model, server, lambda: model.complete(hi(stream=True)))
    assert isinstance(raised, ProviderResponseError), raised
    assert "max_event_bytes (8,388,608 bytes)" in str(raised) and "a line" in str(raised)
    # the default bound is 8 MiB: the reader holds about that much, never the 400 MiB
    assert peak < 12 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_a_smaller_event_bound_holds_memory_to_a_few_mib(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(events=[b"data: "], repeat=(PIECE, 1600)))
    model = openai_model(max_event_bytes=1 * MiB)
    peak, raised = await peak_during(model, server, lambda: model.complete(hi(stream=True)))
    assert isinstance(raised, ProviderResponseError) and "max_event_bytes (1,048,576 bytes)" in str(raised)
    assert peak < 3 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_many_data_lines_adding_up_past_the_event_bound_are_refused(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    line = b"data: " + b"y" * 1000 + b"\n"
    server.add(Reply(events=[b""], repeat=(line * 64, 100)))  # 6.4 MB of one event, in short lines
    with pytest.raises(ProviderResponseError, match=r"an event's data .* max_event_bytes"):
        await openai_model(max_event_bytes=1 * MiB).complete(hi(stream=True))


async def test_a_stream_longer_than_the_body_bound_is_refused(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    keepalive = b": ping\n\n" * 8192  # comments: each event small, the stream endless
    server.add(Reply(events=[OPENAI_STREAM_HELLO[0]], repeat=(keepalive, 1000)))
    with pytest.raises(ProviderResponseError, match=r"longer than max_body_bytes \(2,097,152 bytes\)"):
        await openai_model(max_body_bytes=2 * MiB).complete(hi(stream=True))


async def test_a_plain_answer_larger_than_the_body_bound_is_refused_with_memory_bounded(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(body=b'{"choices": [{"message": {"content": "', repeat=(PIECE, 400), tail=b'"}}]}'))
    model = openai_model(max_body_bytes=2 * MiB)
    peak, raised = await peak_during(model, server, lambda: model.complete(hi()))
    assert isinstance(raised, ProviderResponseError)
    assert "larger than max_body_bytes (2,097,152 bytes)" in str(raised)
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert len(server.requests) == 2  # the warm-up, then one: not retried, the same answer would come again


async def test_a_50_mib_error_body_gives_a_short_error(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(400, body=b'{"error": {"message": "', repeat=(PIECE, 200), tail=b'"}}'))
    model = openai_model()
    peak, raised = await peak_during(model, server, lambda: model.complete(hi()))
    assert isinstance(raised, ProviderStatusError) and raised.status_code == 400
    said = raised.provider_message or ""
    assert len(said) < 2200 and said.endswith("[cut: the server sent 52,428,826 bytes]")
    assert len(str(raised)) < 2500 and len(orjson.dumps(raised.to_dict())) < 3000
    assert peak < 2.5 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_a_long_error_message_is_cut_to_max_error_chars(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    message = "z" * 10_000
    server.add(
        Reply(400, json={"error": {"message": message}}),
        Reply(events=[OPENAI_STREAM_HELLO[0], sse({"error": {"message": message}})]),
    )
    model = openai_model(max_error_chars=100)
    with pytest.raises(ProviderStatusError) as status:
        await model.complete(hi())
    with pytest.raises(ProviderResponseError) as mid_stream:
        await model.complete(hi(stream=True))
    for error in (status.value, mid_stream.value):
        said = error.provider_message or ""
        assert said.startswith("z" * 100) and "z" * 101 not in said
        assert "[cut: the server sent 10,000 characters]" in said


async def test_anthropic_streams_are_bounded_too(
    server: LoopbackServer, anthropic_model: Callable[..., AnthropicModel]
) -> None:
    server.add(Reply(events=[b"event: content_block_delta\ndata: "], repeat=(PIECE, 1600)))
    model = anthropic_model(max_event_bytes=1 * MiB)
    peak, raised = await peak_during(model, server, lambda: model.complete(hi(stream=True)))
    assert isinstance(raised, ProviderResponseError) and "max_event_bytes" in str(raised)
    assert raised.provider == "claude" and peak < 3 * MiB


def response_of(chunks: list[bytes]) -> httpx2.Response:
    async def body() -> Any:
        for chunk in chunks:
            yield chunk

    return httpx2.Response(200, content=body())


async def test_iter_sse_splits_lines_across_chunks_and_ignores_comments() -> None:
    raw = b": hello\r\nevent: a\r\ndata: 1\r\ndata: 2\r\n\r\ndata: {}\n\ndata: cut"
    chunks = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    seen = [pair async for pair in iter_sse(response_of(chunks))]
    assert seen == [(b"a", b"1\n2"), (b"", b"{}")]
