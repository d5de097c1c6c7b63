"""The statements that write a trail, shared by the batch writer, ``close`` and ``executus runs import``.

A run's rows carry a *local* sequence number (1, 2, 3, ... in the order its recorder got them). The
first write of a recorder *registers* the run: it upserts the run's row (a run id seen before, such as
a run resumed by `Executor.recover`, counts one more attempt and is marked running again) and reads
the highest ``seq`` already stored for it, the *base*. Every row is then stored at ``base + local``,
so the trail of a resumed run goes on after the earlier attempt's, and writing a row twice (a batch
retried after an unclear failure) stores it once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from executus_audit_sql.schema import RunEventRow, RunRow, RunTranscriptRow
from executus_core.types import RunInfo, RunStats

__all__ = [
    "Registration",
    "Row",
    "RunState",
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


def _insert(conn: AsyncConnection, table: Table) -> Any:
    """An INSERT with the dialect's ON CONFLICT support."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise NotImplementedError(f"executus-audit-sql does not support {conn.dialect.name}")


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
    clean = _text_cleaner(conn)
    statement = _insert(conn, RUNS)
    statement = statement.on_conflict_do_update(
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
    await conn.execute(statement, [_run_values(info, clean) for info in infos])
    ids = [info.run_id for info in infos]
    found = await conn.execute(
        select(EVENTS.c.run_id, func.max(EVENTS.c.seq))
        .where(EVENTS.c.run_id.in_(ids))
        .group_by(EVENTS.c.run_id)
    )
    bases = {row[0]: row[1] for row in found}
    counters = select(
        RUNS.c.run_id,
        RUNS.c.steps,
        RUNS.c.tool_calls,
        RUNS.c.input_tokens,
        RUNS.c.output_tokens,
        RUNS.c.thinking_tokens,
    ).where(RUNS.c.run_id.in_(ids))
    return {
        row[0]: Registration(int(bases.get(row[0]) or 0), *(int(v or 0) for v in row[1:]))
        for row in await conn.execute(counters)
    }


_TALLY = (
    update(RUNS)
    .where(RUNS.c.run_id == bindparam("b_run_id"))
    .values(
        steps=bindparam("b_steps"),
        tool_calls=bindparam("b_tool_calls"),
        input_tokens=bindparam("b_input_tokens"),
        output_tokens=bindparam("b_output_tokens"),
        thinking_tokens=bindparam("b_thinking_tokens"),
    )
)

_ROLLUP = (
    update(RUNS)
    .where(RUNS.c.run_id == bindparam("b_run_id"))
    .values(
        status=bindparam("b_status"),
        output=bindparam("b_output"),
        error=bindparam("b_error"),
        steps=bindparam("b_steps"),
        tool_calls=bindparam("b_tool_calls"),
        runtime_seconds=bindparam("b_runtime_seconds"),
        input_tokens=bindparam("b_input_tokens"),
        output_tokens=bindparam("b_output_tokens"),
        thinking_tokens=bindparam("b_thinking_tokens"),
        ended_at=bindparam("b_ended_at", type_=RUNS.c.ended_at.type),
    )
)


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
    clean = _text_cleaner(conn)
    insert = _insert(conn, EVENTS).on_conflict_do_nothing()
    event_rows: list[dict[str, Any]] = []
    tally_rows: list[dict[str, Any]] = []
    for state, rows, live in items:
        registration = made.get(id(state))
        base = registration.base if registration is not None else state.base
        run_id = state.info.run_id
        for local, kind, name, iteration, call_id, text, data, at in rows:
            event_rows.append(
                {
                    "run_id": run_id,
                    "seq": base + local,
                    "kind": kind,
                    "name": clean(name),
                    "iteration": iteration,
                    "call_id": clean(call_id),
                    "text": clean(text),
                    "data": data,
                    "at": at,
                }
            )
            if len(event_rows) >= CHUNK_ROWS:
                # Each statement's parameters are processed on the event loop: keep each burst short.
                await conn.execute(insert, event_rows)
                event_rows = []
        if live:
            tally = state.live() if registration is None else _live_after(state, registration)
            tally_rows.append({"b_run_id": run_id, **{f"b_{k}": v for k, v in tally.items()}})
    if event_rows:
        await conn.execute(insert, event_rows)
    if tally_rows:
        await conn.execute(_TALLY, tally_rows)
    return made


async def write_rollups(conn: AsyncConnection, rollups: Sequence[tuple[str, RunStats, datetime]]) -> None:
    """Store runs' final `RunStats` (``(run_id, stats, ended_at)`` each): they are no longer running."""
    clean = _text_cleaner(conn)
    await conn.execute(
        _ROLLUP,
        [
            {
                "b_run_id": run_id,
                "b_status": stats.status.value,
                "b_output": clean(stats.output),
                "b_error": clean(stats.error),
                "b_steps": stats.steps,
                "b_tool_calls": stats.tool_calls,
                "b_runtime_seconds": stats.runtime_seconds,
                "b_input_tokens": stats.input_tokens,
                "b_output_tokens": stats.output_tokens,
                "b_thinking_tokens": stats.thinking_tokens,
                "b_ended_at": ended_at,
            }
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
    statement = _insert(conn, TRANSCRIPTS)
    statement = statement.on_conflict_do_update(
        index_elements=[TRANSCRIPTS.c.run_id],
        set_={"messages": statement.excluded.messages, "at": statement.excluded.at},
    )
    rows = {
        run_id: {"run_id": run_id, "messages": messages, "at": at} for run_id, messages, at in transcripts
    }
    await conn.execute(statement, list(rows.values()))


def _keep(value: str | None) -> str | None:
    return value


def _no_nul(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def _text_cleaner(conn: AsyncConnection) -> Any:
    """PostgreSQL refuses the NUL character in text: it is stored as U+FFFD there (a tool's binary
    output must never make a batch fail for every run in it)."""
    return _no_nul if conn.dialect.name == "postgresql" else _keep


def _live_after(state: RunState, registration: Registration) -> dict[str, int]:
    preview = dataclasses.replace(state)
    registration.apply(preview)
    return preview.live()
