"""executus-audit-sql: the run trace in SQL, with SQLAlchemy 2 (async) and Alembic.

Installed, it records every run of every `Executor` — no setting needed: the trail goes to a SQLite
file ``audit.db`` in the executus data directory. In production, point it at PostgreSQL::

    [tool.executus.audit_sql]
    url = "postgresql+psycopg://app@db.internal/app"

and run ``executus db upgrade`` when you deploy. Read the trail with ``executus runs list`` /
``executus runs show RUN_ID``, or in code with `SqlAudit.list_runs`, `SqlAudit.get_run` and
`SqlAudit.trail`.
"""

from typing import TYPE_CHECKING

from executus_core.lazy import lazy_exports

if TYPE_CHECKING:
    from executus_audit_sql.audit import SqlAudit
    from executus_audit_sql.errors import AuditSqlError, AuditWriteError, SchemaNotReady
    from executus_audit_sql.migrate import UpgradeReport, current_revision, head_revision, upgrade
    from executus_audit_sql.recorder import SqlRecorder
    from executus_audit_sql.settings import AuditSqlSettings
    from executus_audit_sql.trail import RunRecord, TrailEntry

# The public names are imported on first use (PEP 562): loading the plugin imports this package
# first, and a command that never touches the battery's port should not pay for its dependencies.
_LAZY = {
    "SqlAudit": "executus_audit_sql.audit",
    "AuditSqlError": "executus_audit_sql.errors",
    "AuditWriteError": "executus_audit_sql.errors",
    "SchemaNotReady": "executus_audit_sql.errors",
    "UpgradeReport": "executus_audit_sql.migrate",
    "current_revision": "executus_audit_sql.migrate",
    "head_revision": "executus_audit_sql.migrate",
    "upgrade": "executus_audit_sql.migrate",
    "SqlRecorder": "executus_audit_sql.recorder",
    "AuditSqlSettings": "executus_audit_sql.settings",
    "RunRecord": "executus_audit_sql.trail",
    "TrailEntry": "executus_audit_sql.trail",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


__all__ = [
    "AuditSqlError",
    "AuditSqlSettings",
    "AuditWriteError",
    "RunRecord",
    "SchemaNotReady",
    "SqlAudit",
    "SqlRecorder",
    "TrailEntry",
    "UpgradeReport",
    "current_revision",
    "head_revision",
    "upgrade",
]

__version__ = "0.1.0"
