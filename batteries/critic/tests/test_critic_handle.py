"""What a `RunCriticHandle` decides, step by step, on a clock the test moves by hand (no sleeps)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from critic_helpers import FakeClock
from executus_critic import CriticSettings, DecisionKind, RunCritic, RunCriticHandle

from executus_core.testing.conformance import make_info


async def watch(clock: FakeClock, soft_timeout: float = 10.0, **settings: Any) -> RunCriticHandle:
    critic = RunCritic(CriticSettings(**settings), deadline_poll=0.25, clock=clock)
    return await critic.monitor(make_info(), soft_timeout)


def kinds(handle: RunCriticHandle) -> list[str]:
    return [d.kind.value for d in handle.decisions]


def seconds_after_start(handle: RunCriticHandle) -> float | None:
    """The handle's current deadline as seconds after its start (None: the core's)."""
    when = handle.deadline()
    if when is None:
        return None
    return (when - handle._started_at).total_seconds()


def step(handle: RunCriticHandle, iteration: int, *calls: tuple[str, dict[str, Any]]) -> list[str]:
    """One turn of the loop as the core drives it: steer, (model call), record_step, tool starts."""
    said = [m.content or "" for m in handle.steer()]
    handle.record_step(iteration)
    for name, arguments in calls:
        handle.record_tool_start(name, arguments)
    return said


# -- the soft timeout ------------------------------------------------------------------------------


async def test_the_nudge_comes_once_when_the_soft_timeout_passes(clock: FakeClock) -> None:
    handle = await watch(clock, soft_timeout=10.0)
    clock.advance(9.9)
    assert handle.steer() == []
    clock.advance(0.2)
    [message] = handle.steer()
    assert message.role == "user" and "10 seconds" in (message.content or "")
    assert handle.steer() == []
    clock.advance(100)
    assert handle.steer() == [], "one nudge per run"
    assert kinds(handle) == ["wrap_up"]
    assert "soft timeout 10 s" in (handle.reason or "")


@pytest.mark.parametrize(("steer_after", "due"), [(0.5, 5.0), ("3s", 3.0), (2.0, 20.0)])
async def test_steer_after_is_a_fraction_of_the_soft_timeout_or_seconds(
    clock: FakeClock, steer_after: Any, due: float
) -> None:
    handle = await watch(clock, soft_timeout=10.0, steer_after=steer_after, hang_timeout=0)
    clock.advance(due - 0.01)
    assert handle.steer() == []
    clock.advance(0.02)
    assert len(handle.steer()) == 1


async def test_no_nudge_when_steering_is_off(clock: FakeClock) -> None:
    handle = await watch(clock, steer_after=0, hang_timeout=0)
    clock.advance(1000)
    assert handle.steer() == [] and handle.decisions == []


async def test_the_nudge_uses_the_template(clock: FakeClock) -> None:
    handle = await watch(
        clock, soft_timeout=4.0, messages={"wrap_up": "{elapsed:.1f} of {soft_timeout:g}: stop."}
    )
    clock.advance(4.5)
    assert [m.content for m in handle.steer()] == ["4.5 of 4: stop."]


# -- loops ---------------------------------------------------------------------------------------


async def test_the_same_call_in_a_row_is_warned_then_cut(clock: FakeClock) -> None:
    handle = await watch(clock, loop_threshold=3)
    same = ("search", {"q": "x", "n": 1})
    said: list[str] = []
    for i in range(1, 4):
        said += step(handle, i, same)
        clock.advance(0.1)
    assert handle.deadline() is None and kinds(handle) == ["loop"]
    warning = handle.steer()  # before model call 4: the model is told
    assert len(warning) == 1 and warning[0].role == "user"
    assert "search" in (warning[0].content or "") and "3 times" in (warning[0].content or "")
    handle.record_step(4)
    handle.record_tool_start(*same)  # and it does it again
    assert kinds(handle) == ["loop", "cut"]
    assert handle.deadline() == handle._started_at + timedelta(seconds=0.3)
    assert handle.decisions[-1].ends_run and "after the model was told" in (handle.reason or "")


async def test_argument_order_does_not_hide_a_loop(clock: FakeClock) -> None:
    handle = await watch(clock, loop_threshold=2)
    handle.record_tool_start("search", {"a": 1, "b": [1, 2]})
    handle.record_tool_start("search", {"b": [1, 2], "a": 1})
    assert kinds(handle) == ["loop"]


async def test_a_warning_the_model_has_not_seen_yet_is_not_followed_by_a_cut(clock: FakeClock) -> None:
    handle = await watch(clock, loop_threshold=2)
    for _ in range(6):  # six identical parallel calls in one step
        handle.record_tool_start("fetch", {"url": "u"})
    assert kinds(handle) == ["loop"] and handle.deadline() is None


async def test_after_the_warning_a_new_loop_is_cut_without_a_second_warning(clock: FakeClock) -> None:
    handle = await watch(clock, loop_threshold=3)
    for i in range(1, 4):
        step(handle, i, ("a", {}))
    assert len(handle.steer()) == 1  # warned
    step(handle, 4, ("b", {"new": True}))  # it changes course...
    step(handle, 5, ("c", {}))
    step(handle, 6, ("c", {}))
    assert kinds(handle) == ["loop"]
    step(handle, 7, ("c", {}))  # ...then loops again: the third in a row
    assert kinds(handle) == ["loop", "cut"]


async def test_steps_that_only_repeat_earlier_calls_are_a_stall(clock: FakeClock) -> None:
    handle = await watch(clock, stall_steps=3, loop_threshold=0)
    step(handle, 1, ("a", {}))
    step(handle, 2, ("b", {}))
    for i in range(3, 6):  # a, b, a: nothing new, three times
        step(handle, i, ("a" if i % 2 else "b", {}))
    [warning] = handle.steer()
    assert "3 steps" in (warning.content or "") and kinds(handle) == ["stall"]
    step(handle, 6, ("b", {}))
    handle.steer()
    assert kinds(handle) == ["stall", "cut"]


async def test_a_new_call_resets_the_stall_count(clock: FakeClock) -> None:
    handle = await watch(clock, stall_steps=2, loop_threshold=0)
    step(handle, 1, ("a", {}))
    step(handle, 2, ("a", {}))  # stalled once
    step(handle, 3, ("z", {}))  # new
    step(handle, 4, ("a", {}))  # stalled once again
    assert handle.steer() == [] and handle.decisions == []


# -- hangs ---------------------------------------------------------------------------------------


async def test_a_hang_pulls_the_deadline_in_to_when_it_began(clock: FakeClock) -> None:
    handle = await watch(clock, hang_timeout=5.0)
    step(handle, 1, ("slow_tool", {}))
    started = handle._started_at
    clock.advance(4.9)
    assert handle.deadline() is None, "the core's hard timeout holds while the run is alive"
    clock.advance(0.3)
    assert handle.deadline() == started + timedelta(seconds=5.0)
    [decision] = handle.decisions
    assert decision.kind is DecisionKind.HANG and decision.ends_run
    assert "since tool 'slow_tool' started" in decision.reason and "hang_timeout 5 s" in decision.reason
    handle.record_step(2)  # too late: a hang is final
    assert handle.deadline() == started + timedelta(seconds=5.0) and len(handle.decisions) == 1


async def test_activity_keeps_a_slow_run_from_counting_as_hung(clock: FakeClock) -> None:
    handle = await watch(clock, hang_timeout=5.0)
    for i in range(1, 20):
        clock.advance(4.0)
        step(handle, i, ("t", {"i": i}))
        assert handle.deadline() is None
    clock.advance(4.0)
    handle.steer()  # a model call starts: that is activity too
    clock.advance(4.0)
    assert handle.deadline() is None and [d.kind for d in handle.decisions] == [DecisionKind.WRAP_UP]


async def test_no_hang_check_when_it_is_off(clock: FakeClock) -> None:
    handle = await watch(clock, hang_timeout=0)
    clock.advance(10**6)
    assert handle.deadline() is None


# -- the critic's own deadline, and extensions -------------------------------------------------------


async def test_hard_factor_sets_the_deadline(clock: FakeClock) -> None:
    handle = await watch(clock, soft_timeout=10.0, hard_factor=3, hang_timeout=0)
    assert seconds_after_start(handle) == pytest.approx(30.0)
    clock.advance(29.0)
    assert seconds_after_start(handle) == pytest.approx(30.0), "no progress to extend for"


def run_for(handle: RunCriticHandle, clock: FakeClock, seconds: float, *, step_every: float) -> None:
    """Let time pass as in a real run: the core polls deadline() every 0.25 s, and the run makes a
    new tool call every ``step_every`` seconds."""
    ticks_per_step = round(step_every / 0.25)
    for tick in range(1, round(seconds / 0.25) + 1):
        clock.advance(0.25)
        if tick % ticks_per_step == 0:
            step(handle, len(handle._seen) + 1, ("t", {"i": tick}))
        handle.deadline()


async def test_a_run_still_making_progress_is_extended_up_to_the_limit(clock: FakeClock) -> None:
    handle = await watch(clock, soft_timeout=10.0, hard_timeout=20.0, max_extension=7.0, hang_timeout=3.0)
    run_for(handle, clock, 19.25, step_every=1.0)
    assert seconds_after_start(handle) == pytest.approx(20.0), "not extended before it is near"
    run_for(handle, clock, 0.25, step_every=1.0)  # 19.5 s: within two polls of the deadline
    assert seconds_after_start(handle) == pytest.approx(22.5), "extended by the progress window (3 s)"
    extend = handle.decisions[-1]
    assert extend.kind is DecisionKind.EXTEND and "20 s to 22.5 s" in extend.reason
    run_for(handle, clock, 10.0, step_every=1.0)
    assert seconds_after_start(handle) == pytest.approx(27.0), "never past hard_timeout + max_extension"
    assert [d.kind for d in handle.decisions].count(DecisionKind.EXTEND) == 3  # 22.5, 25.5, 27


async def test_a_looping_run_is_not_extended(clock: FakeClock) -> None:
    handle = await watch(clock, hard_timeout=5.0, max_extension=100.0, hang_timeout=3.0, loop_threshold=3)
    for i in range(1, 4):
        clock.advance(1.0)
        step(handle, i, ("same", {}))  # the third one is a loop; its warning waits for the next steer
    clock.advance(1.6)
    assert seconds_after_start(handle) == pytest.approx(5.0)
    assert [d.kind for d in handle.decisions] == [DecisionKind.LOOP]


async def test_an_idle_run_is_not_extended(clock: FakeClock) -> None:
    handle = await watch(clock, soft_timeout=2.0, hard_timeout=5.0, max_extension=100.0, hang_timeout=0)
    handle.record_step(1)
    clock.advance(4.8)  # the progress window is the soft timeout (2 s) when hang checks are off
    assert seconds_after_start(handle) == pytest.approx(5.0)


async def test_max_runtime_caps_the_deadline_and_its_extensions(clock: FakeClock) -> None:
    handle = await watch(clock, hard_factor=10, max_extension=100, max_runtime=12.0, hang_timeout=5.0)
    assert seconds_after_start(handle) == pytest.approx(12.0)
    assert handle.policy.latest == 12.0


# -- stop, and what the host sees ------------------------------------------------------------------


async def test_after_stop_nothing_changes_and_nothing_raises(clock: FakeClock) -> None:
    handle = await watch(clock, hard_timeout=5.0, hang_timeout=1.0, loop_threshold=2)
    before = handle.deadline()
    handle.stop()
    clock.advance(100)
    handle.record_step(1)
    handle.record_tool_start("x", {})
    handle.record_tool_start("x", {})
    assert handle.steer() == [] and handle.deadline() == before and handle.decisions == []
    handle.stop()
    assert handle.stopped


async def test_the_critic_keeps_recent_runs_decisions(clock: FakeClock) -> None:
    critic = RunCritic(CriticSettings(hang_timeout=1.0), history=2, clock=clock)
    handles = [await critic.monitor(make_info(i), 10.0) for i in range(3)]
    clock.advance(2.0)
    for handle in handles:
        handle.deadline()
        handle.stop()
    assert critic.handle(handles[0].run_id) is None, "only the last `history` finished runs are kept"
    assert [d.kind for d in critic.decisions(handles[2].run_id)] == [DecisionKind.HANG]
    assert critic.decisions("unknown") == [] and critic.running == []


async def test_decisions_are_logged_and_passed_to_on_decision(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, str]] = []
    critic = RunCritic(
        CriticSettings(hang_timeout=1.0),
        clock=clock,
        on_decision=lambda handle, decision: seen.append((handle.run_id, decision.kind.value)),
    )
    handle = await critic.monitor(make_info(), 10.0)
    clock.advance(1.5)
    with caplog.at_level(logging.INFO, logger="executus.critic"):
        handle.deadline()
    assert seen == [(handle.run_id, "hang")]
    [record] = caplog.records
    assert record.levelno == logging.WARNING and handle.run_id in record.getMessage()
    data = handle.decisions[0].as_dict()
    assert data["kind"] == "hang" and data["deadline"].endswith("+00:00")


async def test_a_failing_on_decision_never_reaches_the_core(clock: FakeClock) -> None:
    def boom(handle: Any, decision: Any) -> None:
        raise RuntimeError("host bug")

    critic = RunCritic(CriticSettings(hang_timeout=1.0), clock=clock, on_decision=boom)
    handle = await critic.monitor(make_info(), 10.0)
    clock.advance(2.0)
    assert handle.deadline() is not None


async def test_arguments_that_are_not_json_do_not_raise(clock: FakeClock) -> None:
    handle = await watch(clock, loop_threshold=2)
    odd = {"when": object(), 3: {1, 2}, "nested": [b"bytes", float("nan")]}
    handle.record_tool_start("odd", odd)
    handle.record_tool_start("odd", odd)
    assert kinds(handle) == ["loop"]


# -- delegated runs ----------------------------------------------------------------------------------


async def test_a_child_run_keeps_its_waiting_parent_alive_and_cuts_its_own_hang(clock: FakeClock) -> None:
    critic = RunCritic(CriticSettings(hang_timeout=5.0, steer_after=0), clock=clock)
    parent = await critic.monitor(make_info(0), 10.0)
    step(parent, 1, ("agent__helper", {"prompt": "go"}))
    child = await critic.monitor(make_info(1, parent_run_id=parent.run_id), 10.0)
    for i in range(1, 4):
        clock.advance(4.0)
        step(child, i, ("t", {"i": i}))
        assert parent.deadline() is None and child.deadline() is None
    clock.advance(6.0)  # the child hangs in its tool
    assert parent.deadline() is None, "the parent waits for its child's own critic"
    assert child.deadline() is not None and [d.kind for d in child.decisions] == [DecisionKind.HANG]
    child.stop()  # the child run ends; its tool call returns to the parent
    clock.advance(4.0)
    assert parent.deadline() is None, "the child's end counts as activity for the parent"
    clock.advance(1.5)
    assert parent.deadline() is not None and "delegated run" in (parent.reason or "")
