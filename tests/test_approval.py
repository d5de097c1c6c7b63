"""Human approval: a tool that requires approval pauses the run; `Executor.resume` continues it.

In one process without a checkpoint store (the executor keeps the paused run), and through a
checkpoint store that can ``load`` a run by id and ``pause`` one (a fresh executor, as another
process would be); approve, deny and edit; the tool's side effect happens exactly once.
"""

from __future__ import annotations

from typing import Any

from executus_core import (
    Agent,
    Approve,
    Deny,
    Edit,
    Executor,
    ModelResponse,
    RunEvent,
    RunStatus,
    ToolCall,
    tool,
)
from executus_core.testing import MemoryAudit, ScriptedModel

from .conftest import add, answer

ledger: list[tuple[str, int]] = []


@tool(requires_approval=lambda arguments: arguments["amount"] > 100)
def transfer(to: str, amount: int) -> str:
    """Move money."""
    ledger.append((to, amount))
    return f"sent {amount} to {to}"


def step(*calls: tuple[str, str, dict[str, Any]]) -> ModelResponse:
    return ModelResponse(tool_calls=[ToolCall(id=i, name=n, arguments=a) for i, n, a in calls])


def agent(model: ScriptedModel) -> Agent:
    return Agent(name="payer", model=model, tools=[transfer, add])


async def test_a_call_over_the_limit_pauses_and_an_approval_runs_it_once() -> None:
    ledger.clear()
    model = ScriptedModel(
        [
            step(
                ("t1", "transfer", {"to": "bob", "amount": 500}),
                ("t2", "transfer", {"to": "amy", "amount": 5}),
            ),
            answer("paid both"),
        ]
    )
    events: list[RunEvent] = []
    async with Executor(entry_points=False, plugins=[MemoryAudit()]) as ex:
        paused = await ex.run(agent(model), "pay", caller_id="u1", on_event=events.append)
        assert paused.status is RunStatus.AWAITING_APPROVAL, paused.error
        assert [(p.call_id, p.tool, p.arguments) for p in paused.pending] == [
            ("t1", "transfer", {"to": "bob", "amount": 500})
        ]
        assert ledger == [("amy", 5)]  # the call that needs no approval ran
        done = await ex.resume(paused.run_id, decisions={"t1": Approve(by="alice")}, on_event=events.append)
    assert done.status is RunStatus.OK and done.output == "paid both"
    assert ledger == [("amy", 5), ("bob", 500)]  # each exactly once
    assert len(model.requests) == 2
    types = [e.type for e in events]
    assert "approval.requested" in types and "approval.decided" in types
    decided = next(e for e in events if e.type == "approval.decided")
    assert decided.data == {"call_id": "t1", "tool": "transfer", "kind": "approve", "by": "alice"}


async def test_a_denial_goes_to_the_model_with_its_reason() -> None:
    ledger.clear()
    model = ScriptedModel([step(("t1", "transfer", {"to": "eve", "amount": 900})), answer("ok, not sent")])
    async with Executor(entry_points=False) as ex:
        paused = await ex.run(agent(model), "pay", caller_id="u1")
        done = await ex.resume(paused.run_id, decisions={"t1": Deny("unknown payee", by="bob")})
    assert done.status is RunStatus.OK and ledger == []
    told = model.requests[1].messages[-1]
    assert told.is_error and told.content == "error: transfer was not run: denied by bob: unknown payee"


async def test_an_edit_runs_the_call_with_the_new_arguments() -> None:
    ledger.clear()
    model = ScriptedModel([step(("t1", "transfer", {"to": "bob", "amount": 900})), answer("sent less")])
    async with Executor(entry_points=False) as ex:
        paused = await ex.run(agent(model), "pay", caller_id="u1")
        done = await ex.resume(
            paused.run_id, decisions={"t1": {"kind": "edit", "arguments": {"to": "bob", "amount": 90}}}
        )
    assert done.status is RunStatus.OK and ledger == [("bob", 90)]


async def test_no_decision_pauses_again_and_a_bad_decision_is_an_error_result() -> None:
    ledger.clear()
    model = ScriptedModel([step(("t1", "transfer", {"to": "bob", "amount": 900})), answer("x")])
    async with Executor(entry_points=False) as ex:
        paused = await ex.run(agent(model), "pay", caller_id="u1")
        again = await ex.resume(paused.run_id)
        assert again.status is RunStatus.AWAITING_APPROVAL and [p.call_id for p in again.pending] == ["t1"]
        bad = await ex.resume(paused.run_id, decisions={"t1": {"kind": "maybe"}})
        assert bad.status is RunStatus.ERROR and "decisions are not valid" in (bad.error or "")
        unknown = await ex.resume("no-such-run", decisions={})
        assert unknown.status is RunStatus.ERROR and "no paused or interrupted run" in (unknown.error or "")
    assert ledger == []


async def test_approval_waits_are_bounded_by_approval_timeout() -> None:
    ledger.clear()
    model = ScriptedModel([step(("t1", "transfer", {"to": "bob", "amount": 900})), answer("x")])
    async with Executor(entry_points=False, settings={"approval_timeout": 0.05}) as ex:
        paused = await ex.run(agent(model), "pay", caller_id="u1")
        import asyncio

        await asyncio.sleep(0.1)
        late = await ex.resume(paused.run_id, decisions={"t1": Approve()})
    assert late.status is RunStatus.ERROR and "approval_timeout" in (late.error or "")
    assert ledger == []


async def test_edited_arguments_are_validated_like_the_models() -> None:
    ledger.clear()
    model = ScriptedModel([step(("t1", "transfer", {"to": "bob", "amount": 900})), answer("x")])
    async with Executor(entry_points=False) as ex:
        paused = await ex.run(agent(model), "pay", caller_id="u1")
        done = await ex.resume(paused.run_id, decisions={"t1": Edit({"to": "bob"})})
    assert done.status is RunStatus.OK and ledger == []
    assert "amount: Field required" in (model.requests[1].messages[-1].content or "")


# `add` stays importable for the agent's tool list
_ = add
