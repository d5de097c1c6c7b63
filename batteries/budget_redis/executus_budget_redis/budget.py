"""`RedisBudget`: per-caller limits on runs, tokens, runtime and runs in flight, shared through Redis.

Every worker process that points at the same Redis and ``key_prefix`` shares the same budgets.
``check`` and ``commit`` are one Lua script each (`executus_budget_redis.lua`): one round trip,
atomic, so two workers can never both admit the eleventh run of ten.

Windows are **fixed windows that start with a caller's first run in them**: the window's key is
created with a TTL of the window's length, and when it expires the caller starts afresh. The TTL is
the exact time to the reset, which is what ``retry_after`` and the refusal's "resets in 3h12m" say.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from executus_budget_redis import lua
from executus_budget_redis.durations import format_duration, window_phrase
from executus_budget_redis.errors import BudgetUnavailable
from executus_budget_redis.settings import (
    SECTION,
    BudgetRedisSettings,
    ResolvedLimits,
    WindowLimits,
    resolve_limits,
)
from executus_budget_redis.spool import Pending, Spool
from executus_core import BudgetExceeded, Usage

__all__ = ["CallerUsage", "RedisBudget", "WindowUsage"]

log = logging.getLogger("executus_budget_redis")

# The slots a task's checks took and its commits have not released yet:
# (budget id, caller, token, task). The kernel calls ``check`` and ``commit`` of one run from the
# run's own task, so the commit finds the slot its check took; nested runs in one task release
# theirs last-in, first-out. The task is part of the entry because tasks started from a run copy
# its context: a commit in another task (a resumed run) must not release the run's slot.
_HELD: contextvars.ContextVar[tuple[tuple[str, str, str, weakref.ref[asyncio.Task[Any]] | None], ...]] = (
    contextvars.ContextVar("executus_budget_redis_held", default=())
)
_MAX_HELD = 64  # a task that checks without ever committing must not grow this forever
_LIMITS_CACHE = 4096
_FLUSH_FIRST_DELAY = 0.5
_FLUSH_MAX_DELAY = 30.0

# What one unit of each limit is called in a refusal, by the scripts' kind numbers.
_KINDS = {1: "max_runs", 2: "max_tokens", 3: "max_seconds", 4: "max_concurrent"}


@dataclasses.dataclass(frozen=True, slots=True)
class WindowUsage:
    """One window of one caller: what it used, its limits (``None``: none), and when it resets.

    ``resets_in`` is ``None`` when the window has not started (nothing used in it yet).
    """

    window_seconds: float
    runs: int
    tokens: int
    seconds: float
    max_runs: int | None
    max_tokens: int | None
    max_seconds: float | None
    resets_in: float | None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``window`` is the readable form, ``1d``)."""
        return {"window": format_duration(self.window_seconds), **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True, slots=True)
class CallerUsage:
    """A caller's usage against its limits, as ``executus budget show`` prints it.

    Attributes:
        caller_id: the caller.
        source: where its limits come from: ``defaults`` or ``callers."pattern"``.
        in_flight: runs admitted and not committed yet (slots that have not expired).
        max_concurrent: the limit on ``in_flight`` (``None``: none).
        windows: one `WindowUsage` per window, shortest first.
    """

    caller_id: str
    source: str
    in_flight: int
    max_concurrent: int | None
    windows: tuple[WindowUsage, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "caller": self.caller_id,
            "limits_from": self.source,
            "in_flight": self.in_flight,
            "max_concurrent": self.max_concurrent,
            "windows": [w.as_dict() for w in self.windows],
        }


@dataclasses.dataclass(slots=True)
class _Connection:
    """A client (with its connection pool) and the registered scripts, for one event loop."""

    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis
    check: Any
    commit: Any
    usage: Any


class RedisBudget:
    """A `Budget` whose usage lives in Redis, so every worker process shares it.

    Build it from settings, or with the settings' fields as keywords::

        budget = RedisBudget(BudgetRedisSettings(max_runs=100, window="1h"))
        budget = RedisBudget(url="redis://cache:6379/2", max_tokens=1_000_000, max_concurrent=4)

    ``check`` admits a run (counting it, and taking an in-flight slot) or raises `BudgetExceeded`
    with the limit that was hit and ``retry_after``; ``commit`` adds the run's tokens and runtime
    and releases its slot. When Redis cannot be reached, ``check`` raises `BudgetUnavailable` (the
    kernel refuses the run: budgets fail closed) and ``commit`` raises it too, after keeping the
    usage in this process's spool, which is replayed as soon as Redis answers again.

    The client and its connection pool are made on first use, in the running event loop, and
    closed by `aclose` (`Executor.shutdown` calls it).
    """

    def __init__(self, config: BudgetRedisSettings | None = None, /, **fields: Any) -> None:
        if config is not None and fields:
            raise TypeError("pass either a BudgetRedisSettings or its fields as keywords, not both")
        self.config = config if config is not None else BudgetRedisSettings.model_validate(fields)
        self.url = self.config.masked_url()
        self._url_set = "url" in self.config.model_fields_set
        self._id = uuid.uuid4().hex
        self._limits: dict[str, ResolvedLimits] = {}
        self._spool = Spool(self.config.spool_limit)
        self._conn: _Connection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisBudget(url={self.url!r}, key_prefix={self.config.key_prefix!r})"

    # -- limits and keys ---------------------------------------------------------------------

    def limits_for(self, caller_id: str) -> ResolvedLimits:
        """The limits that apply to ``caller_id`` (cached: settings do not change in a budget's life)."""
        found = self._limits.get(caller_id)
        if found is None:
            if len(self._limits) >= _LIMITS_CACHE:
                self._limits.clear()
            found = self._limits[caller_id] = resolve_limits(self.config, caller_id)
        return found

    def _base(self, caller_id: str) -> str:
        return f"{self.config.key_prefix}{{{caller_id}}}:"

    def _keys(self, caller_id: str, windows: Sequence[WindowLimits]) -> list[str]:
        base = self._base(caller_id)
        return [base + "slots", *(f"{base}w:{w.millis}" for w in windows)]

    # -- connection ----------------------------------------------------------------------------

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
            # restarted); none on timeouts, where the script may have run already.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        client = aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both
        self._closed = False
        self._conn = conn = _Connection(
            loop=loop,
            client=client,
            check=client.register_script(lua.CHECK),
            commit=client.register_script(lua.COMMIT),
            usage=client.register_script(lua.USAGE),
        )
        return conn

    # -- the Budget port ---------------------------------------------------------------------

    async def check(self, caller_id: str) -> None:
        """Admit a run of ``caller_id`` (count it, take a slot) or raise `BudgetExceeded`.

        Raises `BudgetUnavailable` when Redis cannot be asked; the kernel then refuses the run.
        """
        limits = self.limits_for(caller_id)
        conn = self._connection()
        if caller_id in self._spool:
            # Meter what this caller used while Redis was away before judging its next run.
            await self._flush_one(conn, caller_id)
        token = uuid.uuid4().hex
        args: list[Any] = [
            token,
            round(self.config.slot_ttl * 1000),
            -1 if limits.max_concurrent is None else limits.max_concurrent,
        ]
        for w in limits.windows:
            args += [
                w.millis,
                -1 if w.max_runs is None else w.max_runs,
                -1 if w.max_tokens is None else w.max_tokens,
                -1 if w.max_seconds is None else round(w.max_seconds * 1000),
            ]
        try:
            reply = await conn.check(keys=self._keys(caller_id, limits.windows), args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable_for_check(caller_id, exc) from exc
        if len(self._spool):
            self._start_flusher()
        if int(reply[0]) == 1:
            task = asyncio.current_task()
            owner = weakref.ref(task) if task is not None else None  # weak: no task <-> context cycle
            held = (*_HELD.get()[-(_MAX_HELD - 1) :], (self._id, caller_id, token, owner))
            _HELD.set(held)
            return
        raise self._refusal(limits, reply[2])

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage) -> None:
        """Add the run's tokens (input + output) and runtime to every window of ``caller_id``, and
        release the slot its ``check`` took.

        When Redis cannot be reached the usage is kept in this process (and replayed when Redis
        answers again), and `BudgetUnavailable` says so; the kernel turns it into a warning.
        """
        limits = self.limits_for(caller_id)
        token = self._release(caller_id)
        tokens = int(getattr(usage, "input_tokens", 0) or 0) + int(getattr(usage, "output_tokens", 0) or 0)
        pending = Pending(
            tokens=max(0, tokens),
            millis=max(0, round(float(runtime_seconds or 0.0) * 1000)),
            commits=1,
            slots=[token] if token else [],
        )
        conn = self._connection()
        try:
            await self._send(conn, caller_id, limits, pending)
        except (RedisError, OSError) as exc:
            raise self._spool_failed(caller_id, pending, exc) from exc
        except asyncio.CancelledError:
            # Cut off mid-call (the kernel's port_timeout): keep the usage rather than lose it.
            self._keep(caller_id, pending)
            raise
        if len(self._spool):
            self._start_flusher()

    async def aclose(self) -> None:
        """Replay what the spool holds (briefly), then close the connection pool.

        Usage that still cannot be metered is logged as lost, with the totals.
        """
        self._closed = True
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flusher
        conn, running = self._conn, None
        with contextlib.suppress(RuntimeError):
            running = asyncio.get_running_loop()
        if len(self._spool) and conn is not None and conn.loop is running:
            try:
                async with asyncio.timeout(self.config.timeout * 2):
                    await self._flush_all(conn)
            except (RedisError, OSError, TimeoutError):
                pass
        if len(self._spool):
            callers, tokens, commits = self._spool.totals()
            log.error(
                "executus-budget-redis closed with %d unmetered commits of %d callers (%d tokens) that "
                "Redis at %s never took: that usage is lost",
                commits,
                callers,
                tokens,
                self.url,
            )
        self._conn = None
        if conn is not None and conn.loop is running:
            with contextlib.suppress(Exception):
                await conn.client.aclose()

    # -- reading and resetting (the CLI) -----------------------------------------------------

    async def usage(self, caller_id: str) -> CallerUsage:
        """``caller_id``'s usage in each of its windows, against its limits."""
        limits = self.limits_for(caller_id)
        conn = self._connection()
        try:
            reply = await conn.usage(keys=self._keys(caller_id, limits.windows), args=[])
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"read the budget of caller {caller_id}", caller_id, exc) from exc
        in_flight, _wait, rows = reply
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
        return CallerUsage(caller_id, limits.source, int(in_flight), limits.max_concurrent, windows)

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
        """Forget everything about ``caller_id``: its windows start afresh and its slots are freed.

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
            await self._connection().client.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable("reach Redis", None, exc) from exc

    @property
    def unmetered(self) -> tuple[int, int, int]:
        """``(callers, tokens, commits)`` in this process's spool, waiting for Redis to come back."""
        return self._spool.totals()

    # -- internals -----------------------------------------------------------------------------

    def _release(self, caller_id: str) -> str | None:
        held = _HELD.get()
        task = asyncio.current_task()
        for index in range(len(held) - 1, -1, -1):
            budget_id, caller, token, owner = held[index]
            if budget_id == self._id and caller == caller_id and (owner() if owner else None) is task:
                _HELD.set(held[:index] + held[index + 1 :])
                return token
        return None  # a run resumed by recover() was never checked here: it holds no slot

    async def _send(
        self, conn: _Connection, caller_id: str, limits: ResolvedLimits, pending: Pending
    ) -> None:
        args: list[Any] = [
            pending.tokens,
            pending.millis,
            *(w.millis for w in limits.windows),
            *pending.slots,
        ]
        await conn.commit(keys=self._keys(caller_id, limits.windows), args=args)

    def _keep(self, caller_id: str, pending: Pending) -> bool:
        kept = self._spool.put(caller_id, pending)
        if kept:
            with contextlib.suppress(RuntimeError):
                self._start_flusher()
        else:
            log.error(
                "executus-budget-redis lost the usage of caller %s (%d tokens, %.3fs): Redis at %s is "
                "away and the spool already holds %d callers (spool_limit)",
                caller_id,
                pending.tokens,
                pending.millis / 1000,
                self.url,
                self.config.spool_limit,
            )
        return kept

    def _start_flusher(self) -> None:
        # Not while closing: aclose replays the spool itself, and a task left behind would outlive
        # the loop.
        if not self._closed and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="executus-budget-redis spool"
            )

    async def _flush_loop(self) -> None:
        delay = _FLUSH_FIRST_DELAY
        while len(self._spool):
            await asyncio.sleep(delay)
            conn = self._connection()
            try:
                await self._flush_all(conn)
            except (RedisError, OSError) as exc:
                log.debug("spool replay failed, retrying in %gs: %s", delay, exc)
                delay = min(delay * 2, _FLUSH_MAX_DELAY)

    async def _flush_all(self, conn: _Connection) -> None:
        metered = 0
        for caller_id in self._spool.callers():
            pending = self._spool.take(caller_id)
            if pending is None:
                continue
            try:
                await self._send(conn, caller_id, self.limits_for(caller_id), pending)
            except BaseException:
                self._spool.put(caller_id, pending)
                raise
            metered += pending.commits
        if metered:
            log.info("executus-budget-redis metered %d commits kept while Redis was away", metered)

    async def _flush_one(self, conn: _Connection, caller_id: str) -> None:
        pending = self._spool.take(caller_id)
        if pending is None:
            return
        try:
            await self._send(conn, caller_id, self.limits_for(caller_id), pending)
        except (RedisError, OSError):
            # Still away: the check's own call will say so, and the usage waits for the next try.
            self._spool.put(caller_id, pending)
            self._start_flusher()
        except BaseException:
            self._spool.put(caller_id, pending)
            raise

    def _where(self) -> str:
        if self._url_set:
            return f"Redis at {self.url}"
        return f"Redis at {self.url} (the default: no url is set in [tool.executus.{SECTION}])"

    def _advice(self) -> str:
        return (
            f"Start Redis there, or point the battery at yours: [tool.executus.{SECTION}] "
            'url = "redis://HOST:6379/0" (or EXECUTUS_BUDGET_REDIS__URL); to run without these budgets, '
            f'disable the battery: disable = ["{SECTION}"] (or EXECUTUS_DISABLE={SECTION})'
        )

    def _unavailable(self, action: str, caller_id: str | None, exc: BaseException) -> BudgetUnavailable:
        answered = isinstance(exc, ResponseError)
        problem = "answered with an error" if answered else "could not be reached"
        return BudgetUnavailable(
            f"cannot {action}: {self._where()} {problem} ({type(exc).__name__}: {_text(exc)}). {self._advice()}",
            url=self.url,
            caller_id=caller_id,
        )

    def _unavailable_for_check(self, caller_id: str, exc: BaseException) -> BudgetUnavailable:
        answered = isinstance(exc, ResponseError)
        problem = "answered with an error" if answered else "could not be reached"
        return BudgetUnavailable(
            f"cannot check the budget of caller {caller_id}: {self._where()} {problem} "
            f"({type(exc).__name__}: {_text(exc)}). Budgets fail closed, so the run is refused. {self._advice()}",
            url=self.url,
            caller_id=caller_id,
        )

    def _spool_failed(self, caller_id: str, pending: Pending, exc: BaseException) -> BudgetUnavailable:
        used = f"{pending.tokens} tokens, {pending.millis / 1000:g}s"
        if self._keep(caller_id, pending):
            callers, _tokens, commits = self._spool.totals()
            outcome = (
                f"its usage ({used}) is kept in this process and will be metered when Redis answers "
                f"again ({_plural(commits, 'commit')} of {_plural(callers, 'caller')} waiting)"
            )
        else:
            outcome = (
                f"its usage ({used}) is LOST: the spool already holds {self.config.spool_limit} callers "
                f"(raise [tool.executus.{SECTION}] spool_limit, or bring Redis back)"
            )
        problem = "answered with an error" if isinstance(exc, ResponseError) else "could not be reached"
        return BudgetUnavailable(
            f"cannot meter the run of caller {caller_id}: {self._where()} {problem} "
            f"({type(exc).__name__}: {_text(exc)}); {outcome}",
            url=self.url,
            caller_id=caller_id,
        )

    def _refusal(self, limits: ResolvedLimits, refusals: Sequence[Sequence[Any]]) -> BudgetExceeded:
        caller = limits.caller_id
        reasons: list[str] = []
        waits: list[float] = []
        forever = False
        for raw in refusals:
            kind, index, used, limit, wait = (int(x) for x in raw)
            setting = limits.setting(_KINDS[kind])
            if kind == 4:
                if limit == 0:
                    reasons.append(f"caller {caller} may have no runs in flight ({setting} = 0)")
                    forever = True
                    continue
                latest = f" (at the latest in {format_duration(wait / 1000)}, when its slot expires)"
                reasons.append(
                    f"caller {caller} has {used} of {limit} runs in flight; a slot frees when one of them "
                    f"ends{latest if wait > 0 else ''}"
                )
                continue
            window = limits.windows[index - 1]
            phrase = window_phrase(window.seconds)
            if limit == 0:
                unit = {1: "runs", 2: "tokens", 3: "runtime"}[kind]
                reasons.append(f"caller {caller} is allowed no {unit} ({setting} = 0)")
                forever = True
                continue
            if kind == 1:
                text = f"caller {caller} started {used} of {limit} runs {phrase}"
            elif kind == 2:
                text = f"caller {caller} used {used} of {limit} tokens {phrase}"
            else:
                text = (
                    f"caller {caller} used {_seconds(used / 1000)} of {_seconds(limit / 1000)} seconds of "
                    f"runtime {phrase}"
                )
            if wait >= 0:
                text += f"; resets in {format_duration(wait / 1000)}"
                waits.append(wait / 1000)
            reasons.append(text)
        retry_after = None if forever or not waits else max(waits)
        return BudgetExceeded("; ".join(reasons), retry_after=retry_after)


def _text(exc: BaseException) -> str:
    # redis-py's messages end with a full stop; ours go on after them.
    return str(exc).rstrip(". ") or type(exc).__name__


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``SCAN MATCH`` pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
