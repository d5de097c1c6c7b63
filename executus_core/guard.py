"""The one guarded call: how the core calls anything it did not write.

Every port method, tool, model call, event consumer and critic hook goes through `guarded` (or
`guarded_sync` for the hooks that must not await). Whatever the callee does, the caller gets either
its value or a `Failure` that names it:

- any exception, `BaseException`s included (``SystemExit`` from a tool that uses argparse, a custom
  ``BaseException``, a ``CancelledError`` the callee raised itself), becomes a `Failure`;
- a callee that does not answer within its timeout becomes a `Failure` and is *abandoned*: it runs
  in a task of its own, so one that swallows cancellation cannot hold the run;
- the only thing that propagates is the cancellation of the caller's own task (`Executor.cancel`,
  the run's deadline, a host cancelling ``run()``), told apart with ``Task.cancelling()``.

::

    value = await guarded("budget 'redis': commit", budget.commit, caller_id, 0.0, usage, timeout=10)
    if isinstance(value, Failure):
        run.warn(str(value))
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["Failure", "abandon", "await_me_maybe", "describe", "guarded", "guarded_sync"]

T = TypeVar("T")


@dataclasses.dataclass(slots=True)
class Failure:
    """A guarded call that raised or did not answer; ``str()`` says which, naming the callee.

    ``error`` is what it raised, or ``None`` when it timed out after ``timeout`` seconds.
    """

    label: str
    error: BaseException | None = None
    timeout: float | None = None

    def __str__(self) -> str:
        if self.error is None:
            return f"{self.label} did not answer within {self.timeout:g}s"
        return f"{self.label} raised {describe(self.error)}"


def describe(error: BaseException) -> str:
    """``TypeName: message`` for an exception, or just the type name when it has no message."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclasses.dataclass(slots=True)
class _Raised:
    error: BaseException


async def _contain(awaitable: Awaitable[Any], waiter: asyncio.Future[Any]) -> None:
    # Runs in a task of its own. Catching BaseException *here* matters: a task whose coroutine
    # raises SystemExit or KeyboardInterrupt re-raises it out of the event loop itself. The result
    # goes straight to the waiter (one event-loop turn sooner than a done callback would).
    try:
        value = await awaitable
    except BaseException as exc:
        value = _Raised(exc)
    if not waiter.done():
        waiter.set_result(value)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def abandon(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and stop waiting for it; whatever it does later is ignored, never logged."""
    task.cancel()
    task.add_done_callback(_retrieve)


async def guarded(
    label: str,
    fn: Callable[..., Any],
    /,
    *args: Any,
    timeout: float | None = None,
    inline: bool = False,
    **kwargs: Any,
) -> Any:
    """Call ``fn(*args, **kwargs)``, await what it returns if awaitable, and contain every failure.

    Returns the value, or a `Failure`. ``timeout`` bounds the wait (``None``: only the caller's own
    deadline bounds it). Raises only ``CancelledError`` when the *caller's* task is being cancelled;
    the callee is then abandoned, not waited for.

    ``inline=True`` (without a timeout) awaits the callee in the caller's own task instead of one of
    its own: a few event-loop turns cheaper, for a callee known to honour cancellation (the model
    providers, on the per-step path), which then cannot be abandoned if it ignores it.
    """
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        return Failure(label, exc)
    if not inspect.isawaitable(value):
        return value
    if inline and timeout is None:
        current = asyncio.current_task()
        before = current.cancelling() if current is not None else 0
        try:
            return await value
        except asyncio.CancelledError as exc:
            if current is None or current.cancelling() > before:
                raise  # the caller's own cancellation
            return Failure(label, exc)
        except BaseException as exc:
            return Failure(label, exc)
    return await settle(label, value, timeout)


async def settle(label: str, awaitable: Awaitable[Any], timeout: float | None = None) -> Any:
    """Await ``awaitable`` in a task of its own, bounded by ``timeout``; see `guarded`."""
    current = asyncio.current_task()
    before = current.cancelling() if current is not None else 0
    loop = asyncio.get_running_loop()
    # The caller waits on a plain future, so cancelling the caller never waits for the callee.
    waiter: asyncio.Future[Any] = loop.create_future()
    task = loop.create_task(_contain(awaitable, waiter))
    try:
        if timeout is None:
            value = await waiter
        else:
            async with asyncio.timeout(timeout) as scope:
                value = await waiter
    except TimeoutError:
        abandon(task)
        if timeout is not None and scope.expired():
            return Failure(label, None, timeout)
        raise  # an enclosing deadline of the caller's
    except asyncio.CancelledError:
        abandon(task)
        if current is None or current.cancelling() > before:
            raise  # the caller's own cancellation
        return Failure(label, asyncio.CancelledError())  # pragma: no cover - _contain absorbs it
    if isinstance(value, _Raised):
        return Failure(label, value.error)
    return value


def guarded_sync(label: str, fn: Callable[..., T], /, *args: Any) -> T | Failure:
    """Call a method that must be synchronous; an exception, or an awaitable returned, is a `Failure`."""
    try:
        value = fn(*args)
    except BaseException as exc:
        return Failure(label, exc)
    if inspect.isawaitable(value):
        _discard(value)
        return Failure(label, TypeError("returned an awaitable: the method must be synchronous"))
    return value


async def await_me_maybe(value: Any) -> Any:
    """``value``, awaited if it is awaitable: for callbacks that may be sync or async."""
    if inspect.isawaitable(value):
        return await value
    return value


def _discard(value: Any) -> None:
    """Make sure an awaitable nobody will await is never left pending (or warned about)."""
    if inspect.iscoroutine(value):
        value.close()
    elif isinstance(value, asyncio.Future):
        value.cancel()
