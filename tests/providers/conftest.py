from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from executus_core.config import Settings, load_settings
from executus_core.providers import _http
from executus_core.providers.anthropic import AnthropicModel, create_anthropic
from executus_core.providers.openai import OpenAIModel, create_openai

from .server import LoopbackServer

OPENAI_KEY = "sk-test-openai-0123456789-very-secret"
ANTHROPIC_KEY = "sk-ant-test-0123456789-very-secret"


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    """A loopback HTTP server replaying scripted answers; ``server.requests`` holds what it got."""
    srv = await LoopbackServer().start()
    try:
        yield srv
    finally:
        await srv.close()


def messages_bytes(body: bytes) -> bytes:
    """The messages array of a request body, as sent (without its closing bracket)."""
    start = body.index(b'"messages":[')
    end = body.index(b'],"tools"') if b'],"tools"' in body else body.rindex(b"]")
    return body[start:end]


async def close_endpoints(settings: Settings) -> None:
    pool = _http._pools.get(settings)
    if pool is not None:
        for endpoint in pool.endpoints.values():
            await endpoint.aclose()


def endpoints_settings(server: LoopbackServer, **providers: Any) -> Settings:
    """Settings with endpoint ``local`` (openai) and ``claude`` (anthropic) on the loopback server.

    Retries wait milliseconds, not seconds, so retry tests stay fast.
    """
    table: dict[str, Any] = {
        "retry_base_seconds": 0.001,
        "retry_cap_seconds": 0.01,
        "endpoints": {
            "local": {"api": "openai", "base_url": f"{server.url}/v1", "api_key": OPENAI_KEY},
            "claude": {"api": "anthropic", "base_url": server.url, "api_key": ANTHROPIC_KEY},
        },
    }
    for key, value in providers.items():
        if key == "endpoints":
            for name, extra in value.items():
                table["endpoints"].setdefault(name, {}).update(extra)
        else:
            table[key] = value
    return load_settings({"providers": table}, read_pyproject=False, environ={})


@pytest.fixture
async def make_settings(server: LoopbackServer) -> AsyncIterator[Callable[..., Settings]]:
    """``make_settings(**providers)``: settings pointing at the server; clients closed at the end."""
    made: list[Settings] = []

    def make(**providers: Any) -> Settings:
        settings = endpoints_settings(server, **providers)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        await close_endpoints(settings)


@pytest.fixture
def openai_model(make_settings: Callable[..., Settings]) -> Callable[..., OpenAIModel]:
    """``openai_model(model="gpt-test", **providers)`` on the loopback server."""

    def build(model: str = "gpt-4o-mini", **providers: Any) -> OpenAIModel:
        return create_openai(model, make_settings(**providers), endpoint="local")

    return build


@pytest.fixture
def anthropic_model(make_settings: Callable[..., Settings]) -> Callable[..., AnthropicModel]:
    """``anthropic_model(model="claude-test", **providers)`` on the loopback server."""

    def build(model: str = "claude-sonnet-4-5", **providers: Any) -> AnthropicModel:
        return create_anthropic(model, make_settings(**providers), endpoint="claude")

    return build
