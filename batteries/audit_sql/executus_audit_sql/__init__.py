"""executus-audit-sql: the run trace in SQL, with SQLAlchemy 2 (async) and Alembic.

Installed, it records every run of every `Executor` — no setting needed: the trail goes to a SQLite
file ``audit.db`` in the executus data directory. In production, point it at PostgreSQL::

    [tool.executus.audit_sql]
    url = "postgresql+psycopg://app@db.internal/app"

and run ``executus db upgrade`` when you deploy. Read the trail with ``executus runs list`` /
``executus runs show RUN_ID``, or in code with `SqlAudit.list_runs`, `SqlAudit.get_run` and
`SqlAudit.trail`.
"""

from executus_audit_sql.audit import SqlAudit
from executus_audit_sql.errors import AuditSqlError, AuditWriteError, SchemaNotReady
from executus_audit_sql.migrate import UpgradeReport, current_revision, head_revision, upgrade
from executus_audit_sql.recorder import SqlRecorder
from executus_audit_sql.settings import AuditSqlSettings
from executus_audit_sql.trail import RunRecord, TrailEntry

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
