"""The tables: one row per run, and its trail of events in order.

``executus_runs`` holds a run's `RunInfo` (who ran what, when, in which conversation), a live tally
while it runs, and its final `RunStats` once its recorder is closed (``status`` is NULL until then).
``executus_run_events`` holds the run's trail: one row per model step, tool call, run event and
error, ordered by ``seq``, which counts on across restarts of the same run (`Executor.recover`).
``executus_run_transcripts`` holds the messages each run ended with (masked like the trail), which
``Executor.run(..., continue_run=run_id)`` reads back.

The names start with ``executus_`` so the tables can live in a host's own database, and the
migrations keep their version in ``executus_audit_sql_version``, beside the host's own Alembic history.
The migrations in ``migrations/versions`` create these tables; a test checks they agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from executus_audit_sql.state import EventKind

__all__ = [
    "RUNS_TABLE",
    "VERSION_TABLE",
    "Base",
    "EventKind",
    "RunEventRow",
    "RunRow",
    "RunTranscriptRow",
    "UTCDateTime",
]

RUNS_TABLE = "executus_runs"
EVENTS_TABLE = "executus_run_events"
TRANSCRIPTS_TABLE = "executus_run_transcripts"
VERSION_TABLE = "executus_audit_sql_version"

# Constraint names are fixed, so migrations and models agree on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored in UTC; read back aware on every backend (SQLite drops zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """The declarative base of this battery's tables (its own metadata: never the host's)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime}


class RunRow(Base):
    """One run: its `RunInfo`, its live tally, and (once closed) its `RunStats`."""

    __tablename__ = RUNS_TABLE

    run_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subject_id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    caller_id: Mapped[str] = mapped_column(Text)
    channel_id: Mapped[str | None] = mapped_column(Text)
    parent_run_id: Mapped[str | None] = mapped_column(Text)
    inputs: Mapped[Any | None] = mapped_column(Json)
    started_at: Mapped[datetime]
    # 1 for a new run; +1 each time the same run id starts again (resumed by Executor.recover).
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # NULL while the run goes on; a RunStatus value once its recorder is closed.
    status: Mapped[str | None] = mapped_column(String(32))
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    steps: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tool_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    runtime_seconds: Mapped[float | None] = mapped_column(Float)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    thinking_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    ended_at: Mapped[datetime | None]
    # RunInfo.conversation_id: the runs of one conversation, in order, are its thread.
    conversation_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_executus_runs_started_at", "started_at"),
        Index("ix_executus_runs_caller_started", "caller_id", "started_at"),
        Index("ix_executus_runs_name_started", "name", "started_at"),  # the runs list by agent
        Index("ix_executus_runs_status_started", "status", "started_at"),
        Index("ix_executus_runs_parent_run_id", "parent_run_id"),
        Index("ix_executus_runs_conversation_started", "conversation_id", "started_at"),
    )


class RunEventRow(Base):
    """One row of a run's trail: a step, a tool call, a run event or an error, at position ``seq``.

    A run has at most one step row per iteration and one tool row per call id: a row written twice
    (a resumed run re-recording what a killed worker's batch lost, or a paused worker's late batch)
    is stored once.
    """

    __tablename__ = EVENTS_TABLE
    __table_args__ = (
        Index(
            "ux_executus_run_events_step",
            "run_id",
            "iteration",
            unique=True,
            postgresql_where=text("kind = 'step'"),
            sqlite_where=text("kind = 'step'"),
        ),
        Index(
            "ux_executus_run_events_tool",
            "run_id",
            "call_id",
            unique=True,
            postgresql_where=text("kind = 'tool'"),
            sqlite_where=text("kind = 'tool'"),
        ),
    )

    run_id: Mapped[str] = mapped_column(
        Text, ForeignKey(f"{RUNS_TABLE}.run_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    # step: NULL; tool: the tool's name; event: the event type; error: NULL
    name: Mapped[str | None] = mapped_column(Text)
    iteration: Mapped[int | None] = mapped_column(Integer)
    call_id: Mapped[str | None] = mapped_column(Text)
    # step: the model's text; tool: the result sent to the model; error: the message
    text: Mapped[str | None] = mapped_column(Text)
    # step: tool calls, usage, finish reason, model; tool: arguments; event: the payload
    data: Mapped[Any | None] = mapped_column(Json)
    at: Mapped[datetime]


class RunTranscriptRow(Base):
    """The messages a run ended with (`Result.messages`, secrets masked): one row per run, replaced
    when a resumed run ends again."""

    __tablename__ = TRANSCRIPTS_TABLE

    run_id: Mapped[str] = mapped_column(
        Text, ForeignKey(f"{RUNS_TABLE}.run_id", ondelete="CASCADE"), primary_key=True
    )
    messages: Mapped[Any] = mapped_column(Json)
    at: Mapped[datetime]
