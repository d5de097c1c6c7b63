"""executus-checkpoint-sql: durable checkpoints for executus runs, resumable on any worker.

Install it and every `Executor()` checkpoints its runs: to ``checkpoints.db`` (SQLite) in the
executus data directory by default, or to PostgreSQL::

    [tool.executus.checkpoint_sql]
    url = "postgresql+psycopg://app@db.internal/app"
    worker_id = "web-1"

After a crash, ``await executor.recover()`` (or ``executus recover``) resumes every run whose worker
is gone, from its last checkpoint, without running again a tool whose result was saved.
"""

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
