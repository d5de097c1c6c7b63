"""Our own tracer provider, for a host that configured none: OTLP over HTTP, in batches, off the loop.

The `BatchSpanProcessor` queues ended spans and exports them from its own thread, so a run never
waits for the collector. An export that fails (the collector is down, answers 4xx/5xx, or the
exporter raises) becomes a warning on the ``executus.otel`` logger — at most one a minute, with a
count of what was lost — never an exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from executus_otel.settings import OtelSettings, traces_url

__all__ = ["WARN_EVERY", "WarningExporter", "build_tracer_provider"]

log = logging.getLogger("executus.otel")

WARN_EVERY = 60.0
"""Seconds between two warnings about failed exports (the failures in between are counted)."""


class WarningExporter(SpanExporter):
    """Wraps a `SpanExporter`: a failed or raising export is a rate-limited warning, never an error.

    ``failed_batches`` / ``failed_spans`` count what could not be sent since the start.
    """

    def __init__(self, inner: SpanExporter, where: str) -> None:
        self.inner = inner
        self.where = where
        self.failed_batches = 0
        self.failed_spans = 0
        self._unreported = 0
        self._last_warning = -WARN_EVERY
        self._lock = threading.Lock()
        self.is_shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.is_shut_down:
            return SpanExportResult.FAILURE  # what is still queued at shutdown, after the bound
        try:
            result = self.inner.export(spans)
            reason = "the exporter reported a failure (see the opentelemetry.exporter log)"
        except Exception as exc:
            result, reason = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        if result is not SpanExportResult.SUCCESS:
            self._warn(len(spans), reason)
        return result

    def _warn(self, count: int, reason: str) -> None:
        with self._lock:
            self.failed_batches += 1
            self.failed_spans += count
            self._unreported += count
            now = time.monotonic()
            if now - self._last_warning < WARN_EVERY:
                return
            self._last_warning, lost = now, self._unreported
            self._unreported = 0
        log.warning(
            "executus-otel: %d spans could not be exported to %s (%s); runs are not affected. Check that "
            "the collector is up and [tool.executus.otel] endpoint/headers (further failures within %gs "
            "are counted, not logged)",
            lost,
            self.where,
            reason,
            WARN_EVERY,
        )

    def shutdown(self) -> None:
        """Shut the exporter down once (a later call does nothing); an export still retrying ends."""
        with self._lock:
            if self.is_shut_down:
                return
            self.is_shut_down = True
        try:
            self.inner.shutdown()
        except Exception as exc:
            log.warning("executus-otel: the exporter to %s failed to shut down: %s", self.where, exc)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return bool(self.inner.force_flush(timeout_millis))
        except Exception:
            return False


def build_tracer_provider(settings: OtelSettings) -> tuple[TracerProvider, WarningExporter]:
    """A `TracerProvider` exporting over OTLP/HTTP in batches, per ``settings``.

    ``service.name`` is ``settings.service_name``, else ``OTEL_SERVICE_NAME``, else ``executus``;
    ``OTEL_RESOURCE_ATTRIBUTES`` and the ``OTEL_BSP_*`` batch settings apply as usual. The provider
    does not shut itself down at exit: `OtelAudit` does, within a bound.
    """
    # The OTLP exporter (protobuf, requests: ~130 ms) only when a provider of our own is built.
    import os

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    attributes: dict[str, str] = {}
    if settings.service_name:
        attributes[SERVICE_NAME] = settings.service_name
    elif not os.environ.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = "executus"
    endpoint = traces_url(settings.endpoint) if settings.endpoint else None
    inner = OTLPSpanExporter(
        endpoint=endpoint, headers=dict(settings.headers) or None, timeout=settings.timeout
    )
    where = getattr(inner, "_endpoint", None) or endpoint or "the OTLP endpoint"
    exporter = WarningExporter(inner, str(where))
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter
