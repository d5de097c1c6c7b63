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

Several attempts of one run may write at once: a worker paused past its lease wakes while the worker
that took its run over goes on, or after it ended. Nothing one writes is lost to the other's: a
resumed attempt's rows start `ATTEMPT_GAP` past the highest ``seq`` stored, and a trail holds one step
row per iteration and one tool row per call id (unique indexes; ``ON CONFLICT DO NOTHING`` keeps the
first, so what a resumed run re-records from its checkpoint, `SqlRecorder.on_resume`, is stored only
where the trail lacks it). And an end for good (``ok``, ``error``, ...) is kept against the woken
worker's late registration, live tally and ``interrupted`` roll-up (`_OPEN`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection

from executus_audit_sql.database import dumps, dumps_postgres
from executus_audit_sql.schema import RunEventRow, RunRow, RunTranscriptRow
from executus_audit_sql.state import Registration, Row, RunState
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

ATTEMPT_GAP = 100_000
"""How far past the highest ``seq`` stored an attempt of a run that was recorded before starts: two
attempts that write at once (a paused worker woken after another took its run over) never share a
``seq``, so neither's rows are lost to the other's (rows of one attempt beyond this many would be)."""

CHUNK_ROWS = 1000
"""Rows per INSERT statement (one ``executemany``): a big batch is sent as several, so the tuples of
one are made while the database works on the one before."""


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


_RUN_COLUMNS = (
    ("run_id", "text"),
    ("subject_id", "text"),
    ("name", "text"),
    ("caller_id", "text"),
    ("channel_id", "text"),
    ("parent_run_id", "text"),
    ("inputs", "json"),
    ("started_at", "timestamptz"),
    ("attempts", "integer"),
    ("conversation_id", "text"),
)
_EVENT_COLUMNS = (
    ("run_id", "text"),
    ("seq", "integer"),
    ("kind", "text"),
    ("name", "text"),
    ("iteration", "integer"),
    ("call_id", "text"),
    ("text", "text"),
    ("data", "json"),
    ("at", "timestamptz"),
)
_TALLY_COLUMNS = (
    ("run_id", "text"),
    ("steps", "integer"),
    ("tool_calls", "integer"),
    ("input_tokens", "bigint"),
    ("output_tokens", "bigint"),
    ("thinking_tokens", "bigint"),
)
_ROLLUP_COLUMNS = (
    ("run_id", "text"),
    ("status", "text"),
    ("output", "text"),
    ("error", "text"),
    ("steps", "integer"),
    ("tool_calls", "integer"),
    ("runtime_seconds", "double precision"),
    ("input_tokens", "bigint"),
    ("output_tokens", "bigint"),
    ("thinking_tokens", "bigint"),
    ("ended_at", "timestamptz"),
)
_RESET = ("status", "output", "error", "runtime_seconds", "ended_at")
_OPEN = f"({RUNS.name}.status IS NULL OR {RUNS.name}.status IN ('interrupted', 'awaiting_approval'))"
"""The run has not ended for good: running, or an attempt that may be resumed. An end for good (ok,
error, ...) is kept against what a paused worker that lost the run writes when it wakes: its late
registration, its live tally, its ``interrupted`` roll-up."""
_ONLY = {"tally": f"{RUNS.name}.status IS NULL", "rollup": f"(v.status <> 'interrupted' OR {_OPEN})"}


def _sqlite_time(value: datetime) -> str:
    """A timestamp as SQLAlchemy stores a SQLite ``DateTime`` (naive UTC text): what `UTCDateTime` reads."""
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _aware_time(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _rows_sql(postgres: bool, mark: str, columns: Sequence[tuple[str, str]]) -> str:
    """A SELECT of the rows held in one JSON parameter (an array of arrays, columns in order)."""
    picked = []
    for index, (name, kind) in enumerate(columns):
        if postgres:
            if kind == "json":
                value = f"NULLIF(r->{index}, 'null'::jsonb)"
            elif kind == "text":
                value = f"r->>{index}"
            else:
                value = f"CAST(r->>{index} AS {kind})"
        else:
            value = f"NULLIF(value->{index}, 'null')" if kind == "json" else f"value->>{index}"
        picked.append(f"{value} AS {name}")
    if postgres:
        return f"SELECT {', '.join(picked)} FROM jsonb_array_elements(CAST({mark} AS jsonb)) AS r"
    return f"SELECT {', '.join(picked)} FROM json_each({mark}) WHERE true"


def _update_sql(rows: str, columns: Sequence[tuple[str, str]], only: str) -> str:
    """An UPDATE of the runs' rows from ``rows`` (a SELECT, ``run_id`` first) where ``only`` holds."""
    sets = ", ".join(f"{name} = v.{name}" for name, _ in columns[1:])
    return f"UPDATE {RUNS.name} SET {sets} FROM ({rows}) AS v WHERE {RUNS.name}.run_id = v.run_id AND {only}"


def _one_by_one_sql(kind: str, suffix: str) -> str:
    """SQLite's statement ``kind`` for one row a time (a ``?`` per column, in order)."""
    table, columns, update = _KINDS[kind]
    names = [name for name, _ in columns]
    if update:
        return _update_sql(f"SELECT {', '.join(f'? AS {n}' for n in names)}", columns, _ONLY[kind])
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) {suffix}"


_KINDS: dict[str, tuple[str, Sequence[tuple[str, str]], bool]] = {
    "upsert_runs": (RUNS.name, _RUN_COLUMNS, False),
    "events": (EVENTS.name, _EVENT_COLUMNS, False),
    "tally": (RUNS.name, _TALLY_COLUMNS, True),
    "rollup": (RUNS.name, _ROLLUP_COLUMNS, True),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Statements:
    """The statements of one dialect as the driver's SQL: each takes *one* parameter, a JSON array
    of rows, and the database unpacks it (``json_each`` on SQLite, ``jsonb_array_elements`` on
    PostgreSQL). A write is then a handful of statements, each one round trip, whatever its rows:
    the client encodes them with one orjson call, and the writer's thread gives up the GIL a few
    times per write instead of once per row.
    """

    postgres: bool
    upsert_runs: str
    bases: str
    counters: str
    events: str
    tally: str
    rollup: str
    upsert_suffix: str

    @staticmethod
    @functools.cache
    def for_dialect(name: str, paramstyle: str) -> Statements:
        """Built once per dialect and driver parameter style (``qmark``, ``format``/``pyformat``,
        ``numeric_dollar``)."""
        if name not in ("postgresql", "sqlite"):
            raise NotImplementedError(f"executus-audit-sql does not support {name}")
        marks = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric_dollar": "$1"}
        if paramstyle not in marks:
            raise NotImplementedError(f"executus-audit-sql does not support the parameter style {paramstyle}")
        mark, postgres = marks[paramstyle], name == "postgresql"
        ids = (
            f"SELECT jsonb_array_elements_text(CAST({mark} AS jsonb))"
            if postgres
            else f"SELECT value FROM json_each({mark})"
        )
        run_names = ", ".join(n for n, _ in _RUN_COLUMNS)
        reset = ", ".join(f"{c} = CASE WHEN {_OPEN} THEN NULL ELSE {RUNS.name}.{c} END" for c in _RESET)
        upsert_suffix = f"ON CONFLICT (run_id) DO UPDATE SET attempts = {RUNS.name}.attempts + 1, {reset}"
        upsert_runs = (
            f"INSERT INTO {RUNS.name} ({run_names}) {_rows_sql(postgres, mark, _RUN_COLUMNS)} {upsert_suffix}"
        )
        bases = f"SELECT run_id, max(seq) FROM {EVENTS.name} WHERE run_id IN ({ids}) GROUP BY run_id"
        counters = (
            f"SELECT run_id, steps, tool_calls, input_tokens, output_tokens, thinking_tokens "
            f"FROM {RUNS.name} WHERE run_id IN ({ids})"
        )
        events = (
            f"INSERT INTO {EVENTS.name} ({', '.join(n for n, _ in _EVENT_COLUMNS)}) "
            f"{_rows_sql(postgres, mark, _EVENT_COLUMNS)} ON CONFLICT DO NOTHING"
        )
        tally = _update_sql(_rows_sql(postgres, mark, _TALLY_COLUMNS), _TALLY_COLUMNS, _ONLY["tally"])
        rollup = _update_sql(_rows_sql(postgres, mark, _ROLLUP_COLUMNS), _ROLLUP_COLUMNS, _ONLY["rollup"])
        return Statements(postgres, upsert_runs, bases, counters, events, tally, rollup, upsert_suffix)

    def time(self, value: datetime) -> Any:
        """A timestamp as this dialect's JSON rows carry it."""
        return _aware_time(value) if self.postgres else _sqlite_time(value)

    def rows(self, rows: Sequence[Any]) -> tuple[str]:
        """The one parameter of a statement: ``rows`` as a JSON array (on PostgreSQL without the NUL
        character, which its text and JSONB refuse: it becomes U+FFFD)."""
        return (dumps_postgres(rows) if self.postgres else dumps(rows),)

    def run(self, conn: Connection, kind: str, rows: Sequence[Sequence[Any]]) -> None:
        """Write ``rows`` with the statement ``kind`` (``upsert_runs``, ``events``, ``tally``, ``rollup``).

        SQLite's JSON functions end a text at a NUL character, so rows holding one (a tool's binary
        output) go one by one, with plain parameters, instead.
        """
        (blob,) = self.rows(rows)
        if self.postgres or "\\u0000" not in blob:
            conn.exec_driver_sql(getattr(self, kind), (blob,))
            return
        columns = _KINDS[kind][1]
        sql = _one_by_one_sql(kind, "ON CONFLICT DO NOTHING" if kind == "events" else self.upsert_suffix)
        json_at = [index for index, (_, type_) in enumerate(columns) if type_ == "json"]
        plain = []
        for row in rows:
            values = list(row)
            for index in json_at:
                if values[index] is not None:
                    values[index] = dumps(values[index])
            plain.append(tuple(values))
        conn.exec_driver_sql(sql, plain)


def statements(conn: Connection) -> Statements:
    """The `Statements` of ``conn``'s dialect."""
    dialect = conn.dialect
    return Statements.for_dialect(dialect.name, dialect.paramstyle)


def register(conn: Connection, infos: Sequence[RunInfo]) -> dict[str, Registration]:
    """Upsert the runs' rows (a run id seen before counts one more attempt and is running again) and
    find each one's base seq and the tally an earlier attempt stored: three statements for any number."""
    sql = statements(conn)
    runs = [
        (
            info.run_id,
            info.subject_id,
            info.name,
            info.caller_id,
            info.channel_id,
            info.parent_run_id,
            info.inputs,
            sql.time(info.started_at),
            1,
            info.conversation_id,
        )
        for info in infos
    ]
    sql.run(conn, "upsert_runs", runs)
    ids = sql.rows([info.run_id for info in infos])
    bases = {row[0]: row[1] for row in conn.exec_driver_sql(sql.bases, ids)}
    return {
        row[0]: Registration(
            0 if bases.get(row[0]) is None else int(bases[row[0]]) + ATTEMPT_GAP,
            *(int(v or 0) for v in row[1:]),
        )
        for row in conn.exec_driver_sql(sql.counters, ids)
    }


def write_trail(
    conn: Connection, items: Sequence[tuple[RunState, Sequence[Row], bool]]
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
        found = register(conn, list({state.info.run_id: state.info for state in new}.values()))
        made = {id(state): found[state.info.run_id] for state in new}
    sql = statements(conn)
    time = sql.time
    event_rows: list[tuple[Any, ...]] = []
    tally_rows: list[tuple[Any, ...]] = []
    for state, rows, live in items:
        registration = made.get(id(state))
        base = registration.base if registration is not None else state.base
        run_id = state.info.run_id
        for local, kind, name, iteration, call_id, text, data, at in rows:
            event_rows.append((run_id, base + local, kind, name, iteration, call_id, text, data, time(at)))
            if len(event_rows) >= CHUNK_ROWS:
                sql.run(conn, "events", event_rows)
                event_rows = []
        if live:
            tally = state.live() if registration is None else _live_after(state, registration)
            tally_rows.append((run_id, *tally.values()))
    if event_rows:
        sql.run(conn, "events", event_rows)
    if tally_rows:
        sql.run(conn, "tally", tally_rows)
    return made


def write_rollups(conn: Connection, rollups: Sequence[tuple[str, RunStats, datetime]]) -> None:
    """Store runs' final `RunStats` (``(run_id, stats, ended_at)`` each): they are no longer running
    (an ``interrupted`` one does not replace an end for good another attempt stored)."""
    sql = statements(conn)
    rows = [
        (
            run_id,
            stats.status.value,
            stats.output,
            stats.error,
            stats.steps,
            stats.tool_calls,
            stats.runtime_seconds,
            stats.input_tokens,
            stats.output_tokens,
            stats.thinking_tokens,
            sql.time(ended_at),
        )
        for run_id, stats, ended_at in rollups
    ]
    sql.run(conn, "rollup", rows)


def write_transcripts(conn: Connection, transcripts: Sequence[tuple[str, list[Any], datetime]]) -> None:
    """Store the messages runs ended with (``(run_id, messages, at)`` each), replacing what an earlier
    attempt of the same run stored."""
    if not transcripts:
        return
    statement = _transcript_upsert(conn.dialect.name)
    rows = {
        run_id: {"run_id": run_id, "messages": messages, "at": at} for run_id, messages, at in transcripts
    }
    conn.execute(statement, list(rows.values()))


def _live_after(state: RunState, registration: Registration) -> dict[str, int]:
    preview = dataclasses.replace(state)
    registration.apply(preview)
    return preview.live()
