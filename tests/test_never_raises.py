"""Never raises, never hangs, never reads without a bound: the hard cases of issue 16, one test each.

Each of these escaped `Executor.run`, held a run past its deadline or grew without a bound before
the run was split into rooms around one guarded call (`executus_core.guard`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from executus_core import (
    Agent,
    Executor,
    ModelResponse,
    ProviderResponseError,
    RunEvent,
    RunStatus,
    ToolCall,
    ToolContext,
    tool,
)
from executus_core.testing import MemoryAudit, MemoryBudget, ScriptedModel

from .conftest import answer, call


class Custom(BaseException):
    """Not an Exception: what a careless library may raise."""


def ports() -> tuple[MemoryAudit, MemoryBudget]:
    return MemoryAudit(), MemoryBudget()


async def run_with(
    agent: Agent, *, on_event: Any = None, **settings: Any
) -> tuple[Any, MemoryAudit, MemoryBudget]:
    audit, budget = ports()
    async with Executor(
        entry_points=False, plugins=[audit, budget], settings={"port_timeout": 0.5, **settings}
    ) as ex:
        result = await asyncio.wait_for(ex.run(agent, "go", caller_id="u1", on_event=on_event), 10)
    return result, audit, budget


def closed_and_committed(audit: MemoryAudit, budget: MemoryBudget) -> bool:
    return all(r.closed for r in audit.recorders.values()) and len(budget.commits) == 1


async def test_systemexit_from_a_sync_tool_that_uses_argparse_is_a_tool_error() -> None:
    @tool
    def parse(flag: str) -> str:
        """A tool that parses arguments the argparse way."""
        argparse.ArgumentParser(exit_on_error=False).parse_args([flag])  # exits: unknown option
        return "parsed"

    model = ScriptedModel([call("parse", flag="--nope"), answer("done")])
    result, audit, budget = await run_with(Agent(name="a", model=model, tools=[parse]))
    assert result.status is RunStatus.OK and result.output == "done"
    assert "SystemExit" in (result.messages[-2].content or "")
    assert closed_and_committed(audit, budget)


async def test_a_custom_baseexception_from_an_async_tool_is_a_tool_error() -> None:
    @tool
    async def boom() -> str:
        """Raises a BaseException."""
        raise Custom("not an Exception")

    model = ScriptedModel([call("boom"), answer("done")])
    result, audit, budget = await run_with(Agent(name="a", model=model, tools=[boom]))
    assert result.status is RunStatus.OK
    assert "Custom: not an Exception" in (result.messages[-2].content or "")
    assert closed_and_committed(audit, budget)


async def test_a_baseexception_from_on_event_is_a_warning_and_the_run_goes_on() -> None:
    def on_event(event: RunEvent) -> None:
        raise Custom("consumer broke")

    model = ScriptedModel([call("add", a=1, b=2), answer("done")])
    from .conftest import add

    result, audit, budget = await run_with(Agent(name="a", model=model, tools=[add]), on_event=on_event)
    assert result.status is RunStatus.OK and result.output == "done"
    assert any("on_event consumer" in w and "Custom" in w for w in result.warnings), result.warnings
    assert closed_and_committed(audit, budget)


async def test_a_tool_raising_cancellederror_itself_is_not_the_callers_cancellation() -> None:
    @tool
    async def cancels() -> str:
        """Raises CancelledError on its own."""
        raise asyncio.CancelledError()

    model = ScriptedModel([call("cancels"), answer("done")])
    result, _, _ = await run_with(Agent(name="a", model=model, tools=[cancels]))
    assert result.status is RunStatus.OK and result.output == "done"
    assert "CancelledError" in (result.messages[-2].content or "")


async def test_a_bad_run_id_is_an_error_result() -> None:
    async with Executor(entry_points=False) as ex:
        result = await ex.run(
            Agent(name="a", model=ScriptedModel([answer("x")])), "go", caller_id="u1", run_id=123
        )  # type: ignore[arg-type]
    assert result.status is RunStatus.ERROR and "run_id must be a non-empty string" in (result.error or "")


async def test_a_tool_appending_garbage_to_artifacts_still_gets_a_result() -> None:
    @tool
    def attach(ctx: ToolContext) -> str:
        """Appends a dict where an Artifact belongs."""
        ctx.artifacts.append({"name": "x"})  # type: ignore[arg-type]
        ctx.add_artifact("ok.txt", "fine")
        return "attached"

    model = ScriptedModel([call("attach"), answer("done")])
    result, _, _ = await run_with(Agent(name="a", model=model, tools=[attach]))
    assert result.status is RunStatus.OK
    assert [a.name for a in result.artifacts] == ["ok.txt"]
    assert any("not an Artifact" in w for w in result.warnings)


async def test_an_async_tool_deaf_to_cancellation_is_abandoned_at_the_deadline() -> None:
    finished = asyncio.Event()

    @tool
    async def deaf() -> str:
        """Swallows every cancellation for 3 seconds."""
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                await asyncio.sleep(end - time.monotonic())
            except asyncio.CancelledError:
                continue
        finished.set()
        return "late"

    model = ScriptedModel([call("deaf"), answer("done")])
    started = time.monotonic()
    result, audit, budget = await run_with(Agent(name="a", model=model, tools=[deaf], hard_timeout=1.0))
    seconds = time.monotonic() - started
    assert result.status is RunStatus.TIMEOUT and "tool deaf (still running)" in (result.error or "")
    assert seconds < 2.0, seconds  # was 12 s past a 1 s timeout
    assert not finished.is_set()
    assert closed_and_committed(audit, budget)
    await asyncio.wait_for(finished.wait(), 4)  # it ends by itself; nothing is left behind


class CuttingCritic:
    """A critic whose deadline is cut to 'now' when the second step is recorded (after the
    deadline watcher's first poll)."""

    executus_name = "cutting_critic"

    def __init__(self) -> None:
        self.cut = False

    from executus_core import hookimpl

    @hookimpl
    def executus_critic(self, settings: Any) -> Any:
        return self

    async def monitor(self, info: Any, soft_timeout: float) -> Any:
        return self

    def record_step(self, iteration: int) -> None:
        self.cut = iteration >= 2

    def record_tool_start(self, name: str, arguments: Any) -> None:
        pass

    def steer(self) -> list[Any]:
        return []

    def deadline(self) -> Any:
        from datetime import UTC, datetime, timedelta

        return datetime.now(UTC) - timedelta(seconds=1) if self.cut else None

    def stop(self) -> None:
        pass


async def test_a_critics_cut_takes_effect_before_the_next_model_call_or_tool() -> None:
    @tool(inline=True)
    def quick(n: int) -> int:
        """Returns at once."""
        return n

    steps = [call("quick", call_id=f"c{i}", n=i) for i in range(20)] + [answer("done")]
    model = ScriptedModel(steps, delay=0.001)
    critic = CuttingCritic()
    async with Executor(entry_points=False, plugins=[critic], settings={"deadline_poll": 5.0}) as ex:
        result = await ex.run(Agent(name="a", model=model, tools=[quick], max_steps=30), "go", caller_id="u1")
    assert result.status is RunStatus.TIMEOUT and "critic's deadline" in (result.error or "")
    assert len(model.requests) == 2  # was all 21: the cut waited for the watcher's next poll
    assert len([m for m in result.messages if m.role == "tool"]) == 1  # step 2's tool never started


async def test_leaving_stream_during_the_budget_check_cancels_the_run() -> None:
    class SlowBudget(MemoryBudget):
        async def check(self, caller_id: str) -> None:
            await asyncio.sleep(0.3)
            await super().check(caller_id)

    budget = SlowBudget()
    model = ScriptedModel([answer("done")])
    async with Executor(entry_points=False, plugins=[budget]) as ex:
        stream = ex.stream(Agent(name="a", model=model), "go", caller_id="u1")
        consumer = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.1)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await stream.aclose()
        await asyncio.sleep(0.5)
    assert model.requests == []  # the whole run used to execute


async def test_a_slow_stream_reader_holds_a_bounded_number_of_events() -> None:
    @tool(inline=True)
    def tick() -> str:
        """Returns at once."""
        return "t"

    steps = [
        ModelResponse(tool_calls=[ToolCall(id=f"c{i}-{j}", name="tick") for j in range(20)])
        for i in range(20)
    ]
    model = ScriptedModel([*steps, answer("done")])
    agent = Agent(name="a", model=model, tools=[tick], max_steps=50)
    async with Executor(entry_points=False, settings={"event_queue_size": 50}) as ex:
        stream = ex.stream(agent, "go", caller_id="u1")
        first = await stream.__anext__()
        await asyncio.sleep(1.0)  # the reader stalls while the run makes ~850 events
        rest = [event async for event in stream]
    result = rest[-1].data["result"]
    assert first.type == "run.start" and result.status is RunStatus.OK
    assert len(rest) <= 52  # was every event, unbounded (100,004 for a slow consumer)
    assert any("fell behind" in w for w in result.warnings), result.warnings


async def test_the_models_fan_out_is_bounded() -> None:
    running = 0
    most = 0

    @tool
    async def work(n: int) -> str:
        """Work a little."""
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return str(n)

    fan = ModelResponse(
        tool_calls=[ToolCall(id=f"c{i}", name="work", arguments={"n": i}) for i in range(5000)]
    )
    model = ScriptedModel([fan, answer("done")])
    result, _, _ = await run_with(
        Agent(name="a", model=model, tools=[work]), max_tool_calls_per_step=40, max_concurrent_tools=4
    )
    assert result.status is RunStatus.OK
    tool_messages = [m for m in result.messages if m.role == "tool"]
    assert len(tool_messages) == 5000  # every call is answered...
    assert sum(not m.is_error for m in tool_messages) == 40  # ...but only 40 ran
    assert sum("max_tool_calls_per_step" in (m.content or "") for m in tool_messages) == 4960
    assert most == 4  # was 5,000 at once


async def test_a_huge_provider_error_is_cut_in_the_result() -> None:
    huge = "x" * (50 * 1024 * 1024)
    model = ScriptedModel([ProviderResponseError(huge, provider="scripted")])
    result, _, _ = await run_with(Agent(name="a", model=model))
    assert result.status is RunStatus.ERROR
    assert len(result.error or "") < 5000 and "max_error_chars" in (result.error or "")
