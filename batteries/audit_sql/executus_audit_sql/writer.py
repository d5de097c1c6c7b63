"""The batch writer: one background task per audit (and event loop) that does all of its writing.

Recorders only append to their buffers and call `BatchWriter.added`, which is O(1). The writer's task
wakes every ``flush_interval`` seconds, or at once when ``batch_size`` rows are waiting or a run
closes, takes the last rows and roll-ups of the runs that are closing (first come, first served) and
the buffered rows of every recorder, at most ``max_write_rows`` in all, and writes them in one
transaction: runs that end together share one commit. What did not fit goes with the next write, at
once, so a thousand runs ending together make several short transactions, not one long one.

Each transaction runs in the writer's own thread over the synchronous driver: the event loop awaits
one future per write, so a loop busy with thousands of runs does not stretch a write by one loop
turn per round trip (the reason closes once timed out under load with the database healthy). A write
given up (``write_timeout``, or a close cancelled) is interrupted in the driver and rolled back.

When a write fails (the database is down, a lock, a timeout) the rows go back to their recorders, the
writer logs the failure once and waits a growing pause (up to 5 s) before it tries again on its own;
a closing run makes it try at once. Nothing is dropped, and the runs go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from executus_audit_sql.errors import describe_error
from executus_audit_sql.writes import (
    Registration,
    Row,
    RunState,
    write_rollups,
    write_trail,
    write_transcripts,
)
from executus_core.types import RunStats

if TYPE_CHECKING:
    from executus_audit_sql.recorder import SqlRecorder

__all__ = ["BatchWriter", "WriteAborted", "WriterStats"]

log = logging.getLogger("executus.audit_sql")

MAX_BACKOFF = 5.0
"""Longest pause between two tries while the database keeps failing, in seconds."""


class WriteAborted(Exception):
    """The write holding a closing run's rows was cancelled (its close ran out of time)."""


class WriterStats:
    """Counters of one writer, for tests, benchmarks and health checks."""

    __slots__ = ("batches", "failures", "last_error", "rows_written")

    def __init__(self) -> None:
        self.batches = 0
        self.rows_written = 0
        self.failures = 0
        self.last_error: str | None = None


@dataclasses.dataclass(eq=False)
class _Final:
    """A closing run's last rows and roll-up, and the future its ``close`` waits on."""

    state: RunState
    rows: list[Row]
    stats: RunStats
    ended_at: datetime
    done: asyncio.Future[None]
    abandoned: bool = False  # its close gave up: the writer no longer reports to it


class _WriteThread:
    """One daemon thread that runs the writer's transactions in order (a daemon: a write hung on a
    dead server never keeps the process from exiting)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="executus-audit-sql writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((done, fn, args))
        return done

    def stop(self) -> None:
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            done, fn, args = job
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)


class BatchWriter:
    """Writes what every recorder of one audit buffered, in batches, from a task of its own.

    Args:
        engine: the synchronous engine the writes use (in the writer's thread).
        prepare: awaited before a write until it succeeds once (makes sure the tables exist).
        batch_size: waiting rows that trigger a write at once.
        max_rows: most rows one transaction takes (closing runs' first).
        flush_interval: longest a row waits, in seconds.
        write_timeout: longest one write may take, in seconds.
        maintain: awaited after writes, at most hourly (retention); errors are logged.
        where: the database, for messages (no password).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        prepare: Callable[[], Awaitable[None]],
        batch_size: int,
        max_rows: int,
        flush_interval: float,
        write_timeout: float,
        maintain: Callable[[], Awaitable[object]] | None = None,
        where: str = "the audit database",
    ) -> None:
        self.engine = engine
        self._where = where
        self._thread = _WriteThread()
        self._job: concurrent.futures.Future[Any] | None = None  # the write in the thread
        self._driver_connection: Any = None  # the driver connection of that write (to interrupt it)
        self.stats = WriterStats()
        self._prepare = prepare
        self._batch_size = batch_size
        self._max_rows = max(max_rows, 1)
        self._flush_interval = flush_interval
        self._write_timeout = write_timeout
        self._maintain = maintain
        self._maintained_at: float | None = None
        self._dirty: dict[SqlRecorder, None] = {}  # recorders with buffered rows, in order
        self._finals: list[_Final] = []
        self._pending = 0  # rows added since the last write began
        self._wake = asyncio.Event()  # a batch is full, a run closes, or stop()
        self._urgent = asyncio.Event()  # a run closes, or stop(): cuts a pause after a failure short
        self._stopping = False
        self._flush_task: asyncio.Task[bool] | None = None
        self._flush_lock = asyncio.Lock()  # one write at a time (the task's, or a flush() call's)
        self._failing = False
        self.loop = asyncio.get_running_loop()
        self.progress_at = self.loop.time()  # when a write last succeeded (closes wait while it moves)
        self._task = self.loop.create_task(self._run(), name="executus-audit-sql writer")

    # -- called by recorders ------------------------------------------------------------------

    def added(self, recorder: SqlRecorder) -> None:
        """A recorder buffered a row (O(1): the per-step path calls this)."""
        self._dirty[recorder] = None
        self._pending += 1
        if self._pending >= self._batch_size:
            self._wake.set()

    def forget(self, recorder: SqlRecorder) -> None:
        """The recorder is closing: its rows go with its roll-up, not with the batches."""
        self._dirty.pop(recorder, None)

    def submit_final(self, state: RunState, rows: list[Row], stats: RunStats, ended_at: datetime) -> _Final:
        """Queue a closing run's last rows and roll-up for the next write (at once); await ``.done``."""
        final = _Final(state, rows, stats, ended_at, self.loop.create_future())
        self._finals.append(final)
        self._wake.set()
        self._urgent.set()
        return final

    async def withdraw(self, final: _Final, timeout: float) -> None:
        """Make sure ``final`` is not written after its close gave up: unqueue it, or abort its write
        (waiting at most ``timeout`` seconds for the abort to be done)."""
        final.abandoned = True
        if final in self._finals:
            self._finals.remove(final)
        elif not final.done.done():
            await self.abort_inflight(timeout)

    def withdraw_now(self, final: _Final) -> None:
        """`withdraw` for a close being cancelled: nothing is awaited."""
        final.abandoned = True
        if final in self._finals:
            self._finals.remove(final)
        elif not final.done.done() and self._flush_task is not None:
            self._flush_task.cancel()

    async def abort_inflight(self, timeout: float) -> None:
        """Cancel the write in flight (its rows go back, its closes fail); wait up to ``timeout`` seconds
        for it to end. (A driver may need longer to give the connection back: a SQLite statement waiting
        on a lock ends only with its busy timeout. Nothing of the aborted write is committed.)"""
        task = self._flush_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=timeout)

    # -- the task -----------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._flush_interval
        ok = True
        while True:
            # While the database fails, a full buffer does not make the writer try again sooner: it
            # waits out its pause, unless a run closes (its close must try now) or stop() is called.
            signal = self._wake if ok else self._urgent
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await signal.wait()
            self._wake.clear()
            self._urgent.clear()
            ok = True
            try:
                if self._dirty or self._finals:
                    ok = await self._flush_once()
                    if ok and (self._finals or (self._dirty and self._pending >= self._batch_size)):
                        self._wake.set()  # more was waiting than one write takes
                if ok and self._maintain is not None:
                    await self._maybe_maintain()
            except Exception:  # a bug of ours must not end the writer: every run's rows depend on it
                log.exception("audit_sql: the batch writer failed; it goes on")
                ok = False
            delay = self._flush_interval if ok else min(max(delay, self._flush_interval) * 2, MAX_BACKOFF)
            if self._stopping and ((not self._dirty and not self._finals) or not ok):
                return

    async def _flush_once(self) -> bool:
        async with self._flush_lock:
            task = self.loop.create_task(self._flush())
            self._flush_task = task
            try:
                return await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the writer itself is being stopped
                return False  # a close() aborted this write; everything in it went back
            finally:
                self._flush_task = None

    def _take_finals(self) -> list[_Final]:
        """The closing runs for this write, oldest first: as many as ``_max_rows`` rows hold (at least one)."""
        taken, room = 0, self._max_rows
        for final in self._finals:
            if taken and len(final.rows) > room:
                break
            taken += 1
            room -= len(final.rows)
        finals, self._finals = self._finals[:taken], self._finals[taken:]
        return finals

    async def _flush(self) -> bool:
        finals = self._take_finals()
        batch: list[tuple[SqlRecorder, list[Row]]] = []
        room = self._max_rows - sum(len(f.rows) for f in finals)
        for recorder in list(self._dirty):
            if room <= 0:
                break
            if recorder.closing:
                self._dirty.pop(recorder, None)
                continue
            rows = recorder.take(room)
            if not recorder.waiting:  # everything it had is in this batch
                self._dirty.pop(recorder, None)
            if rows:
                batch.append((recorder, rows))
                room -= len(rows)
        self._pending = sum(r.waiting for r in self._dirty) if self._dirty else 0
        if not batch and not finals:
            return True
        written = False
        failure: BaseException | None = None
        items = [(r.state, rows, True) for r, rows in batch] + [(f.state, f.rows, False) for f in finals]
        rollups = [(f.state.info.run_id, f.stats, f.ended_at) for f in finals]
        transcripts = [
            (f.state.info.run_id, f.state.transcript, f.ended_at)
            for f in finals
            if f.state.transcript is not None
        ]
        abort = threading.Event()
        job: concurrent.futures.Future[Any] | None = None
        made: dict[int, Registration] = {}
        try:
            try:
                async with asyncio.timeout(self._write_timeout):
                    await self._prepare()
                    await self._previous_write_ended()
                    job = self._job = self._thread.submit(self._write, items, rollups, transcripts, abort)
                    made = await asyncio.wrap_future(job)
            except BaseException:
                if job is not None and job.done() and not job.cancelled() and job.exception() is None:
                    made = job.result()  # it committed before it was given up: it counts
                    written = True
                else:
                    self._abort(abort)
                raise
            written = True
            self.progress_at = self.loop.time()
            self.stats.batches += 1
            self.stats.rows_written += sum(len(rows) for _, rows, _ in items)
            if self._failing:
                self._failing = False
                log.warning("audit_sql: writing to %s works again", self._describe())
            return True
        except asyncio.CancelledError:
            failure = WriteAborted("the write was cancelled before it finished")
            raise
        except Exception as exc:
            if written:
                return True
            failure = exc
            self.stats.failures += 1
            self.stats.last_error = (
                f"no answer within {self._write_timeout:g}s"
                if isinstance(exc, TimeoutError)
                else describe_error(exc)
            )
            if not self._failing:
                self._failing = True
                log.warning(
                    "audit_sql: writing %d rows to %s failed (%s); the rows are kept and retried, runs go on",
                    sum(len(rows) for _, rows, _ in items),
                    self._describe(),
                    self.stats.last_error,
                )
            return False
        finally:
            if written:
                for state, _, _ in items:
                    if id(state) in made:
                        made[id(state)].apply(state)
            for recorder, rows in batch:
                recorder.settle(rows, written=written)
                if not written and not recorder.closing:
                    self._dirty[recorder] = None
            for final in finals:
                if final.abandoned or final.done.done():
                    continue  # its close gave up already
                if written:
                    final.done.set_result(None)
                else:
                    final.done.set_exception(failure or WriteAborted("the write failed"))

    def _write(
        self,
        items: list[tuple[RunState, list[Row], bool]],
        rollups: list[tuple[str, RunStats, datetime]],
        transcripts: list[tuple[str, Any, datetime]],
        abort: threading.Event,
    ) -> dict[int, Registration]:
        """One transaction, in the writer's thread; rolled back if it was given up before its commit."""
        if abort.is_set():
            raise WriteAborted("the write was given up before it started")
        with self.engine.connect() as conn:
            self._driver_connection = conn.connection.dbapi_connection
            try:
                with conn.begin():
                    made = write_trail(conn, items)
                    if rollups:
                        write_rollups(conn, rollups)
                    if transcripts:
                        write_transcripts(conn, transcripts)
                    if abort.is_set():
                        raise WriteAborted("the write was given up before it committed")
            finally:
                self._driver_connection = None
        return made

    def _abort(self, abort: threading.Event) -> None:
        """Give up the write in the thread: it rolls back, and a statement waiting in the driver is
        interrupted (sqlite3's ``interrupt``, psycopg's cancel request, sent from a thread of its own)."""
        abort.set()
        connection = self._driver_connection
        if connection is None:
            return
        interrupt = getattr(connection, "interrupt", None)
        if interrupt is not None:
            with contextlib.suppress(Exception):
                interrupt()
            return
        cancel = getattr(connection, "cancel_safe", None) or getattr(connection, "cancel", None)
        if cancel is not None:

            def send() -> None:
                with contextlib.suppress(Exception):
                    cancel()

            threading.Thread(target=send, name="executus-audit-sql cancel", daemon=True).start()

    async def _previous_write_ended(self) -> None:
        """A write given up may still be ending in the thread (rolling back): the next one waits for it."""
        job = self._job
        if job is not None and not job.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(job))

    def _describe(self) -> str:
        return self._where

    async def _maybe_maintain(self) -> None:
        assert self._maintain is not None
        now = time.monotonic()
        if self._maintained_at is not None and now - self._maintained_at < 3600:
            return
        self._maintained_at = now
        try:
            await self._maintain()
        except Exception as exc:
            log.warning("audit_sql: pruning old runs failed: %s: %s", type(exc).__name__, exc)

    # -- stopping -----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything buffered now (a failure leaves the rows buffered; see ``stats``)."""
        async with self._flush_lock:
            pass  # the write in flight (rows taken already) ends first
        if self._dirty:
            await self._flush_once()

    async def stop(self, timeout: float) -> None:
        """Write what is buffered (bounded by ``timeout``) and end the task."""
        self._stopping = True
        self._wake.set()
        self._urgent.set()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        finally:
            self._thread.stop()

    def release(self) -> None:
        """End the writer's thread without writing (its event loop is gone: nothing can be awaited)."""
        self._task.cancel()
        self._thread.stop()

    def leftovers(self) -> list[SqlRecorder]:
        """Recorders never closed whose rows are still buffered (after `stop`)."""
        return [r for r in self._dirty if not r.closing and r.waiting]
