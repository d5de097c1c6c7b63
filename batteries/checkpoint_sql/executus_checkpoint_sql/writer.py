"""Group commit: the saves of every run of a store share one transaction, written by one writer.

A save is queued as a `PendingSave` and awaits its own outcome. One writer task takes what is
queued (at most ``max_batch`` saves, one per run) and writes it in one transaction, then the next
batch: while a batch commits, the next one gathers. Under load a save waits its turn instead of
taking a pool connection of its own, and the database sees a few large transactions instead of
thousands of small ones.

The writes are statements written once, run straight on the driver (no SQL built per save):

- **PostgreSQL**: one statement per batch on a connection the writer keeps (psycopg or asyncpg, in
  autocommit, so the statement is its own transaction and one round trip): the runs' counters and
  leases are updated from arrays (``unnest``), fenced by each run's epoch, and the new messages of
  the runs whose update went through are inserted in the same statement. A refused run's messages
  are never written, and the others commit.
- **SQLite**: a thread of the writer's own, with its own connection (the standard library's
  sqlite3, no aiosqlite): ``BEGIN IMMEDIATE``, one fenced ``UPDATE`` per run and its messages, one
  ``COMMIT``; one hop to the thread per batch.

Each save learns which of its runs' updates went through: a refused one (taken over, ended, or a
gap) gets its reason from the store, the others are committed when their future resolves. A batch
that fails for another reason is written again one save at a time, so one bad save cannot fail the
others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import orjson

from executus_core.types import Usage

if TYPE_CHECKING:
    import sqlite3

__all__ = ["GroupCommit", "PendingSave", "PostgresBatch", "SqliteBatch"]


@dataclasses.dataclass(eq=False, slots=True)
class PendingSave:
    """One save waiting for its batch: the run's counters and its new messages as JSON text."""

    run_id: str
    epoch: int
    offset: int
    iteration: int
    tool_calls: int
    usage: str
    attempts: str | None
    messages: list[str]
    future: asyncio.Future[None]

    @property
    def end(self) -> int:
        """How many messages the run holds once this save is written."""
        return self.offset + len(self.messages)


@dataclasses.dataclass(eq=False, slots=True)
class PendingStart:
    """One run to register: its row's fields (``info`` and ``agent`` as JSON text); the future gets
    its epoch, or ``None`` when its row was there already, live or paused (the store then looks at
    it itself: resumes it, or refuses)."""

    run_id: str
    info: str
    agent: str
    subject_id: str
    name: str
    caller_id: str
    started_at: datetime
    future: asyncio.Future[int | None]


@dataclasses.dataclass(eq=False, slots=True)
class PendingEnd:
    """One run to end (PostgreSQL): ``completed`` or ``failed`` with its error, fenced by its epoch;
    the future gets whether the end was written (``False``: refused, the store says why)."""

    run_id: str
    epoch: int
    status: str
    error: str | None
    future: asyncio.Future[bool]


_USAGE = Usage().model_dump_json()


class Pending(Protocol):
    """What the queue needs of an item: its run, and the future its writer resolves."""

    @property
    def run_id(self) -> str: ...

    @property
    def future(self) -> asyncio.Future[Any]: ...


T = TypeVar("T", bound=Pending)
T_out = TypeVar("T_out")


class GroupCommit(Generic[T]):
    """A queue of pending writes and the one task that writes them, batch after batch.

    ``flush`` writes one batch and resolves every future in it; it is called with at most
    ``max_batch`` items, never two of one run (a run's second save waits for the next batch, so
    saves of one run land in order).
    """

    def __init__(self, flush: Callable[[Sequence[T]], Awaitable[None]], *, max_batch: int, name: str) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self._name = name
        self._queue: deque[T] = deque()
        self._task: asyncio.Task[None] | None = None
        self._inflight: Sequence[T] = ()
        self.batches = 0
        self.saves = 0

    @property
    def pending(self) -> int:
        """Saves waiting for a batch (not counting the batch being written)."""
        return len(self._queue)

    async def submit(self, item: T) -> Any:
        """Queue ``item`` and wait until its batch is committed: its future's value, or its error."""
        self._queue.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name=self._name)
        # A caller that stops waiting (a timeout) cancels the future: a save not yet taken is left
        # out, one being written may still land. Either way its checkpointer holds the outcome as
        # unknown, and its next save replaces what follows the offset.
        return await item.future

    def _take(self) -> list[T]:
        batch: list[T] = []
        runs: set[str] = set()
        deferred: list[T] = []
        queue = self._queue
        while queue and len(batch) < self.max_batch:
            item = queue.popleft()
            if item.future.done():  # cancelled before it was written: nothing to write
                continue
            if item.run_id in runs:
                deferred.append(item)
                continue
            runs.add(item.run_id)
            batch.append(item)
        queue.extendleft(reversed(deferred))
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                self._inflight = batch
                try:
                    await self._flush(batch)
                except Exception as exc:  # the flush resolves its futures itself; this is a bug
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                self.batches += 1
                self.saves += len(batch)
        except BaseException:  # cancelled (the loop is closing): nobody will write what waits
            for item in (*self._inflight, *self._queue):
                item.future.cancel()
            self._queue.clear()
            raise
        finally:
            self._inflight = ()
            self._task = None

    async def aclose(self) -> None:
        """Wait for the saves already queued to be written."""
        while self._task is not None:
            await asyncio.shield(self._task)


# -- PostgreSQL ------------------------------------------------------------------------------------

# The batch travels as one JSON document (the new messages are already JSON: embedded as they are),
# so the client builds no arrays and escapes nothing: one orjson.dumps per batch.
_PG_SAVE = """
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb -> 'runs') AS v(
        run_id text, epoch int, start_at int, end_at int, iteration int, tool_calls int,
        usage jsonb, attempts jsonb
    )
),
saved AS (
    UPDATE executus_checkpoint_runs AS r
    SET message_count = v.end_at,
        iteration = v.iteration,
        tool_calls = v.tool_calls,
        usage = v.usage,
        attempts = coalesce(v.attempts, r.attempts),
        lease_until = extract(epoch from clock_timestamp())::float8 + %(lease)s,
        updated_at = %(now)s
    FROM v
    WHERE r.run_id = v.run_id AND r.status = 'live' AND r.epoch = v.epoch
        AND r.message_count >= v.start_at
    RETURNING r.run_id
),
added AS (
    INSERT INTO executus_checkpoint_messages (run_id, position, message)
    SELECT m.run_id, m.position, m.message
    FROM jsonb_to_recordset(%(batch)s::jsonb -> 'messages') AS m(run_id text, position int, message jsonb)
    WHERE m.run_id IN (SELECT run_id FROM saved)
)
SELECT run_id FROM saved
"""

# A new run's row (or a new life of an ended run id: a higher epoch, its old messages gone). A run
# whose row is live or paused is not touched here: the store resumes it, or refuses, one by one.
_PG_START = """
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS v(
        run_id text, info jsonb, agent jsonb, subject_id text, name text, caller_id text,
        started_at timestamptz
    )
),
started AS (
    INSERT INTO executus_checkpoint_runs AS r (
        run_id, status, info, agent, subject_id, name, caller_id, started_at, iteration, tool_calls,
        usage, message_count, owner, epoch, lease_until, claimed_at, held_since, not_before,
        resume_failures, attempts, pending, paused_at, error, created_at, updated_at
    )
    SELECT v.run_id, 'live', v.info, v.agent, v.subject_id, v.name, v.caller_id, v.started_at, 0, 0,
        %(usage)s::jsonb, 0, %(owner)s, 1, extract(epoch from clock_timestamp())::float8 + %(lease)s, NULL,
        extract(epoch from clock_timestamp())::float8, NULL, 0, NULL, NULL, NULL, NULL, %(now)s, %(now)s
    FROM v
    ON CONFLICT (run_id) DO UPDATE SET
        status = excluded.status, info = excluded.info, agent = excluded.agent,
        subject_id = excluded.subject_id, name = excluded.name, caller_id = excluded.caller_id,
        started_at = excluded.started_at, iteration = 0, tool_calls = 0, usage = excluded.usage,
        message_count = 0, owner = excluded.owner, epoch = r.epoch + 1, lease_until = excluded.lease_until,
        claimed_at = NULL, held_since = excluded.held_since, not_before = NULL, resume_failures = 0,
        attempts = NULL, pending = NULL, paused_at = NULL, error = NULL, created_at = excluded.created_at,
        updated_at = excluded.updated_at
    WHERE r.status NOT IN ('live', 'paused')
    RETURNING r.run_id, r.epoch
),
cleared AS (
    DELETE FROM executus_checkpoint_messages WHERE run_id IN (SELECT run_id FROM started)
)
SELECT run_id, epoch FROM started
"""

# The end of runs (completed, or failed with an error), fenced by each run's epoch; their messages go.
_PG_END = """
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS v(run_id text, epoch int, status text, error text)
),
ended AS (
    UPDATE executus_checkpoint_runs AS r
    SET status = v.status, error = v.error, message_count = 0, lease_until = NULL, claimed_at = NULL,
        not_before = NULL, attempts = NULL, epoch = r.epoch + 1, updated_at = %(now)s
    FROM v
    WHERE r.run_id = v.run_id AND r.status = 'live' AND r.epoch = v.epoch
    RETURNING r.run_id
),
cleared AS (
    DELETE FROM executus_checkpoint_messages WHERE run_id IN (SELECT run_id FROM ended)
)
SELECT run_id FROM ended
"""


def _for_asyncpg(sql: str) -> tuple[str, list[str]]:
    """``sql`` with asyncpg's ``$n`` placeholders, and the parameter names in their order."""
    order = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
    return re.sub(r"%\((\w+)\)s", lambda m: f"${order.index(m.group(1)) + 1}", sql), order


_ASYNCPG = {sql: _for_asyncpg(sql) for sql in (_PG_SAVE, _PG_START, _PG_END)}


def batch_document(batch: Sequence[PendingSave]) -> str:
    """The JSON document of a batch: its runs' counters and their new messages."""
    runs = []
    messages = []
    for item in batch:
        runs.append(
            {
                "run_id": item.run_id,
                "epoch": item.epoch,
                "start_at": item.offset,
                "end_at": item.end,
                "iteration": item.iteration,
                "tool_calls": item.tool_calls,
                "usage": orjson.Fragment(item.usage),
                "attempts": None if item.attempts is None else orjson.Fragment(item.attempts),
            }
        )
        for index, message in enumerate(item.messages):
            messages.append(
                {"run_id": item.run_id, "position": item.offset + index, "message": orjson.Fragment(message)}
            )
    return orjson.dumps({"runs": runs, "messages": messages}).decode()


class PostgresBatch:
    """Writes batches in one statement each on a driver connection (psycopg or asyncpg, in
    autocommit): saves, starts and ends of runs. One batch at a time on the connection."""

    def __init__(self, driver: str, lease_seconds: float, owner: str) -> None:
        self.driver = driver
        self.lease_seconds = lease_seconds
        self.owner = owner
        self.lock = asyncio.Lock()

    async def _fetch(self, connection: Any, sql: str, params: dict[str, Any]) -> list[Any]:
        async with self.lock:
            if self.driver == "asyncpg":
                statement, order = _ASYNCPG[sql]
                return list(await connection.fetch(statement, *(params[name] for name in order)))
            cursor = await connection.execute(sql, params, prepare=True)
            return list(await cursor.fetchall())

    async def write(self, connection: Any, batch: Sequence[PendingSave], now: datetime) -> set[str]:
        """Write a batch of saves; the run ids saved (the others were refused)."""
        params = {"batch": batch_document(batch), "lease": float(self.lease_seconds), "now": now}
        return {row[0] for row in await self._fetch(connection, _PG_SAVE, params)}

    async def start(self, connection: Any, batch: Sequence[PendingStart], now: datetime) -> dict[str, int]:
        """Register a batch of runs for this owner; run id -> epoch for those written (the others'
        rows are live or paused: not touched)."""
        rows = [
            {
                "run_id": i.run_id,
                "info": orjson.Fragment(i.info),
                "agent": orjson.Fragment(i.agent),
                "subject_id": i.subject_id,
                "name": i.name,
                "caller_id": i.caller_id,
                "started_at": i.started_at.isoformat(),
            }
            for i in batch
        ]
        params = {
            "batch": orjson.dumps(rows).decode(),
            "usage": _USAGE,
            "owner": self.owner,
            "lease": float(self.lease_seconds),
            "now": now,
        }
        return {row[0]: int(row[1]) for row in await self._fetch(connection, _PG_START, params)}

    async def end(self, connection: Any, batch: Sequence[PendingEnd], now: datetime) -> set[str]:
        """End a batch of runs; the run ids ended (the others were refused)."""
        rows = [{"run_id": i.run_id, "epoch": i.epoch, "status": i.status, "error": i.error} for i in batch]
        params = {"batch": orjson.dumps(rows).decode(), "now": now}
        return {row[0] for row in await self._fetch(connection, _PG_END, params)}


# -- SQLite ------------------------------------------------------------------------------------------

_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_SQLITE_SAVE = (
    "UPDATE executus_checkpoint_runs SET message_count = ?, iteration = ?, tool_calls = ?, usage = ?, "
    f"attempts = coalesce(?, attempts), lease_until = {_SQLITE_NOW} + ?, updated_at = ? "
    "WHERE run_id = ? AND status = 'live' AND epoch = ? AND message_count >= ?"
)
_SQLITE_ADD = "INSERT INTO executus_checkpoint_messages (run_id, position, message) VALUES (?, ?, ?)"
_SQLITE_START = (
    "INSERT INTO executus_checkpoint_runs (run_id, status, info, agent, subject_id, name, caller_id, "
    "started_at, iteration, tool_calls, usage, message_count, owner, epoch, lease_until, claimed_at, "
    "held_since, not_before, resume_failures, attempts, pending, paused_at, error, created_at, updated_at) "
    f"VALUES (?, 'live', ?, ?, ?, ?, ?, ?, 0, 0, ?, 0, ?, 1, {_SQLITE_NOW} + ?, NULL, {_SQLITE_NOW}, NULL, 0, "
    "NULL, NULL, NULL, NULL, ?, ?) "
    "ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, info = excluded.info, "
    "agent = excluded.agent, subject_id = excluded.subject_id, name = excluded.name, "
    "caller_id = excluded.caller_id, started_at = excluded.started_at, iteration = 0, tool_calls = 0, "
    "usage = excluded.usage, message_count = 0, owner = excluded.owner, "
    "epoch = executus_checkpoint_runs.epoch + 1, lease_until = excluded.lease_until, claimed_at = NULL, "
    "held_since = excluded.held_since, not_before = NULL, resume_failures = 0, attempts = NULL, "
    "pending = NULL, paused_at = NULL, error = NULL, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at "
    "WHERE executus_checkpoint_runs.status NOT IN ('live', 'paused') "
    "RETURNING epoch"
)
_SQLITE_END = (
    "UPDATE executus_checkpoint_runs SET status = ?, error = ?, message_count = 0, lease_until = NULL, "
    "claimed_at = NULL, not_before = NULL, attempts = NULL, epoch = epoch + 1, updated_at = ? "
    "WHERE run_id = ? AND status = 'live' AND epoch = ?"
)
_SQLITE_CLEAR = "DELETE FROM executus_checkpoint_messages WHERE run_id = ?"


def _sqlite_stamp(when: datetime) -> str:
    # The text SQLAlchemy's SQLite DateTime writes and reads back (naive UTC).
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteBatch:
    """Writes batches of saves in a thread of its own, on a sqlite3 connection of its own.

    One hop to the thread per batch. ``busy_timeout`` bounds the wait for another process's write.
    """

    def __init__(
        self, path: Path, *, busy_timeout: float, lease_seconds: float, owner: str, name: str
    ) -> None:
        self.path = path
        self.owner = owner
        self.busy_timeout = busy_timeout
        self.lease_seconds = lease_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            import sqlite3  # here: a store that never writes SQLite never pays for the module

            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    def _in_transaction(self, write: Callable[[Any], T_out]) -> T_out:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = write(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise
        return done

    def _write(self, batch: Sequence[PendingSave], stamp: str) -> set[str]:
        lease = float(self.lease_seconds)

        def write(conn: Any) -> set[str]:
            saved: set[str] = set()
            for item in batch:
                cursor = conn.execute(
                    _SQLITE_SAVE,
                    (
                        item.end,
                        item.iteration,
                        item.tool_calls,
                        item.usage,
                        item.attempts,
                        lease,
                        stamp,
                        item.run_id,
                        item.epoch,
                        item.offset,
                    ),
                )
                if cursor.rowcount == 1:
                    saved.add(item.run_id)
                    if item.messages:
                        run_id, offset = item.run_id, item.offset
                        conn.executemany(
                            _SQLITE_ADD,
                            [
                                (run_id, offset + index, message)
                                for index, message in enumerate(item.messages)
                            ],
                        )
            return saved

        return self._in_transaction(write)

    def _start(self, batch: Sequence[PendingStart], stamp: str) -> dict[str, int]:
        lease = float(self.lease_seconds)

        def write(conn: Any) -> dict[str, int]:
            started: dict[str, int] = {}
            for i in batch:
                row = conn.execute(
                    _SQLITE_START,
                    (
                        i.run_id,
                        i.info,
                        i.agent,
                        i.subject_id,
                        i.name,
                        i.caller_id,
                        _sqlite_stamp(i.started_at),
                        _USAGE,
                        self.owner,
                        lease,
                        stamp,
                        stamp,
                    ),
                ).fetchone()
                if row is not None:
                    started[i.run_id] = int(row[0])
                    conn.execute(_SQLITE_CLEAR, (i.run_id,))  # an earlier life's rows, if any
            return started

        return self._in_transaction(write)

    def _end(self, batch: Sequence[PendingEnd], stamp: str) -> set[str]:
        def write(conn: Any) -> set[str]:
            ended: set[str] = set()
            for i in batch:
                if conn.execute(_SQLITE_END, (i.status, i.error, stamp, i.run_id, i.epoch)).rowcount == 1:
                    ended.add(i.run_id)
                    conn.execute(_SQLITE_CLEAR, (i.run_id,))
            return ended

        return self._in_transaction(write)

    async def write(self, batch: Sequence[PendingSave], now: datetime) -> set[str]:
        """Write a batch of saves in the writer's thread; the run ids saved."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._write, batch, _sqlite_stamp(now))

    async def start(self, batch: Sequence[PendingStart], now: datetime) -> dict[str, int]:
        """Register a batch of runs; run id -> epoch for those written (the others are live or paused)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._start, batch, _sqlite_stamp(now))

    async def end(self, batch: Sequence[PendingEnd], now: datetime) -> set[str]:
        """End a batch of runs; the run ids ended (the others were refused)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._end, batch, _sqlite_stamp(now))

    def _close(self) -> None:
        for conn in self._connections:
            with contextlib.suppress(Exception):
                conn.close()
        self._connections.clear()

    async def aclose(self) -> None:
        """Close the connection and stop the thread."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(RuntimeError):
            await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)
