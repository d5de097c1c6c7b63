"""`RedisBudget`: per-caller limits on runs, tokens, runtime and runs in flight, shared through Redis.

Every worker process that points at the same Redis and ``key_prefix`` shares the same budgets.
``check``, ``commit`` and the void of a check given up on are one Lua script each
(`executus_budget_redis.lua`): one round trip, atomic, keyed by the run id, so two workers can
never both admit the eleventh run of ten, and no check, commit or release is applied twice.

Windows are **fixed windows that start with a caller's first run in them**: the window's key is
created with a TTL of the window's length, and when it expires the caller starts afresh. The TTL is
the exact time to the reset, which is what ``retry_after`` and the refusal's "resets in 3h12m" say.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from executus_budget_redis import lua
from executus_budget_redis.base import (
    AVERAGE_SPAN,
    LIST_RUNS,
    STATS_TTL,
    CallerUsage,
    CheckReply,
    InFlightRun,
    StoreBudget,
    WindowUsage,
    error_text,
)
from executus_budget_redis.errors import BudgetUnavailable
from executus_budget_redis.settings import SECTION, BudgetRedisSettings, ResolvedLimits, WindowLimits
from executus_budget_redis.spool import Commit

__all__ = ["CallerUsage", "RedisBudget", "WindowUsage"]

_POOL_EXHAUSTED = "No connection available"
_QUICK_ANSWER = 0.25  # seconds: answers this quick teach the offset between Redis's clock and ours


@dataclasses.dataclass(slots=True)
class _Connection:
    """A client (with its connection pool) and the registered scripts, for one event loop."""

    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis
    check: Any
    commit: Any
    void: Any
    usage: Any


class RedisBudget(StoreBudget):
    """A `Budget` whose usage lives in Redis, so every worker process shares it.

    Build it from settings, or with the settings' fields as keywords::

        budget = RedisBudget(BudgetRedisSettings(max_runs=100, window="1h"))
        budget = RedisBudget(url="redis://cache:6379/2", max_tokens=1_000_000, max_concurrent=4)

    ``check`` admits a run (counting it, taking an in-flight slot, holding its tokens) or raises
    `BudgetExceeded` with the limit that was hit, ``retry_after`` and ``limit``; ``commit`` charges
    the run's tokens and runtime and frees its slot and hold. Each is applied once per run id.
    When Redis cannot be reached, ``check`` raises `BudgetUnavailable` (the core refuses the run:
    budgets fail closed) and ``commit`` raises it too, after keeping the usage in this process's
    spool, which is replayed (exactly once) as soon as Redis answers again.

    The client and its connection pool are made on first use, in the running event loop, and
    closed by `aclose` (`Executor.shutdown` calls it).
    """

    backend = "redis"
    _errors = (RedisError, OSError)

    def __init__(self, config: BudgetRedisSettings | None = None, /, **fields: Any) -> None:
        super().__init__(config, **fields)
        self._masked = self.config.masked_url()
        self._url_set = "url" in self.config.model_fields_set
        self._conn: _Connection | None = None
        # Redis's clock minus ours (ms), a lower bound read off the last reply: a check carries its
        # deadline in Redis time, so Redis refuses to apply it once this process has given up.
        self._offset_ms: float | None = None

    def __repr__(self) -> str:
        return f"RedisBudget(url={self._masked!r}, key_prefix={self.config.key_prefix!r})"

    def describe(self) -> str:
        """``Redis at redis://host:6379/0 (shared by every process using it)``."""
        return f"Redis at {self._masked} (shared by every process using it)"

    def _location(self) -> str:
        return self._masked

    # -- keys ------------------------------------------------------------------------------------

    def _base(self, caller_id: str) -> str:
        return f"{self.config.key_prefix}{{{caller_id}}}:"

    def _keys(self, caller_id: str, windows: tuple[WindowLimits, ...], run_id: str | None) -> list[str]:
        base = self._base(caller_id)
        head = [base + "slots", base + "holds", base + "stats"]
        if run_id is not None:
            head.append(f"{base}r:{run_id}")
        return [*head, *(f"{base}w:{w.millis}" for w in windows)]

    # -- connection ------------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is not None and conn.loop is loop:
            return conn
        # A pool belongs to the loop that made it; a budget used from a new loop gets a new one.
        # A blocking pool: a burst of runs waits (up to ``timeout``) for a free connection instead
        # of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            self.config.url,
            max_connections=self.config.max_connections,
            timeout=self.config.timeout,
            socket_connect_timeout=self.config.timeout,
            socket_timeout=self.config.timeout,
            # One immediate retry on a dropped connection (a pooled socket Redis closed when it
            # restarted): every script is keyed by the run id, so a retry is never applied twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        client = aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both
        self._closed = False
        self._conn = conn = _Connection(
            loop=loop,
            client=client,
            check=client.register_script(lua.CHECK),
            commit=client.register_script(lua.COMMIT),
            void=client.register_script(lua.VOID),
            usage=client.register_script(lua.USAGE),
        )
        return conn

    @property
    def _give_up_after(self) -> float:
        # Up to ``timeout`` waiting for a free connection of the pool, then up to ``timeout`` for
        # the answer (redis-py's own socket timeout); this bounds both.
        return self.config.timeout * 2

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        sent = time.time()
        async with asyncio.timeout(self._give_up_after):
            reply = await script(keys=keys, args=args)
        received = time.time()
        # Redis read its clock before we got the reply, so now - received is a lower bound of the
        # offset, off by at most the round trip: learn it from quick answers only (a slow one, after
        # a stall, would set later deadlines too early).
        if self._offset_ms is None or received - sent <= _QUICK_ANSWER:
            self._offset_ms = float(reply[-1]) - received * 1000
        return reply

    # -- the store -------------------------------------------------------------------------------

    async def _store_check(
        self, limits: ResolvedLimits, run_id: str, nonce: str, deadline: float
    ) -> CheckReply:
        conn = self._connection()
        offset = self._offset_ms
        args: list[Any] = [
            run_id,
            nonce,
            0 if offset is None else int(deadline * 1000 + offset),
            round(self.config.slot_ttl * 1000),
            self._run_record_ms,
            -1 if limits.max_concurrent is None else limits.max_concurrent,
            self._hold_arg(limits),
            self.config.token_hold_initial,
        ]
        for w in limits.windows:
            args += [
                w.millis,
                -1 if w.max_runs is None else w.max_runs,
                -1 if w.max_tokens is None else w.max_tokens,
                -1 if w.max_seconds is None else round(w.max_seconds * 1000),
            ]
        reply = await self._call(conn.check, self._keys(limits.caller_id, limits.windows, run_id), args)
        return CheckReply(int(reply[0]), int(reply[1]), int(reply[2]), reply[3])

    async def _store_commit(self, limits: ResolvedLimits, commit: Commit) -> int:
        conn = self._connection()
        args: list[Any] = [
            commit.run_id,
            commit.tokens,
            commit.millis,
            1 if commit.release else 0,
            round(self.config.run_ttl * 1000),
            AVERAGE_SPAN,
            round(STATS_TTL * 1000),
            *(w.millis for w in limits.windows),
        ]
        reply = await self._call(
            conn.commit, self._keys(limits.caller_id, limits.windows, commit.run_id), args
        )
        return int(reply[1])

    async def _store_void(self, limits: ResolvedLimits, run_id: str, nonce: str) -> int:
        conn = self._connection()
        args = [run_id, nonce, self._run_record_ms]
        reply = await self._call(conn.void, self._keys(limits.caller_id, limits.windows, run_id), args)
        return int(reply[0])

    async def _store_read(self, limits: ResolvedLimits) -> CallerUsage:
        conn = self._connection()
        async with asyncio.timeout(self._give_up_after):
            reply = await conn.usage(
                keys=self._keys(limits.caller_id, limits.windows, None), args=[LIST_RUNS]
            )
        in_flight, _wait, rows, held, avg, runs = reply
        windows = tuple(
            WindowUsage(
                window_seconds=w.seconds,
                runs=int(row[0]),
                tokens=int(row[1]),
                seconds=int(row[2]) / 1000,
                max_runs=w.max_runs,
                max_tokens=w.max_tokens,
                max_seconds=w.max_seconds,
                resets_in=int(row[3]) / 1000 if int(row[3]) >= 0 else None,
            )
            for w, row in zip(limits.windows, rows, strict=True)
        )
        average = float(avg) if avg not in (b"", "", None) else None
        return CallerUsage(
            caller_id=limits.caller_id,
            source=limits.source,
            in_flight=int(in_flight),
            max_concurrent=limits.max_concurrent,
            windows=windows,
            held=int(held),
            average_tokens=average,
            next_hold=self._next_hold(limits, average),
            runs=tuple(
                InFlightRun(
                    run_id=r[0].decode() if isinstance(r[0], bytes) else str(r[0]),
                    hold=int(r[2]),
                    expires_in=int(r[1]) / 1000,
                )
                for r in runs
            ),
        )

    def _next_hold(self, limits: ResolvedLimits, average: float | None) -> int:
        if not limits.limits_tokens:
            return 0
        if limits.token_hold is not None:
            return limits.token_hold
        return self.config.token_hold_initial if average is None else int(-(-average // 1))

    async def _close_store(self) -> None:
        conn, running = self._conn, None
        with contextlib.suppress(RuntimeError):
            running = asyncio.get_running_loop()
        self._conn = None
        if conn is not None and conn.loop is running:
            with contextlib.suppress(Exception):
                await conn.client.aclose()

    def _can_flush_on_close(self) -> bool:
        with contextlib.suppress(RuntimeError):
            return self._conn is not None and self._conn.loop is asyncio.get_running_loop()
        return False

    def _unsent(self, exc: BaseException) -> bool:
        return _pool_exhausted(exc)

    def _cause(self, exc: BaseException) -> str:
        if _pool_exhausted(exc):
            return "pool_exhausted"
        if isinstance(exc, ResponseError):
            return "error"
        return super()._cause(exc)

    def _problem(self, exc: BaseException) -> str:
        if _pool_exhausted(exc):
            return (
                f"is up, but all {self.config.max_connections} connections of this process's pool were "
                f"busy for {self.config.timeout:g}s (max_connections = {self.config.max_connections}): "
                f"raise [tool.executus.{SECTION}] max_connections (or EXECUTUS_BUDGET_REDIS__MAX_CONNECTIONS), "
                "or start fewer runs at once in this process"
            )
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"could not be reached (TimeoutError: no answer within {self.config.timeout:g}s)"
        problem = "answered with an error" if isinstance(exc, ResponseError) else "could not be reached"
        return f"{problem} ({type(exc).__name__}: {error_text(exc)})"

    def _unavailable(self, action: str, caller_id: str | None, exc: BaseException) -> BudgetUnavailable:
        if _pool_exhausted(exc):
            return BudgetUnavailable(
                f"cannot {action}: {self._where()} {self._problem(exc)}",
                url=self.url,
                caller_id=caller_id,
                cause="pool_exhausted",
            )
        return super()._unavailable(action, caller_id, exc)

    def _unavailable_for_check(self, caller_id: str, exc: BaseException) -> BudgetUnavailable:
        if _pool_exhausted(exc):
            return BudgetUnavailable(
                f"cannot check the budget of caller {caller_id}: {self._where()} {self._problem(exc)}. "
                "Budgets fail closed, so the run is refused; nothing was counted.",
                url=self.url,
                caller_id=caller_id,
                cause="pool_exhausted",
            )
        return super()._unavailable_for_check(caller_id, exc)

    # -- reading and resetting (the CLI) -----------------------------------------------------

    async def callers(self) -> list[str]:
        """Every caller with a key under ``key_prefix`` (usage in a window, or runs in flight), sorted."""
        conn = self._connection()
        prefix = self.config.key_prefix
        found: set[str] = set()
        try:
            async for raw in conn.client.scan_iter(match=_glob_escape(prefix) + "{*", count=500):
                key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                end = key.rfind("}:")
                if key.startswith(prefix + "{") and end > len(prefix):
                    found.add(key[len(prefix) + 1 : end])
        except (RedisError, OSError) as exc:
            raise self._unavailable("list the callers with budgets", None, exc) from exc
        return sorted(found)

    async def reset(self, caller_id: str) -> int:
        """Forget everything about ``caller_id``: its windows start afresh, its slots and holds are
        freed, and the runs it has in flight are forgotten (their commits charge the new windows).

        Returns how many keys were deleted.
        """
        conn = self._connection()
        pattern = _glob_escape(self._base(caller_id)) + "*"
        deleted = 0
        try:
            batch: list[bytes] = []
            async for raw in conn.client.scan_iter(match=pattern, count=500):
                batch.append(raw)
                if len(batch) >= 500:
                    deleted += int(await conn.client.unlink(*batch))
                    batch = []
            if batch:
                deleted += int(await conn.client.unlink(*batch))
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"reset the budget of caller {caller_id}", caller_id, exc) from exc
        self._spool.take(caller_id)
        return deleted

    async def ping(self) -> None:
        """Ask Redis for a PONG; raise `BudgetUnavailable` (saying what to set) when it cannot be reached."""
        try:
            async with asyncio.timeout(self._give_up_after):
                await self._connection().client.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable("reach Redis", None, exc) from exc

    # -- messages --------------------------------------------------------------------------------

    def _where(self) -> str:
        if self._url_set or self.config.backend == "redis":
            return f"Redis at {self._masked}"
        return f"Redis at {self._masked} (the default: no url is set in [tool.executus.{SECTION}])"

    def _advice(self) -> str:
        return (
            f"Start Redis there, or point the battery at yours: [tool.executus.{SECTION}] "
            'url = "redis://HOST:6379/0" (or EXECUTUS_BUDGET_REDIS__URL); to run without these budgets, '
            f'disable the battery: disable = ["{SECTION}"] (or EXECUTUS_DISABLE={SECTION})'
        )


def _pool_exhausted(exc: BaseException) -> bool:
    """redis-py's BlockingConnectionPool found no free connection within ``timeout``: Redis is up."""
    return isinstance(exc, RedisConnectionError) and str(exc).startswith(_POOL_EXHAUSTED)


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``SCAN MATCH`` pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
