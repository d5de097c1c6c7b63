"""transport = "aiohttp": the providers' client over aiohttp (the aiohttp extra), same behaviour."""

from __future__ import annotations

import socket
import sys
import tracemalloc
from collections.abc import Callable

import pytest
from httpx_aiohttp.httpx2 import AiohttpTransport

from executus_core import (
    ConfigError,
    Message,
    ModelRequest,
    ModelSettings,
    ProviderConnectionError,
    ProviderResponseError,
    ProviderStatusError,
)
from executus_core.config import load_settings
from executus_core.providers._http import provider_settings
from executus_core.providers.openai import OpenAIModel

from .replies import OPENAI_400, OPENAI_500, OPENAI_HELLO, OPENAI_STREAM_HELLO
from .server import LoopbackServer, Reply

OpenAIFactory = Callable[..., OpenAIModel]
HELLO = OPENAI_HELLO["choices"][0]["message"]["content"]  # type: ignore[index]


def hi(stream: bool = False) -> ModelRequest:
    return ModelRequest(messages=[Message.user("hi")], settings=ModelSettings(stream=stream))


async def test_a_plain_and_a_streamed_answer(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=OPENAI_HELLO), Reply(events=OPENAI_STREAM_HELLO, split=True))
    model = openai_model(transport="aiohttp")
    plain = await model.complete(hi())
    streamed = await model.complete(hi(stream=True))
    assert plain.text == streamed.text == HELLO and plain.usage == streamed.usage
    client = model.endpoint._client
    assert client is not None and isinstance(client._transport, AiohttpTransport)
    assert server.connections == 1  # the aiohttp session pools its connection too


async def test_errors_and_retries_read_the_same(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(500, json=OPENAI_500), Reply(json=OPENAI_HELLO), Reply(400, json=OPENAI_400))
    model = openai_model(transport="aiohttp")
    assert (await model.complete(hi())).text == HELLO
    with pytest.raises(ProviderStatusError) as caught:
        await model.complete(hi())
    assert caught.value.status_code == 400 and caught.value.provider_message
    assert len(server.requests) == 3


async def test_a_server_that_is_down(openai_model: OpenAIFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = openai_model(
        transport="aiohttp", max_retries=0, endpoints={"local": {"base_url": f"http://127.0.0.1:{port}/v1"}}
    )
    with pytest.raises(ProviderConnectionError):
        await model.complete(hi())


async def test_reads_stay_bounded(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=OPENAI_HELLO), Reply(events=[b"data: "], repeat=(b"x" * 262144, 1600)))
    model = openai_model(transport="aiohttp", max_event_bytes=1024 * 1024)
    await model.complete(hi())  # opens the session first, so only the answer's memory is measured
    tracemalloc.start()
    try:
        with pytest.raises(ProviderResponseError, match="max_event_bytes"):
            await model.complete(hi(stream=True))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_the_setting_is_one_line_and_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings({"providers": {"transport": "aiohttp"}}, read_pyproject=False, environ={})
    assert provider_settings(settings).transport == "aiohttp"
    from_env = load_settings(read_pyproject=False, environ={"EXECUTUS_PROVIDERS__TRANSPORT": "aiohttp"})
    assert provider_settings(from_env).transport == "aiohttp"
    monkeypatch.setitem(sys.modules, "httpx_aiohttp.httpx2", None)  # as if the extra were not installed
    missing = load_settings({"providers": {"transport": "aiohttp"}}, read_pyproject=False, environ={})
    with pytest.raises(ConfigError, match=r"pip install 'executus-core\[aiohttp\]'"):
        provider_settings(missing)
    with pytest.raises(ConfigError, match="transport"):
        provider_settings(
            load_settings({"providers": {"transport": "curl"}}, read_pyproject=False, environ={})
        )


async def test_httpx_names_the_default(server: LoopbackServer, openai_model: OpenAIFactory) -> None:
    server.add(Reply(json=OPENAI_HELLO))
    model = openai_model(transport="httpx")
    assert (await model.complete(hi())).text == HELLO
    client = model.endpoint._client
    assert client is not None and not isinstance(client._transport, AiohttpTransport)
