"""Conversations: a run continues from an earlier run's messages with ``history=``."""

from __future__ import annotations

from executus_core import Agent, Executor, Message, RunStatus
from executus_core.testing import MemoryAudit, ScriptedModel

from .conftest import add, answer, call


async def test_a_conversation_over_three_runs() -> None:
    model = ScriptedModel(
        [answer("Hi Ada."), call("add", a=2, b=2), answer("4, Ada."), answer("You asked 2 + 2.")]
    )
    agent = Agent(name="chat", instructions="Be brief.", model=model, tools=[add])
    audit = MemoryAudit()
    async with Executor(entry_points=False, plugins=[audit]) as ex:
        one = await ex.run(agent, "I am Ada.", caller_id="u1", conversation_id="conv-1")
        two = await ex.run(agent, "2 + 2?", caller_id="u1", history=one.messages, conversation_id="conv-1")
        three = await ex.run(
            agent, "What did I ask?", caller_id="u1", history=two.messages, conversation_id="conv-1"
        )
    assert [r.status for r in (one, two, three)] == [RunStatus.OK] * 3
    assert three.output == "You asked 2 + 2."
    last = model.requests[-1].messages
    # one system message (the agent's), then every earlier turn, then the new prompt
    assert [m.role for m in last] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert last[1].content == "I am Ada." and last[-1].content == "What did I ask?"
    assert {audit.run(r.run_id).info.conversation_id for r in (one, two, three)} == {"conv-1"}


async def test_a_long_history_is_cut_at_a_turn_and_says_so() -> None:
    history = []
    for i in range(10):
        history += [Message.user(f"q{i}"), Message.assistant(f"a{i}")]
    model = ScriptedModel([answer("ok")])
    async with Executor(entry_points=False, settings={"max_history_messages": 5}) as ex:
        result = await ex.run(Agent(name="c", model=model), "next", caller_id="u1", history=history)
    sent = model.requests[0].messages
    assert sent[0].content == "q8" and sent[-1].content == "next"  # whole turns only
    assert any("max_history_messages" in w for w in result.warnings)


async def test_a_bad_history_is_an_error_result() -> None:
    async with Executor(entry_points=False) as ex:
        result = await ex.run(
            Agent(name="c", model=ScriptedModel([answer("x")])),
            "go",
            caller_id="u1",
            history=[{"role": "robot"}],
        )
    assert result.status is RunStatus.ERROR and "history[0] is not a message" in (result.error or "")
