"""Approval survives a restart (issue 20): a run paused for approval in one process, that process
killed with SIGKILL while the run waits, is approved (denied, edited) from a second process through
the checkpoint store, and the tool's side effect is seen exactly once.

A real child process runs an agent that records a note (a tool whose result is saved) and then asks
to ``pay`` (a tool that requires approval): the run pauses, the child writes its `Result` and waits,
and the test kills it. A fresh Executor in the test process, sharing nothing with the child but the
database, continues the run with `Executor.resume`. ``pay.log`` is the ledger: one line per payment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from checkpoint_sql_agents import approval_agent, lines
from checkpoint_sql_helpers import Backend, other_plugins

from executus_core import Approve, Deny, Edit, Executor, Result, RunStatus

CHILD = Path(__file__).with_name("checkpoint_sql_approval_child.py")
WAIT_LIMIT = 60.0  # seconds: far beyond what a healthy machine needs; only a hang reaches it


async def _pause_and_kill(settings: dict[str, object], work: Path, run_id: str) -> Result:
    """Run the agent in a child process until its run pauses for approval, then SIGKILL it."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        json.dumps(settings),
        json.dumps(other_plugins()),
        run_id,
        env={**os.environ, "ECP_WORKDIR": str(work)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    marker = work / "paused.json"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT_LIMIT):
            while True:
                if marker.exists() or child.returncode is not None:
                    break
                await asyncio.sleep(0.05)
    if not marker.exists():
        child.kill()
        out, err = await child.communicate()
        pytest.fail(
            f"the child's run never paused (exit {child.returncode}):\n{out.decode()}\n{err.decode()}"
        )
    await asyncio.sleep(0.2)  # the marker is written: let the write land, the child is waiting
    assert child.returncode is None, "the child must still be up (waiting) when it is killed"
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert child.returncode == -signal.SIGKILL
    return Result.model_validate_json(marker.read_text())


@pytest.mark.parametrize(
    ("decision", "paid", "answer"),
    [
        pytest.param(Approve(by="alice"), ["bob 500"], "paid 500 to bob", id="approved"),
        pytest.param(
            Deny("bob is not a payee", by="alice"), [], "denied by alice: bob is not a payee", id="denied"
        ),
        pytest.param(
            Edit({"to": "bob", "amount": 50}, by="alice"), ["bob 50"], "paid 50 to bob", id="edited"
        ),
    ],
)
async def test_an_approval_after_sigkill_is_answered_from_another_process_once(
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    decision: Any,
    paid: list[str],
    answer: str,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("ECP_WORKDIR", str(work))
    run_id = uuid.uuid4().hex
    # A long lease: the paused run must not wait for it (a pause lets the run go at once).
    lease = {"lease_seconds": 600.0, "heartbeat_seconds": 0.2}
    paused = await _pause_and_kill(
        backend.executor_settings(worker_id="paying-worker", **lease), work, run_id
    )
    assert paused.status is RunStatus.AWAITING_APPROVAL, paused.error
    assert [(p.call_id, p.tool, p.arguments) for p in paused.pending] == [
        ("call-pay", "pay", {"to": "bob", "amount": 500})
    ]
    assert lines("record.log") == ["one"] and lines("pay.log") == []

    inspector = backend.store(worker_id="inspector")
    try:
        listed = {x.run_id: x for x in await inspector.list_runs()}
        assert listed[run_id].state == "paused" and listed[run_id].owner is not None
        assert [p.call_id for p in listed[run_id].pending] == ["call-pay"] and listed[
            run_id
        ].paused_at is not None
        assert await inspector.interrupted() == []  # recover() never takes a paused run
    finally:
        await inspector.aclose()

    settings = backend.executor_settings(worker_id="approving-worker", **lease)
    async with Executor(settings=settings, disable=other_plugins()) as executor:
        assert executor.ports.checkpoints is not None and executor.ports.checkpoints[0] == "checkpoint_sql"
        done = await executor.resume(
            run_id, decisions={"call-pay": decision}, agents={approval_agent.id: approval_agent}
        )
        again = await executor.resume(
            run_id, decisions={"call-pay": Approve()}, agents={approval_agent.id: approval_agent}
        )
        recovered = await executor.recover(agents={approval_agent.id: approval_agent})

    assert done.status is RunStatus.OK, done.error
    assert done.output == "paid"
    tool_results = [m.content for m in done.messages if m.role == "tool"]
    assert tool_results[0] == "recorded one" and answer in (tool_results[1] or "")
    # The side effect, exactly once (or never, for a denial), in this process; the saved tool never again.
    assert [line.rsplit(" ", 1)[0] for line in lines("pay.log")] == paid
    assert all(line.endswith(f" {os.getpid()}") for line in lines("pay.log"))
    assert lines("record.log") == ["one"]
    assert again.status is RunStatus.ERROR and "no paused or interrupted run" in (again.error or "")
    assert recovered == []

    inspector = backend.store(worker_id="inspector")
    try:
        row = await inspector.run_row(run_id)
        assert row is not None and row["status"] == "completed"
        assert row["owner"].startswith("approving-worker:") and row["pending"] is None
    finally:
        await inspector.aclose()


async def _pause_here(backend: Backend) -> str:
    async with Executor(
        settings=backend.executor_settings(worker_id="pausing-worker"), disable=other_plugins()
    ) as executor:
        paused = await executor.run(approval_agent, "note it, then pay bob", caller_id="cli-test")
    assert paused.status is RunStatus.AWAITING_APPROVAL, paused.error
    return paused.run_id


def test_checkpoints_list_shows_a_paused_run_its_pending_calls_and_since_when(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from checkpoint_sql_helpers import cli_settings
    from typer.testing import CliRunner

    from executus_core.cli import create_app
    from executus_core.cli.helpers import short_id

    monkeypatch.setenv("EXECUTUS_DISABLE", ",".join(other_plugins()))
    monkeypatch.setenv("ECP_WORKDIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "160")
    run_id = asyncio.run(_pause_here(backend))

    human = CliRunner().invoke(create_app(), ["checkpoints", "list", *cli_settings(backend)])
    assert human.exit_code == 0, human.output
    table = " ".join(human.stdout.split())
    assert (
        short_id(run_id) in table
        and "paused" in table
        and "pay (call-pay)" in table
        and "waits since" in table
    )
    assert "1 run paused for approval: `executus approve RUN_ID`" in " ".join(human.stderr.split())

    data = json.loads(
        CliRunner().invoke(create_app(), ["checkpoints", "list", "--json", *cli_settings(backend)]).stdout
    )
    row = next(r for r in data["runs"] if r["run_id"] == run_id)
    assert row["state"] == "paused" and row["paused_at"] is not None
    assert row["pending"] == [
        {"call_id": "call-pay", "tool": "pay", "arguments": {"to": "bob", "amount": 500}}
    ]

    nothing = CliRunner().invoke(
        create_app(), ["recover", "--agent", "checkpoint_sql_agents:approval_agent", *cli_settings(backend)]
    )
    assert nothing.exit_code == 0, nothing.output
    said = " ".join(nothing.stderr.split())
    assert "nothing to recover" in said and "waits for approval of pay" in said
    assert lines("pay.log") == []
