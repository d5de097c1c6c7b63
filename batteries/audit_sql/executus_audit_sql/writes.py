"""The statements that write a trail, shared by the batch writer, ``close`` and ``executus runs import``.

A run's rows carry a *local* sequence number (1, 2, 3, ... in the order its recorder got them). The
first write of a recorder *registers* the run: it upserts the run's row (a run id seen before, such as
a run resumed by `Executor.recover`, counts one more attempt and is marked running again) and reads
the highest ``seq`` already stored for it, the *base*. Every row is then stored at ``base + local``,
so the trail of a resumed run goes on after the earlier attempt's, and writing a row twice (a batch
retried after an unclear failure) stores it once.

The statements on the per-row path (the trail rows, the live tally, the roll-ups) are SQL text
built once per dialect (`Statements`) and sent with the driver's ``executemany`` through
``exec_driver_sql``: SQLAlchemy neither builds nor compiles them per write, and the parameters are
plain tuples this module makes (JSON text, UTC timestamps), with no type processing per value.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from executus_audit_sql.database import dumps, dumps_postgres
from executus_audit_sql.schema import RunEventRow, RunRow, RunTranscriptRow
from executus_core.types import RunInfo, RunStats

__all__ = [
    "Registration",
    "Row",
    "RunState",
    "Statements",
    "register",
    "write_rollups",
    "write_trail",
    "write_transcripts",
]

RUNS: Table = RunRow.__table__  # type: ignore[assignment]
EVENTS: Table = RunEventRow.__table__  # type: ignore[assignment]
TRANSCRIPTS: Table = RunTranscriptRow.__table__  # type: ignore[assignment]

CHUNK_ROWS = 500
"""Rows per INSERT statement: SQLAlchemy prepares a statement's parameters on the event loop, so a
big batch is sent as several statements, each a short burst of CPU."""

Row = tuple[int, str, str | None, int | None, str | None, str | None, Any, datetime]
"""A buffered trail row: (local seq, kind, name, iteration, call id, text, data, at)."""


@dataclasses.dataclass(slots=True)
class RunState:
    """What a writer needs to know about one run: its info, whether it is registered, and its tally.

    The tally counts what this recorder saw; ``prior_*`` hold the counts an earlier attempt of the
    same run had stored, so the live tally of a resumed run goes on from them. ``transcript`` holds
    the messages the run ended with (as JSON, masked), once ``on_transcript`` gave them.
    """

    info: RunInfo
    registered: bool = False
    base: int = 0
    steps: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    prior_steps: int = 0
    prior_tool_calls: int = 0
    prior_input_tokens: int = 0
    prior_output_tokens: int = 0
    prior_thinking_tokens: int = 0
    transcript: list[Any] | None = None

    def live(self) -> dict[str, int]:
        """The tally to show while the run goes on."""
        return {
            "steps": max(self.steps, self.prior_steps),
            "tool_calls": self.prior_tool_calls + self.tool_calls,
            "input_tokens": self.prior_input_tokens + self.input_tokens,
            "output_tokens": self.prior_output_tokens + self.output_tokens,
            "thinking_tokens": self.prior_thinking_tokens + self.thinking_tokens,
        }


@dataclasses.dataclass(slots=True, frozen=True)
class Registration:
    """What registering a run found: the base ``seq`` and the tally an earlier attempt stored."""

    base: int
    steps: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    thinking_tokens: int

    def apply(self, state: RunState) -> None:
        """Record on ``state`` that it is registered (call once the transaction committed)."""
        state.registered = True
        state.base = self.base
        state.prior_steps = self.steps
        state.prior_tool_calls = self.tool_calls
        state.prior_input_tokens = self.input_tokens
        state.prior_output_tokens = self.output_tokens
        state.prior_thinking_tokens = self.thinking_tokens


@functools.cache
def _insert(dialect: str, table: Table) -> Any:
    """An INSERT with the dialect's ON CONFLICT support."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise NotImplementedError(f"executus-audit-sql does not support {dialect}")


@functools.cache
def _transcript_upsert(dialect: str) -> Any:
    """The upsert of the transcripts runs ended with, built once per dialect."""
    statement = _insert(dialect, TRANSCRIPTS)
    return statement.on_conflict_do_update(
        index_elements=[TRANSCRIPTS.c.run_id],
        set_={"messages": statement.excluded.messages, "at": statement.excluded.at},
    )


@functools.cache
def _register_statements(dialect: str) -> tuple[Any, Any, Any]:
    """The statements `register` runs, built once per dialect: the upsert of the runs' rows, and the
    reads of their highest ``seq`` and stored tally (each takes the run ids as ``ids``)."""
    upsert = _insert(dialect, RUNS).on_conflict_do_update(
        index_elements=[RUNS.c.run_id],
        set_={
            "attempts": RUNS.c.attempts + 1,
            "status": None,
            "output": None,
            "error": None,
            "runtime_seconds": None,
            "ended_at": None,
        },
    )
    ids: Any = bindparam("ids", expanding=True)
    bases = (
        select(EVENTS.c.run_id, func.max(EVENTS.c.seq))
        .where(EVENTS.c.run_id.in_(ids))
        .group_by(EVENTS.c.run_id)
    )
    counters = select(
        RUNS.c.run_id,
        RUNS.c.steps,
        RUNS.c.tool_calls,
        RUNS.c.input_tokens,
        RUNS.c.output_tokens,
        RUNS.c.thinking_tokens,
    ).where(RUNS.c.run_id.in_(ids))
    return upsert, bases, counters


def _run_values(info: RunInfo, clean: Any) -> dict[str, Any]:
    return {
        "run_id": info.run_id,
        "subject_id": clean(info.subject_id),
        "name": clean(info.name),
        "caller_id": clean(info.caller_id),
        "channel_id": clean(info.channel_id),
        "parent_run_id": info.parent_run_id,
        "inputs": info.inputs,
        "started_at": info.started_at,
        "attempts": 1,
        "conversation_id": clean(info.conversation_id),
    }


async def register(conn: AsyncConnection, infos: Sequence[RunInfo]) -> dict[str, Registration]:
    """Upsert the runs' rows (a run id seen before counts one more attempt and is running again) and
    find each one's base seq and the tally an earlier attempt stored: three statements for any number."""
    clean = statements(conn).text
    upsert, bases_of, counters_of = _register_statements(conn.dialect.name)
    await conn.execute(upsert, [_run_values(info, clean) for info in infos])
    ids = {"ids": [info.run_id for info in infos]}
    bases = {row[0]: row[1] for row in await conn.execute(bases_of, ids)}
    return {
        row[0]: Registration(int(bases.get(row[0]) or 0), *(int(v or 0) for v in row[1:]))
        for row in await conn.execute(counters_of, ids)
    }


_EVENT_COLUMNS = ("run_id", "seq", "kind", "name", "iteration", "call_id", "text", "data", "at")
_TALLY_COLUMNS = ("steps", "tool_calls", "input_tokens", "output_tokens", "thinking_tokens")
_ROLLUP_COLUMNS = (
    "status",
    "output",
    "error",
    "steps",
    "tool_calls",
    "runtime_seconds",
    "input_tokens",
    "output_tokens",
    "thinking_tokens",
    "ended_at",
)


def _sqlite_time(value: datetime) -> str:
    """A timestamp as SQLAlchemy stores a SQLite ``DateTime`` (naive UTC text): what `UTCDateTime` reads."""
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _keep_time(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Statements:
    """The per-row statements of one dialect as the driver's SQL, and how values are made for it.

    ``events``, ``tally`` and ``rollup`` take tuples in the order of their columns; ``text`` cleans
    a text value, ``json`` makes a JSON column's text, ``time`` a timestamp column's value.
    """

    events: str
    tally: str
    rollup: str
    text: Callable[[str | None], str | None]
    json: Callable[[Any], str]
    time: Callable[[datetime], Any]

    @staticmethod
    @functools.cache
    def for_dialect(name: str, paramstyle: str) -> Statements:
        """Built once per dialect and driver parameter style (``qmark``, ``format``/``pyformat``,
        ``numeric_dollar``)."""
        counter = iter(range(1, 100))

        def mark(cast: str = "") -> str:
            if paramstyle == "qmark":
                return "?"
            if paramstyle in ("format", "pyformat"):
                return "%s" + cast
            if paramstyle == "numeric_dollar":
                return f"${next(counter)}{cast}"
            raise NotImplementedError(f"executus-audit-sql does not support the parameter style {paramstyle}")

        postgres = name == "postgresql"
        if name not in ("postgresql", "sqlite"):
            raise NotImplementedError(f"executus-audit-sql does not support {name}")
        jsonb = "::jsonb" if postgres else ""
        values = ", ".join(mark(jsonb if c == "data" else "") for c in _EVENT_COLUMNS)
        events = f"INSERT INTO {EVENTS.name} ({', '.join(_EVENT_COLUMNS)}) VALUES ({values}) ON CONFLICT DO NOTHING"
        counter = iter(range(1, 100))
        sets = ", ".join(f"{c} = {mark()}" for c in _TALLY_COLUMNS)
        tally = f"UPDATE {RUNS.name} SET {sets} WHERE run_id = {mark()}"
        counter = iter(range(1, 100))
        sets = ", ".join(f"{c} = {mark()}" for c in _ROLLUP_COLUMNS)
        rollup = f"UPDATE {RUNS.name} SET {sets} WHERE run_id = {mark()}"
        if postgres:
            return Statements(events, tally, rollup, _no_nul, dumps_postgres, _keep_time)
        return Statements(events, tally, rollup, _keep, dumps, _sqlite_time)


def statements(conn: AsyncConnection) -> Statements:
    """The `Statements` of ``conn``'s dialect."""
    dialect = conn.dialect
    return Statements.for_dialect(dialect.name, dialect.paramstyle)


async def write_trail(
    conn: AsyncConnection, items: Sequence[tuple[RunState, Sequence[Row], bool]]
) -> dict[int, Registration]:
    """Write the rows of several runs in ``conn``'s transaction, registering runs seen for the first time.

    ``items`` holds ``(state, rows, live)``: ``live`` also stores the run's live tally (not for a run
    whose roll-up is written in the same transaction). Returns the registrations made, by
    ``id(state)``: apply them once the transaction has committed (if it rolls back, the runs register
    again next time).
    """
    made: dict[int, Registration] = {}
    new = [state for state, _, _ in items if not state.registered]
    if new:
        # One row per run id (a VALUES list must not hold a key twice)
        found = await register(conn, list({state.info.run_id: state.info for state in new}.values()))
        made = {id(state): found[state.info.run_id] for state in new}
    sql = statements(conn)
    clean, json, time = sql.text, sql.json, sql.time
    event_rows: list[tuple[Any, ...]] = []
    tally_rows: list[tuple[Any, ...]] = []
    for state, rows, live in items:
        registration = made.get(id(state))
        base = registration.base if registration is not None else state.base
        run_id = state.info.run_id
        for local, kind, name, iteration, call_id, text, data, at in rows:
            event_rows.append(
                (
                    run_id,
                    base + local,
                    kind,
                    clean(name),
                    iteration,
                    clean(call_id),
                    clean(text),
                    None if data is None else json(data),
                    time(at),
                )
            )
            if len(event_rows) >= CHUNK_ROWS:
                # Each statement's parameters are made on the event loop: keep each burst short.
                await conn.exec_driver_sql(sql.events, event_rows)
                event_rows = []
        if live:
            tally = state.live() if registration is None else _live_after(state, registration)
            tally_rows.append((*(tally[c] for c in _TALLY_COLUMNS), run_id))
    if event_rows:
        await conn.exec_driver_sql(sql.events, event_rows)
    if tally_rows:
        await conn.exec_driver_sql(sql.tally, tally_rows)
    return made


async def write_rollups(conn: AsyncConnection, rollups: Sequence[tuple[str, RunStats, datetime]]) -> None:
    """Store runs' final `RunStats` (``(run_id, stats, ended_at)`` each): they are no longer running."""
    sql = statements(conn)
    clean = sql.text
    await conn.exec_driver_sql(
        sql.rollup,
        [
            (
                stats.status.value,
                clean(stats.output),
                clean(stats.error),
                stats.steps,
                stats.tool_calls,
                stats.runtime_seconds,
                stats.input_tokens,
                stats.output_tokens,
                stats.thinking_tokens,
                sql.time(ended_at),
                run_id,
            )
            for run_id, stats, ended_at in rollups
        ],
    )


async def write_transcripts(
    conn: AsyncConnection, transcripts: Sequence[tuple[str, list[Any], datetime]]
) -> None:
    """Store the messages runs ended with (``(run_id, messages, at)`` each), replacing what an earlier
    attempt of the same run stored."""
    if not transcripts:
        return
    statement = _transcript_upsert(conn.dialect.name)
    rows = {
        run_id: {"run_id": run_id, "messages": messages, "at": at} for run_id, messages, at in transcripts
    }
    await conn.execute(statement, list(rows.values()))


def _keep(value: str | None) -> str | None:
    return value


def _no_nul(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def _live_after(state: RunState, registration: Registration) -> dict[str, int]:
    preview = dataclasses.replace(state)
    registration.apply(preview)
    return preview.live()
