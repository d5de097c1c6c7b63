"""``[tool.executus.checkpoint_sql]``: where the checkpoints live and how workers share them.

Every key is optional: with none set, checkpoints go to ``checkpoints.db`` (SQLite) in the executus
data directory. In production, point ``url`` at PostgreSQL and give each worker a ``worker_id``::

    [tool.executus.checkpoint_sql]
    url = "postgresql+psycopg://app@db.internal/app"
    db_schema = "executus"
    worker_id = "web-1"            # stable across restarts, unique among live workers
    lease_seconds = 60

The same from the environment: ``EXECUTUS_CHECKPOINT_SQL__URL=...``; in code:
``Executor(settings={"checkpoint_sql": {"url": ...}})``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SECTION", "CheckpointSqlSettings", "default_url", "default_worker_id"]

SECTION = "checkpoint_sql"
"""The name of the settings table, ``[tool.executus.checkpoint_sql]``, and of the plugin."""

DATABASE_FILE = "checkpoints.db"


def default_url(data_dir: Path) -> str:
    """The embedded default: ``checkpoints.db`` in ``data_dir``, through aiosqlite."""
    return f"sqlite+aiosqlite:///{Path(data_dir).expanduser() / DATABASE_FILE}"


def default_worker_id() -> str:
    """``<hostname>:<pid>``: unique among the processes alive at one time on a host.

    A container restarted in place usually gets the same hostname and pid, and so takes its own
    runs back at once; elsewhere a restarted process waits for the old leases to lapse. Set
    ``worker_id`` to make that immediate everywhere.
    """
    return f"{socket.gethostname()}:{os.getpid()}"


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
        description="This worker's name in the runs it owns. Stable across restarts and unique among "
        "live workers (a pod name, web-1): a restarted worker then takes its own runs back at once. "
        "Default: <hostname>:<pid>.",
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
        None, ge=1, description="Most runs one interrupted() call hands out (default: all)."
    )
    connect_timeout: float = Field(5.0, gt=0, description="PostgreSQL: longest wait for a connection.")
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
