"""The conformance suite of `Critic` / `CriticHandle`."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any

from executus_core.ports import Critic, CriticHandle
from executus_core.testing.conformance._harness import LoopLag, aware, built, call, make_info, run_check
from executus_core.types import Message, utcnow

__all__ = [
    "CRITIC_CHECKS",
    "CriticConformance",
    "check_critic_handle_is_safe_from_two_tasks_and_a_thread",
    "check_critic_monitors_a_run",
    "check_critic_never_blocks_the_loop",
    "check_critic_runs_stay_apart",
    "check_critic_steer_drains",
]


def _critic(made: Any) -> Critic:
    assert isinstance(made, Critic), (
        f"make_critic built {type(made).__name__}, not a Critic (async monitor(info, soft_timeout))"
    )
    return made


async def _monitor(critic: Critic, index: int = 0, soft_timeout: float = 30.0) -> CriticHandle:
    handle = await call(
        "Critic.monitor", critic.monitor, make_info(index, caller_id="critic-caller"), soft_timeout
    )
    assert isinstance(handle, CriticHandle), (
        f"Critic.monitor returned {type(handle).__name__}, not a CriticHandle (record_step, "
        "record_tool_start, steer, deadline, stop); the suite needs a handle for every run"
    )
    return handle


def _sync(label: str, value: Any) -> Any:
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise AssertionError(f"{label} returned an awaitable: CriticHandle methods are synchronous")
    return value


def _deadline(handle: CriticHandle) -> Any:
    try:
        value = _sync("CriticHandle.deadline", handle.deadline())
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"CriticHandle.deadline raised {type(exc).__name__}: {exc}") from exc
    assert value is None or aware(value), (
        f"CriticHandle.deadline returned {value!r}: return a timezone-aware datetime "
        "(datetime.now(timezone.utc) + ...) or None"
    )
    return value


def _steer(handle: CriticHandle) -> list[Message]:
    try:
        value = _sync("CriticHandle.steer", handle.steer())
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"CriticHandle.steer raised {type(exc).__name__}: {exc}") from exc
    assert isinstance(value, list) and all(isinstance(m, Message) for m in value), (
        f"CriticHandle.steer returned {value!r}, not a list of Message"
    )
    return value


def _use(handle: Any, step: int) -> None:
    # `Any`: the methods are declared to return None, and the suite checks that they do.
    try:
        _sync("CriticHandle.record_step", handle.record_step(step))
        _sync(
            "CriticHandle.record_tool_start",
            handle.record_tool_start("search", {"query": f"q{step}", "n": step}),
        )
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"CriticHandle.record_* raised {type(exc).__name__}: {exc}") from exc


def _stop(handle: Any) -> None:
    try:
        _sync("CriticHandle.stop", handle.stop())
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"CriticHandle.stop raised {type(exc).__name__}: {exc}") from exc


async def check_critic_monitors_a_run(factory: Any) -> None:
    """``monitor`` gives a handle whose methods are synchronous and answer the contract's types; a
    fresh run's deadline is in the future; ``stop`` ends it and a late ``deadline``/``steer`` (the
    watcher racing the end) does not raise."""
    async with built(factory) as made:
        critic = _critic(made)
        handle = await _monitor(critic)
        first = _deadline(handle)
        if first is not None:
            assert first > utcnow(), f"a run that just started already has its deadline behind it: {first}"
        for step in range(1, 6):
            _use(handle, step)
            _steer(handle)
            _deadline(handle)
        _stop(handle)
        _deadline(handle)
        _steer(handle)


async def check_critic_steer_drains(factory: Any) -> None:
    """``steer()`` drains: a message is returned once; asking again at once returns none."""
    async with built(factory) as made:
        critic = _critic(made)
        handle = await _monitor(critic, soft_timeout=0.05)
        seen: list[Message] = []
        for step in range(1, 5):
            _use(handle, step)
            await asyncio.sleep(0.04)  # past the soft timeout: a critic that steers does it now
            seen += _steer(handle)
            again = _steer(handle)
            assert again == [], (
                f"steer() returned {[m.content for m in again]} right after returning the pending messages: "
                "each message is returned once"
            )
        assert len({id(m) for m in seen}) == len(seen), "steer() returned the same Message object twice"
        _stop(handle)


async def check_critic_handle_is_safe_from_two_tasks_and_a_thread(factory: Any) -> None:
    """The run's task records steps and steers while the core's watcher task and another thread read
    ``deadline()``: nothing raises and every deadline stays timezone-aware."""
    async with built(factory) as made:
        critic = _critic(made)
        handles = [await _monitor(critic, i, soft_timeout=0.05) for i in range(5)]
        errors: list[BaseException] = []
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                for handle in handles:
                    try:
                        _deadline(handle)
                    except BaseException as exc:  # collected and reported by the check
                        errors.append(exc)
                        return
                time.sleep(0)  # let the event loop's thread have the GIL between rounds

        async def watcher(handle: CriticHandle) -> None:
            while not done.is_set():
                _deadline(handle)
                await asyncio.sleep(0)

        async def run(handle: CriticHandle) -> None:
            for step in range(1, 301):
                _use(handle, step)
                _steer(handle)
                if step % 25 == 0:
                    await asyncio.sleep(0.001)
                else:
                    await asyncio.sleep(0)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        watchers = [asyncio.ensure_future(watcher(h)) for h in handles]
        try:
            await asyncio.gather(*(run(h) for h in handles))
            for handle in handles:
                _stop(handle)
                _deadline(handle)
        finally:
            done.set()
            await asyncio.gather(*watchers)
            await asyncio.to_thread(thread.join, 5)
        assert not errors, f"deadline() from another thread failed: {errors[0]!r}"


async def check_critic_runs_stay_apart(factory: Any) -> None:
    """Stopping one run's handle leaves the others' deadlines as they were."""
    async with built(factory) as made:
        critic = _critic(made)
        handles = [await _monitor(critic, i) for i in range(6)]
        before = [_deadline(h) is None for h in handles]
        for handle in handles[:3]:
            _stop(handle)
        for index, handle in enumerate(handles[3:], start=3):
            _use(handle, 1)
            assert (_deadline(handle) is None) == before[index], (
                f"run {index}'s deadline went from {'none' if before[index] else 'set'} to "
                f"{'set' if before[index] else 'none'} when other runs' handles were stopped: handles share state"
            )
            _steer(handle)


async def check_critic_never_blocks_the_loop(factory: Any) -> None:
    """Monitoring 20 runs and calling every handle method never stalls the event loop."""
    async with built(factory) as made:
        critic = _critic(made)

        async def one(index: int) -> None:
            handle = await _monitor(critic, index, soft_timeout=0.05)
            for step in range(1, 51):
                _use(handle, step)
                _steer(handle)
                _deadline(handle)
                await asyncio.sleep(0)
            _stop(handle)

        async with LoopLag() as lag:
            await asyncio.gather(*(one(i) for i in range(20)))
        lag.check("monitoring 20 runs of 50 steps")


CRITIC_CHECKS = (
    check_critic_monitors_a_run,
    check_critic_steer_drains,
    check_critic_handle_is_safe_from_two_tasks_and_a_thread,
    check_critic_runs_stay_apart,
    check_critic_never_blocks_the_loop,
)


class CriticConformance:
    """The contract every `Critic` battery honours. Subclass it and provide ``make_critic``.

    ``make_critic`` is a fixture returning a factory (sync or ``async``) that builds the critic,
    inside the test's own event loop (no pytest-asyncio needed)::

        class TestCritic(CriticConformance):
            @pytest.fixture
            def make_critic(self):
                return lambda: Critic(CriticSettings(hard_timeout=60))

    The contract: ``monitor`` returns a handle for each run; the handle's methods are synchronous
    and never block; ``steer()`` returns a list of `Message` and drains it; ``deadline()`` is
    ``None`` or a timezone-aware datetime (a fresh run's is in the future) and is safe to call from
    another task and another thread while the run records steps; a late ``deadline()``/``steer()``
    after ``stop()`` does not raise; runs never share state.
    """

    def test_monitors_a_run(self, make_critic: Any) -> None:
        run_check(check_critic_monitors_a_run, make_critic)

    def test_steer_drains(self, make_critic: Any) -> None:
        run_check(check_critic_steer_drains, make_critic)

    def test_handle_is_safe_from_two_tasks_and_a_thread(self, make_critic: Any) -> None:
        run_check(check_critic_handle_is_safe_from_two_tasks_and_a_thread, make_critic)

    def test_runs_stay_apart(self, make_critic: Any) -> None:
        run_check(check_critic_runs_stay_apart, make_critic)

    def test_never_blocks_the_loop(self, make_critic: Any) -> None:
        run_check(check_critic_never_blocks_the_loop, make_critic)
