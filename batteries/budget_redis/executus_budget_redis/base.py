"""What both backends share: the Budget port's methods, run ids and exactly-once bookkeeping, holds,
refusals a person can read, and the spool of what could not reach the store.

A backend (`RedisBudget`, `SQLiteBudget`) supplies four operations on its store, each atomic and
keyed by the run id, with the same meaning in Lua and in SQL:

- ``check``: admit a run (count it, take its slot, hold its tokens) or refuse it; a check of a run
  already admitted is a no-op admit; a check that reaches the store after its deadline, or after
  its own void, applies nothing;
- ``commit``: charge the run's tokens (what it used beyond what was charged for it already) and
  runtime, free its slot and hold; a run already settled is charged nothing (a retried commit);
- ``void``: undo one check the client gave up on, or leave a tombstone so it applies nothing when
  the store runs it later;
- ``read``: a caller's usage, holds and runs in flight.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from executus_budget_redis.durations import format_duration, window_phrase
from executus_budget_redis.errors import BudgetUnavailable
from executus_budget_redis.settings import SECTION, BudgetRedisSettings, ResolvedLimits, resolve_limits
from executus_budget_redis.spool import Commit, Pending, Spool
from executus_core import BudgetExceeded, Usage

__all__ = ["AVERAGE_SPAN", "CallerUsage", "CheckReply", "InFlightRun", "StoreBudget", "WindowUsage"]

log = logging.getLogger("executus_budget_redis")

AVERAGE_SPAN = 20
"""A caller's average tokens per run weighs about its last this-many runs (``token_hold = "auto"``)."""

STATS_TTL = 7 * 86400.0
"""A caller with no run for this long starts again from ``token_hold_initial``."""

LIST_RUNS = 100  # runs in flight listed per caller by `usage`
_LIMITS_CACHE = 4096
_MAX_HELD = 64  # a task that checks without ever committing must not grow its pairing list forever
_FLUSH_FIRST_DELAY = 0.5
_FLUSH_MAX_DELAY = 30.0

# What one unit of each limit is called, by the stores' kind numbers.
_KINDS = {1: "max_runs", 2: "max_tokens", 3: "max_seconds", 4: "max_concurrent", 5: "max_tokens"}

# Checks without a run id (a core older than run ids) and their commits are paired here:
# (budget id, caller, run id, task). The core calls both from the run's own task; nested runs in
# one task pair last-in, first-out; a commit from another task (a resumed run) pairs with nothing.
_HELD: contextvars.ContextVar[tuple[tuple[str, str, str, weakref.ref[asyncio.Task[Any]] | None], ...]] = (
    contextvars.ContextVar("executus_budget_redis_held", default=())
)


@dataclasses.dataclass(frozen=True, slots=True)
class WindowUsage:
    """One window of one caller: what it used, its limits (``None``: none), and when it resets.

    Attributes:
        window_seconds: the window's length.
        runs: runs admitted in it (a run refused, or given back by a release, is not counted).
        tokens: input + output tokens charged in it.
        seconds: runtime charged in it.
        max_runs, max_tokens, max_seconds: its limits (``None``: no limit).
        resets_in: seconds until it resets; ``None`` when it has not started (nothing used yet).
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
class InFlightRun:
    """A run admitted and not committed yet.

    Attributes:
        run_id: the run.
        hold: tokens held for it until it commits.
        expires_in: seconds until its slot expires if it never commits (``slot_ttl`` after its check).
    """

    run_id: str
    hold: int
    expires_in: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class CallerUsage:
    """A caller's usage against its limits, as ``executus budget show`` prints it.

    Attributes:
        caller_id: the caller.
        source: where its limits come from: ``defaults`` or ``callers."pattern"``.
        in_flight: runs admitted and not committed yet (slots that have not expired).
        max_concurrent: the limit on ``in_flight`` (``None``: none).
        windows: one `WindowUsage` per window, shortest first.
        held: tokens held by the runs in flight (admission counts them as used).
        average_tokens: the caller's recent tokens per run (``None``: no history yet).
        next_hold: the tokens its next run would hold (before the cap at what is left).
        runs: the runs in flight (at most 100), soonest to expire first.
    """

    caller_id: str
    source: str
    in_flight: int
    max_concurrent: int | None
    windows: tuple[WindowUsage, ...]
    held: int = 0
    average_tokens: float | None = None
    next_hold: int = 0
    runs: tuple[InFlightRun, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "caller": self.caller_id,
            "limits_from": self.source,
            "in_flight": self.in_flight,
            "max_concurrent": self.max_concurrent,
            "held": self.held,
            "average_tokens": self.average_tokens,
            "next_hold": self.next_hold,
            "runs": [r.as_dict() for r in self.runs],
            "windows": [w.as_dict() for w in self.windows],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class CheckReply:
    """A store's answer to a check (see `executus_budget_redis.lua.CHECK` for the codes)."""

    code: int
    in_flight: int
    hold: int
    refusals: Sequence[Sequence[int]]


ADMITTED, ALREADY, REFUSED, LATE, VOIDED = 1, 2, 0, -1, -2


class StoreBudget(abc.ABC):
    """The `Budget` port over a store; `RedisBudget` and `SQLiteBudget` are the two stores.

    ``check(caller_id, *, run_id)`` admits a run or raises `BudgetExceeded` (with ``retry_after``
    and ``limit``); ``commit(caller_id, runtime_seconds, usage, *, run_id)`` charges it. The run id
    is the idempotency key: each check, commit and release is applied at most once per run. Without
    a run id (an older core) a check and the commit from the same task are paired in this process.
    """

    backend: str = ""
    """``"redis"`` or ``"sqlite"``: where usage lives."""

    _errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, config: BudgetRedisSettings | None = None, /, **fields: Any) -> None:
        if config is not None and fields:
            raise TypeError("pass either a BudgetRedisSettings or its fields as keywords, not both")
        self.config = config if config is not None else BudgetRedisSettings.model_validate(fields)
        self._id = uuid.uuid4().hex
        self._limits: dict[str, ResolvedLimits] = {}
        self._spool = Spool(self.config.spool_limit)
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    # -- what a backend provides ---------------------------------------------------------------

    @abc.abstractmethod
    def describe(self) -> str:
        """One line saying where usage lives, for the run header and ``executus budget show``."""

    @abc.abstractmethod
    async def _store_check(
        self, limits: ResolvedLimits, run_id: str, nonce: str, deadline: float
    ) -> CheckReply: ...

    @abc.abstractmethod
    async def _store_commit(self, limits: ResolvedLimits, commit: Commit) -> int: ...

    @abc.abstractmethod
    async def _store_void(self, limits: ResolvedLimits, run_id: str, nonce: str) -> int: ...

    @abc.abstractmethod
    async def _store_read(self, limits: ResolvedLimits) -> CallerUsage: ...

    @abc.abstractmethod
    async def _close_store(self) -> None: ...

    @abc.abstractmethod
    async def callers(self) -> list[str]:
        """Every caller with usage in a window that has not reset, or runs in flight, sorted."""

    @abc.abstractmethod
    async def reset(self, caller_id: str) -> int:
        """Forget everything about ``caller_id`` (windows, slots, holds, run records); returns how
        many keys or rows were deleted."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Reach the store; raise `BudgetUnavailable` (saying what to set) when it cannot be reached."""

    @abc.abstractmethod
    def _where(self) -> str: ...

    @abc.abstractmethod
    def _advice(self) -> str: ...

    @property
    def _give_up_after(self) -> float:
        """Seconds after which this process gives up on a check (its deadline in the store)."""
        return self.config.timeout

    def _unsent(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the check never reached the store (nothing to void)."""
        return False

    def _problem(self, exc: BaseException) -> str:
        return f"could not be reached ({type(exc).__name__}: {error_text(exc)})"

    # -- limits ----------------------------------------------------------------------------------

    def limits_for(self, caller_id: str) -> ResolvedLimits:
        """The limits that apply to ``caller_id`` (cached: settings do not change in a budget's life)."""
        found = self._limits.get(caller_id)
        if found is None:
            if len(self._limits) >= _LIMITS_CACHE:
                self._limits.clear()
            found = self._limits[caller_id] = resolve_limits(self.config, caller_id)
        return found

    def _hold_arg(self, limits: ResolvedLimits) -> int:
        """The hold a store gives a run of this caller: a number, or -1 for the caller's average."""
        return -1 if limits.token_hold is None else limits.token_hold

    @property
    def _run_record_ms(self) -> int:
        return round((self.config.slot_ttl + self.config.run_ttl) * 1000)

    # -- the Budget port -------------------------------------------------------------------------

    async def check(self, caller_id: str, *, run_id: str | None = None) -> None:
        """Admit a run of ``caller_id`` (count it, take a slot, hold tokens) or raise `BudgetExceeded`.

        ``run_id`` makes it idempotent: a second check of a run already admitted (a retry, or a
        recovered run) admits it again without counting it twice. Raises `BudgetUnavailable` when
        the store cannot be asked; the core then refuses the run (budgets fail closed). A check
        this process gives up on (timeout, cancellation, a dropped connection) is voided, so the
        store never keeps a run it refused.
        """
        limits = self.limits_for(caller_id)
        paired = run_id is None
        rid = run_id if run_id is not None else uuid.uuid4().hex
        if caller_id in self._spool:
            # Meter what this caller used while the store was away before judging its next run.
            await self._flush_one(caller_id)
        nonce = uuid.uuid4().hex[:16]
        deadline = time.time() + self._give_up_after
        try:
            reply = await self._store_check(limits, rid, nonce, deadline)
        except asyncio.CancelledError:
            self._void_later(caller_id, rid, nonce)
            raise
        except self._errors as exc:
            if not self._unsent(exc):
                self._void_later(caller_id, rid, nonce)
            raise self._unavailable_for_check(caller_id, exc) from exc
        if len(self._spool):
            self._start_flusher()
        if reply.code in (ADMITTED, ALREADY):
            if paired:
                task = asyncio.current_task()
                owner = weakref.ref(task) if task is not None else None  # weak: no task <-> context cycle
                _HELD.set((*_HELD.get()[-(_MAX_HELD - 1) :], (self._id, caller_id, rid, owner)))
            return
        if reply.code in (LATE, VOIDED):
            why = (
                f"answered after {self.config.timeout:g}s (timeout)"
                if reply.code == LATE
                else "ran it after this process had given up on it"
            )
            raise BudgetUnavailable(
                f"cannot check the budget of caller {caller_id}: {self._where()} {why}, so nothing was "
                f"counted. Budgets fail closed, so the run is refused; if the store is busy rather than "
                f"stalled, raise [tool.executus.{SECTION}] timeout.",
                url=self.url,
                caller_id=caller_id,
                cause="timeout",
            )
        raise self._refusal(limits, reply.refusals)

    async def commit(
        self, caller_id: str, runtime_seconds: float, usage: Usage, *, run_id: str | None = None
    ) -> None:
        """Charge a finished run: its tokens (input + output) and runtime go to every window of
        ``caller_id``; its slot and hold are freed.

        Exactly once per ``run_id``: a commit of a run already settled charges nothing, so a retry
        or a replay is harmless. ``usage`` is the run's total so far (a recovered run is charged
        only what it used beyond what was charged for it). A commit of nothing (no tokens, no
        runtime) is a release: the run never started, so it is taken out of ``runs`` too.

        When the store cannot be reached the commit is kept in this process (and replayed when
        the store answers again), and `BudgetUnavailable` says so; the core makes it a warning.
        """
        limits = self.limits_for(caller_id)
        if run_id is None:
            run_id = self._paired(caller_id) or uuid.uuid4().hex
        tokens = int(getattr(usage, "input_tokens", 0) or 0) + int(getattr(usage, "output_tokens", 0) or 0)
        millis = max(0, round(float(runtime_seconds or 0.0) * 1000))
        entry = Commit(
            run_id=run_id, tokens=max(0, tokens), millis=millis, release=tokens <= 0 and millis == 0
        )
        try:
            await self._store_commit(limits, entry)
        except self._errors as exc:
            raise self._spool_failed(caller_id, entry, exc) from exc
        except asyncio.CancelledError:
            # Cut off mid-call (the core's port_timeout): keep it; a replay of a commit the store
            # already took charges nothing.
            self._keep(caller_id, Pending(commits={run_id: entry}))
            raise
        if len(self._spool):
            self._start_flusher()

    async def release(self, caller_id: str, *, run_id: str) -> None:
        """Give back a run this budget admitted that never started (another budget refused it):
        its slot, its hold and its count in ``runs``. The same as committing nothing."""
        await self.commit(caller_id, 0.0, Usage(), run_id=run_id)

    async def usage(self, caller_id: str) -> CallerUsage:
        """``caller_id``'s usage in each of its windows, its holds and runs in flight."""
        limits = self.limits_for(caller_id)
        try:
            return await self._store_read(limits)
        except self._errors as exc:
            raise self._unavailable(f"read the budget of caller {caller_id}", caller_id, exc) from exc

    async def aclose(self) -> None:
        """Replay what the spool holds (briefly), then close the store.

        Usage that still cannot be metered is logged as lost, with the totals.
        """
        self._closed = True
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flusher
        if len(self._spool) and self._can_flush_on_close():
            try:
                async with asyncio.timeout(self.config.timeout * 2):
                    await self._flush_all()
            except TimeoutError:
                pass
            except self._errors:
                pass
        if len(self._spool):
            callers, tokens, commits = self._spool.totals()
            if commits:
                log.error(
                    "executus-budget-redis closed with %d unmetered commits of %d callers (%d tokens) that "
                    "%s never took: that usage is lost",
                    commits,
                    callers,
                    tokens,
                    self._where(),
                )
            if self._spool.voids:
                log.error(
                    "executus-budget-redis closed with %d checks it gave up on still to undo at %s: each "
                    "holds its slot until slot_ttl",
                    self._spool.voids,
                    self._where(),
                )
        await self._close_store()

    def _can_flush_on_close(self) -> bool:
        return True

    @property
    def unmetered(self) -> tuple[int, int, int]:
        """``(callers, tokens, commits)`` in this process's spool, waiting for the store to come back."""
        return self._spool.totals()

    @property
    def settled(self) -> bool:
        """True when nothing waits to reach the store: no spooled commit or void, no replay running."""
        return not len(self._spool) and (self._flusher is None or self._flusher.done())

    @property
    def unvoided(self) -> int:
        """Checks this process gave up on whose undoing has not reached the store yet."""
        return self._spool.voids

    # -- internals -------------------------------------------------------------------------------

    def _paired(self, caller_id: str) -> str | None:
        held = _HELD.get()
        task = asyncio.current_task()
        for index in range(len(held) - 1, -1, -1):
            budget_id, caller, run_id, owner = held[index]
            if budget_id == self._id and caller == caller_id and (owner() if owner else None) is task:
                _HELD.set(held[:index] + held[index + 1 :])
                return run_id
        return None  # a run resumed by an older core's recover() was never checked here

    def _void_later(self, caller_id: str, run_id: str, nonce: str) -> None:
        self._spool.put(caller_id, Pending(voids={run_id: nonce}))
        with contextlib.suppress(RuntimeError):
            self._start_flusher(first_delay=0.0)

    def _keep(self, caller_id: str, pending: Pending) -> bool:
        kept = self._spool.put(caller_id, pending)
        if kept:
            with contextlib.suppress(RuntimeError):
                self._start_flusher()
        else:
            log.error(
                "executus-budget-redis lost the usage of caller %s (%d tokens): %s is away and the spool "
                "already holds %d callers (spool_limit)",
                caller_id,
                pending.tokens,
                self._where(),
                self.config.spool_limit,
            )
        return kept

    def _start_flusher(self, first_delay: float = _FLUSH_FIRST_DELAY) -> None:
        # Not while closing: aclose replays the spool itself, and a task left behind would outlive
        # the loop.
        if not self._closed and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(first_delay), name="executus-budget-redis spool"
            )

    async def _flush_loop(self, delay: float) -> None:
        wait = delay
        backoff = max(delay, _FLUSH_FIRST_DELAY)
        while len(self._spool):
            await asyncio.sleep(wait)
            try:
                await self._flush_all()
            except self._errors as exc:
                log.debug("spool replay failed, retrying in %gs: %s", backoff, exc)
                wait = backoff
                backoff = min(backoff * 2, _FLUSH_MAX_DELAY)

    async def _flush_all(self) -> None:
        metered = 0
        for caller_id in self._spool.callers():
            metered += await self._send(caller_id)
        if metered:
            log.info("executus-budget-redis metered %d commits kept while the store was away", metered)

    async def _send(self, caller_id: str) -> int:
        """Send the caller's spooled voids, then commits; what was not sent goes back. Raises the
        store's error when it is still away."""
        pending = self._spool.take(caller_id)
        if pending is None:
            return 0
        limits = self.limits_for(caller_id)
        sent = 0
        try:
            for run_id, nonce in list(pending.voids.items()):
                await self._store_void(limits, run_id, nonce)
                del pending.voids[run_id]
            for run_id, entry in list(pending.commits.items()):
                await self._store_commit(limits, entry)
                del pending.commits[run_id]
                sent += 1
        finally:
            if pending:
                self._spool.put(caller_id, pending)
        return sent

    async def _flush_one(self, caller_id: str) -> None:
        try:
            # Bounded on its own, so the check after it still answers well within port_timeout.
            async with asyncio.timeout(self.config.timeout):
                await self._send(caller_id)
        except TimeoutError:
            self._start_flusher()
        except self._errors:
            # Still away: the check's own call will say so, and the entries wait for the next try.
            self._start_flusher()

    @property
    def url(self) -> str:
        """Where usage lives, for messages (a Redis URL without its password, or the SQLite file)."""
        return self._location()

    def _location(self) -> str:
        return ""

    def _unavailable(self, action: str, caller_id: str | None, exc: BaseException) -> BudgetUnavailable:
        return BudgetUnavailable(
            f"cannot {action}: {self._where()} {self._problem(exc)}. {self._advice()}",
            url=self.url,
            caller_id=caller_id,
            cause=self._cause(exc),
        )

    def _cause(self, exc: BaseException) -> str:
        return (
            "timeout" if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__ else "unreachable"
        )

    def _unavailable_for_check(self, caller_id: str, exc: BaseException) -> BudgetUnavailable:
        return BudgetUnavailable(
            f"cannot check the budget of caller {caller_id}: {self._where()} {self._problem(exc)}. "
            f"Budgets fail closed, so the run is refused. {self._advice()}",
            url=self.url,
            caller_id=caller_id,
            cause=self._cause(exc),
        )

    def _spool_failed(self, caller_id: str, entry: Commit, exc: BaseException) -> BudgetUnavailable:
        used = f"{entry.tokens} tokens, {entry.millis / 1000:g}s"
        if self._keep(caller_id, Pending(commits={entry.run_id: entry})):
            callers, _tokens, commits = self._spool.totals()
            outcome = (
                f"its usage ({used}) is kept in this process and will be metered, once, when the store "
                f"answers again ({_plural(commits, 'commit')} of {_plural(callers, 'caller')} waiting)"
            )
        else:
            outcome = (
                f"its usage ({used}) is LOST: the spool already holds {self.config.spool_limit} callers "
                f"(raise [tool.executus.{SECTION}] spool_limit, or bring the store back)"
            )
        return BudgetUnavailable(
            f"cannot meter the run of caller {caller_id}: {self._where()} {self._problem(exc)}; {outcome}",
            url=self.url,
            caller_id=caller_id,
            cause=self._cause(exc),
        )

    def _refusal(self, limits: ResolvedLimits, refusals: Sequence[Sequence[Any]]) -> BudgetExceeded:
        caller = limits.caller_id
        reasons: list[str] = []
        waits: list[tuple[float, str]] = []
        forever: str | None = None
        settings: list[str] = []
        for raw in refusals:
            kind, index, used, limit, wait, held, hold = (int(x) for x in raw)
            setting = limits.setting(_KINDS[kind])
            settings.append(setting)
            if kind == 4:
                if limit == 0:
                    reasons.append(f"caller {caller} may have no runs in flight ({setting} = 0)")
                    forever = forever or setting
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
                unit = {1: "runs", 2: "tokens", 3: "runtime", 5: "tokens"}[kind]
                reasons.append(f"caller {caller} is allowed no {unit} ({setting} = 0)")
                forever = forever or setting
                continue
            if kind == 5:
                source = (
                    limits.setting("token_hold") if limits.token_hold is not None else "its recent average"
                )
                text = f"caller {caller} used {used} of {limit} tokens {phrase}"
                if held:
                    text += f", its runs in flight hold {held} more"
                text += (
                    f", and a run holds {hold} ({source}): {max(limit - used - held, 0)} left is not enough"
                )
                if held:
                    text += (
                        "; a run is admitted again when one in flight ends and gives back what it did not use"
                    )
                elif wait >= 0:
                    text += f"; resets in {format_duration(wait / 1000)}"
                    waits.append((wait / 1000, setting))
                reasons.append(text)
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
                waits.append((wait / 1000, setting))
            reasons.append(text)
        retry_after: float | None
        limit_name: str | None
        if forever is not None:
            retry_after, limit_name = None, forever
        elif waits:
            retry_after, limit_name = max(waits)
        else:
            retry_after, limit_name = None, (settings[0] if settings else None)
        return BudgetExceeded("; ".join(reasons), retry_after=retry_after, limit=limit_name)


def error_text(exc: BaseException) -> str:
    # redis-py's messages end with a full stop; ours go on after them.
    return str(exc).rstrip(". ") or type(exc).__name__


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")
