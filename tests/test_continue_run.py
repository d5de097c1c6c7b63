"""Continuing a run by its id (``continue_run=``), and the host's ``history_trimmer``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from executus_core import Agent, Executor, Message, RunInfo, RunStatus, RunTranscript, tool
from executus_core.testing import MemoryAudit, ScriptedModel

from .conftest import add, answer, call


async def test_a_conversation_over_three_runs_by_run_id() -> None:
    model = ScriptedModel(
        [answer("Hi Ada."), call("add", a=2, b=2), answer("4, Ada."), answer("You asked 2 + 2.")]
    )
    agent = Agent(name="chat", instructions="Be brief.", model=model, tools=[add])
    audit = MemoryAudit()
    async with Executor(entry_points=False, plugins=[audit]) as ex:
        one = await ex.run(agent, "I am Ada.", caller_id="u1")
        two = await ex.run(agent, "2 + 2?", caller_id="u1", continue_run=one.run_id)
        three = await ex.run(agent, "What did I ask?", caller_id="u1", continue_run=two.run_id)
    assert [r.status for r in (one, two, three)] == [RunStatus.OK] * 3, [r.error for r in (one, two, three)]
    last = model.requests[-1].messages
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
    assert last[1].content == "I am Ada." and last[5].content == "4" and last[-1].content == "What did I ask?"
    # the first run had no conversation id: the conversation is named after it
    assert audit.run(one.run_id).info.conversation_id is None
    assert audit.run(two.run_id).info.conversation_id == one.run_id
    assert audit.run(three.run_id).info.conversation_id == one.run_id
    # the audit keeps each run's whole transcript, which is what the next run read
    assert audit.run(three.run_id).messages == three.messages


async def test_continue_run_keeps_the_earlier_runs_conversation_id() -> None:
    model = ScriptedModel([answer("a"), answer("b")])
    agent = Agent(name="chat", model=model)
    audit = MemoryAudit()
    async with Executor(entry_points=False, plugins=[audit]) as ex:
        one = await ex.run(agent, "x", caller_id="u1", conversation_id="chat-7")
        two = await ex.run(agent, "y", caller_id="u1", continue_run=one.run_id)
        other = await ex.run(agent, "z", caller_id="u1", continue_run=one.run_id, conversation_id="elsewhere")
    assert two.ok and audit.run(two.run_id).info.conversation_id == "chat-7"
    assert other.status is RunStatus.ERROR and "leave conversation_id out" in (other.error or "")


def _agent(*texts: str) -> Agent:
    return Agent(name="chat", model=ScriptedModel([answer(t) for t in texts]))


async def test_continue_run_refuses_what_it_cannot_continue_with_an_error_result() -> None:
    audit = MemoryAudit()
    async with Executor(entry_points=False, plugins=[audit]) as ex:
        one = await ex.run(_agent("a"), "x", caller_id="u1")
        unknown = await ex.run(_agent("b"), "y", caller_id="u1", continue_run="nope")
        other_caller = await ex.run(_agent("b"), "y", caller_id="u2", continue_run=one.run_id)
        both = await ex.run(_agent("b"), "y", caller_id="u1", continue_run=one.run_id, history=one.messages)
        failed = await ex.run(Agent(name="f", model=ScriptedModel([])), "x", caller_id="u1")
        after_failed = await ex.run(_agent("b"), "y", caller_id="u1", continue_run=failed.run_id)
        not_a_string = await ex.run(_agent("b"), "y", caller_id="u1", continue_run=42)  # type: ignore[arg-type]
    assert failed.status is RunStatus.ERROR
    for result, words in [
        (unknown, "no run 'nope' in the audit ('memory_audit')"),
        (other_caller, "belongs to another caller"),
        (both, "not both"),
        (after_failed, "ended error: only a run that ended ok can be continued"),
        (not_a_string, "continue_run must be a run id"),
    ]:
        assert result.status is RunStatus.ERROR and words in (result.error or ""), result.error
        assert result.stats.steps == 0


async def test_continue_run_refuses_a_run_still_running() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @tool
    async def wait() -> str:
        """Wait."""
        started.set()
        await release.wait()
        return "done"

    audit = MemoryAudit()
    slow = Agent(name="slow", model=ScriptedModel([call("wait"), answer("ok")]), tools=[wait])
    async with Executor(entry_points=False, plugins=[audit]) as ex:
        first = asyncio.ensure_future(ex.run(slow, "go", caller_id="u1", run_id="slow-1"))
        await started.wait()
        here = await ex.run(_agent("b"), "y", caller_id="u1", continue_run="slow-1")
        release.set()
        assert (await first).ok
    assert here.status is RunStatus.ERROR and "still running" in (here.error or ""), here.error


class _StaleAudit(MemoryAudit):
    """An audit that answers what a shared audit shows about runs of other processes."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(name="stale")
        self.answers = answers

    async def transcript(self, run_id: str) -> RunTranscript | None:
        found = self.answers.get(run_id)
        if isinstance(found, BaseException):
            raise found
        return found


async def test_continue_run_says_why_for_runs_of_other_processes() -> None:
    def made(run_id: str, status: RunStatus | None, messages: list[Message]) -> RunTranscript:
        info = RunInfo(run_id=run_id, subject_id="chat", name="chat", caller_id="u1")
        return RunTranscript(info=info, status=status, messages=messages)

    said = [Message.user("hi"), Message.assistant("hello")]
    audit = _StaleAudit(
        {
            "running": made("running", None, said),
            "paused": made("paused", RunStatus.AWAITING_APPROVAL, said),
            "interrupted": made("interrupted", RunStatus.INTERRUPTED, said),
            "empty": made("empty", RunStatus.OK, []),
            "broken": RuntimeError("database is down"),
        }
    )
    async with Executor(entry_points=False, plugins=[audit]) as ex:
        results = {
            run_id: await ex.run(_agent("b"), "y", caller_id="u1", continue_run=run_id)
            for run_id in ("running", "paused", "interrupted", "empty", "broken")
        }
    expected = {
        "running": "has not ended",
        "paused": "waiting for approval",
        "interrupted": "was interrupted",
        "empty": "holds no messages for run empty",
        "broken": "database is down",
    }
    for run_id, words in expected.items():
        result = results[run_id]
        assert result.status is RunStatus.ERROR and words in (result.error or ""), (run_id, result.error)


async def test_continue_run_without_an_audit_that_keeps_transcripts_says_what_to_install() -> None:
    async with Executor(entry_points=False) as ex:
        result = await ex.run(_agent("b"), "y", caller_id="u1", continue_run="abc")
    assert result.status is RunStatus.ERROR
    assert "no audit is installed" in (result.error or "") and "history=" in (result.error or "")


# -- the host's history_trimmer -------------------------------------------------------------------


def _history(turns: int) -> list[Message]:
    history: list[Message] = []
    for i in range(turns):
        history += [Message.user(f"q{i}"), Message.assistant(f"a{i}")]
    return history


async def test_a_history_trimmer_chooses_what_is_sent() -> None:
    seen: list[tuple[int, str]] = []

    async def keep_first_and_last(messages: list[Message], agent: Agent) -> list[Message]:
        seen.append((len(messages), agent.name))
        summary = Message.user(f"(summary of {len(messages) - 4} earlier messages)")
        return [*messages[:2], summary, Message.assistant("noted"), *messages[-2:]]

    model = ScriptedModel([answer("ok")])
    async with Executor(entry_points=False, history_trimmer=keep_first_and_last) as ex:
        result = await ex.run(
            Agent(name="c", instructions="Be brief.", model=model),
            "next",
            caller_id="u1",
            history=_history(10),
        )
    assert result.ok and seen == [(20, "c")]
    sent = [m.content for m in model.requests[0].messages]
    assert sent == ["Be brief.", "q0", "a0", "(summary of 16 earlier messages)", "noted", "q9", "a9", "next"]


async def test_a_history_trimmer_is_not_called_without_history_and_its_answer_is_still_capped() -> None:
    calls: list[int] = []

    def keep_all(messages: list[Message], agent: Agent) -> list[Message]:
        calls.append(len(messages))
        return messages

    model = ScriptedModel([answer("ok"), answer("ok")])
    agent = Agent(name="c", model=model)
    settings = {"max_history_messages": 4}
    async with Executor(entry_points=False, history_trimmer=keep_all, settings=settings) as ex:
        first = await ex.run(agent, "hi", caller_id="u1")
        second = await ex.run(agent, "next", caller_id="u1", history=_history(5))
    assert first.ok and second.ok and calls == [10]
    assert [m.content for m in model.requests[1].messages] == ["q3", "a3", "q4", "a4", "next"]
    assert any("max_history_messages" in w for w in second.warnings)


@pytest.mark.parametrize(
    ("trimmer", "words"),
    [
        (lambda messages, agent: 1 / 0, "ZeroDivisionError"),
        (lambda messages, agent: None, "must be a list of Message"),
        (lambda messages, agent: [{"role": "robot"}], "is not a message"),
    ],
    ids=["raises", "returns-none", "returns-garbage"],
)
async def test_a_history_trimmer_that_fails_ends_the_run_before_anything_is_sent(
    trimmer: Any, words: str
) -> None:
    model = ScriptedModel([answer("never")])
    async with Executor(entry_points=False, history_trimmer=trimmer) as ex:
        result = await ex.run(Agent(name="c", model=model), "next", caller_id="u1", history=_history(2))
    assert result.status is RunStatus.ERROR and "history_trimmer" in (result.error or "")
    assert words in (result.error or ""), result.error
    assert model.requests == []


async def test_a_history_trimmer_that_hangs_is_bounded_by_the_runs_hard_timeout() -> None:
    async def hangs(messages: list[Message], agent: Agent) -> list[Message]:
        await asyncio.sleep(60)
        return messages

    model = ScriptedModel([answer("never")])
    async with Executor(entry_points=False, history_trimmer=hangs) as ex:
        result = await ex.run(
            Agent(name="c", model=model, hard_timeout=0.2), "next", caller_id="u1", history=_history(2)
        )
    assert result.status is RunStatus.ERROR and "history_trimmer" in (result.error or "")
    assert model.requests == []


async def test_the_trimmer_also_trims_a_continued_run() -> None:
    def last_two(messages: list[Message], agent: Agent) -> list[Message]:
        return messages[-2:]

    model = ScriptedModel([answer("one"), answer("two"), answer("three")])
    agent = Agent(name="c", model=model)
    audit = MemoryAudit()
    async with Executor(entry_points=False, plugins=[audit], history_trimmer=last_two) as ex:
        one = await ex.run(agent, "1", caller_id="u1")
        two = await ex.run(agent, "2", caller_id="u1", continue_run=one.run_id)
        three = await ex.run(agent, "3", caller_id="u1", continue_run=two.run_id)
    assert three.ok
    assert [m.content for m in model.requests[-1].messages] == ["2", "two", "3"]
