"""100 runs at once in one executor: every one ends ok with its own transcript and its own audit trail."""

from __future__ import annotations

import asyncio
import random
import re

from executus_core import (
    Agent,
    Executor,
    Message,
    ModelRequest,
    ModelResponse,
    RunStatus,
    ToolCall,
    Usage,
    tool,
)
from executus_core.testing import MemoryAudit, MemoryBudget, MemoryCheckpointStore, MemoryCritic

RUNS = 100


class NumberModel:
    """One model object shared by every run. Each run's prompt is ``number N``; the model asks the
    ``double`` tool for N, then ``offset`` with the result, then answers with what came back, waiting a
    small random time before each answer so the runs interleave."""

    id = "number-model"

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}  # run id -> the number its requests carried
        self.rng = random.Random(1234)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await asyncio.sleep(self.rng.uniform(0, 0.02))
        prompt = next(m.content for m in request.messages if m.role == "user")
        number = int(re.fullmatch(r"number (\d+)", prompt or "").group(1))  # type: ignore[union-attr]
        # A request must only ever carry its own run's messages.
        assert self.seen.setdefault(request.run_id, number) == number, "a request mixed two runs"
        results = [m for m in request.messages if m.role == "tool"]
        usage = Usage(input_tokens=number, output_tokens=1)
        if not results:
            call = ToolCall(id=f"double-{number}", name="double", arguments={"n": number})
            return ModelResponse(tool_calls=[call], usage=usage)
        if len(results) == 1:
            doubled = int(results[0].content or "")
            call = ToolCall(id=f"offset-{number}", name="offset", arguments={"n": doubled})
            return ModelResponse(tool_calls=[call], usage=usage)
        return ModelResponse(text=f"number {number} -> {results[-1].content}", usage=usage)


@tool
async def double(n: int) -> int:
    """Double a number, slowly."""
    await asyncio.sleep(random.uniform(0, 0.01))
    return 2 * n


@tool
def offset(n: int) -> int:
    """Add 1000 (a synchronous tool, run in a worker thread)."""
    return n + 1000


async def test_100_runs_at_once_do_not_interfere() -> None:
    audit, store, critic = MemoryAudit(), MemoryCheckpointStore(), MemoryCritic(hard_timeout=60)
    budget = MemoryBudget(max_runs=10)  # per caller: 10 callers x 10 runs fit exactly
    model = NumberModel()
    agent = Agent(name="numbers", instructions="Work it out.", model=model, tools=[double, offset])
    async with Executor(plugins=[audit, store, critic, budget], entry_points=False) as executor:
        results = await asyncio.gather(
            *(executor.run(agent, f"number {n}", caller_id=f"caller-{n % 10}") for n in range(RUNS))
        )
        assert executor.running == []

    assert [r.status for r in results] == [RunStatus.OK] * RUNS, [r.error for r in results if not r.ok]
    assert len({r.run_id for r in results}) == RUNS
    for n, result in enumerate(results):
        # the transcript is this run's own, in order
        assert result.output == f"number {n} -> {2 * n + 1000}"
        assert [(m.role, m.content) for m in result.messages if m.role in ("system", "user")] == [
            ("system", "Work it out."),
            ("user", f"number {n}"),
        ]
        tool_messages = [m for m in result.messages if m.role == "tool"]
        assert [(m.tool_call_id, m.content) for m in tool_messages] == [
            (f"double-{n}", str(2 * n)),
            (f"offset-{n}", str(2 * n + 1000)),
        ]
        assert (result.stats.steps, result.stats.tool_calls, result.stats.input_tokens) == (3, 2, 3 * n)
        assert model.seen[result.run_id] == n

        # the audit trail is this run's own
        trail = audit.run(result.run_id)
        assert trail.info is not None and trail.info.caller_id == f"caller-{n % 10}"
        assert trail.steps == [1, 2, 3]
        assert trail.tool_calls == [
            (f"double-{n}", "double", str(2 * n)),
            (f"offset-{n}", "offset", str(2 * n + 1000)),
        ]
        assert trail.stats is not None and trail.stats.output == result.output
        assert trail.event_types()[0] == "run.start" and trail.event_types()[-1] == "run.end"
        step_events = [payload for type_, payload in trail.events if type_ == "step"]
        assert [e["input_tokens"] for e in step_events] == [n, n, n]
        tool_events = [payload["call_id"] for type_, payload in trail.events if type_.startswith("tool.")]
        assert sorted(tool_events) == sorted([f"double-{n}", f"offset-{n}"] * 2)
        assert trail.errors == [] and result.warnings == []

        # the critic watched each run on its own, and each checkpoint was completed
        assert critic.handles[result.run_id].steps == [1, 2, 3]
        assert [name for name, _ in critic.handles[result.run_id].tools] == ["double", "offset"]
        assert store.runs[result.run_id].state == "completed"
        # the prompt, then each step's tool calls before they run and their results after, and the answer
        assert store.runs[result.run_id].saves == 6

    # each caller was charged for its own ten runs
    for caller in range(10):
        runs, tokens, _ = budget.used(f"caller-{caller}")
        numbers = range(caller, RUNS, 10)
        assert runs == 10 and tokens == sum(3 * n + 3 for n in numbers)


async def test_cancelling_some_of_many_runs_leaves_the_others_alone() -> None:
    started = asyncio.Event()
    gate = asyncio.Event()
    count = [0]

    class GatedModel:
        id = "gated"

        async def complete(self, request: ModelRequest) -> ModelResponse:
            count[0] += 1
            if count[0] == 40:
                started.set()
            await gate.wait()
            return ModelResponse(text=f"done {request.messages[-1].content}")

    audit = MemoryAudit()
    async with Executor(plugins=[audit], entry_points=False) as executor:
        ids = [f"run-{n}" for n in range(40)]
        tasks = [
            asyncio.ensure_future(
                executor.run(Agent(name="g", model=GatedModel()), f"p{n}", caller_id="u", run_id=run_id)
            )
            for n, run_id in enumerate(ids)
        ]
        await asyncio.wait_for(started.wait(), 5)
        cancelled = ids[::4]
        assert all(executor.cancel(run_id) for run_id in cancelled)
        gate.set()
        results = await asyncio.gather(*tasks)
    for run_id, result in zip(ids, results, strict=True):
        if run_id in cancelled:
            assert result.status is RunStatus.CANCELLED
        else:
            assert result.status is RunStatus.OK and result.output == f"done p{run_id.split('-')[1]}"
        stats = audit.run(run_id).stats
        assert stats is not None and stats.status is result.status
    assert [m.content for m in results[1].messages] == ["p1", "done p1"]
    assert all(isinstance(m, Message) for r in results for m in r.messages)
