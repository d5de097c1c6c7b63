"""``executus chat`` driven through stdin, and ``executus run --continue``: every turn is a run of one
conversation, linked in the audit."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from executus_core.cli import create_app
from executus_core.testing import MemoryAudit

KEYS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name in KEYS or (name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("chat_agents", None)


@pytest.fixture
def replay(tmp_path: Path) -> str:
    path = tmp_path / "chat.replay.json"
    path.write_text(json.dumps([{"text": "Hello, Ada."}, {"text": "Your name is Ada."}, {"text": "Bye."}]))
    return f"scripted:{path}"


def chat(audit: MemoryAudit, *args: str, input: str) -> Any:
    result = CliRunner().invoke(create_app(entry_points=False, plugins=[audit]), ["chat", *args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _conversation(stderr: str) -> str:
    for word in stderr.split("conversation ", 1)[1].split():
        return word
    raise AssertionError(stderr)


def test_each_line_is_a_turn_of_one_conversation_until_exit(replay: str) -> None:
    audit = MemoryAudit()
    result = chat(
        audit,
        "-m",
        replay,
        "--system",
        "Be brief.",
        "--caller",
        "ada",
        input="I am Ada.\n\n   \nWhat is my name?\nexit\nnever sent\n",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["Hello, Ada.", "Your name is Ada."]
    conversation = _conversation(result.stderr)
    runs = list(audit.runs.values())
    assert len(runs) == 2  # blank lines are skipped; nothing after exit is sent
    assert all(r.info is not None and r.info.conversation_id == conversation for r in runs)
    assert all(r.info is not None and r.info.caller_id == "ada" for r in runs)
    second = runs[1].messages
    assert second is not None
    assert [(m.role, m.content) for m in second] == [
        ("system", "Be brief."),
        ("user", "I am Ada."),
        ("assistant", "Hello, Ada."),
        ("user", "What is my name?"),
        ("assistant", "Your name is Ada."),
    ]
    assert f"executus runs show {runs[1].run_id[:12]}" in result.stderr


def test_the_end_of_input_and_quit_leave_the_chat(replay: str) -> None:
    audit = MemoryAudit()
    ended = chat(audit, "-m", replay, input="I am Ada.\n")
    assert ended.exit_code == 0 and ended.stdout.strip() == "Hello, Ada."
    quit_at_once = chat(audit, "-m", replay, input="QUIT\n")
    assert quit_at_once.exit_code == 0 and quit_at_once.stdout == ""
    assert len(audit.runs) == 1


def test_a_failed_turn_is_left_out_and_ctrl_c_stops_a_turn_not_the_chat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "chat_agents.py").write_text(
        textwrap.dedent(
            """
            import asyncio, os, signal

            from executus_core import Agent, ModelResponse, ToolCall, tool
            from executus_core.errors import ProviderResponseError
            from executus_core.testing import ScriptedModel

            @tool
            async def press_ctrl_c() -> str:
                "Presses Ctrl-C, then waits."
                os.kill(os.getpid(), signal.SIGINT)
                await asyncio.sleep(30)
                return "never"

            model = ScriptedModel([
                ModelResponse(text="first answer"),
                ProviderResponseError("the model is down", provider="scripted"),
                ModelResponse(tool_calls=[ToolCall(id="c1", name="press_ctrl_c", arguments={})]),
                ModelResponse(text="last answer"),
            ])
            agent = Agent(name="chatter", model=model, tools=[press_ctrl_c])
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    audit = MemoryAudit()
    result = chat(audit, "chat_agents:agent", input="one\ntwo\nthree\nfour\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["first answer", "last answer"]
    assert "the model is down" in result.stderr and "stopping this turn" in result.stderr
    assert result.stderr.count("this turn is not part of the conversation") == 2
    statuses = [r.stats.status.value for r in audit.runs.values() if r.stats is not None]
    assert statuses == ["ok", "error", "cancelled", "ok"]
    model = sys.modules["chat_agents"].model
    # the last turn continued from the last answer: the failed and the stopped turns are not in it
    assert [(m.role, m.content) for m in model.requests[-1].messages] == [
        ("user", "one"),
        ("assistant", "first answer"),
        ("user", "four"),
    ]
    assert len({r.info.conversation_id for r in audit.runs.values() if r.info is not None}) == 1


def test_run_continue_goes_on_with_an_earlier_runs_conversation(replay: str) -> None:
    audit = MemoryAudit()
    app = create_app(entry_points=False, plugins=[audit])
    first = CliRunner().invoke(app, ["run", "-m", replay, "--json", "I am Ada."])
    assert first.exit_code == 0, first.output
    first_id = json.loads(first.stdout)["run_id"]
    second = CliRunner().invoke(app, ["run", "-m", replay, "--continue", first_id, "What is my name?"])
    assert second.exit_code == 0, second.output
    assert second.stdout.strip() == "Your name is Ada." and f"continues {first_id[:12]}" in second.stderr
    (later,) = [r for r in audit.runs.values() if r.run_id != first_id]
    assert later.info is not None and later.info.conversation_id == first_id
    unknown = CliRunner().invoke(app, ["run", "-m", replay, "--continue", "nope", "hi"])
    assert unknown.exit_code == 1 and "no run 'nope' in the audit" in unknown.stderr
    # the chat goes on with it too, in the same conversation
    went_on = chat(audit, "-m", replay, "--continue", later.run_id, input="Bye?\n")
    assert went_on.exit_code == 0 and went_on.stdout.strip() == "Bye.", went_on.output
    assert _conversation(went_on.stderr) == first_id


def test_chat_continue_of_a_run_that_cannot_be_continued_stops_before_the_first_turn(replay: str) -> None:
    audit = MemoryAudit()
    unknown = chat(audit, "-m", replay, "--continue", "nope", input="hello\n")
    assert unknown.exit_code == 2 and "no run 'nope' in the audit" in unknown.stderr, unknown.output
    first = chat(audit, "-m", replay, "--caller", "ada", input="I am Ada.\n")
    (run_id,) = audit.runs
    other = chat(audit, "-m", replay, "--caller", "bob", "--continue", run_id, input="hello\n")
    assert first.exit_code == 0 and other.exit_code == 2 and "belongs to another caller" in other.stderr
    assert list(audit.runs) == [run_id]  # nothing else ran
