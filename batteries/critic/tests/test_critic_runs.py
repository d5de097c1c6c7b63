"""End to end: real runs through ``Executor()``, with the critic loaded from its installed entry point.

Timeouts are fractions of a second and the core's deadline watcher polls every 0.02 s; every
assertion on time is a wide bound (a hang is cut "well before the hard timeout", not "at 0.31 s").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from critic_helpers import scripted, tool_call, user_texts
from executus_critic import DecisionKind, RunCritic

from executus_core import (
    Agent,
    ConfigError,
    Executor,
    ModelRequest,
    ModelResponse,
    PluginError,
    RunEvent,
    RunStatus,
    tool,
)

MakeExecutor = Callable[..., Executor]


@tool
def lookup(n: int) -> str:
    """Look up item n."""
    return f"item {n}"


@tool
async def wait_forever() -> str:
    """A tool that never returns (a hung connection)."""
    await asyncio.Event().wait()
    return "unreachable"


@tool
def search(query: str) -> str:
    """Search for something."""
    return "no results"


def critic_of(executor: Executor) -> RunCritic:
    assert executor.ports.critic is not None, "the critic battery was not loaded from its entry point"
    name, critic = executor.ports.critic
    assert name == "critic" and isinstance(critic, RunCritic)
    return critic


def kinds(critic: RunCritic, run_id: str) -> list[str]:
    return [d.kind.value for d in critic.decisions(run_id)]


class Events:
    """Collects a run's events (the host's ``on_event``)."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def __call__(self, event: RunEvent) -> None:
        self.events.append(event)

    def of(self, type: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.type == type]


def test_the_installed_battery_is_the_executors_critic(make_executor: MakeExecutor) -> None:
    executor = make_executor()
    critic_of(executor)
    record = {r.name: r for r in executor.plugins}["critic"]
    assert record.distribution == "executus-critic" and record.status == "enabled"
    assert set(record.ports) == {"critic", "commands"}


# -- a slow but alive run ----------------------------------------------------------------------------


async def test_a_slow_run_is_nudged_at_the_soft_timeout_and_then_finishes(
    make_executor: MakeExecutor,
) -> None:
    def model(call: int, request: ModelRequest) -> ModelResponse:
        if any(m.role == "user" and "Wrap up" in (m.content or "") for m in request.messages):
            return ModelResponse(text="done, as asked")
        return tool_call("lookup", f"c{call}", n=call)

    events = Events()
    async with make_executor(hang_timeout=5.0) as executor:
        agent = Agent(
            name="slow", model=scripted(model, delay=0.03), tools=[lookup], soft_timeout=0.3, max_steps=200
        )
        started = time.monotonic()
        result = await executor.run(agent, "work slowly", caller_id="u1", on_event=events)
        took = time.monotonic() - started
        critic = critic_of(executor)
    assert result.status is RunStatus.OK and result.output == "done, as asked", result.error
    [nudge] = user_texts(result.messages)
    assert "Wrap up now" in nudge
    assert [m.role for m in result.messages][-3:] == ["tool", "user", "assistant"]
    assert events.of("steer") == [{"messages": [nudge]}]
    [decision] = critic.decisions(result.run_id)
    assert decision.kind is DecisionKind.WRAP_UP and decision.elapsed >= 0.3
    assert took >= 0.3 and result.stats.steps >= 3
    assert events.of("critic") == [], "with the core's hard timeout in force, the deadline never moved"


async def test_a_run_making_progress_is_extended_past_the_critics_deadline(
    make_executor: MakeExecutor,
) -> None:
    def model(call: int, request: ModelRequest) -> ModelResponse:
        return tool_call("lookup", f"c{call}", n=call) if call <= 16 else ModelResponse(text="all 16 done")

    settings = {"steer_after": 0, "hard_timeout": 0.3, "hang_timeout": 1.0}
    events = Events()
    async with make_executor(**settings, max_extension=30) as executor:
        agent = Agent(name="busy", model=scripted(model, delay=0.04), tools=[lookup], max_steps=100)
        result = await executor.run(agent, "sixteen lookups", caller_id="u1", on_event=events)
        decisions = critic_of(executor).decisions(result.run_id)
    assert result.status is RunStatus.OK and result.output == "all 16 done", result.error
    assert result.stats.runtime_seconds > 0.3, "the run went past the critic's first deadline"
    assert decisions and {d.kind for d in decisions} == {DecisionKind.EXTEND}
    assert len(events.of("critic")) >= 2, "the core reports the first deadline and each extension"

    # the same run without room to extend ends at the critic's deadline
    async with make_executor(**settings, max_extension=0) as executor:
        agent = Agent(name="busy", model=scripted(model, delay=0.04), tools=[lookup], max_steps=100)
        cut = await executor.run(agent, "sixteen lookups", caller_id="u1")
    assert cut.status is RunStatus.TIMEOUT and "deadline" in (cut.error or "")
    assert cut.stats.steps < 16


# -- a hang ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("own_deadline", [False, True], ids=["core-hard-timeout", "critic-deadline"])
async def test_a_hanging_tool_ends_the_run_near_the_hang_timeout(
    make_executor: MakeExecutor, own_deadline: bool
) -> None:
    settings: dict[str, Any] = {"hang_timeout": 0.3}
    if own_deadline:
        settings["hard_timeout"] = 30.0
    events = Events()
    async with make_executor(**settings) as executor:
        agent = Agent(
            name="stuck",
            model=scripted(lambda call, _: tool_call("wait_forever", "c1")),
            tools=[wait_forever],
            hard_timeout=30.0,
        )
        started = time.monotonic()
        result = await executor.run(agent, "call the slow tool", caller_id="u1", on_event=events)
        took = time.monotonic() - started
        decisions = critic_of(executor).decisions(result.run_id)
    assert result.status is RunStatus.TIMEOUT
    assert "wait_forever" in (result.error or "") and "still running" in (result.error or "")
    assert 0.3 <= took < 10.0, (
        f"cut after {took:.2f}s: near the 0.3 s hang timeout, far from the 30 s hard timeout"
    )
    assert decisions[-1].kind is DecisionKind.HANG
    assert "since tool 'wait_forever' started" in decisions[-1].reason
    assert events.of("critic"), "the core reports the deadline the critic pulled in"


async def test_a_model_that_never_answers_is_a_hang_too(make_executor: MakeExecutor) -> None:
    async with make_executor(hang_timeout=0.3) as executor:
        agent = Agent(
            name="mute", model=scripted(lambda c, r: ModelResponse(text="late"), delay=60), hard_timeout=30
        )
        started = time.monotonic()
        result = await executor.run(agent, "hello?", caller_id="u1")
        took = time.monotonic() - started
        [decision] = critic_of(executor).decisions(result.run_id)
    assert result.status is RunStatus.TIMEOUT and "model call 1" in (result.error or "")
    assert 0.3 <= took < 10.0
    assert decision.kind is DecisionKind.HANG and "since a model call started" in decision.reason


# -- a loop ------------------------------------------------------------------------------------------


async def test_a_looping_model_is_warned_and_then_cut(make_executor: MakeExecutor) -> None:
    looping = scripted(lambda call, _: tool_call("search", f"c{call}", query="the same thing"), delay=0.01)
    events = Events()
    async with make_executor(loop_threshold=3) as executor:
        agent = Agent(name="loop", model=looping, tools=[search], max_steps=200, hard_timeout=30.0)
        started = time.monotonic()
        result = await executor.run(agent, "find it", caller_id="u1", on_event=events)
        took = time.monotonic() - started
        critic = critic_of(executor)
    assert result.status is RunStatus.TIMEOUT, result.error
    [warning] = user_texts(result.messages)
    assert "search" in warning and "3 times in a row" in warning
    warned_at = [m.role for m in result.messages].index("user", 1)
    assert sum(m.role == "tool" for m in result.messages[:warned_at]) == 3, "warned at the third call"
    assert sum(m.role == "tool" for m in result.messages) < 50, "cut soon after the warning"
    assert kinds(critic, result.run_id) == ["loop", "cut"]
    assert events.of("steer") == [{"messages": [warning]}] and events.of("critic")
    assert took < 10.0


async def test_a_model_that_heeds_the_warning_finishes(make_executor: MakeExecutor) -> None:
    def model(call: int, request: ModelRequest) -> ModelResponse:
        if "in a loop" in (request.messages[-1].content or ""):
            return ModelResponse(text="nothing found; here is what I know")
        return tool_call("search", f"c{call}", query="the same thing")

    async with make_executor(loop_threshold=4) as executor:
        agent = Agent(name="loop", model=scripted(model), tools=[search], max_steps=50)
        result = await executor.run(agent, "find it", caller_id="u1")
        critic = critic_of(executor)
    assert result.status is RunStatus.OK and result.output == "nothing found; here is what I know"
    assert kinds(critic, result.run_id) == ["loop"]


# -- a healthy run -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings", [{}, {"hard_factor": 4, "hang_timeout": 5}], ids=["defaults", "own-deadline"]
)
async def test_a_healthy_run_is_never_touched(make_executor: MakeExecutor, settings: dict[str, Any]) -> None:
    def model(call: int, request: ModelRequest) -> ModelResponse:
        return tool_call("lookup", f"c{call}", n=call) if call <= 3 else ModelResponse(text="3 items")

    results = []
    for disable in ((), ("critic",)):
        events = Events()
        async with make_executor(disable=disable, **settings) as executor:
            agent = Agent(name="ok", model=scripted(model), tools=[lookup], soft_timeout=5.0)
            result = await executor.run(agent, "three lookups", caller_id="u1", on_event=events)
            if not disable:
                assert critic_of(executor).decisions(result.run_id) == []
                assert events.of("steer") == []
                assert len(events.of("critic")) == (1 if settings else 0)  # its own deadline, once
            else:
                assert executor.ports.critic is None
        results.append(result)
    watched, unwatched = results
    assert watched.status is RunStatus.OK and watched.warnings == []
    assert [(m.role, m.content) for m in watched.messages] == [
        (m.role, m.content) for m in unwatched.messages
    ]


async def test_enabled_false_turns_it_off(make_executor: MakeExecutor) -> None:
    async with make_executor(enabled=False) as executor:
        assert executor.ports.critic is None
        agent = Agent(name="ok", model=scripted(lambda c, r: ModelResponse(text="hi")))
        assert (await executor.run(agent, "hi", caller_id="u1")).ok


def test_bad_settings_stop_the_executor_with_the_key_named(make_executor: MakeExecutor) -> None:
    with pytest.raises((PluginError, ConfigError)) as info:
        make_executor(hang_timout=3)
    assert "hang_timout" in str(info.value) and "critic" in str(info.value)
    with pytest.raises((PluginError, ConfigError)) as info:
        make_executor(steer_after=90)
    assert '"90s"' in str(info.value)


# -- many runs, one critic -------------------------------------------------------------------------


async def test_concurrent_runs_get_their_own_decisions(make_executor: MakeExecutor) -> None:
    def looping(call: int, request: ModelRequest) -> ModelResponse:
        return tool_call("search", f"c{call}", query="same")

    def healthy(call: int, request: ModelRequest) -> ModelResponse:
        return tool_call("lookup", f"c{call}", n=call) if call <= 3 else ModelResponse(text="fine")

    async with make_executor(loop_threshold=3) as executor:
        runs = []
        for i in range(10):
            agent = Agent(
                name=f"a{i}",
                model=scripted(looping if i % 2 else healthy, delay=0.01),
                tools=[search, lookup],
                max_steps=200,
                hard_timeout=30.0,
            )
            runs.append(executor.run(agent, "go", caller_id=f"u{i}"))
        results = await asyncio.gather(*runs)
        critic = critic_of(executor)
        for i, result in enumerate(results):
            if i % 2:
                assert result.status is RunStatus.TIMEOUT and kinds(critic, result.run_id) == ["loop", "cut"]
            else:
                assert result.status is RunStatus.OK and kinds(critic, result.run_id) == []
        assert critic.running == []


# -- delegation ------------------------------------------------------------------------------------


async def test_a_parent_waiting_on_a_busy_child_run_is_not_a_hang(make_executor: MakeExecutor) -> None:
    def child(call: int, request: ModelRequest) -> ModelResponse:
        return tool_call("lookup", f"c{call}", n=call) if call <= 8 else ModelResponse(text="child done")

    def parent(call: int, request: ModelRequest) -> ModelResponse:
        if call == 1:
            return tool_call("agent__helper", "d1", prompt="do the slow part")
        return ModelResponse(text=f"parent done: {request.messages[-1].content}")

    async with make_executor(hang_timeout=0.3) as executor:
        executor.register_agent(Agent(name="helper", model=scripted(child, delay=0.08), tools=[lookup]))
        lead = Agent(name="lead", model=scripted(parent), subagent_palette=["helper"], hard_timeout=30.0)
        result = await executor.run(lead, "delegate", caller_id="u1")
        critic = critic_of(executor)
        child_handles = [h for h in critic.finished if h.info.parent_run_id == result.run_id]
    assert result.status is RunStatus.OK and result.output == "parent done: child done", result.error
    assert result.stats.runtime_seconds > 0.3, "the child ran longer than the parent's hang timeout"
    assert critic.decisions(result.run_id) == []
    assert len(child_handles) == 1 and child_handles[0].decisions == []


async def test_a_hung_child_is_cut_and_its_parent_reads_the_error(make_executor: MakeExecutor) -> None:
    def parent(call: int, request: ModelRequest) -> ModelResponse:
        if call == 1:
            return tool_call("agent__stuck", "d1", prompt="wait")
        return ModelResponse(text=f"parent saw: {request.messages[-1].content}")

    async with make_executor(hang_timeout=0.3) as executor:
        executor.register_agent(
            Agent(
                name="stuck",
                model=scripted(lambda c, r: tool_call("wait_forever", "w")),
                tools=[wait_forever],
            )
        )
        lead = Agent(name="lead", model=scripted(parent), subagent_palette=["stuck"], hard_timeout=30.0)
        started = time.monotonic()
        result = await executor.run(lead, "delegate", caller_id="u1")
        took = time.monotonic() - started
        critic = critic_of(executor)
        [child] = [h for h in critic.finished if h.info.parent_run_id == result.run_id]
    assert result.status is RunStatus.OK, result.error
    assert "ended timeout" in (result.output or "") and "wait_forever" in (result.output or "")
    assert [d.kind for d in child.decisions] == [DecisionKind.HANG]
    assert critic.decisions(result.run_id) == [], "the parent was waiting, not hung"
    assert took < 10.0
