"""Retries and HTTP errors: what is retried, how long it waits, and what a failure says."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx2
import pytest

from executus_core import (
    AuthenticationError,
    Message,
    ModelRequest,
    ModelSettings,
    ProviderConnectionError,
    ProviderStatusError,
    RateLimited,
)
from executus_core.providers._http import parse_retry_after
from executus_core.providers.anthropic import AnthropicModel
from executus_core.providers.openai import OpenAIModel

from .conftest import OPENAI_KEY
from .replies import (
    ANTHROPIC_401,
    ANTHROPIC_529,
    ANTHROPIC_HELLO,
    OPENAI_400,
    OPENAI_401,
    OPENAI_429,
    OPENAI_500,
    OPENAI_HELLO,
    OPENAI_STREAM_HELLO,
)
from .server import LoopbackServer, Reply

OpenAIFactory = Callable[..., OpenAIModel]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, type: str, data: dict[str, Any]) -> None:
        self.seen.append((type, data))

    @property
    def retries(self) -> list[dict[str, Any]]:
        return [d for t, d in self.seen if t == "model.retry"]


def request(emit: Events | None = None, deadline: float | None = None, stream: bool = False) -> ModelRequest:
    return ModelRequest(
        messages=[Message.user("hi")], emit=emit, deadline=deadline, settings=ModelSettings(stream=stream)
    )


async def test_a_500_then_success_is_retried(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(500, json=OPENAI_500), Reply(json=OPENAI_HELLO))
    events = Events()
    response = await openai_model().complete(request(events))
    assert response.text == "Hello! How can I assist you today?"
    assert len(server.requests) == 2 and server.requests[0].body == server.requests[1].body
    (retry,) = events.retries
    assert retry["attempt"] == 1 and retry["status_code"] == 500 and retry["provider"] == "local"
    assert "HTTP 500" in retry["error"] and 0 <= retry["wait_seconds"] <= 0.01


@pytest.mark.parametrize("status", [408, 409, 502, 503, 504])
async def test_other_retryable_statuses(
    server: LoopbackServer, openai_model: OpenAIFactory, status: int
) -> None:
    server.add(Reply(status, json=OPENAI_500), Reply(json=OPENAI_HELLO))
    assert (await openai_model().complete(request())).text
    assert len(server.requests) == 2


async def test_429_waits_as_long_as_retry_after_says(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(
        Reply(429, json=OPENAI_429, headers={"retry-after": "0.2", "x-request-id": "req_rl"}),
        Reply(json=OPENAI_HELLO),
    )
    events = Events()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await openai_model().complete(request(events))
    assert loop.time() - started >= 0.19
    (retry,) = events.retries
    assert retry["wait_seconds"] == 0.2 and retry["status_code"] == 429 and "rate limited" in retry["error"]


async def test_retry_after_ms_is_honoured_too(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(429, json=OPENAI_429, headers={"retry-after-ms": "50"}), Reply(json=OPENAI_HELLO))
    events = Events()
    await openai_model().complete(request(events))
    assert events.retries[0]["wait_seconds"] == 0.05


async def test_a_wait_past_the_deadline_is_not_slept(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(429, json=OPENAI_429, headers={"retry-after": "30", "x-request-id": "req_rl"}))
    events = Events()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RateLimited) as caught:
        await openai_model().complete(request(events, deadline=loop.time() + 5))
    assert loop.time() - started < 5  # it gave up at once instead of sleeping into the deadline
    error = caught.value
    assert error.retry_after == 30 and error.status_code == 429 and error.request_id == "req_rl"
    assert "Rate limit reached" in (error.provider_message or "")
    assert events.retries == [] and len(server.requests) == 1


async def test_a_wait_beyond_the_retry_budget_is_not_slept(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(503, json=OPENAI_500, headers={"retry-after": "20"}))
    with pytest.raises(ProviderStatusError, match="HTTP 503"):
        await openai_model(retry_total_seconds=5).complete(request())
    assert len(server.requests) == 1


async def test_attempts_are_bounded(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(*[Reply(503, json=OPENAI_500) for _ in range(5)])
    events = Events()
    with pytest.raises(ProviderStatusError) as caught:
        await openai_model(max_retries=2).complete(request(events))
    assert caught.value.status_code == 503 and caught.value.retryable
    assert len(server.requests) == 3 and [r["attempt"] for r in events.retries] == [1, 2]


async def test_a_401_is_not_retried_and_says_where_the_key_comes_from(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(401, json=OPENAI_401, headers={"x-request-id": "req_401"}))
    events = Events()
    with pytest.raises(AuthenticationError) as caught:
        await openai_model().complete(request(events))
    error = caught.value
    assert error.status_code == 401 and error.request_id == "req_401" and not error.retryable
    assert "api_key in [tool.executus.providers.endpoints.local]" in str(error)
    assert "Incorrect API key provided" in (error.provider_message or "")
    assert OPENAI_KEY not in str(error) and OPENAI_KEY not in repr(error.to_dict())
    assert len(server.requests) == 1 and events.retries == []


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, OPENAI_400, "rejected the request"),
        (404, {"error": "model 'llama9' not found"}, "check the model name and base_url"),
        (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}, "HTTP 422"),
    ],
)
async def test_other_4xx_are_not_retried(
    server: LoopbackServer, openai_model: OpenAIFactory, status: int, body: Any, expected: str
) -> None:
    server.add(Reply(status, json=body), Reply(json=OPENAI_HELLO))
    with pytest.raises(ProviderStatusError) as caught:
        await openai_model().complete(request())
    assert expected in str(caught.value) and caught.value.status_code == status
    assert caught.value.provider_message  # the server's own words: "string too long", "not found", ...
    assert len(server.requests) == 1


async def test_x_should_retry_false_is_honoured(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(500, json=OPENAI_500, headers={"x-should-retry": "false"}), Reply(json=OPENAI_HELLO))
    with pytest.raises(ProviderStatusError):
        await openai_model().complete(request())
    assert len(server.requests) == 1


async def test_a_stream_is_retried_before_it_starts(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    server.add(Reply(429, json=OPENAI_429, headers={"retry-after": "0"}), Reply(events=OPENAI_STREAM_HELLO))
    events = Events()
    response = await openai_model().complete(request(events, stream=True))
    assert response.text and len(events.retries) == 1


async def test_anthropic_overloaded_is_retried_and_401_is_not(
    server: LoopbackServer, anthropic_model: Callable[..., AnthropicModel]
) -> None:
    server.add(Reply(529, json=ANTHROPIC_529), Reply(json=ANTHROPIC_HELLO), Reply(401, json=ANTHROPIC_401))
    model = anthropic_model()
    assert (await model.complete(request())).text == "Hi! My name is Claude."
    with pytest.raises(AuthenticationError) as caught:
        await model.complete(request())
    assert caught.value.provider_message == "invalid x-api-key"
    assert len(server.requests) == 3


async def test_a_server_that_is_down_is_retried_then_a_connection_error(
    make_settings: Callable[..., Any],
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from executus_core.providers.openai import create_openai

    settings = make_settings(max_retries=2, endpoints={"local": {"base_url": f"http://127.0.0.1:{port}/v1"}})
    events = Events()
    with pytest.raises(ProviderConnectionError) as caught:
        await create_openai("m", settings, endpoint="local").complete(request(events))
    assert "cannot connect" in str(caught.value) and caught.value.retryable
    assert len(events.retries) == 2


async def test_a_slow_answer_times_out_and_is_retried(
    server: LoopbackServer, openai_model: OpenAIFactory
) -> None:
    # Spare prompt answers: on a loaded machine a retry may also miss the short timeout.
    server.add(Reply(json=OPENAI_HELLO, delay=5.0), *[Reply(json=OPENAI_HELLO) for _ in range(4)])
    events = Events()
    response = await openai_model(read_timeout=0.25).complete(request(events))
    assert response.text and "timed out waiting for the answer" in events.retries[0]["error"]


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=120), usegmt=True)
    assert parse_retry_after(httpx2.Headers({"retry-after": "7"})) == 7
    assert parse_retry_after(httpx2.Headers({"retry-after": date}), now=now.timestamp()) == 120
    assert parse_retry_after(httpx2.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert parse_retry_after(httpx2.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx2.Headers({})) is None
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(httpx2.Headers({"retry-after": past}), now=now.timestamp()) == 0
