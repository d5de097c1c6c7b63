"""`SqlAudit`: the `Audit` port over SQL, and the way to read what it recorded.

::

    audit = SqlAudit(url="postgresql+psycopg://app@db/app")     # or SqlAudit() for SQLite in data_dir
    async with Executor(plugins=[...]) as executor: ...          # installed, it is picked up by itself
    runs = await audit.list_runs(caller_id="alice", limit=10)
    trail = await audit.trail(runs[0].run_id)

Nothing touches the database until the first run starts (building the audit only checks the URL and
the driver). The engine and the batch writer belong to the event loop that first uses them; an audit
used from a new loop (``asyncio.run`` twice) makes new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from executus_audit_sql.recorder import SqlRecorder
from executus_audit_sql.settings import AuditSqlSettings, async_url, driver_module, public_url, resolve_url
from executus_audit_sql.spill import Spilled, read_spill, spill_files, write_spill
from executus_audit_sql.state import Row, RunState
from executus_core.config import default_data_dir
from executus_core.types import RunInfo, RunStats, RunTranscript, utcnow

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from executus_audit_sql.trail import RunRecord, ThreadTurn, TrailEntry
    from executus_audit_sql.writer import BatchWriter, WriterStats

# What the first use of an audit imports, in a worker thread (so the event loop never waits on
# SQLAlchemy's import); building an audit imports none of it (issue 17: cold commands).
_HEAVY = (
    "sqlalchemy.ext.asyncio",
    "executus_audit_sql.database",
    "executus_audit_sql.migrate",
    "executus_audit_sql.trail",
    "executus_audit_sql.writer",
    "executus_audit_sql.writes",
)


def _import_heavy(driver: str) -> None:
    for name in (*_HEAVY, driver):
        importlib.import_module(name)


__all__ = ["SqlAudit"]

log = logging.getLogger("executus.audit_sql")

SPILL_DIR_NAME = "audit_sql-unwritten"


class SqlAudit:
    """An `Audit` that writes each run's trail to SQL (SQLite by default, PostgreSQL in production).

    Args:
        settings: the battery's settings (default: all defaults).
        url: shorthand for ``settings.url``.
        data_dir: where the default SQLite file and the spill directory go (default: the core's).
        port_timeout: the core's ``port_timeout``; ``write_timeout`` defaults to half of it, at most 5 s,
            and a ``close`` waiting its turn behind other runs' writes answers within ``close_timeout``
            (``port_timeout`` less 20%, at most 2 s less), before the core stops waiting.

    Raises:
        ConfigError: ``db_schema`` set for a database that is not PostgreSQL.
        ValueError: the URL is not one this battery speaks.
        ImportError: the URL's driver is not installed.
    """

    def __init__(
        self,
        settings: AuditSqlSettings | None = None,
        *,
        url: str | None = None,
        data_dir: str | Path | None = None,
        port_timeout: float = 10.0,
    ) -> None:
        settings = settings or AuditSqlSettings()
        if url is not None:
            settings = AuditSqlSettings.model_validate({**settings.model_dump(), "url": url})
        base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        self.settings = settings
        self.url_text = resolve_url(settings, base)
        self.db_schema = settings.db_schema
        self.backend = "sqlite" if self.url_text.startswith("sqlite") else "postgresql"
        self.auto_upgrade = settings.auto_upgrade
        self.write_timeout = settings.write_timeout or min(5.0, port_timeout / 2)
        # A close waits its turn while the writer makes progress, but answers before the core's own
        # port_timeout runs out (then its rows go to a spill file, not to the floor).
        self.close_timeout = max(self.write_timeout, port_timeout - min(2.0, port_timeout / 5))
        self.skip_events = frozenset(settings.skip_events)
        self.spill_dir = settings.spill_dir or base / SPILL_DIR_NAME
        self._driver = driver_module(self.url_text)
        if importlib.util.find_spec(self._driver) is None:  # fails now on a driver that is not installed
            raise ImportError(f"No module named {self._driver!r}")
        self._url: URL | None = None
        self._engine_made: AsyncEngine | None = None  # made on first use (SQLAlchemy imported then)
        self._writer_engine: Engine | None = None  # the sync engine the writer's thread uses, made with it
        self._writer: BatchWriter | None = None
        self._schema_ready = False
        self._schema_lock: asyncio.Lock | None = None  # made with the writer, in its loop

    @property
    def url(self) -> URL:
        """The database's SQLAlchemy `URL`, with the async driver (imports SQLAlchemy on first use)."""
        if self._url is None:
            self._url = async_url(self.url_text)
        return self._url

    @property
    def _engine(self) -> AsyncEngine:
        if self._engine_made is None:
            self._engine_made = self._make_engine()
        return self._engine_made

    async def _load(self) -> None:
        """Import SQLAlchemy, the driver and the writer in a worker thread, once per process."""
        if self._engine_made is None:
            await asyncio.to_thread(_import_heavy, self._driver)

    def _make_engine(self) -> AsyncEngine:
        from executus_audit_sql.database import make_async_engine

        return make_async_engine(
            self.url,
            connect_timeout=self.settings.connect_timeout,
            db_schema=self.db_schema,
            pool_size=self.settings.pool_size,
            max_overflow=self.settings.max_overflow,
            pool_timeout=self.settings.pool_timeout,
        )

    def __repr__(self) -> str:
        return f"SqlAudit({self.describe_database()})"

    def describe_database(self) -> str:
        """The database for messages: its URL without the password, and the schema if one is set."""
        where = public_url(self.url_text)
        return f"{where} (schema {self.db_schema})" if self.db_schema else where

    # -- binding to the event loop ------------------------------------------------------------

    def _bind(self) -> BatchWriter:
        from executus_audit_sql.database import make_writer_engine
        from executus_audit_sql.writer import BatchWriter

        loop = asyncio.get_running_loop()
        writer = self._writer
        if writer is not None and writer.loop is loop:
            return writer
        if writer is not None:
            # The loop the engine's connections belong to is gone or another: start afresh here.
            writer.release()
            self._engine.sync_engine.dispose(close=False)
            self._engine_made = self._make_engine()
        if self._writer_engine is None:
            self._writer_engine = make_writer_engine(
                self.url, connect_timeout=self.settings.connect_timeout, db_schema=self.db_schema
            )
        self._schema_lock = asyncio.Lock()
        self._writer = BatchWriter(
            self._writer_engine,
            where=self.describe_database(),
            prepare=self.ensure_schema,
            batch_size=self.settings.batch_size,
            max_rows=self.settings.max_write_rows,
            flush_interval=self.settings.flush_interval,
            write_timeout=self.write_timeout,
            maintain=self._prune_by_retention if self.settings.retention_days else None,
        )
        return self._writer

    async def ensure_schema(self) -> None:
        """Migrate the tables to head (``auto_upgrade``), or check they are there; once per process.

        Raises:
            SchemaNotReady: the tables are not at head and ``auto_upgrade`` is off.
        """
        if self._schema_ready:
            return
        await self._load()
        self._bind()
        assert self._schema_lock is not None
        async with self._schema_lock:  # the writer and a reader starting together migrate once
            if not self._schema_ready:
                from executus_audit_sql.migrate import ensure_schema

                await ensure_schema(
                    self.url,
                    db_schema=self.db_schema,
                    auto_upgrade=self.auto_upgrade,
                    connect_timeout=self.settings.connect_timeout,
                )
                self._schema_ready = True

    @property
    def writer_stats(self) -> WriterStats | None:
        """The batch writer's counters (batches, rows written, failures, last error), once one runs."""
        return self._writer.stats if self._writer is not None else None

    # -- the port -----------------------------------------------------------------------------

    async def start_run(self, info: RunInfo) -> SqlRecorder:
        """Start recording a run. Touches no database: the run's row is written with its first batch.

        The same run id started again (a run resumed by `Executor.recover`) continues its trail.
        """
        await self._load()
        return SqlRecorder(self, self._bind(), info)

    def spill(
        self, state: RunState, rows: Sequence[Row], stats: RunStats | None, ended_at: datetime | None
    ) -> Path:
        """Save a run's unwritten rows to a new file in ``spill_dir`` (see `executus_audit_sql.spill`)."""
        path = write_spill(self.spill_dir, state, rows, stats, ended_at)
        log.warning("audit_sql: %d rows of run %s were saved to %s", len(rows), state.info.run_id, path)
        return path

    async def flush(self) -> None:
        """Write what every open recorder buffered, now (a failure leaves it buffered)."""
        await self._load()
        await self._bind().flush()

    async def aclose(self) -> None:
        """Write what is buffered, save what cannot be written, and close the connections.

        `Executor.shutdown` calls this. Rows of runs that never closed (their host stopped them
        abruptly) are written if the database takes them, else saved to a spill file.
        """
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not writer.loop:
            writer.release()
            if self._engine_made is not None:  # that loop is gone: nothing to await there
                self._engine_made.sync_engine.dispose(close=False)
            return
        await writer.stop(self.write_timeout)
        for recorder in writer.leftovers():
            rows = list(recorder.take(recorder.waiting))
            with contextlib.suppress(Exception):
                self.spill(recorder.state, rows, None, None)
        if self._engine_made is not None:
            await self._engine_made.dispose()
        if self._writer_engine is not None:
            await asyncio.to_thread(self._writer_engine.dispose)

    # -- reading ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        await self.ensure_schema()
        async with self._engine.connect() as conn:
            yield conn

    async def list_runs(
        self,
        *,
        caller_id: str | None = None,
        status: str | None = None,
        name: str | None = None,
        limit: int = 20,
        before: tuple[datetime, str] | None = None,
        parent_run_id: str | None = None,
    ) -> list[RunRecord]:
        """The most recent runs first. ``status``: a `RunStatus` value, or ``running``.

        ``before``: the ``(started_at, run_id)`` of the last run of the previous page (keyset
        paging); ``parent_run_id``: only the runs that run delegated to.
        """
        async with self._read() as conn:
            return await _reads().list_runs(
                conn,
                caller_id=caller_id,
                status=status,
                name=name,
                limit=limit,
                before=before,
                parent_run_id=parent_run_id,
            )

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id (its info and, once closed, its roll-up), or ``None``."""
        async with self._read() as conn:
            return await _reads().get_run(conn, run_id)

    async def find_runs(self, prefix: str, *, limit: int = 5) -> list[str]:
        """Ids of the runs whose id starts with ``prefix``."""
        async with self._read() as conn:
            return await _reads().find_runs(conn, prefix, limit=limit)

    async def trail(
        self,
        run_id: str,
        *,
        kinds: Sequence[str] | None = None,
        after: int | None = None,
        last: int | None = None,
    ) -> list[TrailEntry]:
        """The run's rows in order: steps, tool calls, events and errors (or only ``kinds``).

        ``after``: only rows whose ``seq`` is above it (a follower's next read); ``last``: only the
        last n rows (what a run is doing now).
        """
        async with self._read() as conn:
            return await _reads().get_trail(conn, run_id, kinds=kinds, after=after, last=last)

    async def tails(self, run_ids: Sequence[str], *, last: int = 20) -> dict[str, list[TrailEntry]]:
        """The last ``last`` rows of each run's trail, in order, read in one statement."""
        async with self._read() as conn:
            return await _reads().get_tails(conn, run_ids, last=last)

    async def transcript(self, run_id: str) -> RunTranscript | None:
        """The run's info, status (``None`` while running) and the messages it ended with, masked as
        the trail is (empty for a run recorded before transcripts were kept); ``None`` for an
        unknown run. What ``Executor.run(..., continue_run=run_id)`` reads."""
        async with self._read() as conn:
            return await _reads().get_transcript(conn, run_id)

    async def thread(self, conversation: str, *, limit: int = 100) -> list[ThreadTurn]:
        """The runs of a conversation, oldest first: those with this ``conversation_id`` and the run
        with this id (a first turn is named by its run id), each with its prompt, output and error."""
        async with self._read() as conn:
            return await _reads().get_thread(conn, conversation, limit=limit)

    # -- upkeep -------------------------------------------------------------------------------

    async def prune(self, older_than_days: float, *, dry_run: bool = False) -> int:
        """Delete finished runs that started more than ``older_than_days`` ago, with their trails.

        Runs still going (no roll-up yet) are kept. Returns how many runs were deleted — or, with
        ``dry_run``, how many would be, deleting nothing.
        """
        from sqlalchemy import delete, func, select

        from executus_audit_sql.writes import EVENTS, RUNS, TRANSCRIPTS

        cutoff = utcnow() - timedelta(days=older_than_days)
        old = select(RUNS.c.run_id).where(RUNS.c.started_at < cutoff, RUNS.c.status.is_not(None))
        if dry_run:
            async with self._read() as conn:
                counted = await conn.execute(select(func.count()).select_from(old.subquery()))
                return int(counted.scalar_one())
        async with self._read() as conn:
            await conn.execute(delete(EVENTS).where(EVENTS.c.run_id.in_(old)))
            await conn.execute(delete(TRANSCRIPTS).where(TRANSCRIPTS.c.run_id.in_(old)))
            deleted = (await conn.execute(delete(RUNS).where(RUNS.c.run_id.in_(old)))).rowcount
            await conn.commit()
        return int(deleted or 0)

    async def _prune_by_retention(self) -> int:
        assert self.settings.retention_days is not None
        return await self.prune(self.settings.retention_days)

    def spill_files(self) -> list[Path]:
        """The spill files waiting in ``spill_dir``, oldest first."""
        return spill_files(self.spill_dir)

    async def import_spill(self, path: Path) -> Spilled:
        """Write one spill file's run, rows and roll-up, then delete the file; loading it twice is harmless.

        Raises ``ValueError`` for a file that is not a spill file, and the driver's error when the
        database does not take it (the file is then kept).
        """
        spilled = await asyncio.to_thread(read_spill, path)
        async with self._read() as conn:
            await conn.run_sync(_store_spilled, spilled)
            await conn.commit()
        await asyncio.to_thread(path.unlink)
        return spilled


def _store_spilled(conn: Connection, spilled: Spilled) -> None:
    """Write a spill file's run, rows, roll-up and transcript on ``conn`` (in its transaction)."""
    from executus_audit_sql.writes import write_rollups, write_trail, write_transcripts

    state = spilled.state
    write_trail(conn, [(state, spilled.rows, spilled.stats is None)])
    if spilled.stats is not None:
        ended_at = spilled.ended_at or utcnow()
        write_rollups(conn, [(state.info.run_id, spilled.stats, ended_at)])
        if state.transcript is not None:
            write_transcripts(conn, [(state.info.run_id, state.transcript, ended_at)])


def _reads() -> Any:
    """The module of the reads (SQLAlchemy's: imported on first use, by then in `SqlAudit._load`)."""
    from executus_audit_sql import trail

    return trail
