"""``[tool.executus.otel]``: where the spans go and what they may carry.

::

    [tool.executus.otel]
    tracer_provider = "auto"        # the host's global provider if it set one, else one of our own
    endpoint = "http://collector:4318"              # our own provider's OTLP/HTTP endpoint
    headers = { authorization = "Bearer ..." }      # sent with every export (never logged)
    timeout = 10                    # seconds one export may take
    service_name = "support-bot"    # our own provider's service.name (default: OTEL_SERVICE_NAME, else executus)
    capture_content = false         # true: prompts' answers, tool arguments and results go on the spans
    mask_keys = ["ssn"]             # more field names whose values are masked, beside the built-in ones

The same from the environment: ``EXECUTUS_OTEL__CAPTURE_CONTENT=true``; in code:
``Executor(settings={"otel": {"endpoint": "http://collector:4318"}})``. Where ``endpoint`` is not
set, the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` apply, and
then the OTLP default ``http://localhost:4318/v1/traces``.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_SKIP_EVENTS", "SECTION", "OtelSettings", "traces_url"]

SECTION = "otel"
"""The name of the settings table (``[tool.executus.otel]``) and of the plugin."""

DEFAULT_SKIP_EVENTS = ("model.delta", "run.start", "run.end", "step", "tool.start", "tool.end", "child")
"""Run events that do not become span events: the spans themselves already say them (and streamed
text deltas would be one event per token)."""


class OtelSettings(BaseModel):
    """The settings of the ``otel`` battery (``[tool.executus.otel]``). Durations are seconds."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: installed but off (no spans, no exporter).")
    tracer_provider: Literal["auto", "global", "own"] = Field(
        "auto",
        description="auto: the host's global tracer provider when it set one (trace.set_tracer_provider), "
        "else a provider of our own with an OTLP/HTTP exporter when an endpoint is configured (else runs "
        "are not recorded, with one warning); global: always the host's (spans go nowhere until it sets "
        "one); own: always ours, whatever the host set (default endpoint http://localhost:4318).",
    )
    endpoint: str | None = Field(
        None,
        description="Our own provider's OTLP/HTTP endpoint: a collector's base URL "
        "(http://collector:4318, /v1/traces is added) or the full traces URL. Default: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="HTTP headers sent with every export (an API key, an authorization); never logged.",
    )
    timeout: float = Field(10.0, gt=0, description="Longest one export request may take, retries included.")
    service_name: str | None = Field(
        None,
        description="service.name of our own provider's resource. Default: OTEL_SERVICE_NAME, else executus.",
    )
    capture_content: bool = Field(
        False,
        description="Put content on the spans: each model answer (gen_ai.output.messages), tool arguments "
        "and results, the run's output and event payloads, with secrets masked. Off by default: content "
        "often holds personal data.",
    )
    mask_keys: list[str] = Field(
        default_factory=list,
        description="More field names (case-insensitive) whose values are masked, beside password, "
        "token, api_key, secret, authorization, cookie and the like.",
    )
    skip_events: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SKIP_EVENTS),
        description="Run event types that do not become span events on the invoke_agent span.",
    )
    shutdown_timeout: float = Field(
        5.0, gt=0, description="Longest Executor.shutdown waits for our own provider to send what is left."
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL with a host, such as http://collector:4318 "
                "(OTLP over HTTP; this battery does not speak gRPC)"
            )
        return value


def traces_url(endpoint: str) -> str:
    """The full traces URL of ``endpoint``: a base URL (no path) gets ``/v1/traces``."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint
