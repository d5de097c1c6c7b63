"""Conversations in SQL: each run's conversation id and transcript are stored, ``continue_run``
reads them back (from a new executor, as another process would), and a conversation's thread is
queryable in order."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from audit_sql_helpers import Backend, add, calls
from executus_audit_sql import SqlAudit
from executus_audit_sql.migrate import current_revision, upgrade

from executus_core import Agent, Executor, ModelResponse, RunStatus
from executus_core.testing import ScriptedModel


def _others(*keep: str) -> list[str]:
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="executus")} - set(keep))


def _agent(*responses: ModelResponse) -> Agent:
    return Agent(name="chat", instructions="Be brief.", model=ScriptedModel(list(responses)), tools=[add])


async def test_a_conversation_over_three_runs_continued_from_the_audit_with_checkpoint_sql(
    backend: Backend, tmp_path: Path
) -> None:
    settings = {
        "audit_sql": backend.settings(),
        "checkpoint_sql": {"url": f"sqlite:///{tmp_path / 'checkpoints.db'}"},
    }
    turns = [
        ("I am Ada. My db is postgresql://ada:hunter2@db/app", [ModelResponse(text="Hi Ada.")]),
        ("2 + 2?", [calls(("c1", "add", {"a": 2, "b": 2})), ModelResponse(text="4, Ada.")]),
        ("What did I ask?", [ModelResponse(text="You asked 2 + 2.")]),
    ]
    results = []
    last_model: ScriptedModel | None = None
    for prompt, responses in turns:
        # a new executor per turn: nothing is kept in memory between them, as between processes
        agent = _agent(*responses)
        async with Executor(settings=settings, disable=_others("audit_sql", "checkpoint_sql")) as ex:
            assert ex.ports.checkpoints is not None and ex.ports.checkpoints[0] == "checkpoint_sql"
            previous = results[-1].run_id if results else None
            results.append(await ex.run(agent, prompt, caller_id="ada", continue_run=previous))
            # the checkpoint store drops a run's messages when it ends: the audit is the source
            store = ex.ports.checkpoints[1]
            assert await store.transcript(results[-1].run_id) == []  # type: ignore[attr-defined]
        assert isinstance(agent.model, ScriptedModel)
        last_model = agent.model
    assert [r.status for r in results] == [RunStatus.OK] * 3, [r.error for r in results]
    assert last_model is not None
    sent = last_model.requests[-1].messages
    assert [m.role for m in sent] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    # what the audit stores (and so what a continued run resends) is masked like the trail
    assert sent[1].content == "I am Ada. My db is postgresql://ada:***@db/app"
    assert sent[5].content == "4" and sent[-1].content == "What did I ask?"

    audit = backend.audit()
    try:
        first = results[0].run_id
        records = [await audit.get_run(r.run_id) for r in results]
        assert [r.conversation_id for r in records if r is not None] == [None, first, first]
        thread = await audit.thread(first)
        assert [t.run_id for t in thread] == [r.run_id for r in results]
        assert [t.prompt for t in thread] == [p.replace("hunter2", "***") for p, _ in turns]
        assert [t.output for t in thread] == ["Hi Ada.", "4, Ada.", "You asked 2 + 2."]
        kept = await audit.transcript(results[-1].run_id)
        assert kept is not None and kept.status is RunStatus.OK and len(kept.messages) == 9
        assert kept.info.conversation_id == first
        assert await audit.transcript("no-such-run") is None
    finally:
        await audit.aclose()


async def test_a_pruned_run_takes_its_transcript_with_it(backend: Backend) -> None:
    async with Executor(settings={"audit_sql": backend.settings()}, disable=_others("audit_sql")) as ex:
        result = await ex.run(_agent(ModelResponse(text="hi")), "hello", caller_id="u1")
    audit = backend.audit()
    try:
        kept = await audit.transcript(result.run_id)
        assert kept is not None and [m.content for m in kept.messages] == ["Be brief.", "hello", "hi"]
        assert await audit.prune(-1) >= 1  # everything finished before "tomorrow"
        assert await audit.transcript(result.run_id) is None
    finally:
        await audit.aclose()


def test_an_audit_database_of_revision_0002_upgrades_with_its_runs_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, revision="0002")
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute(
            "INSERT INTO executus_runs (run_id, subject_id, name, caller_id, started_at, attempts, steps, "
            "tool_calls, input_tokens, output_tokens, thinking_tokens, status) "
            "VALUES ('old-1', 's', 'chat', 'u1', '2026-01-01 00:00:00', 1, 0, 0, 0, 0, 0, 'ok')"
        )
    upgrade(url)
    assert current_revision(url) == "0003"

    async def read() -> None:
        audit = SqlAudit(url=url, data_dir=tmp_path)
        try:
            kept = await audit.transcript("old-1")
            # a run recorded before transcripts were kept: known, ended, no messages
            assert kept is not None and kept.status is RunStatus.OK and kept.messages == []
            assert [t.run_id for t in await audit.thread("old-1")] == ["old-1"]
        finally:
            await audit.aclose()

    import asyncio

    asyncio.run(read())
