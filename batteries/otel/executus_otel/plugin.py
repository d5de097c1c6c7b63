"""The executus plugin of executus-otel: registered under the ``executus`` entry-point group as
``otel``, so installing the distribution is all it takes (``EXECUTUS_DISABLE=otel`` or
``[tool.executus.otel] enabled = false`` turns it off)."""

from __future__ import annotations

from executus_core import Settings, hookimpl
from executus_otel.audit import OtelAudit
from executus_otel.settings import SECTION, OtelSettings

__all__ = ["executus_audit"]


@hookimpl
def executus_audit(settings: Settings) -> OtelAudit | None:
    """The `OtelAudit` for this executor, from ``[tool.executus.otel]``; ``None`` when ``enabled = false``.

    Bad settings raise `ConfigError` naming the key, so the `Executor` refuses to start rather than
    run untraced. Nothing is exported and no thread starts until the first run.
    """
    cfg = settings.section(SECTION, OtelSettings, plugin=SECTION)
    if not cfg.enabled:
        return None
    return OtelAudit(cfg, tiers=settings.core.models)
