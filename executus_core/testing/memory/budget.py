"""`MemoryBudget`: per-caller limits on runs, tokens and runtime, in one process."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping

from executus_core.config import Settings
from executus_core.errors import BudgetExceeded
from executus_core.hookspecs import hookimpl
from executus_core.ports import Budget
from executus_core.types import Usage

__all__ = ["BudgetLimits", "MemoryBudget"]


@dataclasses.dataclass(frozen=True)
class BudgetLimits:
    """Limits for one caller; ``None`` means no limit. Durations are seconds.

    Attributes:
        max_runs: runs admitted by ``check`` (a run counts when it is let through).
        max_tokens: input + output tokens committed (thinking tokens are part of output).
        max_seconds: runtime seconds committed.
        window_seconds: count only what happened in the last this-many seconds (a sliding window);
            ``None``: count forever.
    """

    max_runs: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    window_seconds: float | None = None


@dataclasses.dataclass
class _Entry:
    at: float
    runs: int = 0
    tokens: int = 0
    seconds: float = 0.0


_SETTLED_KEPT = 100_000  # run ids a MemoryBudget remembers as committed


class MemoryBudget:
    """A `Budget` with per-caller limits on runs, tokens and runtime, in one process.

    Every caller gets the default limits given here, or its own from ``limits``. ``check`` refuses
    with `BudgetExceeded` once a caller has reached a limit; with ``window_seconds`` the limits
    slide, and the refusal carries ``retry_after``: the seconds until enough usage leaves the
    window. ``check`` counts the run at once (so concurrent checks never admit more than
    ``max_runs``); ``commit`` adds its tokens and seconds.

    Example::

        budget = MemoryBudget(max_runs=10, window_seconds=60)      # 10 runs a minute per caller
        budget = MemoryBudget(max_tokens=100_000, limits={"vip": BudgetLimits()})

    Args:
        limits: per-caller limits that replace the defaults for those callers.
        clock: a monotonic clock in seconds (tests may pass a fake one).
        name: the plugin name.
    """

    def __init__(
        self,
        *,
        max_runs: int | None = None,
        max_tokens: int | None = None,
        max_seconds: float | None = None,
        window_seconds: float | None = None,
        limits: Mapping[str, BudgetLimits] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "memory_budget",
    ) -> None:
        self.executus_name = name
        self.defaults = BudgetLimits(max_runs, max_tokens, max_seconds, window_seconds)
        self.limits = dict(limits or {})
        self.clock = clock
        self.commits: list[tuple[str, float, Usage]] = []
        self.refusals: list[tuple[str, BudgetExceeded]] = []
        self._entries: dict[str, list[_Entry]] = {}
        self._admitted: dict[str, _Entry] = {}  # run id -> its count, until it commits
        self._settled: dict[str, None] = {}  # run ids committed (the latest _SETTLED_KEPT)
        self._lock = threading.Lock()

    @hookimpl
    def executus_budget(self, settings: Settings) -> Budget:
        return self

    def limits_for(self, caller_id: str) -> BudgetLimits:
        """The limits that apply to ``caller_id``."""
        return self.limits.get(caller_id, self.defaults)

    def _live(self, caller_id: str, limits: BudgetLimits, now: float) -> list[_Entry]:
        entries = self._entries.setdefault(caller_id, [])
        if limits.window_seconds is not None:
            cutoff = now - limits.window_seconds
            while entries and entries[0].at <= cutoff:
                entries.pop(0)
        return entries

    def used(self, caller_id: str) -> tuple[int, int, float]:
        """``(runs, tokens, seconds)`` ``caller_id`` has used (in the window, if there is one)."""
        with self._lock:
            entries = self._live(caller_id, self.limits_for(caller_id), self.clock())
            return (
                sum(e.runs for e in entries),
                sum(e.tokens for e in entries),
                sum(e.seconds for e in entries),
            )

    async def check(self, caller_id: str, *, run_id: str | None = None) -> None:
        """Let the run through (and count it), or raise `BudgetExceeded`.

        With ``run_id``, a run already admitted is let through again without counting it twice,
        and a run committed before (a recovered run) is not counted as a new run.
        """
        with self._lock:
            if run_id is not None and run_id in self._admitted:
                return
            counted = True
            if run_id is not None and run_id in self._settled:
                del self._settled[run_id]  # a recovered run: not a new run; its next commit charges
                counted = False
            limits = self.limits_for(caller_id)
            now = self.clock()
            entries = self._live(caller_id, limits, now)
            for field, limit, unit in (
                ("runs", limits.max_runs, "runs"),
                ("tokens", limits.max_tokens, "tokens"),
                ("seconds", limits.max_seconds, "seconds of runtime"),
            ):
                if limit is None or (field == "runs" and not counted):
                    continue
                total = sum(getattr(e, field) for e in entries)
                if total < limit:
                    continue
                retry_after = None
                if limits.window_seconds is not None:
                    # The first moment enough old usage has left the window to go below the limit.
                    for entry in entries:
                        total -= getattr(entry, field)
                        if total < limit:
                            retry_after = max(0.0, entry.at + limits.window_seconds - now)
                            break
                window = f" in the last {limits.window_seconds:g}s" if limits.window_seconds else ""
                refusal = BudgetExceeded(
                    f"caller {caller_id!r} used {_amount(sum(getattr(e, field) for e in entries))} "
                    f"{unit}{window}; the limit is {_amount(limit)}",
                    retry_after=retry_after,
                )
                self.refusals.append((caller_id, refusal))
                raise refusal
            entry = _Entry(at=now, runs=1 if counted else 0)
            entries.append(entry)
            if run_id is not None:
                self._admitted[run_id] = entry

    async def commit(
        self, caller_id: str, runtime_seconds: float, usage: Usage, *, run_id: str | None = None
    ) -> None:
        """Add a finished run's tokens and runtime to ``caller_id``'s usage.

        With ``run_id``, a run already committed is charged nothing (a retried commit), and a
        commit of nothing (a release: another budget refused the run) uncounts the run.
        """
        with self._lock:
            if run_id is not None:
                if run_id in self._settled:
                    return
                self._settled[run_id] = None
                while len(self._settled) > _SETTLED_KEPT:
                    del self._settled[next(iter(self._settled))]
                admitted = self._admitted.pop(run_id, None)
                if admitted is not None and not runtime_seconds and not usage.total_tokens:
                    admitted.runs = 0
            self.commits.append((caller_id, runtime_seconds, usage))
            limits = self.limits_for(caller_id)
            now = self.clock()
            self._live(caller_id, limits, now).append(
                _Entry(at=now, tokens=usage.total_tokens, seconds=float(runtime_seconds))
            )


def _amount(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}".rstrip("0").rstrip(".")
