"""The plugin executus loads through the ``executus`` entry point ``audit_sql``.

Installed, the battery records every run with no setting at all (SQLite in the data directory);
``disable = ["audit_sql"]`` (or ``EXECUTUS_DISABLE=audit_sql``) turns it off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from executus_audit_sql.settings import SECTION, AuditSqlSettings, public_url
from executus_core import hookimpl
from executus_core.config import Settings
from executus_core.errors import ConfigError

if TYPE_CHECKING:
    from executus_audit_sql.audit import SqlAudit

__all__ = ["executus_audit", "executus_register_commands"]


@hookimpl
def executus_audit(settings: Settings) -> SqlAudit:
    """The `SqlAudit` for this executor, from ``[tool.executus.audit_sql]``.

    Raises `ConfigError` for settings that cannot work (a driver that is not installed, a schema
    for SQLite), so `Executor()` refuses to start rather than run without its audit trail.
    """
    return build_audit(settings)


def build_audit(settings: Settings) -> SqlAudit:
    """`SqlAudit` from executus `Settings` (the hook, and the CLI commands)."""
    from executus_audit_sql.audit import SqlAudit  # SQLAlchemy's engine: only when an audit is built

    section = settings.section(SECTION, AuditSqlSettings, plugin=SECTION)
    try:
        return SqlAudit(section, data_dir=settings.core.data_dir, port_timeout=settings.core.port_timeout)
    except ImportError as exc:
        raise ConfigError(
            f"[tool.executus.audit_sql] url: the driver for {public_url(section.url or '')} is not installed ({exc}); "
            "install it (pip install psycopg[binary], or asyncpg) or use postgresql+psycopg:// (plugin 'audit_sql')"
        ) from None


@hookimpl
def executus_register_commands(cli: Any) -> None:
    """Add ``executus runs`` (list, show, prune, import) and this battery's ``executus db upgrade`` step."""
    from executus_audit_sql.cli import register

    register(cli)
