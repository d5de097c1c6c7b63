"""`OtelAudit`: the `Audit` port as OpenTelemetry spans.

::

    audit = OtelAudit()                                  # the host's provider, else OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT
    audit = OtelAudit(OtelSettings(endpoint="http://collector:4318", capture_content=True))
    audit = OtelAudit(tracer_provider=my_provider)        # a provider of your choosing (tests: in-memory)

Installed, the battery is picked up by every `Executor` through its entry point; build one by hand
to pass it with ``Executor(plugins=[PortPlugin(audit=audit)])``.

Which tracer provider: ``tracer_provider=`` if given; else, with the ``auto`` setting, the host's
global one when it set one (``trace.set_tracer_provider``, not the API's proxy or no-op default),
else a provider of our own (`build_tracer_provider`) when an OTLP endpoint is configured (the
``endpoint`` setting, or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``).
With none of these, runs are not recorded and one warning says what to set: an installed battery
never sends spans to a collector nobody named, nor holds a process's exit waiting for one. The
choice is made at the first run that finds a provider, so a host that sets its provider after
building the executor is still used.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from executus_core.types import RunInfo
from executus_otel.masking import Masker
from executus_otel.recorder import OtelRecorder, live_parent, register
from executus_otel.settings import OtelSettings, traces_url

if TYPE_CHECKING:
    from executus_otel.exporter import WarningExporter

__all__ = ["OtelAudit", "host_tracer_provider"]

log = logging.getLogger("executus.otel")

INSTRUMENTATION = "executus_otel"

EXIT_TIMEOUT = 2.0
"""Longest the process's exit waits for one of our providers to send what it has queued, in seconds."""

NOWHERE = (
    "executus-otel: no spans are recorded: the host set no OpenTelemetry tracer provider and no OTLP "
    "endpoint is configured. Set [tool.executus.otel] endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT), "
    "call trace.set_tracer_provider(...) before the first run, or disable the battery "
    "(EXECUTUS_DISABLE=otel)"
)

# Audits whose own provider is still open, for the exit handler.
_own: weakref.WeakSet[OtelAudit] = weakref.WeakSet()
_told_nowhere = False


def host_tracer_provider() -> trace.TracerProvider | None:
    """The global tracer provider when the host configured one, else ``None``.

    The API's defaults (the proxy that stands in until a provider is set, and the no-op provider)
    count as not configured.
    """
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


class OtelAudit:
    """An `Audit` that emits each run as ``invoke_agent`` / ``chat`` / ``execute_tool`` spans.

    Args:
        settings: the battery's settings (default: all defaults).
        tracer_provider: use this provider, whatever ``settings.tracer_provider`` says.
        tiers: the core's model tiers (``[tool.executus.models]``), to name the model of an agent
            whose model is a tier.

    Attributes:
        provider: the provider in use (``None`` until the first run chooses it).
        own_provider: True when `provider` is ours (built from the settings; shut down by `aclose`).
        exporter: our own provider's exporter (its ``failed_spans`` counts what could not be sent).
    """

    def __init__(
        self,
        settings: OtelSettings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        tiers: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings = settings or OtelSettings()
        self.tiers = dict(tiers or {})
        self.masker = Masker(settings.mask_keys)
        self.skip_events = frozenset(settings.skip_events)
        self.provider: trace.TracerProvider | None = tracer_provider
        self._given = tracer_provider is not None
        self.own_provider = False
        self.exporter: WarningExporter | None = None
        self._tracer: trace.Tracer | None = None
        self._lock = threading.Lock()
        self._recorders: dict[str, OtelRecorder] = {}

    def __repr__(self) -> str:
        return f"OtelAudit(tracer_provider={self.settings.tracer_provider!r}, capture_content={self.settings.capture_content})"

    def describe(self) -> str:
        """Where the spans go, in a few words (the `executus run` header shows it); no side effects."""
        if self.provider is not None and not self.own_provider:
            where = "the given tracer provider" if self._given else "the host's tracer provider"
        elif self.exporter is not None:
            where = f"OTLP/HTTP to {self.masker.text(self.exporter.where)}"
        else:
            mode = self.settings.tracer_provider
            if mode == "global" or (mode == "auto" and host_tracer_provider() is not None):
                where = "the host's tracer provider"
            elif mode == "own" or endpoint_configured(self.settings):
                where = f"OTLP/HTTP to {self.masker.text(configured_endpoint(self.settings))}"
            else:
                return "nothing: no tracer provider or OTLP endpoint is configured"
        return where + (", content captured" if self.settings.capture_content else "")

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer spans are made with (choosing the provider on first use).

        Raises `LookupError` when there is nowhere to send spans (see `resolve`).
        """
        tracer = self.resolve()
        if tracer is None:
            raise LookupError(NOWHERE)
        return tracer

    def resolve(self) -> trace.Tracer | None:
        """The tracer to use, choosing the provider the first time one is found; ``None`` when the
        ``auto`` setting finds neither a host provider nor an endpoint (asked again at the next run)."""
        tracer = self._tracer
        if tracer is not None:
            return tracer
        with self._lock:
            if self._tracer is None:
                provider = self._choose()
                if provider is None:
                    return None
                self._tracer = provider.get_tracer(INSTRUMENTATION, _version())
            return self._tracer

    def _builds_own(self) -> bool:
        """Whether `_choose` would build a provider of our own (the SDK and the exporter needed)."""
        mode = self.settings.tracer_provider
        if mode == "global" or (mode == "auto" and host_tracer_provider() is not None):
            return False
        return not (mode == "auto" and not endpoint_configured(self.settings))

    def _choose(self) -> trace.TracerProvider | None:
        if self.provider is not None:
            return self.provider
        mode = self.settings.tracer_provider
        host = host_tracer_provider()
        if mode == "global" or (mode == "auto" and host is not None):
            self.provider = host or trace.get_tracer_provider()
            return self.provider
        if mode == "auto" and not endpoint_configured(self.settings):
            return None
        from executus_otel.exporter import build_tracer_provider  # the SDK and OTLP: only for our own

        self.provider, self.exporter = build_tracer_provider(self.settings)
        self.own_provider = True
        _own.add(self)
        return self.provider

    async def start_run(self, info: RunInfo) -> OtelRecorder | None:
        """Start the run's ``invoke_agent`` span (a child run's is kept until its parent's tool span ends)."""
        global _told_nowhere
        try:
            if self.provider is None and "executus_otel.exporter" not in sys.modules and self._builds_own():
                # The SDK and the OTLP exporter may be needed now: imported off the event loop.
                await asyncio.to_thread(importlib.import_module, "executus_otel.exporter")
            if self.resolve() is None:
                if not _told_nowhere:
                    _told_nowhere = True
                    log.warning("%s", NOWHERE)
                return None
            recorder = OtelRecorder(self, info, live_parent(info.parent_run_id))
        except Exception as exc:
            log.warning(
                "executus-otel: could not start the spans of run %s (%s: %s); the run goes on without them",
                info.run_id,
                type(exc).__name__,
                exc,
            )
            return None
        register(recorder)
        with self._lock:
            # closed recorders are dropped here rather than on the per-step path
            for run_id in [r for r, rec in self._recorders.items() if rec.closed]:
                del self._recorders[run_id]
            self._recorders[info.run_id] = recorder
        return recorder

    async def aclose(self) -> None:
        """End the spans of runs that never closed, and shut our own provider down (sending what is
        left, within ``shutdown_timeout``). The host's provider is the host's to flush and shut down."""
        with self._lock:
            open_recorders = [r for r in self._recorders.values() if not r.closed]
            self._recorders.clear()
        for recorder in open_recorders:
            try:
                recorder.abandon()
            except Exception as exc:
                log.warning("executus-otel: could not end the span of run %s: %s", recorder.run_id, exc)
        if not self.own_provider:
            return
        provider, exporter = self.provider, self.exporter
        self.own_provider = False
        self._tracer = None
        self.provider = None
        _own.discard(self)
        timeout = self.settings.shutdown_timeout
        done = _stop_in_thread(provider, exporter, timeout)
        if not await _wait(done, timeout) and exporter is not None:
            exporter.shutdown()  # ends a retry that waits on a collector that is down
            if not await _wait(done, 1.0):
                log.warning(
                    "executus-otel: our tracer provider did not shut down within %gs; spans not yet sent "
                    "may be lost",
                    timeout,
                )

    async def force_flush(self, timeout: float = 5.0) -> bool:
        """Export what our own provider has queued (off the event loop); True when all went out."""
        provider: Any = self.provider
        if not _sdk_provider(provider):
            return True
        return await asyncio.to_thread(provider.force_flush, int(timeout * 1000))


def _sdk_provider(provider: Any) -> bool:
    """Whether ``provider`` is the SDK's `TracerProvider` (if the SDK was never imported, it is not)."""
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    return sdk is not None and isinstance(provider, sdk.TracerProvider)


def _shutdown(provider: Any, exporter: WarningExporter | None, timeout: float) -> None:
    """Send what is queued, then stop. (The SDK's flush exports in this thread and may retry past
    ``timeout``: callers run this in `_stop_in_thread` and shut the exporter down when they stop
    waiting, which ends the retry.)"""
    if _sdk_provider(provider):
        provider.force_flush(int(timeout * 1000))
    if exporter is not None:
        exporter.shutdown()
    if _sdk_provider(provider):
        provider.shutdown()


def _stop_in_thread(provider: Any, exporter: WarningExporter | None, timeout: float) -> threading.Event:
    """Run `_shutdown` in a daemon thread (neither the event loop nor the interpreter's exit waits on
    it); the event is set when it is done."""
    done = threading.Event()

    def work() -> None:
        try:
            _shutdown(provider, exporter, timeout)
        except Exception as exc:
            log.warning("executus-otel: shutting our tracer provider down failed: %s", exc)
        finally:
            done.set()

    threading.Thread(target=work, name="executus-otel-shutdown", daemon=True).start()
    return done


async def _wait(done: threading.Event, timeout: float) -> bool:
    """Wait for ``done`` up to ``timeout`` seconds without blocking the loop (nor using its executor)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while not done.is_set():
        if loop.time() >= until:
            return False
        await asyncio.sleep(0.01)
    return True


def endpoint_configured(settings: OtelSettings) -> bool:
    """True when an OTLP endpoint is set: ``endpoint``, or the standard environment variables."""
    return bool(
        settings.endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configured_endpoint(settings: OtelSettings) -> str:
    """The traces URL our own provider sends to: the setting, the standard variables, or the default."""
    if settings.endpoint:
        return traces_url(settings.endpoint)
    if found := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return found
    if found := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return found.removesuffix("/") + "/v1/traces"  # as the SDK reads it: a base URL, always
    return "http://localhost:4318/v1/traces"


@atexit.register
def _shutdown_at_exit() -> None:
    """Our providers are made with ``shutdown_on_exit=False``: here, at exit, each sends what it has
    queued within a short bound, from a daemon thread, so a collector that is down never holds the
    process's exit for long."""
    for audit in list(_own):
        provider, exporter = audit.provider, audit.exporter
        audit.own_provider = False
        bound = min(audit.settings.shutdown_timeout, EXIT_TIMEOUT)
        done = _stop_in_thread(provider, exporter, bound)
        if not done.wait(bound) and exporter is not None:
            exporter.shutdown()
            done.wait(0.5)
    _own.clear()


def _version() -> str:
    from executus_otel import __version__

    return __version__
