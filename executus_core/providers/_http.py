"""What the HTTP providers share: endpoint settings, one pooled client per endpoint, retries, SSE.

Settings live under ``[tool.executus.providers]``: the table's own keys are defaults for every
endpoint, and each ``[tool.executus.providers.endpoints.<name>]`` table configures one endpoint,
overriding any of those defaults::

    [tool.executus.providers]
    max_retries = 6

    [tool.executus.providers.endpoints.local]      # model ids local:<model>
    api = "openai"
    base_url = "http://127.0.0.1:11434/v1"

The endpoints named ``openai`` and ``anthropic`` always exist (from ``OPENAI_BASE_URL`` /
``OPENAI_API_KEY`` and ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``); a table with their name
overrides them. Every model on one endpoint shares its `Endpoint`, which owns one pooled
``httpx2.AsyncClient``, opened on first use and closed by ``aclose()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import os
import random
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

import httpx2
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from executus_core.config import Settings
from executus_core.errors import (
    AuthenticationError,
    ConfigError,
    ProviderConnectionError,
    ProviderError,
    ProviderResponseError,
    ProviderStatusError,
    RateLimited,
)
from executus_core.types import ModelRequest, ModelResponse, ToolSpec, Usage

__all__ = [
    "ApiDefaults",
    "Endpoint",
    "EndpointSettings",
    "HttpModel",
    "HttpSettings",
    "ProviderSettings",
    "as_count",
    "as_dict",
    "as_list",
    "as_str",
    "compact",
    "get_endpoint",
    "iter_sse",
    "json_object",
    "named_endpoint",
    "parse_retry_after",
    "provider_settings",
    "safe_url",
    "truncate",
]

SECTION = "providers"
PLUGIN = "executus-core providers"
MiB = 1024 * 1024

try:
    from importlib.metadata import version as _version

    USER_AGENT = f"executus/{_version('executus-core')}"
except Exception:  # not installed as a distribution (a source checkout on sys.path)
    USER_AGENT = "executus"


class HttpSettings(BaseModel):
    """How executus talks to an endpoint: timeouts, connection limits, retries and the transport.

    Durations are seconds. Set them for every endpoint under ``[tool.executus.providers]``, or for
    one under ``[tool.executus.providers.endpoints.<name>]``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    connect_timeout: float = Field(5.0, gt=0, description="Longest wait to open a connection.")
    read_timeout: float = Field(
        600.0, gt=0, description="Longest wait for the next bytes of an answer (or between stream events)."
    )
    write_timeout: float = Field(60.0, gt=0, description="Longest wait to send a request body.")
    pool_timeout: float = Field(60.0, gt=0, description="Longest wait for a free pooled connection.")
    max_connections: int = Field(100, ge=1, description="Open connections per endpoint, at most.")
    max_keepalive_connections: int | None = Field(
        None, ge=0, description="Idle connections kept open per endpoint (default: max_connections)."
    )
    keepalive_seconds: float = Field(5.0, ge=0, description="How long an idle connection is kept.")
    max_retries: int = Field(4, ge=0, description="Retries after the first attempt, at most.")
    retry_base_seconds: float = Field(0.5, ge=0, description="The first backoff wait; each retry doubles it.")
    retry_cap_seconds: float = Field(8.0, ge=0, description="The longest backoff wait (before jitter).")
    retry_total_seconds: float = Field(
        60.0, ge=0, description="No retry starts once this much time has passed since the first attempt."
    )
    max_event_bytes: int = Field(
        8 * MiB,
        ge=1024,
        description="The longest server-sent-event line, and the most data one event may carry.",
    )
    max_body_bytes: int = Field(
        32 * MiB,
        ge=1024,
        description="The most bytes one answer may hold, streamed or not (after decompression).",
    )
    max_error_chars: int = Field(
        2048,
        ge=80,
        description="The most characters of a server's error message kept (the rest is cut, its size said).",
    )
    transport: httpx2.AsyncBaseTransport | Literal["httpx", "aiohttp"] | None = Field(
        None,
        repr=False,
        description='"aiohttp" (the aiohttp extra), "httpx" (the default), or any httpx2 transport object in code.',
    )

    @field_validator("transport")
    @classmethod
    def _aiohttp_is_installed(cls, value: Any) -> Any:
        if value == "aiohttp":
            try:
                import httpx_aiohttp.httpx2  # noqa: F401
            except ImportError as exc:
                raise ValueError(
                    f'transport = "aiohttp" needs the aiohttp extra ({exc}): '
                    "pip install 'executus-core[aiohttp]'"
                ) from None
        return value


class EndpointSettings(HttpSettings):
    """One endpoint: ``[tool.executus.providers.endpoints.<name>]``; model ids ``<name>:<model>``.

    Keys not set here take the value under ``[tool.executus.providers]``. ``api_key`` or
    ``api_key_env`` (the name of an environment variable holding it) gives the key; a named endpoint
    with neither sends none, as local servers expect.

    Example::

        [tool.executus.providers.endpoints.local]
        api = "openai"
        base_url = "http://127.0.0.1:8080/v1"
        headers = { "X-Team" = "search" }
    """

    api: str = Field(
        "openai", description="The wire format: openai (Chat Completions) or anthropic (Messages)."
    )
    base_url: str | None = Field(
        None,
        description="The API's base URL (required for a named endpoint; e.g. http://127.0.0.1:11434/v1).",
    )
    api_key: SecretStr | None = Field(None, description="The API key (prefer api_key_env).")
    api_key_env: str | None = Field(None, description="The environment variable that holds the API key.")
    headers: dict[str, str] = Field(
        default_factory=dict, repr=False, description="Extra HTTP headers sent with every request."
    )
    max_tokens: int = Field(
        4096, ge=1, description="anthropic: max_tokens when ModelSettings.max_tokens is not set."
    )
    anthropic_version: str = Field("2023-06-01", description="anthropic: the anthropic-version header.")
    stream_usage: bool = Field(
        True, description='openai: ask for usage in streams (stream_options = {"include_usage": true}).'
    )
    tool_only_content: str = Field(
        "empty",
        pattern="^(null|empty)$",
        description='openai: the content of an assistant message that only calls tools: "" (empty) or null.',
    )
    estimate_usage: bool = Field(
        False,
        description="When the server reports no token usage, estimate it (~4 characters a token) and say so.",
    )

    def __repr_args__(self) -> Any:
        # A base URL may carry credentials (user:password@, ?key=): show it without them.
        for name, value in super().__repr_args__():
            yield name, safe_url(value) if name == "base_url" and value else value

    @field_validator("api")
    @classmethod
    def _api_is_a_name(cls, value: str) -> str:
        if not value or ":" in value:
            raise ValueError("api must name a provider, such as openai or anthropic")
        return value


class ProviderSettings(HttpSettings):
    """``[tool.executus.providers]``: defaults for every endpoint, and the named ``endpoints``."""

    endpoints: dict[str, EndpointSettings] = Field(
        default_factory=dict, description="Named endpoints: name -> settings; model ids <name>:<model>."
    )

    @field_validator("endpoints")
    @classmethod
    def _names_are_prefixes(cls, value: dict[str, EndpointSettings]) -> dict[str, EndpointSettings]:
        for name in value:
            if not name or ":" in name:
                raise ValueError(f"endpoint name {name!r} cannot be used as a model id prefix (no ':')")
        return value


HTTP_FIELDS = tuple(HttpSettings.model_fields)


@dataclasses.dataclass(frozen=True, slots=True)
class ApiDefaults:
    """What a wire format brings to an endpoint: where it lives by default and how it authenticates."""

    api: str
    base_url: str
    base_url_env: str
    api_key_env: str
    path: str
    auth_header: Callable[[str], tuple[str, str]]
    extra_headers: Callable[[EndpointSettings], list[tuple[str, str]]] | None = None


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment: what errors, events and reprs may show."""
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL:
        return "<invalid URL>"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path.rstrip('/')}"


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else ``{}``: what a parser reads where an object belongs."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else ``[]``."""
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str:
    """``value`` if it is a string, else ``""``."""
    return value if isinstance(value, str) else ""


def as_count(value: Any) -> int:
    """A token count: ``value`` if it is a non-negative integer (not a bool), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def compact(data: bytes) -> bytes:
    """A right-sized copy of ``orjson.dumps`` output, for bytes kept as long as the transcript.

    orjson hands back its bytes inside a ~4 KiB allocation; a transcript caches one per message, so
    keeping the originals costs ~4 KiB a message (measured: 4.0 KiB vs 0.14 KiB per small message).
    """
    return bytes(memoryview(data))


def json_object(raw: str) -> tuple[dict[str, Any], str | None]:
    """Parse tool-call arguments sent as JSON text; ``({}, why)`` when they are not a JSON object.

    An empty string is a call without arguments (servers send ``""`` for those).
    """
    if not raw:
        return {}, None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {}, str(exc)
    if not isinstance(value, dict):
        return {}, f"expected a JSON object, got {type(value).__name__}"
    return value, None


# --- settings ---------------------------------------------------------------------------------


class _Pool:
    """The validated ``providers`` section of one `Settings`, and the endpoints built from it."""

    def __init__(self, settings: Settings) -> None:
        self.section = settings.section(SECTION, ProviderSettings, plugin=PLUGIN)
        self.endpoints: dict[str, Endpoint] = {}


# One pool per Settings object (each Executor has its own), so two executors never share clients.
_pools: weakref.WeakKeyDictionary[Settings, _Pool] = weakref.WeakKeyDictionary()


def _pool(settings: Settings) -> _Pool:
    pool = _pools.get(settings)
    if pool is None:
        pool = _pools[settings] = _Pool(settings)
    return pool


def provider_settings(settings: Settings) -> ProviderSettings:
    """The validated ``[tool.executus.providers]`` table; raises `ConfigError` naming a bad key."""
    return _pool(settings).section


def named_endpoint(settings: Settings, name: str) -> EndpointSettings | None:
    """The settings of endpoint ``name`` if ``[tool.executus.providers.endpoints]`` declares it."""
    return provider_settings(settings).endpoints.get(name)


def get_endpoint(settings: Settings, name: str, defaults: ApiDefaults) -> Endpoint:
    """The shared `Endpoint` called ``name`` speaking ``defaults.api``, built on first use."""
    pool = _pool(settings)
    endpoint = pool.endpoints.get(name)
    if endpoint is None:
        endpoint = pool.endpoints[name] = Endpoint.from_settings(name, pool.section, defaults)
    elif endpoint.api != defaults.api:
        raise ConfigError(
            f"endpoint {name!r} speaks {endpoint.api!r}, not {defaults.api!r}: set "
            f'api = "{endpoint.api}" in [tool.executus.providers.endpoints.{name}] or use another name'
        )
    return endpoint


# --- errors -----------------------------------------------------------------------------------


def parse_retry_after(headers: httpx2.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _provider_message(content: bytes) -> str | None:
    """The error message in a body, whatever shape the server used (OpenAI, Anthropic, Ollama, FastAPI).

    The caller bounds both ``content`` and the message it returns (see `truncate`).
    """
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content.decode("utf-8", "replace").strip()
        return text or None
    if not isinstance(data, dict):
        return None
    error = data.get("error", data)
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        for key in ("message", "detail", "msg"):
            value = error.get(key)
            if isinstance(value, str):
                return value
        if isinstance(error.get("detail"), list | dict):
            return orjson.dumps(error["detail"]).decode()
    return None


def truncate(text: str, limit: int, total: int | str | None = None) -> str:
    """``text`` cut to ``limit`` characters, saying how much there was (``total``: a size to quote)."""
    if len(text) <= limit and total is None:
        return text
    size = total if total is not None else f"{len(text):,} characters"
    if isinstance(size, int):
        size = f"{size:,} bytes"
    return f"{text[:limit]} ... [cut: the server sent {size}]"


# A 5xx whose body is a request-validation error (pydantic's "1 validation error for X", FastAPI's
# "7 validation errors:" and "Input should be ...") fails the same way on every try:
# llama-cpp-python's server answers 500 for a request body its schema refuses.
_VALIDATION = re.compile(rb"\d+ validation errors?\b|ValidationError|Input should be", re.IGNORECASE)
# How many characters of such a dump are kept: the first lines name the field; the rest is the
# same complaint for each member of a union.
_VALIDATION_CHARS = 600
# The most bytes of an error body read (the rest is not): enough for any real error message.
_ERROR_READ_BYTES = 64 * 1024


def _validation_hint(text: str) -> str:
    """Which setting most likely made the server refuse the request, from what it complained about."""
    if "stream_options" in text:
        return "the server may not know stream_options: set stream_usage = false on this endpoint"
    if "tool_choice" in text:
        return "the server may not accept tool_choice: set tool_choice in the agent's model_settings"
    if "content" in text and ("None" in text or "null" in text):
        return (
            'the server may refuse null message content: set tool_only_content = "empty" on this '
            "endpoint (the default)"
        )
    return (
        "check the agent's model_settings extras and this endpoint's tool_only_content and "
        "stream_usage settings"
    )


# --- the endpoint -----------------------------------------------------------------------------


class Endpoint:
    """One API endpoint: its address, credentials, retry policy and pooled client.

    Every model built for this endpoint shares it. The client is opened on first use (in the running
    event loop) and closed by `aclose`; a later request opens a new one.
    """

    def __init__(
        self,
        *,
        name: str,
        defaults: ApiDefaults,
        base_url: str,
        api_key: str | None,
        key_source: str,
        headers: dict[str, str],
        options: HttpSettings,
        endpoint: EndpointSettings,
    ) -> None:
        self.name = name
        self.api = defaults.api
        self.options = options
        self.settings = endpoint
        self.url = url = httpx2.URL(base_url.rstrip("/") + defaults.path)
        # What errors and events show: no credentials, no query string (keys sometimes travel there).
        self.display_url = safe_url(base_url)
        self._key = api_key
        self.key_source = key_source
        base = [("user-agent", USER_AGENT), ("content-type", "application/json")]
        if defaults.extra_headers is not None:
            base.extend(defaults.extra_headers(endpoint))
        if api_key:
            base.append(defaults.auth_header(api_key))
        base.extend((k.lower(), v) for k, v in headers.items())
        self._headers = [*base, ("accept", "application/json")]
        self._stream_headers = [*base, ("accept", "text/event-stream")]
        # Header values (Azure's api-key, tokens) and credentials in the URL are secrets too.
        url_secrets = [httpx2.URL(base_url).password or "", *httpx2.URL(base_url).params.values()]
        self._secrets = [s for s in [api_key, *headers.values(), *url_secrets] if s and len(s) >= 6]
        self.missing_key: str | None = None
        if not api_key and url.host in _OFFICIAL_HOSTS:
            self.missing_key = key_source
        self._timeout = httpx2.Timeout(
            connect=options.connect_timeout,
            read=options.read_timeout,
            write=options.write_timeout,
            pool=options.pool_timeout,
        )
        self._extensions = {"timeout": self._timeout.as_dict()}
        self._client: httpx2.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(cls, name: str, section: ProviderSettings, defaults: ApiDefaults) -> Endpoint:
        """Resolve endpoint ``name`` from the ``providers`` section, the environment and ``defaults``."""
        where = f"[tool.executus.providers.endpoints.{name}]"
        endpoint = section.endpoints.get(name)
        builtin = name == defaults.api
        if endpoint is None:
            if not builtin:
                raise ConfigError(f"no endpoint {name!r}: add a {where} table with api and base_url")
            endpoint = EndpointSettings(api=defaults.api)
        if endpoint.api != defaults.api:
            raise ConfigError(
                f"{where} says api = {endpoint.api!r}, but it is used as a {defaults.api!r} endpoint; "
                f'set api = "{defaults.api}" or give the endpoint another name'
            )
        options = HttpSettings.model_construct(
            **{
                field: getattr(endpoint if field in endpoint.model_fields_set else section, field)
                for field in HTTP_FIELDS
            }
        )
        base_url = endpoint.base_url
        origin = f"base_url in {where}"
        if not base_url:
            if not builtin:
                raise ConfigError(f"{where} needs base_url (for example http://127.0.0.1:11434/v1)")
            base_url = os.environ.get(defaults.base_url_env) or defaults.base_url
            origin = defaults.base_url_env
        try:
            parsed = httpx2.URL(base_url)
        except httpx2.InvalidURL as exc:
            raise ConfigError(f"endpoint {name!r}: {origin} is not a valid URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(
                f"endpoint {name!r}: {origin} {safe_url(base_url)!r} must be an http:// or https:// URL "
                "(for example http://127.0.0.1:11434/v1)"
            )
        if endpoint.api_key is not None:
            key: str | None = endpoint.api_key.get_secret_value()
            source = f"api_key in {where}"
        else:
            env = endpoint.api_key_env or (defaults.api_key_env if builtin else None)
            key = os.environ.get(env) if env else None
            source = env or f"api_key_env (or api_key) in {where}"
        return cls(
            name=name,
            defaults=defaults,
            base_url=base_url,
            api_key=key or None,
            key_source=source,
            headers=dict(endpoint.headers),
            options=options,
            endpoint=endpoint,
        )

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, api={self.api!r}, url={self.display_url!r})"

    def redact(self, text: str) -> str:
        """``text`` with the API key and header values replaced by ``***``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    # -- the client ----------------------------------------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop) -> httpx2.AsyncClient:
        # A client is tied to the loop it first ran in: a host calling run_sync with a fresh loop
        # each time gets a fresh client (the old one's connections belong to a closed loop).
        options = self.options
        limits = httpx2.Limits(
            max_connections=options.max_connections,
            max_keepalive_connections=(
                options.max_connections
                if options.max_keepalive_connections is None
                else options.max_keepalive_connections
            ),
            keepalive_expiry=options.keepalive_seconds,
        )
        transport = options.transport
        if transport == "aiohttp":
            # One per client, like the client: an aiohttp session belongs to the loop it started in.
            from httpx_aiohttp.httpx2 import AiohttpTransport

            transport = AiohttpTransport(limits=limits)
        elif transport == "httpx":
            transport = None
        self._client = httpx2.AsyncClient(
            transport=transport, limits=limits, timeout=self._timeout, follow_redirects=False
        )
        self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the pooled client (a later request opens a new one). Safe to call twice."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    # -- sending -------------------------------------------------------------------------------

    def error(
        self,
        cls: type[ProviderError],
        message: str,
        *,
        said_limit: int | None = None,
        said_size: int | str | None = None,
        **fields: Any,
    ) -> ProviderError:
        """A provider error of this endpoint, with secrets scrubbed from what the server said.

        What the server said (``provider_message``) goes into ``Result.error``, the audit and
        webhooks, so it is cut to ``said_limit`` (default: ``max_error_chars``) characters;
        ``said_size`` is the size to quote when the caller read only part of it.
        """
        provider_message = fields.pop("provider_message", None)
        if provider_message is not None and not isinstance(provider_message, str):
            # A server may put any JSON where its message belongs: quote it as JSON.
            provider_message = orjson.dumps(provider_message, default=repr).decode()
        if provider_message:
            limit = self.options.max_error_chars if said_limit is None else said_limit
            if len(provider_message) > limit or said_size is not None:
                provider_message = truncate(provider_message, limit, said_size)
            provider_message = self.redact(provider_message)
        return cls(
            self.redact(message),
            provider=self.name,
            endpoint=self.display_url,
            provider_message=provider_message,
            **fields,
        )

    async def post(self, body: bytes, request: ModelRequest, *, stream: bool = False) -> httpx2.Response:
        """POST ``body``; retry what may succeed later; return a 2xx response or raise a `ProviderError`.

        With ``stream=False`` the body has been read (at most ``max_body_bytes`` of it): see
        ``response.content``. With ``stream=True`` it is not read yet: the caller iterates it (with
        `iter_sse`, which bounds it) and must close the response.
        """
        if self.missing_key is not None:
            raise self.error(
                AuthenticationError,
                f"no API key for endpoint {self.name!r}: set {self.key_source}",
            )
        loop = asyncio.get_running_loop()
        client = self._client
        if client is None or self._loop is not loop:
            client = self._open(loop)
        headers = self._stream_headers if stream else self._headers
        options = self.options
        attempt = 0
        started = loop.time()
        while True:
            http_request = httpx2.Request(
                "POST", self.url, headers=headers, content=body, extensions=self._extensions
            )
            try:
                # Always streamed from the socket, so no body is read without a bound.
                response = await client.send(http_request, stream=True)
            except httpx2.TransportError as exc:
                error = self._transport_error(exc)
            else:
                if response.status_code < 300:
                    if stream:
                        return response
                    try:
                        await self._read_body(response)
                    except httpx2.TransportError as exc:
                        error = self._transport_error(exc)
                    else:
                        return response
                else:
                    error = await self._status_error(response)
            if not error.retryable or attempt >= options.max_retries:
                raise error
            wait = error.retry_after
            if wait is None:
                wait = min(options.retry_cap_seconds, options.retry_base_seconds * 2**attempt)
                wait *= 1 - 0.25 * random.random()  # jitter, so many clients do not retry in step
            now = loop.time()
            if now + wait - started > options.retry_total_seconds:
                raise error
            if request.deadline is not None and now + wait >= request.deadline:
                raise error
            attempt += 1
            if request.emit is not None:
                request.emit(
                    "model.retry",
                    {
                        "provider": self.name,
                        "endpoint": self.display_url,
                        "attempt": attempt,
                        "max_retries": options.max_retries,
                        "wait_seconds": round(wait, 3),
                        "status_code": error.status_code,
                        "error": str(error),
                    },
                )
            await asyncio.sleep(wait)

    async def _read_body(self, response: httpx2.Response) -> bytes:
        """Read a whole (non-streamed) answer, at most ``max_body_bytes``; closes the response."""
        limit = self.options.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise self.error(
                        ProviderResponseError,
                        f"the answer is larger than max_body_bytes ({limit:,} bytes); raise max_body_bytes "
                        "under [tool.executus.providers] if such answers are expected",
                        status_code=response.status_code,
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        content = b"".join(chunks)
        # What Response.aread() stores: response.content then works as for any read response.
        response._content = content
        return content

    def _transport_error(self, exc: httpx2.TransportError) -> ProviderError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, httpx2.UnsupportedProtocol | httpx2.LocalProtocolError):
            return self.error(
                ProviderConnectionError,
                f"cannot send to {self.display_url} ({detail}); check base_url",
                retryable=False,
            )
        if isinstance(exc, httpx2.TimeoutException):
            kind = {
                httpx2.ConnectTimeout: "connecting",
                httpx2.ReadTimeout: "waiting for the answer",
                httpx2.WriteTimeout: "sending the request",
                httpx2.PoolTimeout: "waiting for a free connection",
            }.get(type(exc), "talking to the server")
            return self.error(
                ProviderConnectionError,
                f"timed out {kind} ({detail}); raise the timeouts under [tool.executus.providers] "
                "if the server is just slow",
            )
        if isinstance(exc, httpx2.ConnectError):
            return self.error(
                ProviderConnectionError,
                f"cannot connect to {self.display_url} ({detail}); check base_url and that the server is up",
            )
        return self.error(ProviderConnectionError, f"the connection to {self.display_url} failed ({detail})")

    async def _status_error(self, response: httpx2.Response) -> ProviderError:
        # Only the head of an error body is read: a server may send megabytes of it.
        chunks: list[bytes] = []
        size = 0
        cut = False
        try:
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= _ERROR_READ_BYTES:
                    cut = True
                    break
        except httpx2.HTTPError:
            pass
        finally:
            await response.aclose()
        content = b"".join(chunks)[:_ERROR_READ_BYTES]
        status = response.status_code
        headers = response.headers
        said = _provider_message(content)
        total: int | str | None = None
        if cut:
            length = headers.get("content-length", "")
            total = int(length) if length.isdigit() else f"more than {_ERROR_READ_BYTES:,} bytes"
        validation = status >= 500 and _VALIDATION.search(content) is not None
        fields: dict[str, Any] = {
            "status_code": status,
            "request_id": headers.get("x-request-id") or headers.get("request-id"),
            "provider_message": said,
            "said_size": total,
            "retry_after": parse_retry_after(headers),
        }
        if validation:
            fields["said_limit"] = min(_VALIDATION_CHARS, self.options.max_error_chars)
        cls: type[ProviderError] = ProviderStatusError
        if status in (401, 403):
            cls = AuthenticationError
            message = (
                f"the server refused the API key (HTTP {status}); check {self.key_source}"
                if self._key
                else f"the server wants an API key (HTTP {status}) and none was sent; set {self.key_source}"
            )
        elif status == 429:
            cls = RateLimited
            message = "rate limited (HTTP 429): too many requests or tokens for now"
        elif validation:
            # Deterministic: the same body fails the same way, so it is not retried.
            hint = _validation_hint(content.decode("utf-8", "replace"))
            message = (
                f"the server refused the request as invalid (HTTP {status} with a validation error; "
                f"not retried): {hint}"
            )
        elif status in (408, 409) or status >= 500:
            fields["retryable"] = True
            message = f"the server failed to answer (HTTP {status})"
        elif status == 404:
            message = "not found (HTTP 404): check the model name and base_url"
        elif 300 <= status < 400:
            location = headers.get("location", "?")
            message = f"the server redirected to {location} (HTTP {status}): set base_url to that address"
        else:
            message = f"the server rejected the request (HTTP {status})"
        if headers.get("x-should-retry") == "false":
            fields["retryable"] = False
        return self.error(cls, message, **fields)


_OFFICIAL_HOSTS = frozenset({"api.openai.com", "api.anthropic.com"})


# --- server-sent events -----------------------------------------------------------------------


async def iter_sse(
    response: httpx2.Response,
    *,
    max_event_bytes: int = 8 * MiB,
    max_body_bytes: int = 32 * MiB,
    error: Callable[[str], Exception] = ProviderResponseError,
) -> AsyncIterator[tuple[bytes, bytes]]:
    """Yield ``(event, data)`` for each server-sent event of a streaming response.

    ``event`` is ``b""`` when the server named none; multi-line data is joined with ``\\n``. Works on
    bytes (no decoding of the whole stream); an event left unterminated when the stream ends is
    dropped, as the SSE specification says.

    Memory stays bounded: a line longer than ``max_event_bytes``, an event whose data adds up to
    more, or a stream longer than ``max_body_bytes`` raises ``error(message)`` (a
    `ProviderResponseError` unless the caller builds its own) as soon as it is seen.
    """
    buffer = bytearray()
    event = b""
    data: list[bytes] = []
    held = 0  # bytes of data in the event being read
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_body_bytes:
            raise error(
                f"the stream is longer than max_body_bytes ({max_body_bytes:,} bytes); raise "
                "max_body_bytes under [tool.executus.providers] if such answers are expected"
            )
        if len(buffer) + len(chunk) > max_event_bytes and b"\n" not in chunk:
            raise error(_too_big("a line", max_event_bytes))  # refused before the buffer grows past it
        # Search only the new bytes for line ends: a long line arriving in many chunks is not
        # scanned again for each one.
        scan = len(buffer)
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", scan)) >= 0:
            line = bytes(buffer[start:end])
            start = scan = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data or event:
                    yield event, b"\n".join(data)
                    event, data, held = b"", [], 0
                continue
            if line[:1] == b":":
                continue  # a comment: keep-alive
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                held += len(value) + 1
                if held > max_event_bytes:
                    raise error(_too_big("an event's data", max_event_bytes))
                data.append(value)
            elif name == b"event":
                event = value
        if start:
            del buffer[:start]
        if len(buffer) > max_event_bytes:
            raise error(_too_big("a line", max_event_bytes))


def _too_big(what: str, limit: int) -> str:
    return (
        f"{what} of the stream is longer than max_event_bytes ({limit:,} bytes); raise max_event_bytes "
        "under [tool.executus.providers] if the server sends such events"
    )


_TOOL_CACHE_SIZE = 1024
# The rough size of a token, for estimate_usage: ~4 characters of English or JSON.
_CHARS_PER_TOKEN = 4


class HttpModel:
    """What the HTTP providers share; a subclass speaks one wire format.

    A subclass writes the request (`body`, `_tool_wire`) and reads the answer (`_parse`,
    `_complete_stream`); the endpoint, dry-run previews, tool caching and error building are here.
    """

    request_id_header = "x-request-id"

    def __init__(self, model: str, endpoint: Endpoint) -> None:
        self.model = model
        self.endpoint = endpoint
        self.id = f"{endpoint.name}:{model}"
        self._tools: dict[int, tuple[ToolSpec, bytes]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, endpoint={self.endpoint.display_url!r})"

    async def aclose(self) -> None:
        """Close the endpoint's pooled client (shared with the endpoint's other models)."""
        await self.endpoint.aclose()

    def body(self, request: ModelRequest, *, stream: bool = False) -> bytes:
        """The request body for ``request``, assembled from each message's cached wire bytes."""
        raise NotImplementedError

    def _tool_wire(self, spec: ToolSpec) -> dict[str, Any]:
        """One tool declaration in this wire format."""
        raise NotImplementedError

    def _tool_bytes(self, tools: Sequence[ToolSpec]) -> bytes:
        cache = self._tools
        out = []
        for spec in tools:
            # A Tool builds its spec once, so specs are cached by identity (the entry keeps the
            # spec alive, so its id cannot be reused while it is cached).
            hit = cache.get(id(spec))
            if hit is None or hit[0] is not spec:
                if len(cache) >= _TOOL_CACHE_SIZE:
                    cache.clear()
                hit = cache[id(spec)] = (spec, compact(orjson.dumps(self._tool_wire(spec))))
            out.append(hit[1])
        return b",".join(out)

    def preview(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body `complete` would send (without headers, so without the key): for dry runs."""
        return orjson.loads(self.body(request, stream=request.settings.stream))

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send the transcript, return the answer; raises the `ProviderError` family."""
        stream = request.settings.stream
        body = self.body(request, stream=stream)
        if stream:
            return await self._complete_stream(body, request)
        response = await self.endpoint.post(body, request)
        return self._parse(response, body)

    def _parse(self, response: httpx2.Response, body: bytes) -> ModelResponse:
        """The answer to ``body`` (already read, in ``response.content``) as a `ModelResponse`."""
        raise NotImplementedError

    async def _complete_stream(self, body: bytes, request: ModelRequest) -> ModelResponse:
        raise NotImplementedError

    def _events(self, response: httpx2.Response) -> AsyncIterator[tuple[bytes, bytes]]:
        """`iter_sse` over ``response`` with the endpoint's bounds and this model's errors."""
        options = self.endpoint.options
        return iter_sse(
            response,
            max_event_bytes=options.max_event_bytes,
            max_body_bytes=options.max_body_bytes,
            error=lambda message: self._bad(message, response),
        )

    def _finish(
        self,
        answer: ModelResponse,
        *,
        usage_reported: bool,
        body: bytes,
    ) -> ModelResponse:
        """Add what the caller should know to ``answer``: no usage reported (or estimated), no content."""
        warnings = answer.warnings
        if not usage_reported:
            endpoint = self.endpoint
            if endpoint.settings.estimate_usage:
                out = len(answer.text or "") + sum(
                    len(call.raw_arguments or orjson.dumps(call.arguments)) + len(call.name)
                    for call in answer.tool_calls
                )
                answer.usage = Usage.model_construct(
                    input_tokens=-(-len(body) // _CHARS_PER_TOKEN),
                    output_tokens=-(-out // _CHARS_PER_TOKEN),
                    thinking_tokens=0,
                    cached_input_tokens=0,
                )
                warnings.append(
                    f"endpoint {endpoint.name!r} reported no token usage: tokens are estimated from the "
                    f"request and answer sizes (~{_CHARS_PER_TOKEN} characters a token), not counted by "
                    "the server"
                )
            else:
                warnings.append(
                    f"endpoint {endpoint.name!r} reported no token usage: its calls count 0 tokens, so "
                    "budgets and stats miss them; set estimate_usage = true in "
                    f"[tool.executus.providers.endpoints.{endpoint.name}] to estimate them"
                )
        if answer.text is None and not answer.tool_calls:
            warnings.append(
                f"model {self.id} answered with neither text nor a tool call "
                f"(finish reason {answer.finish_reason})"
            )
        return answer

    def _bad(self, message: str, response: httpx2.Response | None, **fields: Any) -> ProviderResponseError:
        if response is not None:
            fields["status_code"] = response.status_code
            fields["request_id"] = response.headers.get(self.request_id_header)
        error = self.endpoint.error(ProviderResponseError, message, **fields)
        assert isinstance(error, ProviderResponseError)
        return error

    def _load(self, response: httpx2.Response) -> dict[str, Any]:
        """The answer's JSON object, or a `ProviderResponseError` that quotes what came instead."""
        content = response.content
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            snippet = content[:200].decode("utf-8", "replace")
            raise self._bad(f"the answer is not valid JSON ({exc}): {snippet!r}", response) from None
        if not isinstance(data, dict):
            raise self._bad(f"the answer is JSON but not an object: {type(data).__name__}", response)
        return data

    def _stream_event(self, data: bytes, events: int, response: httpx2.Response) -> dict[str, Any]:
        """Stream event number ``events`` as a JSON object, or a `ProviderResponseError`."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._bad(f"stream event {events} is not valid JSON ({exc})", response) from None
        if not isinstance(event, dict):
            raise self._bad(f"stream event {events} is not a JSON object", response)
        return event

    def _stream_error(self, error: Any, response: httpx2.Response) -> ProviderResponseError:
        """The error a server reported mid-stream (``error`` is its error object or text)."""
        said = error.get("message") if isinstance(error, dict) else str(error)
        return self._bad("the server reported an error mid-stream", response, provider_message=said)

    def _cut_off(
        self, exc: httpx2.TransportError, events: int, response: httpx2.Response
    ) -> ProviderResponseError:
        """The error for a stream whose connection failed after ``events`` events."""
        return self._bad(
            f"the stream was cut off after {events} events ({type(exc).__name__}: {exc})", response
        )
