"""A call in flight when its run was interrupted is run again flagged (attempt 2, resumed), or, for
``@tool(on_resume="ask")``, not run again: the model is told the earlier attempt may have run."""

from __future__ import annotations

import asyncio

from executus_core import Agent, Executor, RunStatus, ToolContext, tool
from executus_core.testing import MemoryCheckpointStore, ScriptedModel

from .conftest import answer, call

seen: list[tuple[int, bool, str]] = []


class Started:
    event: asyncio.Event


started = Started()


@tool
async def charge(amount: int, ctx: ToolContext) -> str:
    """Charge a card (slowly, the first time)."""
    seen.append((ctx.attempt, ctx.resumed, ctx.idempotency_key))
    if ctx.attempt == 1:
        started.event.set()
        await asyncio.sleep(30)  # interrupted here
    return "charged"


@tool(on_resume="ask")
async def pay(amount: int) -> str:
    """Pay (never blindly twice)."""
    seen.append((0, False, "pay"))
    started.event.set()
    await asyncio.sleep(30)
    return "paid"


async def interrupt_then_recover(
    tool_name: str, store: MemoryCheckpointStore
) -> tuple[object, ScriptedModel]:
    seen.clear()
    started.event = asyncio.Event()
    model = ScriptedModel([call(tool_name, amount=5), answer("done")])
    agent = Agent(name="billing", model=model, tools=[charge, pay])
    first = Executor(entry_points=False, plugins=[store])
    first.register_agent(agent)
    task = asyncio.create_task(first.run(agent, "bill", caller_id="u1"))
    await started.event.wait()
    await first.shutdown()  # ends the run interrupted, its checkpoint kept
    interrupted = await task
    assert interrupted.status is RunStatus.INTERRUPTED
    second = Executor(entry_points=False, plugins=[store])
    second.register_agent(agent)
    async with second:
        (result,) = await second.recover()
    return result, model


async def test_an_interrupted_call_runs_again_flagged_with_the_same_key() -> None:
    result, _ = await interrupt_then_recover("charge", MemoryCheckpointStore())
    assert result.status is RunStatus.OK, result.error  # type: ignore[attr-defined]
    (first, again) = seen
    assert first[:2] == (1, False) and again[:2] == (2, True)
    assert first[2] == again[2]  # the same idempotency key


async def test_a_tool_that_asks_is_not_run_again_and_the_model_is_told() -> None:
    result, model = await interrupt_then_recover("pay", MemoryCheckpointStore())
    assert result.status is RunStatus.OK  # type: ignore[attr-defined]
    assert len(seen) == 1  # pay ran once, before the interruption
    told = model.requests[-1].messages[-1]
    assert told.is_error and "may already have taken effect" in (told.content or "")
