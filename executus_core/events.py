"""Run events on their way to consumers: bounded buffers, and one pump task per consumer.

The loop never waits for a consumer. Each consumer (an audit recorder, a host's ``on_event``, the
queue behind `Executor.stream`) reads from its own `EventBuffer`, which holds at most ``maxsize``
items: past that, streamed text deltas are merged into the delta before them and anything else is
dropped and counted, so a slow consumer costs memory that is bounded, never the run's time.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

from executus_core.guard import Failure, guarded
from executus_core.types import RunEvent

__all__ = ["EventBuffer", "EventHandler", "EventPump"]

EventHandler = Callable[[RunEvent], Awaitable[None] | None]
"""What ``on_event=`` takes: called with each `RunEvent`, sync or async."""

_CLOSE = object()


def _delta_text(item: Any) -> str | None:
    """The text of a ``model.delta`` item (a `RunEvent`, or a pump's call carrying one), else None."""
    event = item
    if isinstance(item, tuple) and len(item) == 3 and len(item[2]) == 1:
        event = item[2][0]
    if isinstance(event, RunEvent) and event.type == "model.delta":
        text = event.data.get("text")
        return text if isinstance(text, str) else None
    return None


def _with_text(item: Any, text: str) -> Any:
    if isinstance(item, tuple):
        method, fn, (event,) = item
        return method, fn, (_with_text(event, text),)
    return RunEvent(item.run_id, item.type, {**item.data, "text": text}, item.at)


class EventBuffer:
    """A bounded FIFO of events for one consumer; `put` never blocks and never raises.

    When full, a ``model.delta`` is merged into a delta at the tail; other items are dropped and
    counted in ``dropped``.
    """

    __slots__ = ("_items", "_waiter", "dropped", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.dropped = 0
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, *, force: bool = False) -> bool:
        """Queue ``item``; False when it was dropped. ``force`` queues even past ``maxsize`` (an end mark)."""
        items = self._items
        if len(items) >= self.maxsize and not force:
            text = _delta_text(item)
            tail = _delta_text(items[-1]) if items else None
            if text is None or tail is None:
                self.dropped += 1
                return False
            items[-1] = _with_text(items[-1], tail + text)
            return True
        items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def get_nowait(self) -> Any:
        """The oldest item; raises IndexError when empty."""
        return self._items.popleft()

    async def get(self) -> Any:
        """Wait for the oldest item."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class EventPump:
    """Feeds one consumer from its own task and `EventBuffer`, so a slow one never stalls the run.

    Items are ``(method name, callable, arguments)``; each call goes through the guarded call with
    ``timeout``. A consumer that times out is dropped for the rest of the run. ``warn`` reports a
    failure; it is given this pump so a failing ``log_error`` is not told about its own failure.
    """

    __slots__ = ("buffer", "dead", "label", "returns_none", "task", "timeout", "warn")

    def __init__(
        self,
        label: str,
        warn: Callable[[str, EventPump | None], None],
        maxsize: int,
        timeout: float,
        *,
        returns_none: bool = False,
    ) -> None:
        self.label = label
        self.warn = warn
        self.timeout = timeout
        self.returns_none = returns_none  # a port whose methods must return None (a recorder)
        self.buffer = EventBuffer(maxsize)
        self.dead = False
        self.task = asyncio.get_running_loop().create_task(self._drain())

    def put(self, method: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue one call of the consumer; never blocks."""
        if not self.dead:
            self.buffer.put((method, fn, args))

    async def _drain(self) -> None:
        while (item := await self.buffer.get()) is not _CLOSE:
            method, fn, args = item
            value = await guarded(f"{self.label}: {method}", fn, *args, timeout=self.timeout)
            if isinstance(value, Failure):
                if value.error is None:
                    self.dead = True
                    self.warn(f"{value}; dropped for the rest of the run", None)
                    return
                self.warn(str(value), self if method == "log_error" else None)
            elif value is not None and self.returns_none:
                self.warn(f"{self.label}: {method} returned {type(value).__name__}, not None (ignored)", None)

    async def close(self) -> None:
        """Let the consumer finish what is queued (bounded by the timeout), then stop it."""
        if not self.dead:
            self.buffer.put(_CLOSE, force=True)
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(self.task)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()
            if not self.dead:
                self.warn(f"{self.label} did not finish within {self.timeout:g}s of the run's end", None)
        if self.buffer.dropped:
            self.warn(f"{self.label} fell behind: {self.buffer.dropped} events were dropped", None)
