"""The loop's side of ownership (issue 15): a store that says the run belongs to another worker stops
it at once — when the checkpointer is made, when a resumed run is picked up, and when the run ends
(no delivery then) — and recover() claims runs in batches a store can take a limit for."""

from __future__ import annotations

from typing import Any

from executus_core import (
    Agent,
    DeliveryTarget,
    Executor,
    RunStatus,
    RunTakenOver,
)
from executus_core.testing import MemoryAudit, MemoryCheckpointStore, MemoryDelivery, ScriptedModel

from .conftest import add, answer, call


class HeldElsewhere(MemoryCheckpointStore):
    async def for_run(self, info: Any, agent: Any) -> Any:
        raise RunTakenOver("held by worker-2", run_id=info.run_id, owner="worker-2")


async def test_a_run_another_worker_holds_never_calls_the_model() -> None:
    model = ScriptedModel([answer("x")])
    async with Executor(entry_points=False, plugins=[HeldElsewhere()]) as ex:
        result = await ex.run(Agent(name="a", model=model), "go", caller_id="u1")
    assert result.status is RunStatus.INTERRUPTED and "worker-2" in (result.error or "")
    assert model.requests == []  # was: a warning, and the run went on with no checkpoint


async def test_a_run_taken_over_as_it_ends_is_not_delivered() -> None:
    class TakenAtTheEnd(MemoryCheckpointStore):
        async def for_run(self, info: Any, agent: Any) -> Any:
            checkpointer = await super().for_run(info, agent)

            async def complete() -> None:
                raise RunTakenOver("taken", run_id=info.run_id, owner="worker-2")

            checkpointer.complete = complete  # type: ignore[method-assign]
            return checkpointer

    delivery = MemoryDelivery()
    async with Executor(entry_points=False, plugins=[TakenAtTheEnd(), delivery]) as ex:
        result = await ex.run(
            Agent(name="a", model=ScriptedModel([answer("done")])),
            "go",
            caller_id="u1",
            delivery=DeliveryTarget(kind="memory"),
        )
    assert result.status is RunStatus.INTERRUPTED and "neither completed nor delivered" in (
        result.error or ""
    )
    assert delivery.delivered == []  # was: delivered as ok by a worker that no longer owned the run


async def test_recover_claims_in_batches_of_recovery_concurrency() -> None:
    asked: list[Any] = []

    class Counting(MemoryCheckpointStore):
        async def interrupted(self, limit: int | None = None) -> list[Any]:
            asked.append(limit)
            return []

    async with Executor(entry_points=False, plugins=[Counting()], settings={"recovery_concurrency": 3}) as ex:
        assert await ex.recover() == []
    assert asked == [3]


async def test_a_worker_that_lost_the_run_mid_step_records_nothing_of_it() -> None:
    """A paused worker wakes after another took its run over: the tool it finished is not the run's
    (the other worker runs it again), so the audit must not show its result, nor a ``run.end``."""

    class TakenAfterTheTool(MemoryCheckpointStore):
        async def for_run(self, info: Any, agent: Any) -> Any:
            checkpointer = await super().for_run(info, agent)
            saves = 0
            save = checkpointer.save

            async def save_until_taken(state: Any) -> None:
                nonlocal saves
                saves += 1
                if saves == 3:  # the prompt, the step's calls; then the tool's result: refused
                    raise RunTakenOver("taken", run_id=info.run_id, owner="worker-2")
                await save(state)

            checkpointer.save = save_until_taken  # type: ignore[method-assign]
            return checkpointer

    audit = MemoryAudit()
    model = ScriptedModel([call("add", "c1", a=1, b=2), answer("3")])
    async with Executor(entry_points=False, plugins=[TakenAfterTheTool(), audit]) as ex:
        result = await ex.run(Agent(name="a", model=model, tools=[add]), "go", caller_id="u1")
    assert result.status is RunStatus.INTERRUPTED
    recorded = audit.run(result.run_id)
    assert recorded.steps == [1]  # the step was saved before the tool ran: it is the run's
    assert recorded.tool_calls == []  # was: [("c1", "add", "3")], a result the run never saved
    types = recorded.event_types()
    assert types[-1] == "run.taken_over" and "run.end" not in types  # was: run.end "interrupted"
    assert recorded.stats is not None and recorded.stats.status is RunStatus.INTERRUPTED
    assert recorded.messages is None  # its transcript is not the run's: the new owner's is
