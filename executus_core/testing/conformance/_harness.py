"""What every conformance suite shares: running a check in its own event loop, building the
battery's object from its fixture, calling port methods with a clear failure, and measuring how
long the event loop was blocked.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from executus_core.types import RunInfo, utcnow

__all__ = [
    "CHECK_TIMEOUT",
    "LAG_BOUND",
    "Check",
    "LoopLag",
    "aware",
    "built",
    "call",
    "make_info",
    "maybe_await",
    "run_check",
]

T = TypeVar("T")

CHECK_TIMEOUT = 60.0
"""Seconds one check may take before it fails as hung (far above what a correct port needs)."""

LAG_BOUND = 0.2
"""Longest stall of the event loop a port may cause, in seconds: generous, so only real blocking
I/O (a synchronous driver call, a ``time.sleep``) trips it, never a slow machine."""

Check = Callable[[Any], Awaitable[None]]


def run_check(check: Check, factory: Any, *, timeout: float = CHECK_TIMEOUT) -> None:
    """Run ``await check(factory)`` in a new event loop, failing if it takes longer than ``timeout``.

    The suites' test methods are synchronous and call this, so they work whether or not the
    battery's project configures pytest-asyncio, and every object the factory builds lives in
    the loop that uses it.
    """

    async def main() -> None:
        try:
            async with asyncio.timeout(timeout):
                await check(factory)
        except TimeoutError:
            raise AssertionError(
                f"{check.__name__} did not finish within {timeout:g}s: a port call hung"
            ) from None

    asyncio.run(main())


async def maybe_await(value: Any) -> Any:
    """``await`` ``value`` if it is awaitable, else return it."""
    if inspect.isawaitable(value):
        return await value
    return value


@asynccontextmanager
async def built(factory: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """Build what ``factory`` makes (inside the running loop), and ``aclose()`` it afterwards.

    ``factory`` is what the battery's fixture returned: a callable (sync or ``async``) returning the
    object or a subject holding it. (An ``async`` fixture that pytest handed over un-run is awaited
    first.)
    """
    made = await maybe_await(factory)
    if callable(made):
        made = await maybe_await(made(*args, **kwargs))
    try:
        yield made
    finally:
        for obj in {id(o): o for o in (made, getattr(made, "port", None)) if o is not None}.values():
            close = getattr(obj, "aclose", None)
            if callable(close):
                await maybe_await(close())


async def call(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a port method (sync or async); an exception becomes an `AssertionError` naming ``label``."""
    try:
        return await maybe_await(fn(*args, **kwargs))
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{label} raised {type(exc).__name__}: {exc}") from exc


def make_info(index: int = 0, *, caller_id: str = "conformance-caller", **changes: Any) -> RunInfo:
    """A `RunInfo` for a made-up run; ``index`` makes its id and start time distinct."""
    started = changes.pop("started_at", utcnow() - timedelta(seconds=1000 - index))
    return RunInfo(
        run_id=changes.pop("run_id", f"conformance-{index}-{uuid.uuid4().hex[:12]}"),
        subject_id=changes.pop("subject_id", "conformance-agent"),
        name=changes.pop("name", "conformance agent"),
        caller_id=caller_id,
        started_at=started,
        **changes,
    )


class LoopLag:
    """Measures the longest time the event loop went without running a ticker task.

    ::

        async with LoopLag() as lag:
            await do_port_work()
        assert lag.worst < LAG_BOUND
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, loop.time() - before - self.interval)

    async def __aenter__(self) -> LoopLag:
        # What is measured is the port's blocking I/O, not the test process's garbage collector:
        # a full collection in a process that ran a thousand tests can itself pause ~0.3 s.
        gc.collect()
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._task = asyncio.get_running_loop().create_task(self._tick())
        await asyncio.sleep(0)  # let the ticker take its first reading
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(self.interval * 2)  # a stall right at the end still shows
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._gc_was_enabled:
            gc.enable()

    def check(self, what: str, bound: float = LAG_BOUND) -> None:
        """Fail when the loop stalled for longer than ``bound`` seconds."""
        assert self.worst < bound, (
            f"{what} blocked the event loop for {self.worst:.3f}s (bound {bound:g}s): do I/O with an "
            "async driver or asyncio.to_thread, and keep the per-step methods to appending to a buffer"
        )


def aware(value: Any) -> bool:
    """True for a timezone-aware `datetime`."""
    return isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None
