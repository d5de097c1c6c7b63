"""The batch writer: one background task per audit (and event loop) that does all of its writing.

Recorders only append to their buffers and call `BatchWriter.added`, which is O(1). The writer's task
wakes every ``flush_interval`` seconds, or at once when ``batch_size`` rows are waiting or a run
closes, takes the buffered rows of every recorder (at most four batches' worth) and the last rows and
roll-ups of every run that is closing, and writes them all in one transaction: runs that end together
share one commit.

When a write fails (the database is down, a lock, a timeout) the rows go back to their recorders, the
writer logs the failure once and waits a growing pause (up to 5 s) before it tries again on its own;
a closing run makes it try at once. Nothing is dropped, and the runs go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from executus_audit_sql.errors import describe_error
from executus_audit_sql.writes import Row, RunState, write_rollups, write_trail, write_transcripts
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


class BatchWriter:
    """Writes what every recorder of one audit buffered, in batches, from a task of its own.

    Args:
        engine: the async engine (bound to the running loop).
        prepare: awaited before a write until it succeeds once (makes sure the tables exist).
        batch_size: waiting rows that trigger a write at once.
        flush_interval: longest a row waits, in seconds.
        write_timeout: longest one write may take, in seconds.
        maintain: awaited after writes, at most hourly (retention); errors are logged.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        prepare: Callable[[], Awaitable[None]],
        batch_size: int,
        flush_interval: float,
        write_timeout: float,
        maintain: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.engine = engine
        self.stats = WriterStats()
        self._prepare = prepare
        self._batch_size = batch_size
        self._max_rows = batch_size * 4
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

    async def _flush(self) -> bool:
        finals, self._finals = self._finals, []
        batch: list[tuple[SqlRecorder, list[Row]]] = []
        room = self._max_rows
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
        self._pending = 0
        if not batch and not finals:
            return True
        written = False
        failure: BaseException | None = None
        items = [(r.state, rows, True) for r, rows in batch] + [(f.state, f.rows, False) for f in finals]
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._prepare()
                async with self.engine.begin() as conn:
                    made = await write_trail(conn, items)
                    if finals:
                        await write_rollups(
                            conn, [(f.state.info.run_id, f.stats, f.ended_at) for f in finals]
                        )
                        await write_transcripts(
                            conn,
                            [
                                (f.state.info.run_id, f.state.transcript, f.ended_at)
                                for f in finals
                                if f.state.transcript is not None
                            ],
                        )
            written = True
            for state, _, _ in items:
                if id(state) in made:
                    made[id(state)].apply(state)
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

    def _describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

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

    def leftovers(self) -> list[SqlRecorder]:
        """Recorders never closed whose rows are still buffered (after `stop`)."""
        return [r for r in self._dirty if not r.closing and r.waiting]
