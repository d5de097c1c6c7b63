"""``[tool.executus.checkpoint_sql]``: where the checkpoints live and how workers share them.

Every key is optional: with none set, checkpoints go to ``checkpoints.db`` (SQLite) in the executus
data directory. In production, point ``url`` at PostgreSQL and name each worker with ``worker_id``::

    [tool.executus.checkpoint_sql]
    url = "postgresql+psycopg://app@db.internal/app"
    db_schema = "executus"
    worker_id = "web-1"            # shown in `executus checkpoints list`
    lease_seconds = 60             # how soon another worker takes over a dead worker's runs
    max_resume_attempts = 5        # failed resumes before a run is given up as failed
    pool_size = 5                  # connections for claiming and listing runs (saves have their own)
    retention_days = 7             # ended runs' rows are deleted after this (0: kept for ever)

The same from the environment: ``EXECUTUS_CHECKPOINT_SQL__URL=...``; in code:
``Executor(settings={"checkpoint_sql": {"url": ...}})``.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SECTION", "CheckpointSqlSettings", "default_url", "default_worker_id", "new_owner_id"]

SECTION = "checkpoint_sql"
"""The name of the settings table, ``[tool.executus.checkpoint_sql]``, and of the plugin."""

DATABASE_FILE = "checkpoints.db"


def default_url(data_dir: Path) -> str:
    """The embedded default: ``checkpoints.db`` in ``data_dir``, through aiosqlite."""
    return f"sqlite+aiosqlite:///{Path(data_dir).expanduser() / DATABASE_FILE}"


def default_worker_id() -> str:
    """``<hostname>:<pid>``: which process a store lives in, for people reading ``checkpoints list``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_owner_id(worker_id: str | None = None) -> str:
    """A new owner id: ``<worker_id>:<8 random hex digits>``, one per store instance.

    The random part makes two stores never pass for each other, even in one process with one
    ``worker_id`` (two executors), or in a restarted container that got its old hostname and pid.
    """
    return f"{worker_id or default_worker_id()}:{uuid.uuid4().hex[:8]}"


class CheckpointSqlSettings(BaseModel):
    """The settings of executus-checkpoint-sql. Durations are seconds."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Set false to keep the battery installed but unused.")
    url: str | None = Field(
        None,
        description="SQLAlchemy URL: sqlite+aiosqlite:///path.db, postgresql+psycopg://..., "
        "postgresql+asyncpg://... (default: checkpoints.db in the executus data directory).",
    )
    db_schema: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="PostgreSQL only: the schema that holds the tables (created by the upgrade if "
        "missing). Default: the connection's search_path.",
    )
    worker_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="This worker's name, the first part of the owner id of each store it makes "
        "(<worker_id>:<random>), shown in `executus checkpoints list`. Default: <hostname>:<pid>.",
    )
    lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a worker's claim on a run lasts without renewal; another worker takes "
        "over a run whose lease lapsed.",
    )
    heartbeat_seconds: float | None = Field(
        None,
        ge=0,
        description="How often a worker renews the leases of all its runs at once (default: a third "
        "of lease_seconds; 0 turns the heartbeat off, leaving renewal to saves).",
    )
    auto_upgrade: bool = Field(
        True,
        description="Create or upgrade the tables on first use; set false where a deploy step runs "
        "`executus db upgrade`, and the store then refuses an out-of-date schema.",
    )
    claim_limit: int | None = Field(
        None,
        ge=1,
        description="Most runs one interrupted() call hands out when the caller gives no limit "
        "(default: all).",
    )
    max_resume_attempts: int = Field(
        5,
        ge=1,
        description="Failed resumes (a resume released with an error, or a claim that lapsed before "
        "its run resumed) after which a run is given up and marked failed.",
    )
    resume_backoff_seconds: float = Field(
        30.0,
        ge=0,
        description="Wait after a failed resume before the run is handed out again; doubled after "
        "each further failure, up to resume_backoff_max_seconds.",
    )
    resume_backoff_max_seconds: float = Field(
        3600.0, ge=0, description="The longest wait between two resumes of a run that keeps failing."
    )
    connect_timeout: float = Field(5.0, gt=0, description="PostgreSQL: longest wait for a connection.")
    pool_size: int = Field(
        5,
        ge=1,
        description="Connections the store keeps open (PostgreSQL; on SQLite, aiosqlite's threads) for "
        "claiming, loading, releasing and listing runs and the heartbeat. Starting, saving and ending "
        "runs do not use them: the group-commit writer has a connection of its own.",
    )
    max_overflow: int = Field(
        10, ge=0, description="Connections opened beyond pool_size under load, closed when returned."
    )
    pool_timeout: float = Field(
        30.0,
        gt=0,
        description="Longest wait for a pool connection; a call waits its turn meanwhile (the core's "
        "port_timeout bounds the run's own wait).",
    )
    retention_days: float = Field(
        7.0,
        ge=0,
        description="Ended runs (completed, failed, quarantined) whose row is older than this are "
        "deleted, hourly by the heartbeat and with `executus checkpoints prune`; 0 keeps them for ever.",
    )
    save_batch: int = Field(
        1000,
        ge=1,
        description="Most saves one group commit writes in one transaction; saves of concurrent runs "
        "queue while a batch commits and go together in the next.",
    )
    busy_timeout: float = Field(
        5.0, ge=0, description="SQLite: longest wait for another process's write lock."
    )
    outage_backoff: float = Field(
        2.0,
        ge=0,
        description="After the database could not be reached, calls fail at once for this long "
        "instead of each waiting for a connection (0: always try).",
    )

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> CheckpointSqlSettings:
        if self.heartbeat_seconds and self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be shorter than lease_seconds "
                f"({self.lease_seconds:g}), or leases lapse between heartbeats"
            )
        return self

    @property
    def heartbeat_interval(self) -> float:
        """The heartbeat's period in seconds; 0 when it is off."""
        if self.heartbeat_seconds is None:
            return self.lease_seconds / 3
        return self.heartbeat_seconds
