"""``executus approve`` and ``executus deny``: the real command, in subprocesses, against a SQLite
checkpoint store (executus-checkpoint-sql, loaded by its entry point).

Each command is a process of its own, as a person's shell would run them: ``executus run`` pauses
the run and exits; ``approve`` and ``deny`` answer it later, rebuilding the agent from where it was
loaded (``payagent:agent``, saved with the checkpoint). ``ledger`` counts the payments really made.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXECUTUS = Path(sys.executable).with_name("executus")

AGENT = textwrap.dedent(
    '''
    """An agent that asks to pay two people; each payment waits for approval."""

    import os

    from executus_core import Agent, ModelResponse, ToolCall, tool
    from executus_core.testing import ScriptedModel


    @tool(requires_approval=True)
    def pay(to: str, amount: int) -> str:
        """Pay someone (a line in $LEDGER per payment). Needs approval."""
        with open(os.environ["LEDGER"], "a") as out:
            out.write(f"{to} {amount} {os.getpid()}\\n")
        return f"paid {amount} to {to}"


    agent = Agent(
        name="payer",
        instructions="Pay them.",
        model=ScriptedModel(
            [
                ModelResponse(
                    tool_calls=[
                        ToolCall(id="t1", name="pay", arguments={"to": "bob", "amount": 500}),
                        ToolCall(id="t2", name="pay", arguments={"to": "amy", "amount": 700}),
                    ]
                ),
                ModelResponse(text="done paying"),
            ],
            per_run=True,
            id="scripted:payer",
        ),
        tools=[pay],
    )
    '''
)


@pytest.fixture
def shell(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run ``executus ARGS`` in a subprocess in ``tmp_path``, on the test's SQLite checkpoint store."""
    if not EXECUTUS.exists():
        pytest.skip(f"no executus script beside {sys.executable}: install the project (scripts/bootstrap)")
    if "checkpoint_sql" not in {ep.name for ep in importlib.metadata.entry_points(group="executus")}:
        pytest.skip("executus-checkpoint-sql is not installed (scripts/bootstrap installs it)")
    (tmp_path / "payagent.py").write_text(AGENT)
    others = sorted(
        {ep.name for ep in importlib.metadata.entry_points(group="executus")} - {"checkpoint_sql"}
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("EXECUTUS_") and not k.endswith("_API_KEY")
    }
    env.update(
        EXECUTUS_DISABLE=",".join(others),
        EXECUTUS_DATA_DIR=str(tmp_path / "data"),
        LEDGER=str(tmp_path / "ledger"),
        COLUMNS="160",
    )
    store = ["-s", f"checkpoint_sql.url=sqlite+aiosqlite:///{tmp_path}/checkpoints.db"]

    def run(*args: str, with_store: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(EXECUTUS), *args, *(store if with_store else [])],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def ledger(tmp_path: Path) -> list[str]:
    path = tmp_path / "ledger"
    return [line.rsplit(" ", 1)[0] for line in path.read_text().splitlines()] if path.exists() else []


def paused_run(shell) -> str:  # type: ignore[no-untyped-def]
    proc = shell("run", "payagent:agent", "pay them", "--json")
    data = json.loads(proc.stdout)
    assert data["status"] == "awaiting_approval", proc.stderr
    assert [p["call_id"] for p in data["pending"]] == ["t1", "t2"]
    return str(data["run_id"])


def test_approve_one_call_then_deny_the_other_each_in_a_new_process(shell, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = paused_run(shell)
    assert ledger(tmp_path) == []

    first = shell("approve", run_id[:12], "t1", "--by", "alice")
    assert first.returncode == 0, first.stderr
    table = " ".join(first.stdout.split())
    assert 't1 │ pay │ {"to": "bob", "amount": 500} │ approve (by alice)' in table
    assert 't2 │ pay │ {"to": "amy", "amount": 700} │ waits' in table
    assert "awaiting_approval" in table and "still waiting for: pay (t2)" in table
    assert ledger(tmp_path) == ["bob 500"]

    wrong = shell("deny", run_id, "t1", "--reason", "paid already")
    assert wrong.returncode == 2 and "no pending call t1; its pending calls: t2 (pay)" in wrong.stderr

    second = shell("deny", run_id, "t2", "--reason", "amy is not a payee", "--by", "bob", "--json")
    assert second.returncode == 0, second.stderr
    data = json.loads(second.stdout)
    assert [p["call_id"] for p in data["pending"]] == ["t2"]
    assert data["decisions"] == {"t2": {"kind": "deny", "reason": "amy is not a payee", "by": "bob"}}
    result = data["result"]
    assert result["status"] == "ok" and result["output"] == "done paying"
    said = {m["tool_call_id"]: m["content"] for m in result["messages"] if m["role"] == "tool"}
    assert said == {
        "t1": "paid 500 to bob",
        "t2": "error: pay was not run: denied by bob: amy is not a payee",
    }
    assert ledger(tmp_path) == ["bob 500"]  # each payment once: the approved one, never the denied one

    again = shell("approve", run_id)
    assert again.returncode == 1 and f"no paused run {run_id}" in again.stderr
    assert ledger(tmp_path) == ["bob 500"]


def test_approve_with_no_call_id_approves_every_pending_call(shell, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = paused_run(shell)
    listed = shell("checkpoints", "list", "--json")
    row = next(r for r in json.loads(listed.stdout)["runs"] if r["run_id"] == run_id)
    assert row["state"] == "paused" and [p["call_id"] for p in row["pending"]] == ["t1", "t2"]

    done = shell("approve", run_id, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data["decisions"]) == {"t1", "t2"} and all(
        d["kind"] == "approve" for d in data["decisions"].values()
    )
    assert data["result"]["status"] == "ok" and data["result"]["pending"] == []
    assert sorted(ledger(tmp_path)) == ["amy 700", "bob 500"]
    finished = shell("checkpoints", "list", "--all", "--json")
    row = next(r for r in json.loads(finished.stdout)["runs"] if r["run_id"] == run_id)
    assert row["state"] == "completed"


def test_an_unknown_call_leaves_the_run_paused_and_a_store_is_needed(shell, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = paused_run(shell)
    unknown = shell("approve", run_id, "t9")
    assert unknown.returncode == 2
    assert "no pending call t9; its pending calls: t1 (pay), t2 (pay)" in unknown.stderr
    listed = shell("checkpoints", "list", "--json")
    row = next(r for r in json.loads(listed.stdout)["runs"] if r["run_id"] == run_id)
    assert row["state"] == "paused", "a refused command must leave the run paused, not claimed"
    assert ledger(tmp_path) == []

    nowhere = shell("approve", run_id, "-s", "checkpoint_sql.enabled=false", with_store=False)
    assert nowhere.returncode == 2 and "no checkpoint store is enabled" in nowhere.stderr
