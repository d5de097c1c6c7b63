"""executus-checkpoint-sql: durable checkpoints for executus runs, resumable on any worker.

Install it and every `Executor()` checkpoints its runs: to ``checkpoints.db`` (SQLite) in the
executus data directory by default, or to PostgreSQL::

    [tool.executus.checkpoint_sql]
    url = "postgresql+psycopg://app@db.internal/app"
    worker_id = "web-1"

After a crash, ``await executor.recover()`` (or ``executus recover``) resumes every run whose worker
is gone, from its last checkpoint, without running again a tool whose result was saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from executus_core.lazy import lazy_exports

if TYPE_CHECKING:
    from executus_checkpoint_sql.errors import (
        CheckpointSqlError,
        DatabaseUnavailable,
        RunNotOwned,
        RunTakenOver,
        SaveGap,
        SchemaOutOfDate,
    )
    from executus_checkpoint_sql.migrate import VERSION_TABLE, UpgradeReport, upgrade_url
    from executus_checkpoint_sql.settings import CheckpointSqlSettings
    from executus_checkpoint_sql.store import CheckpointListing, SqlCheckpointer, SqlCheckpointStore

# The public names are imported on first use (PEP 562), so that loading the plugin (which imports
# this package first) costs no SQLAlchemy and no Alembic: `executus plugins` and other commands
# that never touch a checkpoint start fast.
_LAZY = {
    "CheckpointSqlError": "executus_checkpoint_sql.errors",
    "DatabaseUnavailable": "executus_checkpoint_sql.errors",
    "RunNotOwned": "executus_checkpoint_sql.errors",
    "RunTakenOver": "executus_checkpoint_sql.errors",
    "SaveGap": "executus_checkpoint_sql.errors",
    "SchemaOutOfDate": "executus_checkpoint_sql.errors",
    "VERSION_TABLE": "executus_checkpoint_sql.migrate",
    "UpgradeReport": "executus_checkpoint_sql.migrate",
    "upgrade_url": "executus_checkpoint_sql.migrate",
    "CheckpointSqlSettings": "executus_checkpoint_sql.settings",
    "CheckpointListing": "executus_checkpoint_sql.store",
    "SqlCheckpointer": "executus_checkpoint_sql.store",
    "SqlCheckpointStore": "executus_checkpoint_sql.store",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


__version__ = "0.1.0"

__all__ = [
    "VERSION_TABLE",
    "CheckpointListing",
    "CheckpointSqlError",
    "CheckpointSqlSettings",
    "DatabaseUnavailable",
    "RunNotOwned",
    "RunTakenOver",
    "SaveGap",
    "SchemaOutOfDate",
    "SqlCheckpointStore",
    "SqlCheckpointer",
    "UpgradeReport",
    "upgrade_url",
]
