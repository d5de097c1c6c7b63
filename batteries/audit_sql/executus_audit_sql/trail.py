"""Reading the trail back: runs (with their roll-up) and each run's rows in order.

`SqlAudit.list_runs`, `SqlAudit.get_run` and `SqlAudit.trail` use these; so do the ``executus runs``
commands. Everything returned is a pydantic model, so it dumps to JSON as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import Table, and_, func, or_, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from executus_audit_sql.schema import RunEventRow, RunRow, RunTranscriptRow
from executus_audit_sql.state import RUNNING
from executus_core.types import Message, RunInfo, RunStats, RunStatus, RunTranscript, utcnow

__all__ = [
    "RUNNING",
    "RunFacts",
    "RunRecord",
    "ThreadTurn",
    "TrailEntry",
    "find_runs",
    "get_run",
    "get_tails",
    "get_thread",
    "get_trail",
    "get_transcript",
    "list_runs",
    "run_facts",
]

RUNS: Table = RunRow.__table__  # type: ignore[assignment]
EVENTS: Table = RunEventRow.__table__  # type: ignore[assignment]
TRANSCRIPTS: Table = RunTranscriptRow.__table__  # type: ignore[assignment]


class RunRecord(BaseModel):
    """A run as stored: its info, how many times it started, and its roll-up (``status`` None: running)."""

    run_id: str
    subject_id: str
    name: str
    caller_id: str
    channel_id: str | None = None
    parent_run_id: str | None = None
    inputs: dict[str, Any] | None = None
    started_at: datetime
    attempts: int = 1
    status: RunStatus | None = None
    output: str | None = None
    error: str | None = None
    steps: int = 0
    tool_calls: int = 0
    runtime_seconds: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    ended_at: datetime | None = None
    conversation_id: str | None = None

    @property
    def conversation(self) -> str:
        """The conversation the run belongs to: its ``conversation_id``, or its own id (a first turn
        that others continued is named by its run id)."""
        return self.conversation_id or self.run_id

    @property
    def running(self) -> bool:
        """True until the run's recorder was closed (a run whose process died stays so until recovered)."""
        return self.status is None

    @property
    def shown_status(self) -> str:
        """The status as the CLI shows it: a `RunStatus` value or ``running``."""
        return self.status.value if self.status is not None else RUNNING

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def duration_seconds(self) -> float:
        """The run's runtime; for a running run, the time since it started."""
        if self.runtime_seconds is not None:
            return self.runtime_seconds
        return max(0.0, (utcnow() - self.started_at).total_seconds())

    @property
    def info(self) -> RunInfo:
        """The `RunInfo` the run started with."""
        return RunInfo(
            run_id=self.run_id,
            subject_id=self.subject_id,
            name=self.name,
            caller_id=self.caller_id,
            channel_id=self.channel_id,
            parent_run_id=self.parent_run_id,
            inputs=self.inputs,
            started_at=self.started_at,
            conversation_id=self.conversation_id,
        )

    @property
    def stats(self) -> RunStats | None:
        """The roll-up ``close`` wrote, or ``None`` while the run goes on."""
        if self.status is None:
            return None
        return RunStats(
            status=self.status,
            output=self.output,
            error=self.error,
            steps=self.steps,
            tool_calls=self.tool_calls,
            runtime_seconds=self.runtime_seconds or 0.0,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            thinking_tokens=self.thinking_tokens,
        )


class TrailEntry(BaseModel):
    """One row of a run's trail.

    ``kind`` ``step``: ``iteration``, ``text`` (the model's), ``data`` (tool calls, usage, model);
    ``tool``: ``name``, ``call_id``, ``text`` (the result), ``data`` (arguments);
    ``event``: ``name`` (the event type), ``data`` (its payload); ``error``: ``text``.
    """

    seq: int
    kind: Literal["step", "tool", "event", "error"]
    at: datetime
    name: str | None = None
    iteration: int | None = None
    call_id: str | None = None
    text: str | None = None
    data: Any = None


class RunFacts(BaseModel):
    """What a run was asked and which model answered, read from its trail.

    ``prompt`` and ``model`` come from the ``run.start`` event (the model id the run resolved, such
    as ``openai:gpt-4o-mini``, not the tier); ``answered_by`` are the model names the provider
    reported on each step (``gpt-4o-mini-2024-07-18``), in order, without repeats.
    """

    prompt: str | None = None
    model: str | None = None
    tier: str | None = None
    answered_by: list[str] = []


def run_facts(trail: Sequence[TrailEntry]) -> RunFacts:
    """The prompt and the models of a run, from its trail (see `RunFacts`); empty for old trails."""
    facts = RunFacts()
    for entry in trail:
        data = entry.data if isinstance(entry.data, dict) else {}
        if entry.kind == "event" and entry.name == "run.start" and facts.model is None:
            prompt, model, tier = data.get("prompt"), data.get("model"), data.get("tier")
            facts.prompt = prompt if isinstance(prompt, str) else None
            facts.model = model if isinstance(model, str) else None
            facts.tier = tier if isinstance(tier, str) and tier != facts.model else None
        elif entry.kind == "step":
            answered = data.get("model")
            if isinstance(answered, str) and answered and answered not in facts.answered_by:
                facts.answered_by.append(answered)
    return facts


class ThreadTurn(BaseModel):
    """One run of a conversation's thread: its id, status and times, and what was asked and answered."""

    run_id: str
    status: str
    started_at: datetime
    caller_id: str
    name: str
    prompt: str | None = None
    output: str | None = None
    error: str | None = None


def _record(row: RowMapping) -> RunRecord:
    return RunRecord.model_validate(dict(row))


async def list_runs(
    conn: AsyncConnection,
    *,
    caller_id: str | None = None,
    status: str | None = None,
    name: str | None = None,
    limit: int = 20,
    before: tuple[datetime, str] | None = None,
    parent_run_id: str | None = None,
) -> list[RunRecord]:
    """The most recent runs first; ``status`` is a `RunStatus` value or ``running``.

    ``before`` is a page cursor: the ``(started_at, run_id)`` of the last run of the previous page
    (keyset paging: every page costs the same, however deep). ``parent_run_id`` keeps the runs a
    run delegated to.
    """
    query = select(RUNS).order_by(RUNS.c.started_at.desc(), RUNS.c.run_id).limit(limit)
    if before is not None:
        at, run_id = before
        # ``started_at <= at`` alone is what an index can seek to; the OR then drops the ties already shown.
        query = query.where(
            RUNS.c.started_at <= at,
            or_(RUNS.c.started_at < at, and_(RUNS.c.started_at == at, RUNS.c.run_id > run_id)),
        )
    if parent_run_id is not None:
        query = query.where(RUNS.c.parent_run_id == parent_run_id)
    if caller_id is not None:
        query = query.where(RUNS.c.caller_id == caller_id)
    if name is not None:
        query = query.where(RUNS.c.name == name)
    if status == RUNNING:
        query = query.where(RUNS.c.status.is_(None))
    elif status is not None:
        query = query.where(RUNS.c.status == status)
    return [_record(row) for row in (await conn.execute(query)).mappings()]


async def get_run(conn: AsyncConnection, run_id: str) -> RunRecord | None:
    """The run with this id, or ``None``."""
    row = (await conn.execute(select(RUNS).where(RUNS.c.run_id == run_id))).mappings().first()
    return _record(row) if row is not None else None


async def find_runs(conn: AsyncConnection, prefix: str, *, limit: int = 5) -> list[str]:
    """Ids of runs that start with ``prefix`` (for ``executus runs show 3f2a``)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = (
        select(RUNS.c.run_id)
        .where(RUNS.c.run_id.like(escaped + "%", escape="\\"))
        .order_by(RUNS.c.run_id)
        .limit(limit)
    )
    return list((await conn.execute(query)).scalars())


async def get_trail(
    conn: AsyncConnection,
    run_id: str,
    *,
    kinds: Sequence[str] | None = None,
    after: int | None = None,
    last: int | None = None,
) -> list[TrailEntry]:
    """The run's rows in order (all kinds, or only ``kinds``); only those whose ``seq`` is above
    ``after``; only the ``last`` n of them (still in order). Both read the primary key's index."""
    query = select(EVENTS).where(EVENTS.c.run_id == run_id)
    if kinds is not None:
        query = query.where(EVENTS.c.kind.in_(list(kinds)))
    if after is not None:
        query = query.where(EVENTS.c.seq > after)
    if last is not None:
        query = query.order_by(EVENTS.c.seq.desc()).limit(last)
        rows = list((await conn.execute(query)).mappings())
        return [TrailEntry.model_validate(dict(row)) for row in reversed(rows)]
    query = query.order_by(EVENTS.c.seq)
    return [TrailEntry.model_validate(dict(row)) for row in (await conn.execute(query)).mappings()]


async def get_tails(
    conn: AsyncConnection, run_ids: Sequence[str], *, last: int
) -> dict[str, list[TrailEntry]]:
    """The ``last`` rows of each run's trail, in order, in one statement (what many runs are doing now)."""
    if not run_ids:
        return {}
    numbered = (
        select(
            EVENTS,
            func.row_number().over(partition_by=EVENTS.c.run_id, order_by=EVENTS.c.seq.desc()).label("nth"),
        )
        .where(EVENTS.c.run_id.in_(list(run_ids)))
        .subquery()
    )
    columns = [numbered.c[column.name] for column in EVENTS.columns]
    query = select(*columns).where(numbered.c.nth <= last).order_by(numbered.c.run_id, numbered.c.seq)
    tails: dict[str, list[TrailEntry]] = {run_id: [] for run_id in run_ids}
    for row in (await conn.execute(query)).mappings():
        tails.setdefault(row["run_id"], []).append(TrailEntry.model_validate(dict(row)))
    return tails


async def get_transcript(conn: AsyncConnection, run_id: str) -> RunTranscript | None:
    """The run's info, status and the messages it ended with (empty when none were kept), or
    ``None`` for an unknown run: two reads by primary key."""
    record = await get_run(conn, run_id)
    if record is None:
        return None
    found = (await conn.execute(select(TRANSCRIPTS.c.messages).where(TRANSCRIPTS.c.run_id == run_id))).first()
    messages = [Message.model_validate(m) for m in found[0]] if found is not None else []
    return RunTranscript(info=record.info, status=record.status, messages=messages)


async def get_thread(conn: AsyncConnection, conversation: str, *, limit: int = 100) -> list[ThreadTurn]:
    """The runs of ``conversation`` (those whose ``conversation_id`` it is, and the run whose id it
    is), oldest first, at most ``limit``, each with its prompt (from its ``run.start`` event)."""
    query = (
        select(RUNS)
        .where(or_(RUNS.c.conversation_id == conversation, RUNS.c.run_id == conversation))
        .order_by(RUNS.c.started_at, RUNS.c.run_id)
        .limit(limit)
    )
    records = [_record(row) for row in (await conn.execute(query)).mappings()]
    if not records:
        return []
    starts = await conn.execute(
        select(EVENTS.c.run_id, EVENTS.c.data)
        .where(
            EVENTS.c.run_id.in_([r.run_id for r in records]),
            EVENTS.c.kind == "event",
            EVENTS.c.name == "run.start",
        )
        .order_by(EVENTS.c.run_id, EVENTS.c.seq)
    )
    prompts: dict[str, str] = {}
    for run_id, data in starts:
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if isinstance(prompt, str):
            prompts.setdefault(run_id, prompt)
    return [
        ThreadTurn(
            run_id=r.run_id,
            status=r.shown_status,
            started_at=r.started_at,
            caller_id=r.caller_id,
            name=r.name,
            prompt=prompts.get(r.run_id),
            output=r.output,
            error=r.error,
        )
        for r in records
    ]
