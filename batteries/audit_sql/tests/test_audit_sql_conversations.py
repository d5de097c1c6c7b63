"""Conversations in SQL: each run's conversation id and transcript are stored, ``continue_run``
reads them back (from a new executor, as another process would), and a conversation's thread is
queryable in order."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import executus_audit_sql.plugin
from audit_sql_helpers import Backend, add, calls
from executus_audit_sql import SqlAudit
from executus_audit_sql.migrate import current_revision, upgrade
from typer.testing import CliRunner

from executus_core import Agent, Executor, ModelResponse, RunStatus
from executus_core.cli import create_app
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
    assert current_revision(url) == "0004"

    async def read() -> None:
        audit = SqlAudit(url=url, data_dir=tmp_path)
        try:
            kept = await audit.transcript("old-1")
            # a run recorded before transcripts were kept: known, ended, no messages
            assert kept is not None and kept.status is RunStatus.OK and kept.messages == []
            assert [t.run_id for t in await audit.thread("old-1")] == ["old-1"]
        finally:
            await audit.aclose()

    asyncio.run(read())


def _cli(*args: str, input: str | None = None) -> Any:
    app = create_app(entry_points=False, plugins=[executus_audit_sql.plugin])
    result = CliRunner().invoke(app, list(args), input=input, env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_a_chat_is_recorded_as_one_thread_and_runs_show_shows_it(backend: Backend, tmp_path: Path) -> None:
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps([{"text": "Hello, Ada."}, {"text": "Your name is Ada."}, {"text": "Bye."}]))
    where = ["-s", f"audit_sql.url={backend.url}"]
    if backend.db_schema:
        where += ["-s", f"audit_sql.db_schema={backend.db_schema}"]
    talk = _cli("chat", "-m", f"scripted:{replay}", *where, input="I am Ada.\nWhat is my name?\nquit\n")
    assert talk.exit_code == 0, talk.output
    conversation = talk.stderr.split("conversation ", 1)[1].split()[0]
    last = talk.stderr.split("executus chat --continue ", 1)[1].split("`")[0]  # the last turn, shortened
    more = _cli("run", "-m", f"scripted:{replay}", *where, "--continue", last, "Bye?")
    assert more.exit_code == 0 and more.stdout.strip() == "Bye.", more.output

    async def thread() -> list[Any]:
        audit = backend.audit()
        try:
            return await audit.thread(conversation)
        finally:
            await audit.aclose()

    turns = asyncio.run(thread())
    assert [t.prompt for t in turns] == ["I am Ada.", "What is my name?", "Bye?"]
    assert turns[0].run_id == conversation  # a chat's first turn names the conversation
    middle = turns[1].run_id

    shown = _cli("runs", "show", middle[:12], *where)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert f"conversation {conversation} · 3 runs" in shown.stdout
    thread_lines = [line for line in lines if "→" in line]
    assert len(thread_lines) == 3
    assert "I am Ada. → Hello, Ada." in thread_lines[0]
    assert thread_lines[1].startswith("▶") and "(this run)" in thread_lines[1]
    assert "What is my name? → Your name is Ada." in thread_lines[1]
    assert "Bye? → Bye." in thread_lines[2] and "(this run)" not in thread_lines[2]

    as_json = json.loads(_cli("runs", "show", middle, *where, "--json").stdout)
    assert as_json["run"]["conversation_id"] == conversation
    assert as_json["conversation"]["id"] == conversation
    assert [(r["prompt"], r["output"], r["this"]) for r in as_json["conversation"]["runs"]] == [
        ("I am Ada.", "Hello, Ada.", False),
        ("What is my name?", "Your name is Ada.", True),
        ("Bye?", "Bye.", False),
    ]


def test_runs_show_of_a_run_outside_any_conversation_has_no_thread(backend: Backend) -> None:
    async def one() -> str:
        async with Executor(settings={"audit_sql": backend.settings()}, disable=_others("audit_sql")) as ex:
            return (await ex.run(_agent(ModelResponse(text="hi")), "hello", caller_id="u1")).run_id

    run_id = asyncio.run(one())
    where = ["-s", f"audit_sql.url={backend.url}"]
    if backend.db_schema:
        where += ["-s", f"audit_sql.db_schema={backend.db_schema}"]
    shown = _cli("runs", "show", run_id, *where)
    assert shown.exit_code == 0 and "conversation" not in shown.stdout, shown.output
    assert json.loads(_cli("runs", "show", run_id, *where, "--json").stdout)["conversation"] is None


def test_a_long_prompt_and_answer_are_shortened_in_the_thread(backend: Backend) -> None:
    long = "word " * 100

    async def two() -> list[str]:
        async with Executor(settings={"audit_sql": backend.settings()}, disable=_others("audit_sql")) as ex:
            first = await ex.run(_agent(ModelResponse(text=long)), long, caller_id="u1")
            second = await ex.run(
                _agent(ModelResponse(text="ok")), "and?", caller_id="u1", continue_run=first.run_id
            )
            return [first.run_id, second.run_id]

    first, second = asyncio.run(two())
    where = ["-s", f"audit_sql.url={backend.url}"]
    if backend.db_schema:
        where += ["-s", f"audit_sql.db_schema={backend.db_schema}"]
    runs = json.loads(_cli("runs", "show", second, *where, "--json").stdout)["conversation"]["runs"]
    assert runs[0]["run_id"] == first and runs[0]["prompt"].endswith("…") and len(runs[0]["prompt"]) == 100
    assert runs[0]["output"].endswith("…") and runs[1]["this"] is True


def test_revision_0004_keeps_the_first_of_duplicate_step_and_tool_rows(tmp_path: Path) -> None:
    """Trails an older version stored twice (a resumed run's steps and results written again) keep
    their first row of each, and from then on the database keeps one."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, revision="0003")
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute(
            "INSERT INTO executus_runs (run_id, subject_id, name, caller_id, started_at, attempts, steps, "
            "tool_calls, input_tokens, output_tokens, thinking_tokens, status) "
            "VALUES ('dup', 's', 'a', 'u1', '2026-01-01 00:00:00', 2, 1, 1, 0, 0, 0, 'ok')"
        )
        rows = [
            (1, "step", None, 1, None, "first"),
            (2, "tool", "t", None, "c1", "first"),
            (3, "step", None, 1, None, "again"),
            (4, "tool", "t", None, "c1", "again"),
            (5, "event", "run.end", None, None, None),
        ]
        db.executemany(
            "INSERT INTO executus_run_events (run_id, seq, kind, name, iteration, call_id, text, at) "
            "VALUES ('dup', ?, ?, ?, ?, ?, ?, '2026-01-01 00:00:00')",
            rows,
        )
    upgrade(url)
    with sqlite3.connect(tmp_path / "old.db") as db:
        kept = db.execute("SELECT seq, text FROM executus_run_events ORDER BY seq").fetchall()
        assert kept == [(1, "first"), (2, "first"), (5, None)]
        db.execute(
            "INSERT INTO executus_run_events (run_id, seq, kind, name, iteration, call_id, text, at) "
            "VALUES ('dup', 9, 'tool', 't', NULL, 'c1', 'late', '2026-01-01 00:00:00') ON CONFLICT DO NOTHING"
        )
        assert db.execute("SELECT count(*) FROM executus_run_events WHERE call_id = 'c1'").fetchone() == (1,)
