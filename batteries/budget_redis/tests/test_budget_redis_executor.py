"""End to end: `Executor()` picks the battery up through its entry point and enforces the limits,
in one process and across two processes sharing one Redis."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from typing import Any

import pytest
from executus_budget_redis import RedisBudget

from executus_core import Agent, Executor, ModelResponse, RunStatus, ToolCall, Usage, tool
from executus_core.testing import ScriptedModel


def answer(text: str = "done", tokens: tuple[int, int] = (10, 5)) -> ModelResponse:
    return ModelResponse(text=text, usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1]))


@pytest.fixture
def executor(redis_url: str, key_prefix: str, other_plugins: list[str]) -> Any:
    """``executor(**limits)``: an Executor with only this battery enabled, loaded by its entry point."""

    def build(**limits: Any) -> Executor:
        settings = {"budget_redis": {"url": redis_url, "key_prefix": key_prefix, **limits}}
        return Executor(settings=settings, disable=other_plugins)

    return build


def the_budget(ex: Executor) -> RedisBudget:
    ((name, budget),) = ex.ports.budgets
    assert name == "budget_redis" and isinstance(budget, RedisBudget)
    return budget


async def test_the_entry_point_installs_the_budget(executor: Any) -> None:
    async with executor(max_runs=5) as ex:
        budget = the_budget(ex)
        assert budget.config.key_prefix.startswith("executus:test:budget_redis:")
        assert budget.limits_for("anyone").windows[0].max_runs == 5
    record = {r.name: r for r in ex.plugins}["budget_redis"]
    assert (record.status, record.distribution, record.ports) == (
        "enabled",
        "executus-budget-redis",
        ["budget", "commands"],
    )


async def test_a_caller_over_its_runs_is_refused_before_any_model_call(executor: Any) -> None:
    model = ScriptedModel([answer()], per_run=True)
    agent = Agent(name="echo", model=model)
    async with executor(max_runs=2, window="1h") as ex:
        results = [await ex.run(agent, "hi", caller_id="u1") for _ in range(3)]
    assert [r.status for r in results] == [RunStatus.OK, RunStatus.OK, RunStatus.BUDGET_EXCEEDED]
    refused = results[2]
    assert refused.error is not None
    assert refused.error.startswith(
        "budget 'budget_redis' refused the run (max_runs): caller u1 started 2 of 2 runs this hour; resets in "
    )
    assert "(retry after " in refused.error
    assert len(model.requests) == 2  # the refused run never reached the model


async def test_runs_are_metered_with_their_tokens_and_runtime(executor: Any) -> None:
    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return q.upper()

    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[ToolCall(id="c1", name="lookup", arguments={"q": "x"})],
                usage=Usage(input_tokens=100, output_tokens=20, thinking_tokens=15),
            ),
            answer(tokens=(150, 30)),
        ],
        per_run=True,
    )
    agent = Agent(name="looker", model=model, tools=[lookup])
    async with executor(max_tokens=1000) as ex:
        results = [await ex.run(agent, "go", caller_id="u2") for _ in range(2)]
        usage = await the_budget(ex).usage("u2")
    assert all(r.status is RunStatus.OK and not r.warnings for r in results)
    (window,) = usage.windows
    assert (window.runs, window.tokens, window.max_tokens) == (2, 2 * 300, 1000)
    assert window.seconds > 0
    assert usage.in_flight == 0  # every admitted run released its slot when it was committed


async def test_runs_in_flight_are_limited(executor: Any) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @tool
    async def wait_for_release() -> str:
        """Hold the run until the test lets it go."""
        started.set()
        await release.wait()
        return "released"

    model = ScriptedModel(
        [ModelResponse(tool_calls=[ToolCall(id="c1", name="wait_for_release", arguments={})]), answer()],
        per_run=True,
    )
    agent = Agent(name="holder", model=model, tools=[wait_for_release])
    async with executor(max_concurrent=1) as ex:
        first = asyncio.create_task(ex.run(agent, "hold", caller_id="u3"))
        await started.wait()
        second = await ex.run(agent, "hold", caller_id="u3")
        other = await ex.run(Agent(name="quick", model=ScriptedModel([answer()])), "hi", caller_id="u4")
        release.set()
        assert (await first).status is RunStatus.OK
        third = await ex.run(agent, "hold", caller_id="u3")
    assert second.status is RunStatus.BUDGET_EXCEEDED
    assert second.error is not None and "caller u3 has 1 of 1 runs in flight" in second.error
    assert other.status is RunStatus.OK  # another caller has slots of its own
    assert third.status is RunStatus.OK  # the first run's commit freed its slot


WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    from executus_core import Agent, Executor, ModelResponse, Usage
    from executus_core.testing import ScriptedModel

    async def main():
        settings, disable, caller = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
        reply = ModelResponse(text="ok", usage=Usage(input_tokens=7, output_tokens=3))
        agent = Agent(name="worker", model=ScriptedModel([reply], per_run=True, delay=0.05))
        async with Executor(settings=settings, disable=disable) as ex:
            results = await asyncio.gather(*(ex.run(agent, "hi", caller_id=caller) for _ in range(5)))
        print(json.dumps([r.status.value for r in results]))

    asyncio.run(main())
    """
)


async def test_two_processes_share_one_callers_limits(
    executor: Any, redis_url: str, key_prefix: str, other_plugins: list[str]
) -> None:
    caller = f"shared-{uuid.uuid4().hex[:6]}"
    limits = {"max_runs": 4, "max_tokens": 10_000}
    settings = {"budget_redis": {"url": redis_url, "key_prefix": key_prefix, **limits}}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        json.dumps(settings),
        json.dumps(other_plugins),
        caller,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    reply = ModelResponse(text="ok", usage=Usage(input_tokens=7, output_tokens=3))
    agent = Agent(name="worker", model=ScriptedModel([reply], per_run=True, delay=0.05))
    async with executor(**limits) as ex:
        mine = await asyncio.gather(*(ex.run(agent, "hi", caller_id=caller) for _ in range(5)))
        out, err = await child.communicate()
        assert child.returncode == 0, err.decode()
        theirs = json.loads(out)
        usage = await the_budget(ex).usage(caller)
    statuses = [r.status.value for r in mine] + theirs
    # ten runs in two processes, four admitted in all: the limit is one count in Redis
    assert statuses.count("ok") == 4 and statuses.count("budget_exceeded") == 6, statuses
    assert (usage.windows[0].runs, usage.windows[0].tokens, usage.in_flight) == (4, 40, 0)
