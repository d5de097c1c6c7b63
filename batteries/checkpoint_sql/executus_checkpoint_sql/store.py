"""`SqlCheckpointStore` and `SqlCheckpointer`: durable checkpoints that any worker can resume.

Who holds a run (see docs/durability.md for the whole picture):

- Every store instance has an **owner id** of its own (``<worker_id>:<random>``): two stores never
  pass for each other, even two executors in one process.
- ``for_run`` writes the run's row, held by this store with a **lease** of ``lease_seconds`` on
  the database's clock. Each save renews it, and a heartbeat renews the leases of all the runs this
  store is running at once, so a tool that runs for an hour keeps its run.
- Each start, claim, resume and release raises the run's **epoch**, and a checkpointer writes only
  while the epoch is still the one it got: every write is fenced. A checkpointer whose run was
  taken over (or released, or ended) gets `RunTakenOver` from every method, and its write never
  lands.
- ``interrupted()`` **claims** runs whose lease lapsed (their owner died) or was released, in one
  atomic statement (``UPDATE ... WHERE run_id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` on
  PostgreSQL; SQLite has one writer at a time), so two workers asking at once never get the same
  run. It never hands out a run this store holds itself: its running runs, and its own claims.
  A claim is not renewed by the heartbeat: a run claimed and never resumed (``for_run``) nor
  released lapses after ``lease_seconds`` and counts as a failed resume.
- A failed resume is released with its error (``Checkpointer.release(error)``): the error is kept,
  the run waits ``resume_backoff_seconds`` (doubling) before it is handed out again, and after
  ``max_resume_attempts`` failures it is marked ``failed`` for good.
- A checkpoint that cannot be read back (a message or the run info that does not parse) is
  **quarantined**: marked ``corrupt`` with the error, never handed out again; the others are.
- ``aclose()`` (called by `Executor.shutdown`) releases this store's runs, so another worker picks
  them up at once instead of waiting for their leases to lapse.

What a save writes: the run row's counters and lease and the new messages; earlier rows are never
rewritten. Saves are group-committed (`executus_checkpoint_sql.writer`): the saves of all the
store's runs queue, and one writer writes each batch in one transaction, straight on the driver; a
save returns once its batch is committed.
Saves of one checkpointer run one at a time, in the order they were called, so the saves of
parallel tool results, each at the next offset, land in order. A save retried at an offset already
saved replaces the rows from that offset on, so a save whose outcome was unknown (a timeout) and is
sent again with the next one never duplicates messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from executus_checkpoint_sql.errors import (
    CheckpointSqlError,
    DatabaseUnavailable,
    RunTakenOver,
    SaveGap,
    SchemaOutOfDate,
)
from executus_checkpoint_sql.settings import (
    SECTION,
    CheckpointSqlSettings,
    default_url,
    default_worker_id,
    new_owner_id,
)
from executus_checkpoint_sql.status import COMPLETED, CORRUPT, ENDED, FAILED, LIVE, PAUSED
from executus_checkpoint_sql.urls import check_url, hide_password
from executus_checkpoint_sql.writer import (
    GroupCommit,
    PendingEnd,
    PendingSave,
    PendingStart,
    PostgresBatch,
    SqliteBatch,
)
from executus_core.config import Settings, default_data_dir
from executus_core.errors import ConfigError
from executus_core.types import (
    Agent,
    CheckpointState,
    Interrupted,
    Message,
    PendingCall,
    RunInfo,
    Usage,
    utcnow,
)

if TYPE_CHECKING:
    from sqlalchemy import Table, Text, and_, case, delete, func, insert, literal, or_, select, update
    from sqlalchemy import cast as sql_cast
    from sqlalchemy.dialects.postgresql import insert as postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.elements import ColumnElement

    from executus_checkpoint_sql.engine import (
        create_engine,
        db_epoch,
        is_driver_outage,
        is_outage,
        sqlite_path,
    )
    from executus_checkpoint_sql.migrate import current_revision, head_revision, upgrade_url

    RUNS: Table
    MESSAGES: Table
else:
    RUNS = MESSAGES = None  # the two tables: set by _load_sqlalchemy() before any statement is built

__all__ = ["CheckpointListing", "SqlCheckpointStore", "SqlCheckpointer"]

log = logging.getLogger("executus.checkpoint_sql")


_sqlalchemy_loaded = False


def _load_sqlalchemy() -> None:
    """Import SQLAlchemy, and this battery's modules built on it, into this module: once, on a
    store's first call that builds a statement.

    So building a store (every `Executor()` does, and ``executus plugins``) costs no SQLAlchemy,
    aiosqlite or Alembic; the names are the ones imported under ``TYPE_CHECKING`` above.
    """
    global _sqlalchemy_loaded
    if _sqlalchemy_loaded:
        return
    import sqlalchemy
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.engine import make_url

    from executus_checkpoint_sql import engine, migrate
    from executus_checkpoint_sql.schema import CheckpointMessage, CheckpointRun

    names: dict[str, Any] = {
        name: getattr(sqlalchemy, name)
        for name in ("Text", "and_", "case", "delete", "func", "insert", "literal", "or_", "select", "update")
    }
    names["sql_cast"] = sqlalchemy.cast
    names["postgresql_insert"] = postgresql.insert
    names["sqlite_insert"] = sqlite.insert
    names["make_url"] = make_url
    for name in ("create_engine", "db_epoch", "is_driver_outage", "is_outage", "sqlite_path"):
        names[name] = getattr(engine, name)
    for name in ("current_revision", "head_revision", "upgrade_url"):
        names[name] = getattr(migrate, name)
    names["RUNS"] = cast("Table", CheckpointRun.__table__)
    names["MESSAGES"] = cast("Table", CheckpointMessage.__table__)
    globals().update(names)
    _sqlalchemy_loaded = True


async def _sqlalchemy_ready() -> None:
    """`_load_sqlalchemy` in a worker thread (a few hundred ms of imports would stall every run on
    the loop); at once when it already ran."""
    if not _sqlalchemy_loaded:
        await asyncio.to_thread(_load_sqlalchemy)


_CHUNK = 500  # ids per IN (...) list
_ERROR_LIMIT = 10_000  # characters of a failure kept in the run row
_PRUNE_EVERY = 3600.0  # seconds between two retention passes of one store

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


def _clip(error: str | None) -> str | None:
    return error[:_ERROR_LIMIT] if error else None


def _json(value: Any) -> Any:
    """A JSON column read as text (so one bad value cannot break a whole query), parsed."""
    if value is None or not isinstance(value, str | bytes):
        return value
    return orjson.loads(value)


def _text(column: Any) -> Any:
    return sql_cast(column, Text).label(column.name)


@dataclasses.dataclass(frozen=True)
class CheckpointListing:
    """One run as ``executus checkpoints list`` shows it.

    ``state`` is ``running`` (its owner holds the lease), ``claimed`` (handed out to a recover or a
    resume that has not started it yet), ``paused`` (waiting for approval since ``paused_at``, for
    the calls in ``pending``: `Executor.resume` or ``executus approve`` continues it),
    ``interrupted`` (its lease lapsed or was released: the next
    ``recover()`` takes it), ``backoff`` (its last resume failed: handed out again in
    ``retry_in_seconds``), ``completed``, ``failed`` or ``corrupt`` (quarantined: ``error`` says
    why). ``lease_seconds_left`` is negative once the lease lapsed, ``None`` once released;
    ``held_seconds`` is how long ``owner`` has held the run.
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
    held_seconds: float | None = None
    resume_failures: int = 0
    retry_in_seconds: float | None = None
    source: str | None = None
    model: str | None = None
    paused_at: datetime | None = None
    pending: list[PendingCall] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able data (times as ISO 8601 strings)."""
        data = dataclasses.asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        data["paused_at"] = None if self.paused_at is None else self.paused_at.isoformat()
        data["pending"] = [p.model_dump(mode="json") for p in self.pending]
        return data


class SqlCheckpointer:
    """The `Checkpointer` of one run: appends its new messages, then completes, fails or releases it.

    Made by `SqlCheckpointStore.for_run`. Every method raises `RunTakenOver` once this checkpointer
    no longer holds the run (another owner took it over, or it was released or ended). When the
    database could not be reached at ``for_run``, the checkpointer is made anyway and writes the
    run's row with its first save that gets through, so a run that starts during an outage is still
    checkpointed once the database is back.
    """

    def __init__(
        self,
        store: SqlCheckpointStore,
        info: RunInfo,
        agent_spec: dict[str, Any],
        *,
        saved: int | None,
        epoch: int | None,
        attempts: dict[str, int] | None = None,
    ) -> None:
        self.store = store
        self.run_id = info.run_id
        self._info = info
        self._agent_spec = agent_spec
        # How many messages are known to be saved; None when a save's outcome is unknown (it failed
        # midway, or timed out), and the next save first drops whatever is past its offset.
        self._saved = saved
        # The fencing token this checkpointer writes under; None until the row is registered.
        self._epoch = epoch
        self._attempts: dict[str, int] = dict(attempts or {})
        # Saves run one at a time, in call order (asyncio.Lock wakes its waiters first in, first out).
        self._lock = asyncio.Lock()

    @property
    def epoch(self) -> int | None:
        """The epoch this checkpointer holds the run under (``None`` before its row is written)."""
        return self._epoch

    async def save(self, state: CheckpointState) -> None:
        """Write ``state.messages`` at ``state.offset`` with the run's counters, in one transaction.

        Saves of one checkpointer run one after another in the order they were called. Raises
        `SaveGap` for an offset past what is saved, `RunTakenOver` when this checkpointer no longer
        holds the run, and `DatabaseUnavailable` when the database cannot be reached (the core then
        sends these messages again with the next save).
        """
        if state.run_id != self.run_id:
            raise ValueError(f"the checkpointer of run {self.run_id} was given a state of run {state.run_id}")
        async with self._lock:
            offset = state.offset
            attempts = None
            if state.attempts:
                merged = {**self._attempts, **state.attempts}
                if merged != self._attempts:
                    attempts = merged
            known, self._saved = self._saved, None
            try:
                if self._epoch is not None and known == offset:
                    # The usual save: appended in the store's next group commit.
                    await self.store._save_batched(
                        PendingSave(
                            run_id=self.run_id,
                            epoch=self._epoch,
                            offset=offset,
                            iteration=state.iteration,
                            tool_calls=state.tool_calls,
                            usage=state.usage.model_dump_json(),
                            attempts=None if attempts is None else orjson.dumps(attempts).decode(),
                            messages=[m.model_dump_json(exclude_defaults=True) for m in state.messages],
                            future=asyncio.get_running_loop().create_future(),
                        )
                    )
                else:
                    # The first save after an outage (the run's row is written first), or a save
                    # after one whose outcome is unknown: a transaction of its own.
                    rows = [
                        {
                            "run_id": self.run_id,
                            "position": offset + index,
                            "message": message.model_dump(mode="json", exclude_defaults=True),
                        }
                        for index, message in enumerate(state.messages)
                    ]
                    await self._write(state, rows, known, attempts)
            except DatabaseUnavailable as exc:
                raise DatabaseUnavailable(
                    f"{exc}; the run goes on, and its next save sends these messages again"
                ) from (exc.__cause__)
            self._saved = offset + len(state.messages)
            if attempts is not None:
                self._attempts = attempts

    async def _write(
        self,
        state: CheckpointState,
        rows: list[dict[str, Any]],
        known: int | None,
        attempts: dict[str, int] | None,
    ) -> None:
        store = self.store
        offset = state.offset
        end = offset + len(rows)
        async with store._transaction() as conn:
            if self._epoch is None:
                known, self._epoch, registered_attempts = await store._register(
                    conn, self._info, self._agent_spec
                )
                if registered_attempts and attempts is None:
                    self._attempts = registered_attempts
            now = db_epoch(store.dialect)
            values: dict[str, Any] = {
                "message_count": end,
                "iteration": state.iteration,
                "tool_calls": state.tool_calls,
                "usage": state.usage.model_dump(),
                "lease_until": now + store.lease_seconds,
                "updated_at": utcnow(),
            }
            if attempts is not None:
                values["attempts"] = attempts
            result = await conn.execute(
                update(RUNS)
                .where(store._fence(self.run_id, self._epoch), RUNS.c.message_count >= offset)
                .values(values)
            )
            if result.rowcount != 1:
                raise await store._refusal(conn, self.run_id, self._epoch, "save", offset=offset)
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
        async with self._lock:
            await self.store._finish(self.run_id, self._epoch, COMPLETED, None)

    async def fail(self, error: str) -> None:
        """The run failed for good: delete its messages and mark it ``failed`` with ``error``."""
        async with self._lock:
            await self.store._finish(self.run_id, self._epoch, FAILED, error)

    async def pause(self, pending: list[PendingCall]) -> None:
        """The run waits for approval: keep its checkpoint, give it up, and mark it ``paused``
        with its ``pending`` calls and the time. ``interrupted()`` never hands it out; `load`
        (`Executor.resume`, ``executus approve``) does, from any process."""
        async with self._lock:
            if self._epoch is None:
                raise DatabaseUnavailable(
                    f"run {self.run_id} paused for approval, but its checkpoint never reached "
                    f"{self.store.database}: it can only be resumed by this process"
                )
            await self.store._pause_run(self.run_id, self._epoch, pending)

    async def release(self, error: str | None = None, *, retry_after: float | None = None) -> None:
        """Keep the checkpoint and give up the run at once, so any worker's ``interrupted()`` may
        hand it out.

        Without ``error``: the run ended ``interrupted`` (shutdown, or its caller's task was
        cancelled). With ``error``: resuming it failed (``error`` says why, e.g. a tool this worker
        does not have): the error is kept (``executus checkpoints list`` shows it), the run is handed
        out again only after a backoff, and after ``max_resume_attempts`` failures it is marked
        ``failed``. ``retry_after`` (seconds) holds the run back that long without counting a
        failure: for a refusal that says when to come back (a budget's ``retry_after``).
        """
        async with self._lock:
            if self._epoch is None:
                return  # never reached the database: there is nothing to release
            await self.store._release_run(self.run_id, self._epoch, error, retry_after)


class SqlCheckpointStore:
    """A `CheckpointStore` in SQLite or PostgreSQL, shared by every worker that points at it.

    ::

        store = SqlCheckpointStore("postgresql+psycopg://app@db/app", worker_id="web-1")
        async with Executor(plugins=[PortPlugin(checkpoints=store)], entry_points=False) as ex:
            results = await ex.recover()

    Installed as a battery it needs none of this: `Executor()` builds it from
    ``[tool.executus.checkpoint_sql]`` (see `CheckpointSqlSettings`); with no settings it keeps
    ``checkpoints.db`` in the executus data directory.

    Each instance is an owner of its own (``store.owner``): it holds the runs it starts and claims,
    and shares nothing with any other instance, in this process or another.

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
        # Checked here without SQLAlchemy (a bad URL stops Executor() at once); parsed by it on first use.
        self._checked = check_url(raw_url)
        self._url: URL | None = None
        self.dialect = self._checked.backend
        if self.config.db_schema and self.dialect != "postgresql":
            raise ConfigError(
                f"[tool.executus.{SECTION}] db_schema is for PostgreSQL; {self._checked.safe} is {self.dialect}"
            )
        self.worker_id = self.config.worker_id or default_worker_id()
        # This store's own identity: nothing is shared with another store, even in this process.
        self.owner = new_owner_id(self.worker_id)
        self.lease_seconds = self.config.lease_seconds
        self._engine: AsyncEngine | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._heartbeat_failing = False
        self._down_until = 0.0
        self._down_message = ""
        # Runs whose complete/fail could not reach the database: the heartbeat writes them later,
        # fenced by the epoch their checkpointer held.
        self._pending_ends: dict[str, tuple[str, str | None, int]] = {}
        self._pruned_at: float | None = None  # monotonic time of the last retention pass
        # Group commit: saves queue here and one writer writes them, batch after batch.
        self._group: GroupCommit[PendingSave] | None = None
        # The starts and ends of runs are group-committed too, by the same writer.
        self._starts: GroupCommit[PendingStart] | None = None
        self._ends: GroupCommit[PendingEnd] | None = None
        self._sqlite_batch: SqliteBatch | None = None
        self._pg_batch: PostgresBatch | None = None
        self._writer_conn: AsyncConnection | None = None
        self._writer_driver: Any = None
        # SQLite has one writer at a time: this process's transactions take turns here (first come,
        # first served) instead of racing for the file's lock through busy_timeout.
        self._sqlite_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlCheckpointStore | None:
        """The store ``[tool.executus.checkpoint_sql]`` describes, or ``None`` when ``enabled = false``."""
        config = settings.section(SECTION, CheckpointSqlSettings)
        if not config.enabled:
            return None
        return cls(config=config, data_dir=settings.core.data_dir)

    def __repr__(self) -> str:
        return f"SqlCheckpointStore({self.database!r}, owner={self.owner!r})"

    @property
    def url(self) -> URL:
        """The database URL (a SQLAlchemy `URL`, with its async driver)."""
        if self._url is None:
            _load_sqlalchemy()
            self._url = make_url(self._checked.url)
        return self._url

    @property
    def database(self) -> str:
        """The database URL, password hidden."""
        return hide_password(self._checked.url)

    # -- plumbing ------------------------------------------------------------------------------

    async def _ensure_ready(self) -> AsyncEngine:
        """The engine, with the tables created or checked (once per store)."""
        if self._ready and self._engine is not None:
            return self._engine
        await _sqlalchemy_ready()
        async with self._ready_lock:
            if self._closed:
                raise CheckpointSqlError(f"{self!r} is closed")
            if self._engine is None:
                self._engine = create_engine(
                    self.url,
                    db_schema=self.config.db_schema,
                    connect_timeout=self.config.connect_timeout,
                    busy_timeout=self.config.busy_timeout,
                    pool={
                        "pool_size": self.config.pool_size,
                        "max_overflow": self.config.max_overflow,
                        "pool_timeout": self.config.pool_timeout,
                    },
                )
            if not self._ready:
                key = (self.url.render_as_string(hide_password=False), self.config.db_schema)
                if self.config.auto_upgrade:
                    if key not in _upgraded:
                        # Alembic loads and renders its scripts in Python: in a thread with an event
                        # loop and an engine of its own, so a worker's first call never stalls the loop.
                        config = self.config
                        await asyncio.to_thread(
                            asyncio.run,
                            upgrade_url(
                                self.url,
                                db_schema=config.db_schema,
                                connect_timeout=config.connect_timeout,
                                busy_timeout=config.busy_timeout,
                            ),
                        )
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
            async with self._sqlite_lock or contextlib.nullcontext(), engine.begin() as conn:
                yield conn
        except CheckpointSqlError:
            raise
        except Exception as exc:
            if is_outage(exc):
                self._mark_down(exc)
                raise DatabaseUnavailable(self._down_message) from exc
            raise
        self._down_until = 0.0

    # -- group commit ----------------------------------------------------------------------------

    async def _save_batched(self, item: PendingSave) -> None:
        """Queue one save for the next group commit and wait until it is committed (or refused)."""
        if self._closed:
            raise CheckpointSqlError(f"{self!r} is closed")
        if self._down_until and time.monotonic() < self._down_until:
            raise DatabaseUnavailable(self._down_message)
        if self._group is None:
            self._group = GroupCommit(
                self._flush_saves,
                max_batch=self.config.save_batch,
                name=f"executus-checkpoint-sql writer ({self.owner})",
            )
        await self._group.submit(item)

    async def _write_batch(self, batch: Sequence[PendingSave]) -> set[str]:
        """Write ``batch`` in one transaction on the writer's own connection; the run ids saved."""
        now = utcnow()
        if self.dialect == "sqlite":
            sqlite_batch = await self._sqlite_writer()
            assert self._sqlite_lock is not None
            async with self._sqlite_lock:
                return await sqlite_batch.write(batch, now)
        driver, pg_batch = await self._writer()
        return await pg_batch.write(driver, batch, now)

    async def _sqlite_writer(self) -> SqliteBatch:
        """SQLite: the writer's thread and connection (the tables made or checked first)."""
        await self._ensure_ready()
        if self._sqlite_batch is None:
            path = sqlite_path(self.url)
            assert path is not None  # check_url refuses in-memory databases
            self._sqlite_batch = SqliteBatch(
                path,
                busy_timeout=self.config.busy_timeout,
                lease_seconds=self.lease_seconds,
                owner=self.owner,
                name="executus-checkpoint-sql-writer",
            )
        return self._sqlite_batch

    async def _writer(self) -> tuple[Any, PostgresBatch]:
        """PostgreSQL: the writer's driver connection (opened on first use, in autocommit: each
        batch's one statement is its own transaction) and the statements it runs."""
        if self._writer_driver is None:
            engine = await self._ensure_ready()
            conn = await engine.connect()
            try:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                raw = await conn.get_raw_connection()
            except BaseException:
                await conn.close()
                raise
            self._writer_conn, self._writer_driver = conn, raw.driver_connection
        if self._pg_batch is None:
            self._pg_batch = PostgresBatch(self.url.get_driver_name(), self.lease_seconds, self.owner)
        return self._writer_driver, self._pg_batch

    async def _batch_failed(self, batch: Sequence[Any], exc: Exception, alone: Any) -> None:
        """A batch's statement raised: an outage fails every item (`DatabaseUnavailable`); any other
        error has each item written alone (``alone([item])``), so only a bad one fails."""
        if is_driver_outage(exc):
            await self._drop_writer_connection()
            self._mark_down(exc)
            for item in batch:
                if not item.future.done():
                    unavailable = DatabaseUnavailable(self._down_message)
                    unavailable.__cause__ = exc
                    item.future.set_exception(unavailable)
            return
        if len(batch) > 1:
            for item in batch:
                await alone([item])
            return
        if not batch[0].future.done():
            batch[0].future.set_exception(exc)

    def _refuse_early(self, batch: Sequence[Any]) -> bool:
        """Fail the whole batch at once while the database is known to be down; True if it did."""
        if not (self._down_until and time.monotonic() < self._down_until):
            return False
        for item in batch:
            if not item.future.done():
                item.future.set_exception(DatabaseUnavailable(self._down_message))
        return True

    async def _flush_starts(self, batch: Sequence[PendingStart]) -> None:
        """Register a batch of runs; a run whose row is live or paused goes the one-by-one way."""
        if self._refuse_early(batch):
            return
        try:
            if self.dialect == "sqlite":
                sqlite_batch = await self._sqlite_writer()
                assert self._sqlite_lock is not None
                async with self._sqlite_lock:
                    started = await sqlite_batch.start(batch, utcnow())
            else:
                driver, pg_batch = await self._writer()
                started = await pg_batch.start(driver, batch, utcnow())
        except Exception as exc:
            await self._batch_failed(batch, exc, self._flush_starts)
            return
        self._down_until = 0.0
        abandoned: list[PendingEnd] = []
        for item in batch:
            epoch = started.get(item.run_id)
            if not item.future.done():
                item.future.set_result(epoch)
            elif epoch is not None:
                # Its caller stopped waiting (port_timeout) while the batch was written: the run goes
                # on without this checkpoint, so the row must not stay live (the heartbeat would
                # keep it held for as long as this process lives, and then another worker would
                # take it over).
                abandoned.append(
                    PendingEnd(
                        run_id=item.run_id,
                        epoch=epoch,
                        status=FAILED,
                        error="its for_run was given up (the run went on without this checkpoint) "
                        "while the row was being written",
                        future=asyncio.get_running_loop().create_future(),
                    )
                )
        if abandoned:
            await self._flush_ends(abandoned)

    async def _flush_ends(self, batch: Sequence[PendingEnd]) -> None:
        """End a batch of runs; each future says whether its end was written."""
        if self._refuse_early(batch):
            return
        try:
            if self.dialect == "sqlite":
                sqlite_batch = await self._sqlite_writer()
                assert self._sqlite_lock is not None
                async with self._sqlite_lock:
                    ended = await sqlite_batch.end(batch, utcnow())
            else:
                driver, pg_batch = await self._writer()
                ended = await pg_batch.end(driver, batch, utcnow())
        except Exception as exc:
            await self._batch_failed(batch, exc, self._flush_ends)
            return
        self._down_until = 0.0
        for item in batch:
            if not item.future.done():
                item.future.set_result(item.run_id in ended)

    async def _drop_writer_connection(self) -> None:
        conn, self._writer_conn, self._writer_driver = self._writer_conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _flush_saves(self, batch: Sequence[PendingSave]) -> None:
        """Write one batch and resolve each save: committed, refused (why), or failed (the error)."""
        if self._refuse_early(batch):
            return
        try:
            saved = await self._write_batch(batch)
        except Exception as exc:
            await self._batch_failed(batch, exc, self._flush_saves)
            return
        self._down_until = 0.0
        for item in batch:
            if item.future.done():
                continue
            if item.run_id in saved:
                item.future.set_result(None)
                continue
            try:
                async with self._transaction() as conn:
                    refusal: BaseException = await self._refusal(
                        conn, item.run_id, item.epoch, "save", offset=item.offset
                    )
            except Exception as exc:
                refusal = exc
            if not item.future.done():
                item.future.set_exception(refusal)

    def _fence(self, run_id: str, epoch: int | None) -> ColumnElement[bool]:
        """The run is live and still at ``epoch``: the condition of every write of a checkpointer."""
        return and_(RUNS.c.run_id == run_id, RUNS.c.status == LIVE, RUNS.c.epoch == (epoch or 0))

    async def _refusal(
        self, conn: AsyncConnection, run_id: str, epoch: int | None, method: str, *, offset: int | None = None
    ) -> CheckpointSqlError:
        """Why a fenced write touched no row, as the error to raise."""
        row = (
            await conn.execute(
                select(
                    RUNS.c.status, RUNS.c.owner, RUNS.c.epoch, RUNS.c.lease_until, RUNS.c.message_count
                ).where(RUNS.c.run_id == run_id)
            )
        ).first()
        stop = "this process no longer checkpoints it and must not run it any further"
        if row is None:
            return RunTakenOver(
                f"checkpoint {method} for run {run_id}: the run is not in {self.database} any more "
                f"(deleted by hand?); {stop}",
                run_id=run_id,
            )
        if row.status != LIVE:
            return RunTakenOver(
                f"checkpoint {method} for run {run_id}: the run is already {row.status}; {stop}",
                run_id=run_id,
                owner=row.owner,
            )
        if row.epoch != epoch:
            if row.owner == self.owner and row.lease_until is None:
                why = "this store released it"
                owner = None
            else:
                why = (
                    f"it is now held by {row.owner!r}: this store's lease lapsed (was the process paused, "
                    f"or the database out of reach, for longer than lease_seconds = {self.lease_seconds:g}?) "
                    "and another worker took the run over"
                )
                owner = row.owner
            return RunTakenOver(
                f"checkpoint {method} for run {run_id}: {why}; {stop}", run_id=run_id, owner=owner
            )
        if offset is not None and offset > row.message_count:
            return SaveGap(
                f"checkpoint of run {run_id}: save at offset {offset} but only {row.message_count} "
                "messages are saved; a save was lost"
            )
        return CheckpointSqlError(f"checkpoint {method} for run {run_id} changed no row")  # pragma: no cover

    def _insert(self) -> Any:
        return postgresql_insert(RUNS) if self.dialect == "postgresql" else sqlite_insert(RUNS)

    async def _register(
        self, conn: AsyncConnection, info: RunInfo, agent_spec: dict[str, Any]
    ) -> tuple[int, int, dict[str, int]]:
        """Write the run's row for this store: ``(messages saved, epoch, attempts)``.

        A new run (or an ended one run again under its id) starts empty. A live run is resumed,
        keeping its transcript, if this store holds it (it claimed it with ``interrupted()``) or
        nobody does any more (its lease lapsed or was released); a run another owner holds raises
        `RunTakenOver`.
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
            "owner": self.owner,
            "epoch": 1,
            "lease_until": now + self.lease_seconds,
            "claimed_at": None,
            "held_since": now,
            "not_before": None,
            "resume_failures": 0,
            "attempts": None,
            "pending": None,
            "paused_at": None,
            "error": None,
            "created_at": stamp,
            "updated_at": stamp,
        }
        statement = self._insert().values(values)
        replace = {key: statement.excluded[key] for key in values if key not in ("run_id", "epoch")}
        # A new life of an ended run id: a higher epoch, so no checkpointer of its earlier life writes.
        replace["epoch"] = RUNS.c.epoch + 1
        statement = statement.on_conflict_do_update(
            index_elements=[RUNS.c.run_id], set_=replace, where=RUNS.c.status.not_in([LIVE, PAUSED])
        ).returning(RUNS.c.epoch)
        fresh = (await conn.execute(statement)).first()
        if fresh is not None:
            # Any rows left from an earlier life of this run id go; a finished run has none.
            await conn.execute(delete(MESSAGES).where(MESSAGES.c.run_id == info.run_id))
            return 0, int(fresh.epoch), {}
        resumed = (
            await conn.execute(
                update(RUNS)
                .where(
                    RUNS.c.run_id == info.run_id,
                    RUNS.c.status == LIVE,
                    or_(
                        RUNS.c.owner == self.owner,
                        RUNS.c.lease_until.is_(None),
                        RUNS.c.lease_until < now,
                    ),
                )
                .values(
                    owner=self.owner,
                    epoch=RUNS.c.epoch + 1,
                    lease_until=now + self.lease_seconds,
                    claimed_at=None,
                    held_since=case((RUNS.c.owner == self.owner, RUNS.c.held_since), else_=now),
                    pending=None,  # running again: it waits for nobody (a new pause says anew)
                    paused_at=None,
                    updated_at=stamp,
                )
                .returning(RUNS.c.message_count, RUNS.c.epoch, _text(RUNS.c.attempts))
            )
        ).first()
        if resumed is not None:
            try:
                attempts = {str(k): int(v) for k, v in (_json(resumed.attempts) or {}).items()}
            except (ValueError, TypeError, AttributeError):
                attempts = {}
            return int(resumed.message_count), int(resumed.epoch), attempts
        holder = (
            await conn.execute(
                select(RUNS.c.owner, RUNS.c.status, (RUNS.c.lease_until - now).label("left")).where(
                    RUNS.c.run_id == info.run_id
                )
            )
        ).first()
        owner, left = (holder.owner, holder.left) if holder is not None else (None, None)
        if holder is not None and holder.status == PAUSED:
            raise RunTakenOver(
                f"run {info.run_id} waits for approval: continue it with Executor.resume(run_id, "
                "decisions=...) or `executus approve`, which load it; never start another run with its run_id",
                run_id=info.run_id,
            )
        raise RunTakenOver(
            f"run {info.run_id} is live and held by {owner!r} (its lease runs another {left or 0:.0f}s): "
            "it is not this store's to run; resume interrupted runs with Executor.recover(), and never "
            "start two runs with one run_id",
            run_id=info.run_id,
            owner=owner,
        )

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None and not self._closed and self.config.heartbeat_interval > 0:
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat(), name=f"executus-checkpoint-sql heartbeat ({self.owner})"
            )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                renewed = await self.renew_leases()
            except Exception as exc:
                if not self._heartbeat_failing:
                    log.warning(
                        "checkpoint heartbeat of %s failed (%s); runs keep their leases for "
                        "lease_seconds=%g after their last renewal",
                        self.owner,
                        _first_line(exc),
                        self.lease_seconds,
                    )
                self._heartbeat_failing = True
            else:
                if self._heartbeat_failing:
                    log.warning("checkpoint heartbeat of %s works again (%d runs)", self.owner, renewed)
                self._heartbeat_failing = False
                await self._prune_by_retention()

    # -- the port ------------------------------------------------------------------------------

    async def for_run(self, info: RunInfo, agent: Agent) -> SqlCheckpointer:
        """The checkpointer of ``info.run_id``; a live run this store may take keeps its transcript.

        Raises `RunTakenOver` when another owner holds the run. When the database cannot be
        reached the checkpointer is returned anyway and registers the run with its first save that
        gets through.
        """
        spec = agent.spec()
        self._ensure_heartbeat()
        try:
            saved, epoch, attempts = await self._register_batched(info, spec)
        except DatabaseUnavailable:
            return SqlCheckpointer(self, info, spec, saved=None, epoch=None)
        self._pending_ends.pop(info.run_id, None)
        return SqlCheckpointer(self, info, spec, saved=saved, epoch=epoch, attempts=attempts)

    async def _register_batched(self, info: RunInfo, spec: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
        """`_register` through the group commit: a new run (or a new life of an ended
        run id) is written with the batch; a run whose row is live or paused goes the one-by-one way
        (resumed if this store may take it, else `RunTakenOver`)."""
        if self._closed:
            raise CheckpointSqlError(f"{self!r} is closed")
        if self._starts is None:
            self._starts = GroupCommit(
                self._flush_starts,
                max_batch=self.config.save_batch,
                name=f"executus-checkpoint-sql starts ({self.owner})",
            )
        epoch = await self._starts.submit(
            PendingStart(
                run_id=info.run_id,
                info=info.model_dump_json(),
                agent=orjson.dumps(spec, default=str).decode(),
                subject_id=info.subject_id[:255],
                name=info.name[:255],
                caller_id=info.caller_id[:255],
                started_at=_utc(info.started_at),
                future=asyncio.get_running_loop().create_future(),
            )
        )
        if epoch is not None:
            return 0, int(epoch), {}
        async with self._transaction() as conn:
            return await self._register(conn, info, spec)

    async def _end_batched(self, run_id: str, epoch: int, status: str, error: str | None) -> None:
        """`_finish`'s write through the group commit; `RunTakenOver` if refused."""
        if self._closed:
            raise CheckpointSqlError(f"{self!r} is closed")
        if self._ends is None:
            self._ends = GroupCommit(
                self._flush_ends,
                max_batch=self.config.save_batch,
                name=f"executus-checkpoint-sql ends ({self.owner})",
            )
        item = PendingEnd(
            run_id=run_id,
            epoch=epoch,
            status=status,
            error=_clip(error),
            future=asyncio.get_running_loop().create_future(),
        )
        if not await self._ends.submit(item):
            async with self._transaction() as conn:
                raise await self._refusal(conn, run_id, epoch, "complete" if status == COMPLETED else "fail")

    def _backoff(self, failures: int) -> float:
        """Seconds to wait before handing a run out again after its ``failures``-th failed resume."""
        config = self.config
        return float(
            min(config.resume_backoff_max_seconds, config.resume_backoff_seconds * 2 ** max(0, failures - 1))
        )

    async def interrupted(self, limit: int | None = None) -> list[Interrupted]:
        """Claim the runs whose owner is gone, oldest first, with their transcripts.

        A run is handed out when its lease lapsed (its owner died) or was released, and its backoff
        after a failed resume is over; never a run this store holds itself (one it is running, or
        claimed and has not resumed yet). One statement claims them, so workers asking at the same
        time share the runs and never get one twice. At most ``limit`` runs (default: the
        ``claim_limit`` setting, else all), so a recovery can claim in batches what it will start
        now: a claim is not renewed, and lapses after ``lease_seconds`` unless ``for_run`` resumes
        the run.

        A run whose checkpoint cannot be read back is quarantined (``corrupt``, the error kept) and
        left out; this never raises for one bad run.
        """
        await _sqlalchemy_ready()
        self._ensure_heartbeat()
        if limit is None:
            limit = self.config.claim_limit
        if limit is not None and limit < 1:
            return []
        now = db_epoch(self.dialect)
        claimable = and_(
            RUNS.c.status == LIVE,
            RUNS.c.message_count > 0,
            or_(RUNS.c.lease_until.is_(None), RUNS.c.lease_until < now),
            or_(RUNS.c.not_before.is_(None), RUNS.c.not_before <= now),
            # never one this store holds itself (its own running runs and claims, lapsed or not)
            or_(RUNS.c.owner.is_(None), RUNS.c.owner != self.owner, RUNS.c.lease_until.is_(None)),
        )
        pick = select(RUNS.c.run_id).where(claimable).order_by(RUNS.c.started_at, RUNS.c.run_id)
        if limit is not None:
            pick = pick.limit(limit)
        # SKIP LOCKED: a run another worker is claiming right now is left to it, not waited for.
        pick = pick.with_for_update(skip_locked=True)
        # A claim that lapsed before its claimer resumed the run is a failed resume too.
        unresumed = and_(RUNS.c.claimed_at.is_not(None), RUNS.c.lease_until.is_not(None))
        claim = (
            update(RUNS)
            .where(RUNS.c.run_id.in_(pick.scalar_subquery()))
            .values(
                owner=self.owner,
                epoch=RUNS.c.epoch + 1,
                lease_until=now + self.lease_seconds,
                claimed_at=now,
                held_since=now,
                resume_failures=RUNS.c.resume_failures + case((unresumed, 1), else_=0),
                error=case(
                    (
                        unresumed,
                        literal("claimed by ")
                        + RUNS.c.owner
                        + literal(", which never resumed nor released it"),
                    ),
                    else_=RUNS.c.error,
                ),
                updated_at=utcnow(),
            )
            .returning(
                RUNS.c.run_id,
                RUNS.c.epoch,
                RUNS.c.iteration,
                RUNS.c.tool_calls,
                RUNS.c.message_count,
                RUNS.c.resume_failures,
                RUNS.c.error,
                _text(RUNS.c.info),
                _text(RUNS.c.agent),
                _text(RUNS.c.usage),
                _text(RUNS.c.attempts),
                RUNS.c.paused_at,
            )
        )
        items: list[Interrupted] = []
        async with self._transaction() as conn:
            claimed = (await conn.execute(claim)).all()
            spent = [row for row in claimed if row.resume_failures >= self.config.max_resume_attempts]
            for row in spent:
                await self._give_up(conn, row.run_id, row.epoch, row.resume_failures, row.error)
            rows = {
                row.run_id: row for row in claimed if row.resume_failures < self.config.max_resume_attempts
            }
            transcripts: dict[str, list[tuple[int, Any]]] = {run_id: [] for run_id in rows}
            for ids in _chunks(list(rows)):
                found = await conn.execute(
                    select(MESSAGES.c.run_id, MESSAGES.c.position, _text(MESSAGES.c.message))
                    .where(MESSAGES.c.run_id.in_(ids))
                    .order_by(MESSAGES.c.run_id, MESSAGES.c.position)
                )
                for run_id, position, message in found:
                    transcripts[run_id].append((position, message))
            for run_id, row in rows.items():
                try:
                    items.append(self._interrupted_item(row, transcripts[run_id]))
                except Exception as exc:
                    await self._quarantine(conn, run_id, row.epoch, exc)
        items.sort(key=lambda item: (_utc(item.info.started_at), item.info.run_id))
        return items

    def _interrupted_item(self, row: Any, messages: list[tuple[int, Any]]) -> Interrupted:
        """One claimed run as an `Interrupted`; raises, naming the part, when it does not read back."""
        positions = [position for position, _ in messages]
        if positions != list(range(row.message_count)):
            raise ValueError(
                f"the run holds message rows {positions[:5]}{'...' if len(positions) > 5 else ''} but "
                f"says {row.message_count} were saved (0..{row.message_count - 1})"
            )
        transcript = []
        for position, raw in messages:
            try:
                transcript.append(Message.model_validate(_json(raw)))
            except Exception as exc:
                raise ValueError(f"message {position} does not read back: {_first_line(exc)}") from exc
        try:
            info = RunInfo.model_validate(_json(row.info))
        except Exception as exc:
            raise ValueError(f"the run info does not read back: {_first_line(exc)}") from exc
        try:
            agent = _json(row.agent)
            if not isinstance(agent, dict):
                raise TypeError(f"it is {type(agent).__name__}, not an object")
        except Exception as exc:
            raise ValueError(f"the agent spec does not read back: {_first_line(exc)}") from exc
        try:
            usage = Usage.model_validate(_json(row.usage))
            attempts = {str(k): int(v) for k, v in (_json(row.attempts) or {}).items()}
        except Exception as exc:
            raise ValueError(f"the run's counters do not read back: {_first_line(exc)}") from exc
        if info.run_id != row.run_id:
            raise ValueError(f"the run info is of run {info.run_id!r}")
        return Interrupted(
            info=info,
            agent=agent,
            messages=transcript,
            iteration=row.iteration,
            usage=usage,
            tool_calls=row.tool_calls,
            attempts=attempts,
            paused_at=None if row.paused_at is None else _utc(row.paused_at),
        )

    async def _pause_run(self, run_id: str, epoch: int, pending: list[PendingCall]) -> None:
        """`SqlCheckpointer.pause`: mark the run ``paused`` and let it go, fenced by ``epoch``."""
        async with self._transaction() as conn:
            result = await conn.execute(
                update(RUNS)
                .where(self._fence(run_id, epoch))
                .values(
                    status=PAUSED,
                    pending=[p.model_dump(mode="json") for p in pending],
                    paused_at=utcnow(),
                    lease_until=None,
                    claimed_at=None,
                    not_before=None,
                    epoch=RUNS.c.epoch + 1,
                    updated_at=utcnow(),
                )
            )
            if result.rowcount != 1:
                raise await self._refusal(conn, run_id, epoch, "pause")
        self._pending_ends.pop(run_id, None)

    async def load(self, run_id: str) -> Interrupted | None:
        """Claim one run for `Executor.resume`: paused for approval, or live with its owner gone
        (lease lapsed or released) or claimed by this store; with its transcript (and ``paused_at``
        for a paused run). The run is claimed as ``interrupted()`` claims: live again, held by this
        store until ``for_run`` resumes it (or the claim lapses).

        Returns ``None`` when the database holds no such run (never saved, ended, or quarantined).
        Raises `RunTakenOver` when another live worker holds it (it is running, or was just loaded
        elsewhere: one approval goes to one process), and `ValueError` when its checkpoint does not
        read back (it is then quarantined).
        """
        await _sqlalchemy_ready()
        self._ensure_heartbeat()
        now = db_epoch(self.dialect)
        claimable = and_(
            RUNS.c.run_id == run_id,
            RUNS.c.message_count > 0,
            or_(
                RUNS.c.status == PAUSED,
                and_(
                    RUNS.c.status == LIVE,
                    or_(
                        RUNS.c.lease_until.is_(None),
                        RUNS.c.lease_until < now,
                        and_(RUNS.c.owner == self.owner, RUNS.c.claimed_at.is_not(None)),
                    ),
                ),
            ),
        )
        claim = (
            update(RUNS)
            .where(claimable)
            .values(
                status=LIVE,
                owner=self.owner,
                epoch=RUNS.c.epoch + 1,
                lease_until=now + self.lease_seconds,
                claimed_at=now,
                held_since=now,
                not_before=None,
                updated_at=utcnow(),
            )
            .returning(
                RUNS.c.run_id,
                RUNS.c.epoch,
                RUNS.c.iteration,
                RUNS.c.tool_calls,
                RUNS.c.message_count,
                _text(RUNS.c.info),
                _text(RUNS.c.agent),
                _text(RUNS.c.usage),
                _text(RUNS.c.attempts),
                RUNS.c.paused_at,
            )
        )
        broken: Exception | None = None
        async with self._transaction() as conn:
            row = (await conn.execute(claim)).first()
            if row is None:
                holder = (
                    await conn.execute(
                        select(RUNS.c.status, RUNS.c.owner, (RUNS.c.lease_until - now).label("left")).where(
                            RUNS.c.run_id == run_id
                        )
                    )
                ).first()
                if (
                    holder is not None
                    and holder.status == LIVE
                    and holder.left is not None
                    and holder.left >= 0
                ):
                    raise RunTakenOver(
                        f"run {run_id} is held by {holder.owner!r} (its lease runs another {holder.left:.0f}s): "
                        "it is running, or another process is resuming it; it cannot be resumed here now",
                        run_id=run_id,
                        owner=holder.owner,
                    )
                return None
            found = await conn.execute(
                select(MESSAGES.c.position, _text(MESSAGES.c.message))
                .where(MESSAGES.c.run_id == run_id)
                .order_by(MESSAGES.c.position)
            )
            try:
                return self._interrupted_item(row, [(position, message) for position, message in found])
            except Exception as exc:
                await self._quarantine(conn, run_id, row.epoch, exc)
                broken = exc
        raise ValueError(f"run {run_id}: corrupt checkpoint: {broken}; it is quarantined, and not resumed")

    async def _quarantine(self, conn: AsyncConnection, run_id: str, epoch: int, exc: BaseException) -> None:
        reason = f"corrupt checkpoint: {exc}"
        log.warning(
            "run %s is quarantined (status %r) and will not be resumed: %s; its rows are kept in %s",
            run_id,
            CORRUPT,
            reason,
            self.database,
        )
        await conn.execute(
            update(RUNS)
            .where(RUNS.c.run_id == run_id, RUNS.c.epoch == epoch)
            .values(
                status=CORRUPT,
                error=_clip(reason),
                lease_until=None,
                claimed_at=None,
                epoch=RUNS.c.epoch + 1,
                updated_at=utcnow(),
            )
        )

    async def _give_up(
        self, conn: AsyncConnection, run_id: str, epoch: int, failures: int, error: str | None
    ) -> None:
        reason = f"gave up after {failures} failed resumes; the last: {error or 'unknown'}"
        log.warning("run %s is marked failed: %s", run_id, reason)
        # The transcript is kept: a person may want to see how far it got.
        await conn.execute(
            update(RUNS)
            .where(RUNS.c.run_id == run_id, RUNS.c.epoch == epoch)
            .values(
                status=FAILED,
                error=_clip(reason),
                lease_until=None,
                claimed_at=None,
                not_before=None,
                epoch=RUNS.c.epoch + 1,
                updated_at=utcnow(),
            )
        )

    async def _release_run(
        self, run_id: str, epoch: int, error: str | None, retry_after: float | None = None
    ) -> None:
        """`SqlCheckpointer.release`: give the run up, counting a failed resume when there is an error."""
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    select(RUNS.c.resume_failures).where(self._fence(run_id, epoch)).with_for_update()
                )
            ).first()
            if row is None:
                raise await self._refusal(conn, run_id, epoch, "release")
            values: dict[str, Any] = {
                "lease_until": None,
                "claimed_at": None,
                "epoch": RUNS.c.epoch + 1,
                "updated_at": utcnow(),
            }
            if retry_after is not None and retry_after > 0:
                values["not_before"] = db_epoch(self.dialect) + float(retry_after)
                if error is not None:
                    values["error"] = _clip(error)
            elif error is not None:
                failures = int(row.resume_failures) + 1
                if failures >= self.config.max_resume_attempts:
                    await self._give_up(conn, run_id, epoch, failures, error)
                    return
                values.update(
                    resume_failures=failures,
                    error=_clip(error),
                    not_before=db_epoch(self.dialect) + self._backoff(failures),
                )
                log.warning(
                    "resuming run %s failed (%d of %d attempts): %s; handed out again in %gs",
                    run_id,
                    failures,
                    self.config.max_resume_attempts,
                    error,
                    self._backoff(failures),
                )
            await conn.execute(update(RUNS).where(self._fence(run_id, epoch)).values(values))
        self._pending_ends.pop(run_id, None)

    async def _finish(self, run_id: str, epoch: int | None, status: str, error: str | None) -> None:
        if epoch is None:
            return  # never reached the database: there is nothing to clear
        try:
            await self._end_batched(run_id, epoch, status, error)
        except DatabaseUnavailable as exc:
            # Keep the lease (the heartbeat renews it) and write the end when the database is back,
            # or another worker would resume a run that already ended.
            self._pending_ends[run_id] = (status, error, epoch)
            self._ensure_heartbeat()
            raise DatabaseUnavailable(
                f"{exc}; the run's end is written when the database is back (retried every "
                f"{self.config.heartbeat_interval:g}s while this process runs)"
            ) from exc
        self._pending_ends.pop(run_id, None)

    async def prune(self, older_than_days: float, *, dry_run: bool = False) -> int:
        """Delete the rows of ended runs (``completed``, ``failed``, ``corrupt``) that ended more than
        ``older_than_days`` ago, with any messages they kept. Live and paused runs are never touched.

        Returns how many runs were deleted, or with ``dry_run`` how many would be. Deletes in chunks
        of a few hundred, each its own transaction, so saves never wait long behind it.
        """
        await _sqlalchemy_ready()
        cutoff = utcnow() - timedelta(days=older_than_days)
        ended = and_(RUNS.c.status.in_(ENDED), RUNS.c.updated_at < cutoff)
        if dry_run:
            async with self._transaction() as conn:
                counted = await conn.execute(select(func.count()).select_from(RUNS).where(ended))
                return int(counted.scalar_one())
        deleted = 0
        while True:
            async with self._transaction() as conn:
                ids = (await conn.execute(select(RUNS.c.run_id).where(ended).limit(_CHUNK))).scalars().all()
                if ids:
                    await conn.execute(delete(MESSAGES).where(MESSAGES.c.run_id.in_(ids)))
                    await conn.execute(delete(RUNS).where(RUNS.c.run_id.in_(ids), ended))
            deleted += len(ids)
            if len(ids) < _CHUNK:
                return deleted

    async def _prune_by_retention(self) -> None:
        """The heartbeat's hourly pass: `prune` by ``retention_days`` (errors are logged, not raised)."""
        days = self.config.retention_days
        now = time.monotonic()
        if not days or (self._pruned_at is not None and now - self._pruned_at < _PRUNE_EVERY):
            return
        self._pruned_at = now
        try:
            deleted = await self.prune(days)
        except Exception as exc:
            log.warning("pruning ended checkpoint runs older than %g days failed: %s", days, _first_line(exc))
        else:
            if deleted:
                log.info("pruned %d ended checkpoint runs older than %g days", deleted, days)

    async def renew_leases(self) -> int:
        """Write the run ends that are waiting for the database, then renew the lease of every run
        this store is running (not its claims: a claim lapses unless the run is resumed).

        The heartbeat calls this every ``heartbeat_seconds``; returns how many runs were renewed.
        """
        for run_id, (status, error, epoch) in list(self._pending_ends.items()):
            try:
                await self._finish(run_id, epoch, status, error)
            except RunTakenOver:
                self._pending_ends.pop(run_id, None)  # another worker holds it now: not ours to end
        async with self._transaction() as conn:
            now = db_epoch(self.dialect)
            # SKIP LOCKED: a row a save is writing right now gets its lease from that save; waiting
            # for it (rows locked in another order by a batch) could deadlock with the writer.
            held = (
                select(RUNS.c.run_id)
                .where(
                    RUNS.c.owner == self.owner,
                    RUNS.c.status == LIVE,
                    RUNS.c.claimed_at.is_(None),
                    RUNS.c.lease_until.is_not(None),
                )
                .with_for_update(skip_locked=True)
            )
            result = await conn.execute(
                update(RUNS)
                .where(RUNS.c.run_id.in_(held.scalar_subquery()))
                .values(lease_until=now + self.lease_seconds)
            )
        return int(result.rowcount)

    async def release(self, run_ids: Iterable[str] | None = None) -> int:
        """Give up this store's live runs at once (``aclose`` does this), so any worker may resume them.

        Its running runs and its claims alike; ``run_ids`` limits it to those runs. Their
        checkpointers are fenced off (`RunTakenOver`). Returns how many runs were released.
        """
        if not self._ready:
            return 0
        held = and_(RUNS.c.owner == self.owner, RUNS.c.status == LIVE, RUNS.c.lease_until.is_not(None))
        values = {"lease_until": None, "claimed_at": None, "epoch": RUNS.c.epoch + 1}
        released = 0
        async with self._transaction() as conn:
            if run_ids is None:
                result = await conn.execute(update(RUNS).where(held).values(values))
                released = int(result.rowcount)
            else:
                for ids in _chunks(sorted(set(run_ids))):
                    result = await conn.execute(
                        update(RUNS).where(held, RUNS.c.run_id.in_(ids)).values(values)
                    )
                    released += int(result.rowcount)
        return released

    async def aclose(self) -> None:
        """Stop the heartbeat, write pending run ends, release this store's runs, close the pool.

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
                    log.info("released %d interrupted runs of %s", released, self.owner)
            except Exception as exc:
                log.warning(
                    "could not release the runs of %s (%s); other workers take them over once their "
                    "leases lapse (lease_seconds=%g)",
                    self.owner,
                    _first_line(exc),
                    self.lease_seconds,
                )
        self._closed = True  # from here on a save is refused; the ones queued are written
        for group in (self._starts, self._group, self._ends):
            if group is not None:
                await group.aclose()
        await self._drop_writer_connection()
        if self._sqlite_batch is not None:
            await self._sqlite_batch.aclose()
            self._sqlite_batch = None
        if self._engine is not None:
            await self._engine.dispose()

    # -- reading, for people and tests ------------------------------------------------------------

    async def list_runs(self, *, include_finished: bool = False, limit: int = 100) -> list[CheckpointListing]:
        """The live and quarantined runs (and, with ``include_finished``, the ended ones), most
        recently updated first. Reads only: nothing is claimed.
        """
        await _sqlalchemy_ready()
        now = db_epoch(self.dialect).label("now")
        columns = [c for c in RUNS.c if c.name not in ("info", "agent", "usage", "attempts", "pending")]
        query = (
            select(*columns, _text(RUNS.c.agent), _text(RUNS.c.pending), now)
            .order_by(RUNS.c.updated_at.desc(), RUNS.c.run_id)
            .limit(limit)
        )
        if not include_finished:
            query = query.where(RUNS.c.status.in_([LIVE, PAUSED, CORRUPT]))
        async with self._transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [self._listing(row) for row in rows]

    @staticmethod
    def _listing(row: Any) -> CheckpointListing:
        left = None if row.lease_until is None else row.lease_until - row.now
        retry = None if row.not_before is None else row.not_before - row.now
        if row.status != LIVE:
            state = row.status
        elif left is not None and left >= 0:
            state = "claimed" if row.claimed_at is not None else "running"
        elif retry is not None and retry > 0:
            state = "backoff"
        else:
            state = "interrupted"
        try:
            agent = _json(row.agent)
        except ValueError:
            agent = None
        if not isinstance(agent, dict):
            agent = {}
        pending: list[PendingCall] = []
        if row.status == PAUSED:
            with contextlib.suppress(Exception):
                pending = [PendingCall.model_validate(p) for p in _json(row.pending) or []]
        held = None
        if row.status == LIVE and left is not None and left >= 0 and row.held_since is not None:
            held = round(max(0.0, row.now - row.held_since), 3)
        return CheckpointListing(
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
            held_seconds=held,
            resume_failures=row.resume_failures or 0,
            retry_in_seconds=None if retry is None or retry <= 0 or row.status != LIVE else round(retry, 3),
            source=agent.get("source") if isinstance(agent.get("source"), str) else None,
            model=agent.get("model") if isinstance(agent.get("model"), str) else None,
            paused_at=None if row.paused_at is None or row.status != PAUSED else _utc(row.paused_at),
            pending=pending,
        )

    async def retry_now(self, run_ids: Iterable[str]) -> int:
        """End the backoff of these live runs (whose last resume failed), so the next
        ``interrupted()`` hands them out at once; the failures counted so far stay. Returns how many.

        For a person who fixed what made the resume fail (``executus recover --agent`` does this for
        the runs of the agents it is given).
        """
        ids = sorted(set(run_ids))
        changed = 0
        async with self._transaction() as conn:
            for chunk in _chunks(ids):
                result = await conn.execute(
                    update(RUNS)
                    .where(RUNS.c.run_id.in_(chunk), RUNS.c.status == LIVE, RUNS.c.not_before.is_not(None))
                    .values(not_before=None)
                )
                changed += int(result.rowcount)
        return changed

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
