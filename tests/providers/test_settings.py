"""Endpoints from settings and the environment, the registry's prefixes, the transport, and secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from executus_core import AuthenticationError, ConfigError, Executor, Message, ModelNotFound, ModelRequest
from executus_core.config import load_settings
from executus_core.providers import AnthropicModel, EndpointSettings, OpenAIModel
from executus_core.providers._http import get_endpoint, provider_settings
from executus_core.providers.openai import OPENAI, create_openai

from .conftest import OPENAI_KEY, close_endpoints
from .replies import ANTHROPIC_HELLO, OPENAI_401, OPENAI_HELLO
from .server import LoopbackServer, Reply


class CountingTransport(httpx2.AsyncBaseTransport):
    """A real transport that also records the URL of each request it carries."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.urls: list[str] = []
        self.closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.urls.append(str(request.url))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


@pytest.fixture
async def executor_for(server: LoopbackServer) -> AsyncIterator[Callable[..., Executor]]:
    made: list[Executor] = []

    def make(providers: dict[str, Any]) -> Executor:
        ex = Executor(entry_points=False, settings={"providers": providers})
        made.append(ex)
        return ex

    yield make
    for ex in made:
        await ex.shutdown()


def test_bad_settings_name_the_key_and_the_plugin() -> None:
    with pytest.raises(ConfigError, match=r"\[tool.executus.providers\] retries.*executus-core providers"):
        provider_settings(load_settings({"providers": {"retries": 3}}, read_pyproject=False, environ={}))
    with pytest.raises(ConfigError, match="max_retries"):
        provider_settings(load_settings({"providers": {"max_retries": -1}}, read_pyproject=False, environ={}))
    bad_endpoint = {"providers": {"endpoints": {"local": {"api": "openai", "base_ur": "http://x"}}}}
    with pytest.raises(ConfigError, match=r"endpoints.local.base_ur"):
        provider_settings(load_settings(bad_endpoint, read_pyproject=False, environ={}))
    with pytest.raises(ConfigError, match="cannot be used as a model id prefix"):
        provider_settings(
            load_settings({"providers": {"endpoints": {"a:b": {}}}}, read_pyproject=False, environ={})
        )


def test_endpoint_settings_are_checked_when_a_model_is_built() -> None:
    settings = load_settings(
        {"providers": {"endpoints": {"local": {"api": "openai"}, "ftp": {"base_url": "ftp://host/v1"}}}},
        read_pyproject=False,
        environ={},
    )
    with pytest.raises(ConfigError, match=r"\[tool.executus.providers.endpoints.local\] needs base_url"):
        create_openai("m", settings, endpoint="local")
    with pytest.raises(ConfigError, match="must be an http:// or https:// URL"):
        create_openai("m", settings, endpoint="ftp")
    with pytest.raises(ConfigError, match="names no model"):
        create_openai("", settings)
    mismatched = load_settings(
        {"providers": {"endpoints": {"openai": {"api": "anthropic"}}}}, read_pyproject=False, environ={}
    )
    with pytest.raises(ConfigError, match="api = 'anthropic'"):
        create_openai("m", mismatched)


async def test_named_endpoints_resolve_through_the_registry(
    server: LoopbackServer, executor_for: Callable[..., Executor]
) -> None:
    ex = executor_for(
        {
            "endpoints": {
                "local": {"base_url": f"{server.url}/v1"},  # api defaults to openai
                "proxy": {"api": "anthropic", "base_url": server.url},
            }
        }
    )
    local = ex.models.resolve("local:llama3.1:8b")
    assert isinstance(local, OpenAIModel) and local.id == "local:llama3.1:8b" and local.model == "llama3.1:8b"
    proxy = ex.models.resolve("proxy:claude-sonnet-4-5")
    assert isinstance(proxy, AnthropicModel)
    # one endpoint, one pooled client, whatever the number of models on it
    assert ex.models.resolve("local:qwen3").endpoint is local.endpoint
    with pytest.raises(ModelNotFound, match=r"endpoints: local: \(openai\), proxy: \(anthropic\)"):
        ex.models.resolve("nowhere:model")
    server.add(Reply(json=OPENAI_HELLO), Reply(json=ANTHROPIC_HELLO))
    assert (await local.complete(ModelRequest(messages=[Message.user("hi")]))).text
    assert (await proxy.complete(ModelRequest(messages=[Message.user("hi")]))).text
    # a local server needs no key, and none is sent
    assert "authorization" not in server.requests[0].headers and "x-api-key" not in server.requests[1].headers


async def test_an_endpoint_naming_an_unserved_api_is_a_clear_error(
    executor_for: Callable[..., Executor],
) -> None:
    ex = executor_for({"endpoints": {"odd": {"api": "gemini", "base_url": "http://127.0.0.1:1"}}})
    with pytest.raises(ModelNotFound, match="api 'gemini', which no provider serves"):
        ex.models.resolve("odd:model")


def test_a_bad_base_url_in_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:11434/v1")  # no scheme: a common slip
    settings = load_settings({}, read_pyproject=False, environ={})
    with pytest.raises(ConfigError, match=r"OPENAI_BASE_URL .* must be an http"):
        create_openai("m", settings)


async def test_openai_reads_its_environment_variables(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    server.add(Reply(json=OPENAI_HELLO))
    settings = load_settings({}, read_pyproject=False, environ={})
    try:
        model = create_openai("gpt-4o-mini", settings)
        assert model.id == "openai:gpt-4o-mini"
        await model.complete(ModelRequest(messages=[Message.user("hi")]))
    finally:
        await close_endpoints(settings)
    assert server.requests[0].path == "/v1/chat/completions"
    assert server.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"


async def test_anthropic_reads_its_environment_variables(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, executor_for: Callable[..., Executor]
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env-0123456789")
    server.add(Reply(json=ANTHROPIC_HELLO))
    model = executor_for({}).models.resolve("anthropic:claude-sonnet-4-5")
    await model.complete(ModelRequest(messages=[Message.user("hi")]))
    assert server.requests[0].headers["x-api-key"] == "sk-ant-from-env-0123456789"


async def test_a_named_endpoint_takes_its_key_from_the_variable_it_names(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, executor_for: Callable[..., Executor]
) -> None:
    monkeypatch.setenv("ROUTER_KEY", "sk-or-0123456789")
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)  # never sent to another endpoint
    server.add(Reply(json=OPENAI_HELLO))
    ex = executor_for(
        {
            "endpoints": {
                "router": {
                    "base_url": f"{server.url}/api/v1",
                    "api_key_env": "ROUTER_KEY",
                    "headers": {"X-Title": "t"},
                }
            }
        }
    )
    await ex.models.resolve("router:some/model").complete(ModelRequest(messages=[Message.user("hi")]))
    seen = server.requests[0]
    assert seen.path == "/api/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-or-0123456789" and seen.headers["x-title"] == "t"


async def test_no_key_for_the_official_api_fails_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    transport = CountingTransport()
    settings = load_settings({"providers": {"transport": transport}}, read_pyproject=False, environ={})
    try:
        with pytest.raises(AuthenticationError, match="set OPENAI_API_KEY"):
            await create_openai("gpt-4o-mini", settings).complete(ModelRequest(messages=[Message.user("hi")]))
    finally:
        await close_endpoints(settings)
    assert transport.urls == []


async def test_the_transport_is_a_setting(server: LoopbackServer, make_settings: Callable[..., Any]) -> None:
    transport = CountingTransport()
    settings = make_settings(endpoints={"local": {"transport": transport}})
    server.add(Reply(json=OPENAI_HELLO))
    model = create_openai("m", settings, endpoint="local")
    await model.complete(ModelRequest(messages=[Message.user("hi")]))
    assert transport.urls == [f"{server.url}/v1/chat/completions"]
    await model.aclose()
    assert transport.closed


async def test_a_closed_client_reopens_on_the_next_call(
    server: LoopbackServer, make_settings: Callable[..., Any]
) -> None:
    server.add(Reply(json=OPENAI_HELLO), Reply(json=OPENAI_HELLO))
    model = create_openai("m", make_settings(), endpoint="local")
    await model.complete(ModelRequest(messages=[Message.user("hi")]))
    await model.aclose()
    await model.aclose()  # twice is fine
    assert (await model.complete(ModelRequest(messages=[Message.user("hi")]))).text


async def test_connections_are_pooled(server: LoopbackServer, make_settings: Callable[..., Any]) -> None:
    server.add(*[Reply(json=OPENAI_HELLO) for _ in range(5)])
    model = create_openai("m", make_settings(), endpoint="local")
    for _ in range(5):
        await model.complete(ModelRequest(messages=[Message.user("hi")]))
    assert server.connections == 1


async def test_secrets_stay_out_of_errors_events_and_reprs(
    server: LoopbackServer, make_settings: Callable[..., Any]
) -> None:
    secret_header = "hdr-secret-0123456789"
    settings = make_settings(
        max_retries=1,
        endpoints={
            "local": {
                "base_url": f"http://user:pw-0123456789@127.0.0.1:{server.port}/v1?key=query-secret",
                "headers": {"X-Api-Token": secret_header},
            }
        },
    )
    echo = {"error": {"message": f"key {OPENAI_KEY} and token {secret_header} are not valid"}}
    server.add(Reply(500, json=echo), Reply(401, json=echo))
    events: list[tuple[str, dict[str, Any]]] = []
    model = create_openai("m", settings, endpoint="local")
    with pytest.raises(AuthenticationError) as caught:
        await model.complete(
            ModelRequest(messages=[Message.user("hi")], emit=lambda t, d: events.append((t, d)))
        )
    endpoint = get_endpoint(settings, "local", OPENAI)
    shown = " ".join(
        [
            str(caught.value),
            repr(caught.value.to_dict()),
            repr(events),
            repr(model),
            repr(endpoint),
            repr(provider_settings(settings)),
            str(caught.value.provider_message),
        ]
    )
    for secret in (OPENAI_KEY, secret_header, "pw-0123456789", "query-secret"):
        assert secret not in shown
    assert caught.value.endpoint == f"http://127.0.0.1:{server.port}/v1"
    assert "***" in (caught.value.provider_message or "")
    assert OPENAI_401  # the reference 401 body is covered in test_retries


def test_executor_refuses_a_bad_providers_table() -> None:
    with pytest.raises(ConfigError, match=r"\[tool.executus.providers\] retries"):
        Executor(entry_points=False, settings={"providers": {"retries": 3}})


def test_every_setting_is_documented() -> None:
    text = (Path(__file__).parents[2] / "docs" / "providers.md").read_text()
    for field in EndpointSettings.model_fields:
        assert f"| `{field}` |" in text, f"docs/providers.md has no row for the setting {field}"
