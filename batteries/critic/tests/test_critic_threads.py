"""The handle under fire: ``deadline()`` hammered from other threads while the run records steps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from critic_helpers import scripted, tool_call
from executus_critic import CriticSettings, DecisionKind, RunCritic, RunCriticHandle

from executus_core import Agent, Executor, ModelRequest, ModelResponse, RunStatus, tool
from executus_core.testing.conformance import make_info

ENDINGS = {DecisionKind.CUT, DecisionKind.HANG}
WARNINGS = {DecisionKind.LOOP, DecisionKind.STALL}


class Hammer:
    """Threads that call ``deadline()`` (and read the decisions) as fast as they can until stopped."""

    def __init__(self, target: Callable[[], RunCriticHandle | None], threads: int = 4) -> None:
        self.target = target
        self.errors: list[BaseException] = []
        self.answers: list[datetime | None] = []
        self.calls = 0
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        seen: list[datetime | None] = []
        calls = 0
        try:
            while not self._done.is_set():
                handle = self.target()
                if handle is not None:
                    seen.append(handle.deadline())
                    handle.decisions  # noqa: B018 -- a read under the handle's lock
                    handle.reason  # noqa: B018
                    calls += 1
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        self.answers += seen
        self.calls += calls

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(10)


def check_decisions(handle: RunCriticHandle) -> None:
    """What must hold whatever the interleaving: one nudge, one warning, and an ending comes last."""
    kinds = [d.kind for d in handle.decisions]
    assert kinds.count(DecisionKind.WRAP_UP) <= 1
    assert sum(k in WARNINGS for k in kinds) <= 1
    endings = [i for i, k in enumerate(kinds) if k in ENDINGS]
    assert len(endings) <= 1 and (not endings or endings[0] == len(kinds) - 1), kinds
    if DecisionKind.CUT in kinds:
        assert kinds.index(DecisionKind.CUT) > next(i for i, k in enumerate(kinds) if k in WARNINGS)


async def test_deadline_from_four_threads_while_the_run_task_records_and_steers() -> None:
    settings = CriticSettings(
        steer_after="0.01s",
        hard_timeout=0.05,
        max_extension=5.0,
        hang_timeout=0.5,
        loop_threshold=5,
        stall_steps=4,
    )
    critic = RunCritic(settings, deadline_poll=0.005)
    handles = [await critic.monitor(make_info(i), 0.02) for i in range(4)]
    turn = iter(range(10**9))

    def pick() -> RunCriticHandle:
        return handles[next(turn) % len(handles)]

    with Hammer(pick) as hammer:
        for i in range(1, 2001):
            for handle in handles:
                handle.steer()
                handle.record_step(i)
                # mostly new calls, with runs of repeats that trip the loop and stall checks
                handle.record_tool_start("t", {"n": i // 7 if i % 50 < 25 else i})
                handle.deadline()
            if i % 100 == 0:
                await asyncio.sleep(0.002)
        for handle in handles:
            handle.stop()
    assert not hammer.errors, repr(hammer.errors[0])
    assert hammer.calls > 100
    assert all(a is None or a.tzinfo is not None for a in hammer.answers)
    for handle in handles:
        check_decisions(handle)
        assert handle.decisions, "the settings are tight enough that every run had something decided"


async def test_stop_racing_the_threads_never_raises() -> None:
    critic = RunCritic(CriticSettings(hang_timeout=0.001, hard_factor=1))
    current: list[RunCriticHandle] = []
    with Hammer(lambda: current[-1] if current else None, threads=3) as hammer:
        for i in range(300):
            handle = await critic.monitor(make_info(i), 0.01)
            current.append(handle)
            handle.record_step(1)
            handle.record_tool_start("t", {})
            handle.stop()
            handle.deadline()
            handle.steer()
            await asyncio.sleep(0)
    assert not hammer.errors, repr(hammer.errors[0])
    assert len(critic.running) == 0


@tool
def lookup(n: int) -> str:
    """Look up item n."""
    return f"item {n}"


async def test_a_real_run_with_its_deadline_hammered_from_threads(
    make_executor: Callable[..., Executor],
) -> None:
    def model(call: int, request: ModelRequest) -> ModelResponse:
        return tool_call("lookup", f"c{call}", n=call) if call <= 40 else ModelResponse(text="40 done")

    async with make_executor(
        steer_after="0.05s", hard_timeout=0.1, max_extension=30, hang_timeout=2.0
    ) as executor:
        assert executor.ports.critic is not None
        critic: Any = executor.ports.critic[1]
        with Hammer(lambda: critic.handle("hammered")) as hammer:
            agent = Agent(name="h", model=scripted(model, delay=0.005), tools=[lookup], max_steps=100)
            result = await executor.run(agent, "go", caller_id="u1", run_id="hammered")
    assert not hammer.errors, repr(hammer.errors[0])
    assert hammer.calls > 0 and all(a is None or a.tzinfo is not None for a in hammer.answers)
    assert result.status is RunStatus.OK and result.output == "40 done", result.error
    handle = critic.handle("hammered")
    check_decisions(handle)
    assert DecisionKind.WRAP_UP in [d.kind for d in handle.decisions]
