"""A worker killed mid-run (SIGKILL, no shutdown) is resumed by another Executor from its checkpoint.

A real child process runs an agent that records a note (a tool whose result is saved) and then
blocks in a second tool; the test kills it there. A second Executor in the test process, with this
battery loaded by its entry point, recovers the run to ``ok``: the saved tool is not run again, the
one that was cut off is.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from checkpoint_sql_agents import crash_agent, lines
from checkpoint_sql_helpers import Backend, other_plugins

from executus_core import Executor, Result, RunStatus

CHILD = Path(__file__).with_name("checkpoint_sql_crash_child.py")
WAIT_LIMIT = 60.0  # seconds: far beyond what a healthy machine needs; only a hang reaches it


async def _start_and_kill(settings: dict[str, object], work: Path, run_id: str) -> None:
    """Run the agent in a child process until it blocks in ``wait_here``, then SIGKILL it."""
    env = {**os.environ, "ECP_WORKDIR": str(work), "ECP_BLOCK": "1"}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        json.dumps(settings),
        json.dumps(other_plugins()),
        run_id,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT_LIMIT):
            while not (work / "wait.log").exists():
                if child.returncode is not None:
                    break
                await asyncio.sleep(0.05)
    except TimeoutError:
        pass
    if not (work / "wait.log").exists():
        child.kill()
        out, err = await child.communicate()
        pytest.fail(
            f"the child never reached wait_here (exit {child.returncode}):\n{out.decode()}\n{err.decode()}"
        )
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert child.returncode == -signal.SIGKILL


async def _recover(executor: Executor, *, poll: bool) -> list[Result]:
    """``executor.recover()``; with ``poll``, ask again until the dead worker's lease lapses."""
    async with asyncio.timeout(WAIT_LIMIT):
        while True:
            results = await executor.recover(agents={crash_agent.id: crash_agent})
            if results or not poll:
                return results
            await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    "rescuer",
    [
        pytest.param("crash-worker", id="the-same-worker-id-restarted"),
        pytest.param("another-worker", id="another-worker"),
    ],
)
async def test_a_killed_run_is_resumed_without_running_a_saved_tool_again(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rescuer: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    run_id = uuid.uuid4().hex
    # Every store is an owner of its own, so even a restart under the same worker_id waits for the
    # dead process's lease to lapse (it cannot tell a dead twin from a live one): the lease is short.
    lease = {"lease_seconds": 1.0, "heartbeat_seconds": 0.2}
    monkeypatch.setenv("ECP_WORKDIR", str(work))
    monkeypatch.delenv("ECP_BLOCK", raising=False)
    await _start_and_kill(backend.executor_settings(worker_id="crash-worker", **lease), work, run_id)
    assert lines("record.log") == ["one"] and len(lines("wait.log")) == 1

    settings = backend.executor_settings(worker_id=rescuer, **lease)
    async with Executor(settings=settings, disable=other_plugins()) as executor:
        assert executor.ports.checkpoints is not None and executor.ports.checkpoints[0] == "checkpoint_sql"
        results = await _recover(executor, poll=True)
        again = await executor.recover(agents={crash_agent.id: crash_agent})

    assert [r.run_id for r in results] == [run_id]
    result = results[0]
    assert result.status is RunStatus.OK, result.error
    assert result.output == "done"
    assert not result.warnings
    # record's result was saved before the kill: it did not run again; wait_here's was not: it did.
    assert lines("record.log") == ["one"]
    assert lines("wait.log")[1:] == [str(os.getpid())]
    assert [m.content for m in result.messages if m.role == "tool"] == ["recorded one", "waited"]
    assert result.stats.steps == 3 and result.stats.tool_calls == 2
    assert again == []  # completed: nothing is left to recover

    store = backend.store(worker_id="inspector")
    try:
        row = await store.run_row(run_id)
        assert row is not None and row["status"] == "completed" and row["owner"].startswith(f"{rescuer}:")
        assert await store.transcript(run_id) == []
    finally:
        await store.aclose()
