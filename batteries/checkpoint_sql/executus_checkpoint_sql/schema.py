"""The two tables: one row per run, one row per saved message.

``executus_checkpoint_runs`` holds what a worker needs to resume a run (its `RunInfo`, its agent's
spec, the last save's counters) and who holds it now (``owner``, ``epoch``, ``lease_until``).
``executus_checkpoint_messages`` holds the transcript, one message per row at its ``position``: a
save appends the new messages and never rewrites earlier rows, so a checkpoint costs the same at
step 200 as at step 2.

Times that decide ownership (``lease_until``, ``claimed_at``, ``held_since``, ``not_before``) are
seconds since the epoch on the database's clock, so workers on hosts whose clocks disagree still agree on who holds a run. The
others are timestamps for people.

The tables are created and changed only by the migrations in ``executus_checkpoint_sql/migrations``
(see `executus_checkpoint_sql.migrate`); these models describe what the latest migration makes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from executus_checkpoint_sql.status import COMPLETED, CORRUPT, FAILED, LIVE, PAUSED

__all__ = [
    "COMPLETED",
    "CORRUPT",
    "FAILED",
    "LIVE",
    "MESSAGES_TABLE",
    "PAUSED",
    "RUNS_TABLE",
    "Base",
    "CheckpointMessage",
    "CheckpointRun",
    "JsonType",
]

RUNS_TABLE = "executus_checkpoint_runs"
MESSAGES_TABLE = "executus_checkpoint_messages"

JsonType = JSON().with_variant(JSONB(), "postgresql")
"""JSON on SQLite, JSONB on PostgreSQL (queryable with its operators)."""

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The declarative base of this battery's tables (its own `MetaData`, apart from the host's)."""

    metadata = MetaData(naming_convention=NAMING)


class CheckpointRun(Base):
    """One run a worker checkpointed: who ran what, how far it got, and who holds it now."""

    __tablename__ = RUNS_TABLE

    run_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    """``live``, ``paused``, ``completed``, ``failed`` or ``corrupt``."""
    info: Mapped[dict[str, Any]] = mapped_column(JsonType)
    """The `RunInfo`, as JSON."""
    agent: Mapped[dict[str, Any]] = mapped_column(JsonType)
    """The agent's ``spec()``: what `Executor.recover` rebuilds it from."""
    subject_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    caller_id: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, Any]] = mapped_column(JsonType)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    """How many messages are saved: the rows at positions ``0 .. message_count - 1``."""
    owner: Mapped[str | None] = mapped_column(String(255))
    """The owner id of the store holding the run (or that held it last): one per store instance."""
    epoch: Mapped[int] = mapped_column(Integer, default=1)
    """The fencing token: raised by every start, claim, resume and release. A checkpointer writes
    only while the epoch is the one it got, so an earlier holder can never write again."""
    lease_until: Mapped[float | None] = mapped_column(Float)
    """Epoch seconds (database clock) until which ``owner`` holds the run; NULL once released."""
    claimed_at: Mapped[float | None] = mapped_column(Float)
    """Epoch seconds (database clock) at which ``interrupted()`` handed the run out; NULL while a
    checkpointer saves it."""
    held_since: Mapped[float | None] = mapped_column(Float)
    """Epoch seconds (database clock) since which ``owner`` holds the run."""
    not_before: Mapped[float | None] = mapped_column(Float)
    """Epoch seconds (database clock) before which ``interrupted()`` does not hand the run out (the
    backoff after a failed resume)."""
    resume_failures: Mapped[int] = mapped_column(Integer, default=0)
    """Resumes that failed in a row (released with an error, or claimed and never resumed)."""
    attempts: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    """Tool call id -> how many times it was started (`CheckpointState.attempts`, merged)."""
    pending: Mapped[list[Any] | None] = mapped_column(JsonType)
    """The calls a paused run waits for (`PendingCall` as JSON: call id, tool, arguments)."""
    paused_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the run paused for approval (`Interrupted.paused_at`); NULL while it runs."""
    error: Mapped[str | None] = mapped_column(Text)
    """Why the run failed, why its last resume failed, or why it is quarantined."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    # No column a save changes is indexed, so a save is a HOT update on PostgreSQL (migration 0004).
    __table_args__ = (Index(None, "status", "started_at"), {"postgresql_with": {"fillfactor": 70}})


class CheckpointMessage(Base):
    """One message of a live run's transcript, at its position (0-based)."""

    __tablename__ = MESSAGES_TABLE

    run_id: Mapped[str] = mapped_column(
        String(255), ForeignKey(f"{RUNS_TABLE}.run_id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    message: Mapped[dict[str, Any]] = mapped_column(JsonType)
    """The `Message` as JSON (fields at their defaults left out)."""
