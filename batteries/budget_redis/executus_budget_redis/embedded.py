"""`SQLiteBudget`: the embedded backend, for a first run and for one machine, with no Redis.

The same budgets as `RedisBudget` — windows, runs in flight, token holds, exactly-once checks,
commits and releases keyed by run id — kept in a SQLite file (``budget.sqlite3`` in the executus
data directory unless ``path`` says otherwise). Every process on the machine that uses the same
file shares the budgets: SQLite's write lock (``BEGIN IMMEDIATE``) makes each check and commit one
atomic step, as a Lua script is in Redis. Processes on other machines do not see it: use Redis
(set ``url``) for that.

Each budget does its SQLite work on one thread of its own, so the event loop never waits on the
file; a check that cannot get the write lock within ``timeout``, or gets it after its deadline,
applies nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from executus_budget_redis.base import (
    ADMITTED,
    ALREADY,
    AVERAGE_SPAN,
    LATE,
    LIST_RUNS,
    REFUSED,
    STATS_TTL,
    VOIDED,
    CallerUsage,
    CheckReply,
    InFlightRun,
    StoreBudget,
    WindowUsage,
)
from executus_budget_redis.settings import SECTION, BudgetRedisSettings, ResolvedLimits
from executus_budget_redis.spool import Commit

__all__ = ["SQLiteBudget"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_windows (
    prefix TEXT NOT NULL,
    caller TEXT NOT NULL,
    window_ms INTEGER NOT NULL,
    t0 INTEGER NOT NULL,
    ends INTEGER NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (prefix, caller, window_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budget_runs (
    prefix TEXT NOT NULL,
    caller TEXT NOT NULL,
    run_id TEXT NOT NULL,
    state TEXT NOT NULL,
    nonce TEXT NOT NULL DEFAULT '',
    hold INTEGER NOT NULL DEFAULT 0,
    counted INTEGER NOT NULL DEFAULT 0,
    this_counted INTEGER NOT NULL DEFAULT 0,
    wids TEXT NOT NULL DEFAULT '',
    charged INTEGER NOT NULL DEFAULT 0,
    slot_ends INTEGER,
    ends INTEGER NOT NULL,
    PRIMARY KEY (prefix, caller, run_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS budget_runs_in_flight ON budget_runs (prefix, caller, slot_ends);
CREATE INDEX IF NOT EXISTS budget_runs_ends ON budget_runs (ends);
CREATE TABLE IF NOT EXISTS budget_callers (
    prefix TEXT NOT NULL,
    caller TEXT NOT NULL,
    avg REAL NOT NULL,
    n INTEGER NOT NULL,
    ends INTEGER NOT NULL,
    PRIMARY KEY (prefix, caller)
) WITHOUT ROWID;
"""

_SWEEP_EVERY = 60.0  # seconds between deletions of expired rows, per process


def _now_ms() -> int:
    return int(time.time() * 1000)


class SQLiteBudget(StoreBudget):
    """A `Budget` whose usage lives in a SQLite file: every process on this machine shares it.

    The embedded default of the battery: with no ``url`` set, ``Executor()`` gets one of these on
    ``budget.sqlite3`` in the executus data directory, so a first run needs no Redis. Same settings,
    limits, refusals and guarantees as `RedisBudget`, for one machine::

        budget = SQLiteBudget(path="/var/lib/myapp/budget.sqlite3", max_runs=100)
    """

    backend = "sqlite"
    _errors = (sqlite3.Error, OSError)

    def __init__(
        self,
        config: BudgetRedisSettings | None = None,
        /,
        *,
        data_dir: str | Path | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(config, **fields)
        self.path = self.config.sqlite_path(data_dir)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None  # used on the pool's one thread only
        self._swept = 0.0

    def __repr__(self) -> str:
        return f"SQLiteBudget(path={str(self.path)!r}, key_prefix={self.config.key_prefix!r})"

    def describe(self) -> str:
        """``SQLite at /path/budget.sqlite3 (embedded: this machine only; set url for Redis)``."""
        return f"SQLite at {self.path} (embedded: this machine only; set url to share budgets through Redis)"

    def _location(self) -> str:
        return str(self.path)

    def _where(self) -> str:
        return f"the embedded budget store (SQLite at {self.path})"

    def _advice(self) -> str:
        return (
            f"Check that the file is writable and not on a network share, or set [tool.executus.{SECTION}] "
            'path = "..." to another file, or url = "redis://HOST:6379/0" to use Redis; to run without these '
            f'budgets, disable the battery: disable = ["{SECTION}"] (or EXECUTUS_DISABLE={SECTION})'
        )

    def _problem(self, exc: BaseException) -> str:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return f"stayed locked by another process for {self.config.timeout:g}s (sqlite3: {exc})"
        return f"failed ({type(exc).__name__}: {exc})"

    # -- the thread --------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="executus-budget-sqlite"
                )
                self._closed = False
            pool = self._pool
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _connect(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self.config.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return db

    def _transaction(self, body: Callable[[sqlite3.Connection, int], T]) -> T:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db, _now_ms())
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if time.monotonic() - self._swept > _SWEEP_EVERY:
            self._sweep(db)
        return result

    def _sweep(self, db: sqlite3.Connection) -> None:
        self._swept = time.monotonic()
        now = _now_ms()
        with contextlib.suppress(sqlite3.OperationalError):  # busy: the next sweep does it
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM budget_runs WHERE ends <= ?", (now,))
            db.execute("DELETE FROM budget_windows WHERE ends <= ?", (now,))
            db.execute("DELETE FROM budget_callers WHERE ends <= ?", (now,))
            db.execute("COMMIT")
        if db.in_transaction:
            db.execute("ROLLBACK")

    # -- pieces of the transactions ------------------------------------------------------------

    def _free(self, db: sqlite3.Connection, key: tuple[str, str], run_id: str) -> None:
        db.execute(
            "UPDATE budget_runs SET slot_ends = NULL, hold = 0 WHERE prefix = ? AND caller = ? AND run_id = ?",
            (*key, run_id),
        )

    def _window(self, db: sqlite3.Connection, key: tuple[str, str], window_ms: int, now: int) -> Any:
        row = db.execute(
            "SELECT runs, tokens, ms, t0, ends FROM budget_windows WHERE prefix = ? AND caller = ? AND window_ms = ?",
            (*key, window_ms),
        ).fetchone()
        if row is not None and row[4] <= now:
            db.execute(
                "DELETE FROM budget_windows WHERE prefix = ? AND caller = ? AND window_ms = ?",
                (*key, window_ms),
            )
            return None
        return row

    def _add(
        self,
        db: sqlite3.Connection,
        key: tuple[str, str],
        window_ms: int,
        now: int,
        runs: int = 0,
        tokens: int = 0,
        ms: int = 0,
    ) -> int:
        """Add to a window (starting it if it has not started); returns its ``t0``."""
        row = self._window(db, key, window_ms, now)
        if row is None:
            db.execute(
                "INSERT INTO budget_windows (prefix, caller, window_ms, t0, ends, runs, tokens, ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, window_ms, now, now + window_ms, runs, tokens, ms),
            )
            return now
        db.execute(
            "UPDATE budget_windows SET runs = runs + ?, tokens = tokens + ?, ms = ms + ? "
            "WHERE prefix = ? AND caller = ? AND window_ms = ?",
            (runs, tokens, ms, *key, window_ms),
        )
        return int(row[3])

    def _uncount(
        self, db: sqlite3.Connection, key: tuple[str, str], limits: ResolvedLimits, wids: str
    ) -> None:
        ids = wids.split(",") if wids else []
        for i, window in enumerate(limits.windows):
            if i < len(ids) and ids[i]:
                db.execute(
                    "UPDATE budget_windows SET runs = MAX(runs - 1, 0) WHERE prefix = ? AND caller = ? "
                    "AND window_ms = ? AND t0 = ? AND ends > ?",
                    (*key, window.millis, int(ids[i]), _now_ms()),
                )

    def _record(self, db: sqlite3.Connection, key: tuple[str, str], run_id: str, now: int) -> Any:
        row = db.execute(
            "SELECT state, nonce, hold, counted, this_counted, wids, charged, slot_ends, ends FROM budget_runs "
            "WHERE prefix = ? AND caller = ? AND run_id = ?",
            (*key, run_id),
        ).fetchone()
        if row is not None and row[8] <= now:
            db.execute(
                "DELETE FROM budget_runs WHERE prefix = ? AND caller = ? AND run_id = ?", (*key, run_id)
            )
            return None
        return row

    def _in_flight(
        self, db: sqlite3.Connection, key: tuple[str, str], now: int
    ) -> tuple[int, int, int | None]:
        count, held, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(hold), 0), MIN(slot_ends) FROM budget_runs "
            "WHERE prefix = ? AND caller = ? AND slot_ends > ?",
            (*key, now),
        ).fetchone()
        return int(count), int(held), (int(oldest) if oldest is not None else None)

    # -- the store ---------------------------------------------------------------------------------

    async def _store_check(
        self, limits: ResolvedLimits, run_id: str, nonce: str, deadline: float
    ) -> CheckReply:
        return await self._run(
            self._transaction, lambda db, now: self._check(db, now, limits, run_id, nonce, deadline)
        )

    def _check(
        self,
        db: sqlite3.Connection,
        now: int,
        limits: ResolvedLimits,
        run_id: str,
        nonce: str,
        deadline: float,
    ) -> CheckReply:
        if now > deadline * 1000:
            return CheckReply(LATE, 0, 0, ())
        key = (self.config.key_prefix, limits.caller_id)
        slot_ttl = round(self.config.slot_ttl * 1000)
        rec = self._record(db, key, run_id, now)
        state = rec[0] if rec is not None else None
        if state == "v" and rec[1] == nonce:
            return CheckReply(VOIDED, 0, 0, ())
        if state == "a":
            if rec[7] is not None and rec[7] > now:
                db.execute(
                    "UPDATE budget_runs SET slot_ends = ?, nonce = ?, ends = ? WHERE prefix = ? AND caller = ? "
                    "AND run_id = ?",
                    (now + slot_ttl, nonce, now + self._run_record_ms, *key, run_id),
                )
                return CheckReply(ALREADY, self._in_flight(db, key, now)[0], int(rec[2]), ())
            self._free(db, key, run_id)
        db.execute(
            "UPDATE budget_runs SET slot_ends = NULL, hold = 0 WHERE prefix = ? AND caller = ? AND slot_ends <= ?",
            (*key, now),
        )
        in_flight, held, oldest = self._in_flight(db, key, now)
        count_run = not (rec is not None and rec[3] == 1)
        hold = 0
        token_limits = [w.max_tokens for w in limits.windows if w.max_tokens is not None]
        if token_limits:
            hold = self._hold_arg(limits)
            if hold < 0:
                avg = self._average(db, key, now)
                hold = self.config.token_hold_initial if avg is None else int(-(-avg // 1))
            hold = min(hold, min(token_limits))
        refusals: list[tuple[int, ...]] = []
        for i, window in enumerate(limits.windows, start=1):
            row = self._window(db, key, window.millis, now)
            runs, tokens, ms = (int(row[0]), int(row[1]), int(row[2])) if row is not None else (0, 0, 0)
            wait = int(row[4]) - now if row is not None else -2
            if count_run and window.max_runs is not None and runs >= window.max_runs:
                refusals.append((1, i, runs, window.max_runs, wait, 0, 0))
            if window.max_tokens is not None:
                if tokens >= window.max_tokens:
                    refusals.append((2, i, tokens, window.max_tokens, wait, held, hold))
                elif tokens + held + hold > window.max_tokens:
                    refusals.append((5, i, tokens, window.max_tokens, -3 if held > 0 else wait, held, hold))
            if window.max_seconds is not None:
                max_ms = round(window.max_seconds * 1000)
                if ms >= max_ms:
                    refusals.append((3, i, ms, max_ms, wait, 0, 0))
        if limits.max_concurrent is not None and in_flight >= limits.max_concurrent:
            wait = oldest - now if oldest is not None else -2
            refusals.append((4, 0, in_flight, limits.max_concurrent, wait, 0, 0))
        if refusals:
            return CheckReply(REFUSED, in_flight, hold, refusals)
        wids = ""
        if count_run:
            wids = ",".join(str(self._add(db, key, w.millis, now, runs=1)) for w in limits.windows)
        ends = now + self._run_record_ms
        if rec is None:
            db.execute(
                "INSERT INTO budget_runs (prefix, caller, run_id, state, nonce, hold, counted, this_counted, wids, "
                "charged, slot_ends, ends) VALUES (?, ?, ?, 'a', ?, ?, 1, 1, ?, 0, ?, ?)",
                (*key, run_id, nonce, hold, wids, now + slot_ttl, ends),
            )
        elif count_run:
            db.execute(
                "UPDATE budget_runs SET state = 'a', nonce = ?, hold = ?, counted = 1, this_counted = 1, wids = ?, "
                "slot_ends = ?, ends = ? WHERE prefix = ? AND caller = ? AND run_id = ?",
                (nonce, hold, wids, now + slot_ttl, ends, *key, run_id),
            )
        else:
            db.execute(
                "UPDATE budget_runs SET state = 'a', nonce = ?, hold = ?, this_counted = 0, slot_ends = ?, ends = ? "
                "WHERE prefix = ? AND caller = ? AND run_id = ?",
                (nonce, hold, now + slot_ttl, ends, *key, run_id),
            )
        return CheckReply(ADMITTED, in_flight + 1, hold, ())

    def _average(self, db: sqlite3.Connection, key: tuple[str, str], now: int) -> float | None:
        row = db.execute(
            "SELECT avg FROM budget_callers WHERE prefix = ? AND caller = ? AND ends > ?", (*key, now)
        ).fetchone()
        return float(row[0]) if row is not None else None

    async def _store_commit(self, limits: ResolvedLimits, commit: Commit) -> int:
        return await self._run(self._transaction, lambda db, now: self._commit(db, now, limits, commit))

    def _commit(self, db: sqlite3.Connection, now: int, limits: ResolvedLimits, commit: Commit) -> int:
        key = (self.config.key_prefix, limits.caller_id)
        rec = self._record(db, key, commit.run_id, now)
        state = rec[0] if rec is not None else None
        charged = int(rec[6]) if rec is not None else 0
        if state == "v" or (state == "c" and commit.tokens <= charged):
            return 0  # a replayed commit; a higher total is a later part of the run (see lua.COMMIT)
        delta = max(0, commit.tokens - charged)
        if delta > 0 or commit.millis > 0:
            for window in limits.windows:
                self._add(db, key, window.millis, now, tokens=delta, ms=commit.millis)
        counted = int(rec[3]) if rec is not None else 0
        if state == "a" and commit.release and rec[4] == 1:
            self._uncount(db, key, limits, rec[5])
            counted = 0
        if delta > 0 and not commit.release:
            row = db.execute(
                "SELECT avg, n FROM budget_callers WHERE prefix = ? AND caller = ? AND ends > ?", (*key, now)
            ).fetchone()
            avg, n = (float(row[0]), int(row[1])) if row is not None else (0.0, 0)
            n = min(n + 1, AVERAGE_SPAN)
            avg += (delta - avg) / n
            db.execute(
                "INSERT INTO budget_callers (prefix, caller, avg, n, ends) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (prefix, caller) DO UPDATE SET avg = excluded.avg, n = excluded.n, ends = excluded.ends",
                (*key, avg, n, now + round(STATS_TTL * 1000)),
            )
        ends = now + round(self.config.run_ttl * 1000)
        db.execute(
            "INSERT INTO budget_runs (prefix, caller, run_id, state, counted, this_counted, charged, slot_ends, ends) "
            "VALUES (?, ?, ?, 'c', ?, 0, ?, NULL, ?) ON CONFLICT (prefix, caller, run_id) DO UPDATE SET "
            "state = 'c', hold = 0, counted = excluded.counted, this_counted = 0, charged = excluded.charged, "
            "slot_ends = NULL, ends = excluded.ends",
            (*key, commit.run_id, counted, max(charged, commit.tokens), ends),
        )
        return delta

    async def _store_void(self, limits: ResolvedLimits, run_id: str, nonce: str) -> int:
        return await self._run(self._transaction, lambda db, now: self._void(db, now, limits, run_id, nonce))

    def _void(self, db: sqlite3.Connection, now: int, limits: ResolvedLimits, run_id: str, nonce: str) -> int:
        key = (self.config.key_prefix, limits.caller_id)
        rec = self._record(db, key, run_id, now)
        ends = now + self._run_record_ms
        if rec is not None and rec[0] == "a" and rec[1] == nonce:
            counted = int(rec[3])
            if rec[4] == 1:
                self._uncount(db, key, limits, rec[5])
                counted = 0
            db.execute(
                "UPDATE budget_runs SET state = 'v', hold = 0, slot_ends = NULL, counted = ?, this_counted = 0, "
                "ends = ? WHERE prefix = ? AND caller = ? AND run_id = ?",
                (counted, ends, *key, run_id),
            )
            return 1
        if rec is None:
            db.execute(
                "INSERT INTO budget_runs (prefix, caller, run_id, state, nonce, ends) VALUES (?, ?, ?, 'v', ?, ?)",
                (*key, run_id, nonce, ends),
            )
            return 2
        return 0

    async def _store_read(self, limits: ResolvedLimits) -> CallerUsage:
        return await self._run(self._read, limits)

    def _read(self, limits: ResolvedLimits) -> CallerUsage:
        db = self._connect()
        key = (self.config.key_prefix, limits.caller_id)
        now = _now_ms()
        windows = []
        for window in limits.windows:
            row = db.execute(
                "SELECT runs, tokens, ms, ends FROM budget_windows WHERE prefix = ? AND caller = ? AND window_ms = ? "
                "AND ends > ?",
                (*key, window.millis, now),
            ).fetchone()
            runs, tokens, ms, ends = row if row is not None else (0, 0, 0, None)
            windows.append(
                WindowUsage(
                    window_seconds=window.seconds,
                    runs=int(runs),
                    tokens=int(tokens),
                    seconds=int(ms) / 1000,
                    max_runs=window.max_runs,
                    max_tokens=window.max_tokens,
                    max_seconds=window.max_seconds,
                    resets_in=(int(ends) - now) / 1000 if ends is not None else None,
                )
            )
        in_flight, held, _oldest = self._in_flight(db, key, now)
        runs_rows = db.execute(
            "SELECT run_id, hold, slot_ends FROM budget_runs WHERE prefix = ? AND caller = ? AND slot_ends > ? "
            "ORDER BY slot_ends LIMIT ?",
            (*key, now, LIST_RUNS),
        ).fetchall()
        average = self._average(db, key, now)
        next_hold = 0
        if limits.limits_tokens:
            if limits.token_hold is not None:
                next_hold = limits.token_hold
            else:
                next_hold = self.config.token_hold_initial if average is None else int(-(-average // 1))
        return CallerUsage(
            caller_id=limits.caller_id,
            source=limits.source,
            in_flight=in_flight,
            max_concurrent=limits.max_concurrent,
            windows=tuple(windows),
            held=held,
            average_tokens=average,
            next_hold=next_hold,
            runs=tuple(InFlightRun(str(r[0]), int(r[1]), (int(r[2]) - now) / 1000) for r in runs_rows),
        )

    # -- reading and resetting (the CLI) -----------------------------------------------------------

    async def callers(self) -> list[str]:
        """Every caller with a window that has not reset, or runs in flight, sorted."""
        try:
            return await self._run(self._callers)
        except self._errors as exc:
            raise self._unavailable("list the callers with budgets", None, exc) from exc

    def _callers(self) -> list[str]:
        db = self._connect()
        now = _now_ms()
        prefix = self.config.key_prefix
        rows = db.execute(
            "SELECT caller FROM budget_windows WHERE prefix = ? AND ends > ? UNION "
            "SELECT caller FROM budget_runs WHERE prefix = ? AND slot_ends > ?",
            (prefix, now, prefix, now),
        ).fetchall()
        return sorted(str(r[0]) for r in rows)

    async def reset(self, caller_id: str) -> int:
        """Forget everything about ``caller_id``: its windows start afresh, its slots and holds are
        freed. Returns how many rows were deleted."""
        try:
            deleted = await self._run(self._transaction, lambda db, now: self._reset(db, caller_id))
        except self._errors as exc:
            raise self._unavailable(f"reset the budget of caller {caller_id}", caller_id, exc) from exc
        self._spool.take(caller_id)
        return deleted

    def _reset(self, db: sqlite3.Connection, caller_id: str) -> int:
        key = (self.config.key_prefix, caller_id)
        deleted = 0
        for table in ("budget_windows", "budget_runs", "budget_callers"):
            deleted += db.execute(f"DELETE FROM {table} WHERE prefix = ? AND caller = ?", key).rowcount
        return deleted

    async def ping(self) -> None:
        """Open the file (creating it and its tables); raise `BudgetUnavailable` when it cannot be."""
        try:
            await self._run(self._connect)
        except self._errors as exc:
            raise self._unavailable("open the budget file", None, exc) from exc

    async def _close_store(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return

        def close() -> None:
            db, self._db = self._db, None
            if db is not None:
                db.close()

        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(pool, close)
        pool.shutdown(wait=False)
