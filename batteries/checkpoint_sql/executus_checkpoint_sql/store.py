"""`SqlCheckpointStore` and `SqlCheckpointer`: durable checkpoints that any worker can resume.

How runs move between workers:

- ``for_run`` writes the run's row, owned by this worker (``worker_id``) and this start of its
  process (``boot``), with a **lease** of ``lease_seconds`` on the database's clock. Each save renews
  it, and a heartbeat renews the leases of all this worker's runs at once, so a tool that runs for
  an hour keeps its run.
- ``interrupted()`` **claims** the runs whose owner is gone, in one atomic statement (``UPDATE ...
  WHERE run_id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` on PostgreSQL; SQLite has one
  writer at a time), so two workers asking at once never get the same run. A run is interrupted when
  its lease lapsed (its worker died, or shut down and released it), when its owner is this worker's
  previous boot (same ``worker_id``, another ``boot``: a restart takes its own runs back at once),
  or when it is this worker's own run in this very process and was never handed out (a run this
  process stopped; the reference store's rule, which is why ``recover()`` belongs at boot).
- Saves, ``complete`` and ``fail`` are **fenced**: they only touch a run this worker still holds. A
  worker whose lease lapsed while the database was out of reach, and whose run another worker took
  over, gets `RunTakenOver` instead of writing over the new owner's transcript.
- ``aclose()`` (called by `Executor.shutdown`) releases this store's leases, so another worker picks
  the interrupted runs up at once instead of waiting for them to lapse.

What a save writes: the run row's counters and lease (one ``UPDATE`` by primary key) and the new
messages (one ``INSERT`` of the new rows) in one transaction; earlier rows are never rewritten. A
save retried at an offset already saved replaces the rows from that offset on, so a save whose
outcome was unknown (a timeout) and is sent again with the next one never duplicates messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, and_, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from executus_checkpoint_sql.engine import create_engine, db_epoch, is_outage, resolve_url, safe_url
from executus_checkpoint_sql.errors import (
    CheckpointSqlError,
    DatabaseUnavailable,
    RunNotOwned,
    RunTakenOver,
    SaveGap,
    SchemaOutOfDate,
)
from executus_checkpoint_sql.migrate import current_revision, head_revision, upgrade_engine
from executus_checkpoint_sql.schema import COMPLETED, FAILED, LIVE, CheckpointMessage, CheckpointRun
from executus_checkpoint_sql.settings import SECTION, CheckpointSqlSettings, default_url, default_worker_id
from executus_core.config import Settings, default_data_dir
from executus_core.errors import ConfigError
from executus_core.types import Agent, CheckpointState, Interrupted, Message, RunInfo, Usage, utcnow

__all__ = ["CheckpointListing", "SqlCheckpointStore", "SqlCheckpointer", "process_boot"]

log = logging.getLogger("executus.checkpoint_sql")

RUNS = cast(Table, CheckpointRun.__table__)
MESSAGES = cast(Table, CheckpointMessage.__table__)

_CHUNK = 500  # ids per IN (...) list
_ERROR_LIMIT = 10_000  # characters of a failure kept in the run row

_boot = uuid.uuid4().hex


def _new_boot() -> None:
    global _boot
    _boot = uuid.uuid4().hex


# A forked child is another process: it must never pass for its parent when leases are compared.
os.register_at_fork(after_in_child=_new_boot)


def process_boot() -> str:
    """This start of this process: a random id, new in every process (and in a forked child)."""
    return _boot


# (url, schema) pairs this process has already upgraded: one upgrade per database per process.
_upgraded: set[tuple[str, str | None]] = set()


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0]}" if text else type(inner).__name__


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class CheckpointListing:
    """One run as ``executus checkpoints list`` shows it.

    ``state`` is ``running`` (a worker holds its lease), ``interrupted`` (its lease lapsed or was
    released: the next ``recover()`` takes it), ``claimed`` (handed out to a recover that holds it),
    ``completed`` or ``failed``. ``lease_seconds_left`` is negative once the lease lapsed.
    """

    run_id: str
    name: str
    subject_id: str
    caller_id: str
    status: str
    state: str
    messages: int
    steps: int
    tool_calls: int
    owner: str | None
    started_at: datetime
    updated_at: datetime
    lease_seconds_left: float | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able data (times as ISO 8601 strings)."""
        data = dataclasses.asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data


class SqlCheckpointer:
    """The `Checkpointer` of one run: appends its new messages, then completes or fails it.

    Made by `SqlCheckpointStore.for_run`. When the database could not be reached at ``for_run``, the
    checkpointer is made anyway and writes the run's row with its first save that gets through, so a
    run that starts during an outage is still checkpointed once the database is back.
    """

    def __init__(
        self,
        store: SqlCheckpointStore,
        info: RunInfo,
        agent_spec: dict[str, Any],
        *,
        saved: int | None,
        registered: bool,
    ) -> None:
        self.store = store
        self.run_id = info.run_id
        self._info = info
        self._agent_spec = agent_spec
        # How many messages are known to be saved; None when a save's outcome is unknown (it failed
        # midway, or timed out), and the next save first drops whatever is past its offset.
        self._saved = saved
        self._registered = registered

    async def save(self, state: CheckpointState) -> None:
        """Write ``state.messages`` at ``state.offset`` with the run's counters, in one transaction.

        Raises `SaveGap` for an offset past what is saved, `RunTakenOver` when another worker holds
        the run now, and `DatabaseUnavailable` when the database cannot be reached (the core then
        sends these messages again with the next save).
        """
        if state.run_id != self.run_id:
            raise ValueError(f"the checkpointer of run {self.run_id} was given a state of run {state.run_id}")
        offset = state.offset
        rows = [
            {
                "run_id": self.run_id,
                "position": offset + index,
                "message": message.model_dump(mode="json", exclude_defaults=True),
            }
            for index, message in enumerate(state.messages)
        ]
        end = offset + len(rows)
        known, self._saved = self._saved, None
        try:
            await self._write(state, rows, known)
        except DatabaseUnavailable as exc:
            raise DatabaseUnavailable(
                f"{exc}; the run goes on, and its next save sends these messages again"
            ) from (exc.__cause__)
        self._registered = True
        self._saved = end

    async def _write(self, state: CheckpointState, rows: list[dict[str, Any]], known: int | None) -> None:
        store = self.store
        offset = state.offset
        end = offset + len(rows)
        async with store._transaction() as conn:
            if not self._registered:
                known = await store._register(conn, self._info, self._agent_spec)
            now = db_epoch(store.dialect)
            result = await conn.execute(
                update(RUNS)
                .where(store._held(self.run_id), RUNS.c.message_count >= offset)
                .values(
                    message_count=end,
                    iteration=state.iteration,
                    tool_calls=state.tool_calls,
                    usage=state.usage.model_dump(),
                    lease_until=now + store.lease_seconds,
                    updated_at=utcnow(),
                )
            )
            if result.rowcount != 1:
                raise await store._refusal(conn, self.run_id, "save", offset=offset)
            if known != offset:
                # A retried save, or one after a save whose outcome is unknown: what follows the
                # offset is replaced. In the usual case (appending) there is nothing to delete.
                await conn.execute(
                    delete(MESSAGES).where(MESSAGES.c.run_id == self.run_id, MESSAGES.c.position >= offset)
                )
            if rows:
                await conn.execute(insert(MESSAGES), rows)

    async def complete(self) -> None:
        """The run ended: delete its messages and mark it ``completed``."""
        await self.store._finish(self.run_id, COMPLETED, None, registered=self._registered)

    async def fail(self, error: str) -> None:
        """The run failed for good: delete its messages and mark it ``failed`` with ``error``."""
        await self.store._finish(self.run_id, FAILED, error, registered=self._registered)

    async def release(self) -> None:
        """The run ended ``interrupted``: keep its checkpoint and give up its lease at once."""
        await self.store.release([self.run_id])


class SqlCheckpointStore:
    """A `CheckpointStore` in SQLite or PostgreSQL, shared by every worker that points at it.

    ::

        store = SqlCheckpointStore("postgresql+psycopg://app@db/app", worker_id="web-1")
        async with Executor(plugins=[PortPlugin(checkpoints=store)], entry_points=False) as ex:
            results = await ex.recover()

    Installed as a battery it needs none of this: `Executor()` builds it from
    ``[tool.executus.checkpoint_sql]`` (see `CheckpointSqlSettings`); with no settings it keeps
    ``checkpoints.db`` in the executus data directory.

    Args:
        url: a SQLAlchemy URL with an async driver (``sqlite+aiosqlite:///...``,
            ``postgresql+psycopg://...``, ``postgresql+asyncpg://...``); plain ``sqlite://`` and
            ``postgresql://`` get the default driver. Default: ``checkpoints.db`` in ``data_dir``.
        config: the settings as a model (the other keyword arguments override its fields).
        data_dir: where the default SQLite file goes (default: executus's data directory).
        **options: any other `CheckpointSqlSettings` field: ``worker_id``, ``lease_seconds``,
            ``db_schema``, ...

    Nothing touches the database until the first call; the first call creates or upgrades the
    tables (unless ``auto_upgrade`` is off). Call `aclose` when done (`Executor.shutdown` does).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        config: CheckpointSqlSettings | None = None,
        data_dir: str | Path | None = None,
        **options: Any,
    ) -> None:
        fields = (config or CheckpointSqlSettings()).model_dump(exclude_unset=config is None)
        if url is not None:
            fields["url"] = url
        fields.update(options)
        unknown = sorted(set(fields) - set(CheckpointSqlSettings.model_fields))
        if unknown:
            raise ConfigError(
                f"SqlCheckpointStore: unknown option {', '.join(unknown)}; known: "
                f"{', '.join(sorted(CheckpointSqlSettings.model_fields))}"
            )
        try:
            self.config = CheckpointSqlSettings.model_validate(fields)
        except ValueError as exc:
            raise ConfigError(f"SqlCheckpointStore: {exc}") from None
        raw_url = self.config.url or default_url(Path(data_dir) if data_dir else default_data_dir())
        self.url = resolve_url(raw_url)
        self.dialect = self.url.get_backend_name()
        if self.config.db_schema and self.dialect != "postgresql":
            raise ConfigError(
                f"[tool.executus.{SECTION}] db_schema is for PostgreSQL; {safe_url(self.url)} is {self.dialect}"
            )
        self.worker_id = self.config.worker_id or default_worker_id()
        self.boot = process_boot()
        self.lease_seconds = self.config.lease_seconds
        self._engine: AsyncEngine | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._heartbeat_failing = False
        self._down_until = 0.0
        self._down_message = ""
        # Runs this store instance holds (made with for_run or claimed), to release at aclose.
        self._owned: set[str] = set()
        # Runs whose complete/fail could not reach the database: the heartbeat writes them later.
        self._pending_ends: dict[str, tuple[str, str | None]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlCheckpointStore | None:
        """The store ``[tool.executus.checkpoint_sql]`` describes, or ``None`` when ``enabled = false``."""
        config = settings.section(SECTION, CheckpointSqlSettings)
        if not config.enabled:
            return None
        return cls(config=config, data_dir=settings.core.data_dir)

    def __repr__(self) -> str:
        return f"SqlCheckpointStore({safe_url(self.url)!r}, worker_id={self.worker_id!r})"

    @property
    def database(self) -> str:
        """The database URL, password hidden."""
        return safe_url(self.url)

    # -- plumbing ------------------------------------------------------------------------------

    async def _ensure_ready(self) -> AsyncEngine:
        """The engine, with the tables created or checked (once per store)."""
        if self._ready and self._engine is not None:
            return self._engine
        async with self._ready_lock:
            if self._closed:
                raise CheckpointSqlError(f"{self!r} is closed")
            if self._engine is None:
                self._engine = create_engine(
                    self.url,
                    db_schema=self.config.db_schema,
                    connect_timeout=self.config.connect_timeout,
                    busy_timeout=self.config.busy_timeout,
                )
            if not self._ready:
                key = (self.url.render_as_string(hide_password=False), self.config.db_schema)
                if self.config.auto_upgrade:
                    if key not in _upgraded:
                        await upgrade_engine(self._engine, db_schema=self.config.db_schema)
                        _upgraded.add(key)
                else:
                    found = await current_revision(self._engine)
                    head = await asyncio.to_thread(head_revision)
                    if found != head:
                        raise SchemaOutOfDate(
                            f"the checkpoint tables in {self.database} are at revision {found or 'none'}, "
                            f"this version of executus-checkpoint-sql needs {head}: run `executus db upgrade` "
                            f"(or set [tool.executus.{SECTION}] auto_upgrade = true)"
                        )
                self._ready = True
            return self._engine

    def _mark_down(self, exc: BaseException) -> None:
        self._down_message = f"the checkpoint database {self.database} is not available: {_first_line(exc)}"
        if self.config.outage_backoff > 0:
            self._down_until = time.monotonic() + self.config.outage_backoff

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; a database that cannot be reached becomes `DatabaseUnavailable`.

        After such a failure, calls fail at once for ``outage_backoff`` seconds rather than each
        waiting for a connection that will not come.
        """
        if self._closed:
            raise CheckpointSqlError(f"{self!r} is closed")
        if self._down_until and time.monotonic() < self._down_until:
            raise DatabaseUnavailable(self._down_message)
        try:
            engine = await self._ensure_ready()
            async with engine.begin() as conn:
                yield conn
        except CheckpointSqlError:
            raise
        except Exception as exc:
            if is_outage(exc):
                self._mark_down(exc)
                raise DatabaseUnavailable(self._down_message) from exc
            raise
        self._down_until = 0.0

    def _held(self, run_id: str) -> ColumnElement[bool]:
        """The run is live and held by this worker's this boot (the fence on every write)."""
        return and_(
            RUNS.c.run_id == run_id,
            RUNS.c.status == LIVE,
            RUNS.c.owner == self.worker_id,
            RUNS.c.boot == self.boot,
        )

    async def _refusal(
        self, conn: AsyncConnection, run_id: str, method: str, *, offset: int | None = None
    ) -> CheckpointSqlError:
        """Why a fenced write touched no row, as the error to raise."""
        row = (
            await conn.execute(
                select(RUNS.c.status, RUNS.c.owner, RUNS.c.boot, RUNS.c.message_count).where(
                    RUNS.c.run_id == run_id
                )
            )
        ).first()
        if row is None:
            return RunNotOwned(f"checkpoint {method} for run {run_id}, which for_run never started")
        if row.status != LIVE:
            return RunNotOwned(f"checkpoint {method} for run {run_id}, which is already {row.status}")
        if (row.owner, row.boot) != (self.worker_id, self.boot):
            return RunTakenOver(
                f"run {run_id} is now held by worker {row.owner!r}: this worker's lease lapsed (was the "
                f"database out of reach for longer than lease_seconds = {self.lease_seconds:g}?) and another "
                "worker took the run over; this process no longer checkpoints it"
            )
        if offset is not None and offset > row.message_count:
            return SaveGap(
                f"checkpoint of run {run_id}: save at offset {offset} but only {row.message_count} "
                "messages are saved; a save was lost"
            )
        return CheckpointSqlError(f"checkpoint {method} for run {run_id} changed no row")  # pragma: no cover

    def _insert(self) -> Any:
        return postgresql_insert(RUNS) if self.dialect == "postgresql" else sqlite_insert(RUNS)

    async def _register(self, conn: AsyncConnection, info: RunInfo, agent_spec: dict[str, Any]) -> int:
        """Write the run's row for this worker; return how many messages it already holds.

        A new run (or a finished one run again under its id) starts empty. A live run is resumed,
        keeping its transcript, if this worker holds it (it claimed it with ``interrupted()``) or
        nobody does any more; a run another worker holds is refused.
        """
        now = db_epoch(self.dialect)
        stamp = utcnow()
        values: dict[str, Any] = {
            "run_id": info.run_id,
            "status": LIVE,
            "info": info.model_dump(mode="json"),
            "agent": agent_spec,
            "subject_id": info.subject_id[:255],
            "name": info.name[:255],
            "caller_id": info.caller_id[:255],
            "started_at": _utc(info.started_at),
            "iteration": 0,
            "tool_calls": 0,
            "usage": Usage().model_dump(),
            "message_count": 0,
            "owner": self.worker_id,
            "boot": self.boot,
            "lease_until": now + self.lease_seconds,
            "claimed_at": None,
            "error": None,
            "created_at": stamp,
            "updated_at": stamp,
        }
        statement = self._insert().values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[RUNS.c.run_id],
            set_={key: statement.excluded[key] for key in values if key != "run_id"},
            where=RUNS.c.status != LIVE,
        )
        if (await conn.execute(statement)).rowcount == 1:
            # Any rows left from an earlier life of this run id go; a finished run has none.
            await conn.execute(delete(MESSAGES).where(MESSAGES.c.run_id == info.run_id))
            return 0
        resumed = (
            await conn.execute(
                update(RUNS)
                .where(
                    RUNS.c.run_id == info.run_id,
                    RUNS.c.status == LIVE,
                    or_(
                        and_(RUNS.c.owner == self.worker_id, RUNS.c.boot == self.boot),
                        RUNS.c.lease_until.is_(None),
                        RUNS.c.lease_until < now,
                    ),
                )
                .values(
                    owner=self.worker_id,
                    boot=self.boot,
                    lease_until=now + self.lease_seconds,
                    claimed_at=None,
                    updated_at=stamp,
                )
                .returning(RUNS.c.message_count)
            )
        ).first()
        if resumed is not None:
            return int(resumed.message_count)
        holder = (
            await conn.execute(
                select(RUNS.c.owner, (RUNS.c.lease_until - now).label("left")).where(
                    RUNS.c.run_id == info.run_id
                )
            )
        ).first()
        owner, left = (holder.owner, holder.left) if holder is not None else (None, None)
        raise RunNotOwned(
            f"run {info.run_id} is live on worker {owner!r} (its lease runs another {left or 0:.0f}s): it is "
            "not this worker's to checkpoint; resume interrupted runs with Executor.recover(), and never "
            "start two runs with one run_id"
        )

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None and not self._closed and self.config.heartbeat_interval > 0:
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat(), name=f"executus-checkpoint-sql heartbeat ({self.worker_id})"
            )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                renewed = await self.renew_leases()
            except Exception as exc:
                if not self._heartbeat_failing:
                    log.warning(
                        "checkpoint heartbeat of worker %s failed (%s); runs keep their leases for "
                        "lease_seconds=%g after their last renewal",
                        self.worker_id,
                        _first_line(exc),
                        self.lease_seconds,
                    )
                self._heartbeat_failing = True
            else:
                if self._heartbeat_failing:
                    log.warning(
                        "checkpoint heartbeat of worker %s works again (%d runs)", self.worker_id, renewed
                    )
                self._heartbeat_failing = False

    # -- the port ------------------------------------------------------------------------------

    async def for_run(self, info: RunInfo, agent: Agent) -> SqlCheckpointer:
        """The checkpointer of ``info.run_id``; a live run this worker may take keeps its transcript.

        Raises `RunNotOwned` when another worker holds the run. When the database cannot be reached
        the checkpointer is returned anyway and registers the run with its first save that gets
        through.
        """
        spec = agent.spec()
        self._ensure_heartbeat()
        try:
            async with self._transaction() as conn:
                saved = await self._register(conn, info, spec)
        except DatabaseUnavailable:
            self._owned.add(info.run_id)
            return SqlCheckpointer(self, info, spec, saved=None, registered=False)
        self._owned.add(info.run_id)
        self._pending_ends.pop(info.run_id, None)
        return SqlCheckpointer(self, info, spec, saved=saved, registered=True)

    async def interrupted(self) -> list[Interrupted]:
        """Claim the runs whose owner is gone, oldest first, with their transcripts.

        One statement claims them, so workers asking at the same time share the runs and never get
        one twice; a claimed run is not handed out again until ``for_run`` resumes it, or until the
        worker that claimed it is gone too. At most ``claim_limit`` runs per call.
        """
        self._ensure_heartbeat()
        now = db_epoch(self.dialect)
        claimable = and_(
            RUNS.c.status == LIVE,
            RUNS.c.message_count > 0,
            or_(
                RUNS.c.lease_until.is_(None),
                RUNS.c.lease_until < now,
                # this worker's previous boot is gone
                and_(RUNS.c.owner == self.worker_id, RUNS.c.boot != self.boot),
                # this worker's own run, not handed out yet (the reference store's rule; see the docs)
                and_(RUNS.c.owner == self.worker_id, RUNS.c.boot == self.boot, RUNS.c.claimed_at.is_(None)),
            ),
        )
        pick = select(RUNS.c.run_id).where(claimable).order_by(RUNS.c.started_at, RUNS.c.run_id)
        if self.config.claim_limit is not None:
            pick = pick.limit(self.config.claim_limit)
        # SKIP LOCKED: a run another worker is claiming right now is left to it, not waited for.
        pick = pick.with_for_update(skip_locked=True)
        claim = (
            update(RUNS)
            .where(RUNS.c.run_id.in_(pick.scalar_subquery()))
            .values(
                owner=self.worker_id,
                boot=self.boot,
                lease_until=now + self.lease_seconds,
                claimed_at=now,
                updated_at=utcnow(),
            )
            .returning(
                RUNS.c.run_id,
                RUNS.c.info,
                RUNS.c.agent,
                RUNS.c.iteration,
                RUNS.c.tool_calls,
                RUNS.c.usage,
            )
        )
        async with self._transaction() as conn:
            claimed = (await conn.execute(claim)).all()
            transcripts: dict[str, list[Message]] = {row.run_id: [] for row in claimed}
            for ids in _chunks(list(transcripts)):
                found = await conn.execute(
                    select(MESSAGES.c.run_id, MESSAGES.c.message)
                    .where(MESSAGES.c.run_id.in_(ids))
                    .order_by(MESSAGES.c.run_id, MESSAGES.c.position)
                )
                for run_id, message in found:
                    transcripts[run_id].append(Message.model_validate(message))
        self._owned.update(transcripts)
        items = [
            Interrupted(
                info=RunInfo.model_validate(row.info),
                agent=dict(row.agent),
                messages=transcripts[row.run_id],
                iteration=row.iteration,
                usage=Usage.model_validate(row.usage),
                tool_calls=row.tool_calls,
            )
            for row in claimed
        ]
        items.sort(key=lambda item: (_utc(item.info.started_at), item.info.run_id))
        return items

    async def _finish(self, run_id: str, status: str, error: str | None, *, registered: bool = True) -> None:
        try:
            async with self._transaction() as conn:
                result = await conn.execute(
                    update(RUNS)
                    .where(self._held(run_id))
                    .values(
                        status=status,
                        error=error[:_ERROR_LIMIT] if error else None,
                        message_count=0,
                        lease_until=None,
                        claimed_at=None,
                        updated_at=utcnow(),
                    )
                )
                if result.rowcount != 1:
                    if not registered:
                        return  # never reached the database: there is nothing to clear
                    raise await self._refusal(conn, run_id, "complete" if status == COMPLETED else "fail")
                await conn.execute(delete(MESSAGES).where(MESSAGES.c.run_id == run_id))
        except DatabaseUnavailable as exc:
            if registered:
                # Keep the lease (the heartbeat renews it) and write the end when the database is back,
                # or another worker would resume a run that already ended.
                self._pending_ends[run_id] = (status, error)
                self._ensure_heartbeat()
                raise DatabaseUnavailable(
                    f"{exc}; the run's end is written when the database is back (retried every "
                    f"{self.config.heartbeat_interval:g}s while this process runs)"
                ) from exc
            return
        self._pending_ends.pop(run_id, None)
        self._owned.discard(run_id)

    async def renew_leases(self) -> int:
        """Write the run ends that are waiting for the database, then renew every lease this worker holds.

        The heartbeat calls this every ``heartbeat_seconds``; returns how many runs were renewed.
        """
        for run_id, (status, error) in list(self._pending_ends.items()):
            try:
                await self._finish(run_id, status, error)
            except RunNotOwned:
                self._pending_ends.pop(run_id, None)  # another worker holds it now: not ours to end
        async with self._transaction() as conn:
            now = db_epoch(self.dialect)
            result = await conn.execute(
                update(RUNS)
                .where(RUNS.c.owner == self.worker_id, RUNS.c.boot == self.boot, RUNS.c.status == LIVE)
                .values(lease_until=now + self.lease_seconds)
            )
        return int(result.rowcount)

    async def release(self, run_ids: Iterable[str] | None = None) -> int:
        """Give up this store's live runs at once (``aclose`` does this), so any worker may resume them.

        ``run_ids`` limits it to those runs (a run the core ended ``interrupted``). Returns how many
        runs were released.
        """
        owned = sorted(self._owned if run_ids is None else self._owned.intersection(run_ids))
        released = 0
        if not owned or not self._ready:
            return 0
        async with self._transaction() as conn:
            for ids in _chunks(owned):
                result = await conn.execute(
                    update(RUNS)
                    .where(
                        RUNS.c.run_id.in_(ids),
                        RUNS.c.owner == self.worker_id,
                        RUNS.c.boot == self.boot,
                        RUNS.c.status == LIVE,
                    )
                    .values(boot=None, lease_until=None, claimed_at=None)
                )
                released += int(result.rowcount)
        self._owned.difference_update(owned)
        return released

    async def aclose(self) -> None:
        """Stop the heartbeat, write pending run ends, release this store's leases, close the pool.

        Called once by `Executor.shutdown`. A database out of reach is logged, not raised: the
        leases then lapse after ``lease_seconds``.
        """
        if self._closed:
            return
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._engine is not None and self._ready:
            try:
                if self._pending_ends:
                    await self.renew_leases()
                released = await self.release()
                if released:
                    log.info("released %d interrupted runs of worker %s", released, self.worker_id)
            except Exception as exc:
                log.warning(
                    "could not release the runs of worker %s (%s); other workers take them over once their "
                    "leases lapse (lease_seconds=%g)",
                    self.worker_id,
                    _first_line(exc),
                    self.lease_seconds,
                )
        self._closed = True
        if self._engine is not None:
            await self._engine.dispose()

    # -- reading, for people and tests ------------------------------------------------------------

    async def list_runs(self, *, include_finished: bool = False, limit: int = 100) -> list[CheckpointListing]:
        """The live runs (and, with ``include_finished``, the ended ones), most recently updated first.

        Reads only: nothing is claimed.
        """
        now = db_epoch(self.dialect).label("now")
        query = select(RUNS, now).order_by(RUNS.c.updated_at.desc(), RUNS.c.run_id).limit(limit)
        if not include_finished:
            query = query.where(RUNS.c.status == LIVE)
        async with self._transaction() as conn:
            rows = (await conn.execute(query)).all()
        listings = []
        for row in rows:
            left = None if row.lease_until is None else row.lease_until - row.now
            if row.status != LIVE:
                state = row.status
            elif left is None or left < 0:
                state = "interrupted"
            elif row.claimed_at is not None:
                state = "claimed"
            else:
                state = "running"
            listings.append(
                CheckpointListing(
                    run_id=row.run_id,
                    name=row.name,
                    subject_id=row.subject_id,
                    caller_id=row.caller_id,
                    status=row.status,
                    state=state,
                    messages=row.message_count,
                    steps=row.iteration,
                    tool_calls=row.tool_calls,
                    owner=row.owner,
                    started_at=_utc(row.started_at),
                    updated_at=_utc(row.updated_at),
                    lease_seconds_left=None if left is None else round(left, 3),
                    error=row.error,
                )
            )
        return listings

    async def transcript(self, run_id: str) -> list[Message]:
        """The messages saved for ``run_id`` (empty once it completed or failed). Reads only."""
        async with self._transaction() as conn:
            found = await conn.execute(
                select(MESSAGES.c.message).where(MESSAGES.c.run_id == run_id).order_by(MESSAGES.c.position)
            )
            return [Message.model_validate(message) for (message,) in found]

    async def run_row(self, run_id: str) -> Mapping[str, Any] | None:
        """The run's row as a mapping (``status``, ``owner``, ``lease_until``, ...), or ``None``."""
        async with self._transaction() as conn:
            row = (await conn.execute(select(RUNS).where(RUNS.c.run_id == run_id))).first()
        return None if row is None else dict(row._mapping)
