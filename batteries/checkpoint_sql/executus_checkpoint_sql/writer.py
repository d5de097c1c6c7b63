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
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

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


Flush = Callable[[Sequence[PendingSave]], Awaitable[None]]
"""Writes a batch and resolves each save's future (with None, or the error of that save)."""


class GroupCommit:
    """The queue of pending saves and the one task that writes them, batch after batch.

    ``flush`` writes one batch and resolves every future in it; it is called with at most
    ``max_batch`` saves, never two of one run (a run's second save waits for the next batch, so
    saves of one run land in order).
    """

    def __init__(self, flush: Flush, *, max_batch: int, name: str) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self._name = name
        self._queue: deque[PendingSave] = deque()
        self._task: asyncio.Task[None] | None = None
        self._inflight: Sequence[PendingSave] = ()
        self.batches = 0
        self.saves = 0

    @property
    def pending(self) -> int:
        """Saves waiting for a batch (not counting the batch being written)."""
        return len(self._queue)

    async def submit(self, item: PendingSave) -> None:
        """Queue ``item`` and wait until its batch is committed; raises that save's error."""
        self._queue.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name=self._name)
        # A caller that stops waiting (a timeout) cancels the future: a save not yet taken is left
        # out, one being written may still land. Either way its checkpointer holds the outcome as
        # unknown, and its next save replaces what follows the offset.
        await item.future

    def _take(self) -> list[PendingSave]:
        batch: list[PendingSave] = []
        runs: set[str] = set()
        deferred: list[PendingSave] = []
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

_ORDER = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", _PG_SAVE)))
_ASYNCPG_SAVE = re.sub(r"%\((\w+)\)s", lambda m: f"${_ORDER.index(m.group(1)) + 1}", _PG_SAVE)


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
    """Writes a batch of saves in one statement on a driver connection (psycopg or asyncpg)."""

    def __init__(self, driver: str, lease_seconds: float) -> None:
        self.driver = driver
        self.lease_seconds = lease_seconds

    async def write(self, connection: Any, batch: Sequence[PendingSave], now: datetime) -> set[str]:
        """Write ``batch`` on ``connection`` (a driver connection in autocommit); the run ids saved."""
        params = {"batch": batch_document(batch), "lease": float(self.lease_seconds), "now": now}
        if self.driver == "asyncpg":
            rows = await connection.fetch(_ASYNCPG_SAVE, *(params[name] for name in _ORDER))
            return {row[0] for row in rows}
        cursor = await connection.execute(_PG_SAVE, params, prepare=True)
        return {row[0] for row in await cursor.fetchall()}


# -- SQLite ------------------------------------------------------------------------------------------

_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_SQLITE_SAVE = (
    "UPDATE executus_checkpoint_runs SET message_count = ?, iteration = ?, tool_calls = ?, usage = ?, "
    f"attempts = coalesce(?, attempts), lease_until = {_SQLITE_NOW} + ?, updated_at = ? "
    "WHERE run_id = ? AND status = 'live' AND epoch = ? AND message_count >= ?"
)
_SQLITE_ADD = "INSERT INTO executus_checkpoint_messages (run_id, position, message) VALUES (?, ?, ?)"


def _sqlite_stamp(now: datetime) -> str:
    # The text SQLAlchemy's SQLite DateTime writes and reads back (naive UTC).
    return now.strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteBatch:
    """Writes batches of saves in a thread of its own, on a sqlite3 connection of its own.

    One hop to the thread per batch. ``busy_timeout`` bounds the wait for another process's write.
    """

    def __init__(self, path: Path, *, busy_timeout: float, lease_seconds: float, name: str) -> None:
        self.path = path
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

    def _write(self, batch: Sequence[PendingSave], stamp: str) -> set[str]:
        conn = self._connection()
        saved: set[str] = set()
        lease = float(self.lease_seconds)
        conn.execute("BEGIN IMMEDIATE")
        try:
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
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise
        return saved

    async def write(self, batch: Sequence[PendingSave], now: datetime) -> set[str]:
        """Write ``batch`` in the writer's thread; the run ids saved."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._write, batch, _sqlite_stamp(now))

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
