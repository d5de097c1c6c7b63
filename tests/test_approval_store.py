"""Approval through a checkpoint store: a paused run kept in the store, loaded by id from another
executor (as another process would), and the conformance check of the ``pause`` capability
catching stores that get it wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from executus_core import Agent, Approve, Deny, Edit, Executor, ModelResponse, RunStatus, ToolCall, tool
from executus_core.testing import ScriptedModel
from executus_core.testing.conformance import checkpoint
from executus_core.testing.conformance._harness import run_check
from executus_core.testing.memory import MemoryCheckpointer, MemoryCheckpointStorage, MemoryCheckpointStore
from executus_core.types import Interrupted, PendingCall, RunInfo

ledger: list[tuple[str, int]] = []


@tool(requires_approval=lambda arguments: arguments["amount"] > 100)
def transfer(to: str, amount: int) -> str:
    """Move money."""
    ledger.append((to, amount))
    return f"sent {amount} to {to}"


def script() -> ScriptedModel:
    return ScriptedModel(
        [
            ModelResponse(
                tool_calls=[ToolCall(id="t1", name="transfer", arguments={"to": "bob", "amount": 500})]
            ),
            ModelResponse(text="done"),
        ]
    )


def executor(store: MemoryCheckpointStore) -> Executor:
    return Executor(plugins=[store], entry_points=False)


async def pause_one(store: MemoryCheckpointStore, model: ScriptedModel) -> str:
    async with executor(store) as first:
        paused = await first.run(Agent(name="payer", model=model, tools=[transfer]), "pay", caller_id="u1")
    assert paused.status is RunStatus.AWAITING_APPROVAL, paused.error
    return paused.run_id


@pytest.mark.parametrize(
    ("decision", "sent", "said"),
    [
        (Approve(by="alice"), [("bob", 500)], "sent 500 to bob"),
        (Deny("unknown payee", by="bob"), [], "denied by bob: unknown payee"),
        (Edit({"to": "bob", "amount": 90}, by="carol"), [("bob", 90)], "sent 90 to bob"),
    ],
)
def test_a_paused_run_is_kept_by_the_store_and_resumed_by_another_executor(
    decision: Any, sent: list[tuple[str, int]], said: str
) -> None:
    ledger.clear()
    storage = MemoryCheckpointStorage()
    model = script()

    async def main() -> None:
        run_id = await pause_one(MemoryCheckpointStore(storage=storage), model)
        saved = storage.runs[run_id]
        assert saved.state == "paused" and saved.paused_at is not None
        assert [p.call_id for p in saved.pending] == ["t1"]
        assert await MemoryCheckpointStore(storage=storage).interrupted() == []  # recover() never takes it
        async with executor(MemoryCheckpointStore(storage=storage)) as second:  # knows nothing of the run
            done = await second.resume(
                run_id,
                decisions={"t1": decision},
                agents={"payer": Agent(name="payer", model=model, tools=[transfer])},
            )
        assert done.status is RunStatus.OK, done.error
        assert storage.runs[run_id].state == "completed"
        assert said in (model.requests[1].messages[-1].content or "")

    asyncio.run(main())
    assert ledger == sent


def test_a_paused_run_left_waiting_stays_paused_after_a_resume_without_decision() -> None:
    ledger.clear()
    storage = MemoryCheckpointStorage()
    model = script()

    async def main() -> None:
        run_id = await pause_one(MemoryCheckpointStore(storage=storage), model)
        async with executor(MemoryCheckpointStore(storage=storage)) as second:
            again = await second.resume(
                run_id, agents={"payer": Agent(name="payer", model=model, tools=[transfer])}
            )
        assert again.status is RunStatus.AWAITING_APPROVAL, again.error
        assert storage.runs[run_id].state == "paused"
        assert await MemoryCheckpointStore(storage=storage).interrupted() == []

    asyncio.run(main())
    assert ledger == []


# The conformance check catches stores that get pausing wrong.


def shared(store: type[MemoryCheckpointStore]) -> Callable[..., MemoryCheckpointStore]:
    storage = MemoryCheckpointStorage()
    return lambda **options: store(storage=storage, **options)


class PausesLikeRelease(MemoryCheckpointer):
    """A pause that only gives the run up: recover() then takes it, and pauses it again at once."""

    async def pause(self, pending: list[PendingCall]) -> None:
        await self.release()


class PausingStore(MemoryCheckpointStore):
    async def for_run(self, info: RunInfo, agent: Agent) -> MemoryCheckpointer:
        made = await super().for_run(info, agent)
        return PausesLikeRelease(self, info.run_id, made.epoch)


class LoadsWithoutClaiming(MemoryCheckpointStore):
    """Reads the run but leaves it paused: two processes may approve (and run) it."""

    async def load(self, run_id: str) -> Interrupted | None:
        with self._lock:
            saved = self.runs.get(run_id)
            before = None if saved is None else (saved.state, saved.held, saved.owner, saved.epoch)
        item = await super().load(run_id)
        if saved is not None and before is not None:
            with self._lock:
                saved.state, saved.held, saved.owner, saved.epoch = before
        return item


class ForgetsPausedAt(MemoryCheckpointStore):
    async def load(self, run_id: str) -> Interrupted | None:
        item = await super().load(run_id)
        return None if item is None else item.model_copy(update={"paused_at": None})


@pytest.mark.parametrize(
    ("store", "words"),
    [
        (PausingStore, ("interrupted() handed out a run paused for approval",)),
        (LoadsWithoutClaiming, ("loaded twice",)),
        (ForgetsPausedAt, ("paused_at",)),
    ],
)
def test_the_pause_check_catches(store: type[MemoryCheckpointStore], words: tuple[str, ...]) -> None:
    with pytest.raises(AssertionError) as caught:
        run_check(checkpoint.check_checkpoint_paused_run_waits_for_load, shared(store), timeout=20)
    for word in words:
        assert word in str(caught.value)


def test_a_store_without_pause_skips_the_check() -> None:
    class NoLoad(MemoryCheckpointStore):
        load = None  # type: ignore[assignment]

    assert "pause" not in checkpoint.capabilities(
        NoLoad(), MemoryCheckpointer(MemoryCheckpointStore(), "x", 0)
    )
    assert "pause" in checkpoint.capabilities(
        MemoryCheckpointStore(), MemoryCheckpointer(MemoryCheckpointStore(), "x", 0)
    )
