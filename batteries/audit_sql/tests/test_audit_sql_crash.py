"""The audit trail of a run whose worker was killed with SIGKILL is whole once the run is resumed
(issue 15): the checkpoint and the audit are two stores, and a crash falls between them.

A child process runs an agent with checkpoint-sql and audit-sql on SQLite files, the audit writing in
batches far apart (``flush_interval``), and is killed with SIGKILL at a chosen point; this process then
resumes the run with `Executor.recover` and reads the trail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from executus_audit_sql import SqlAudit

from executus_core import Agent, Executor, ModelResponse, RunStatus, tool
from executus_core.testing import ScriptedModel

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from executus_core import Agent, Executor, ModelResponse, ToolCall, tool
    from executus_core.testing import ScriptedModel

    where, data = sys.argv[1], sys.argv[2]

    @tool
    def step_tool(n: int) -> str:
        '''Kills this process on the second call when asked to.'''
        if n == 2 and where == "tool":
            os.kill(os.getpid(), signal.SIGKILL)
        return f"did {n}"

    model = ScriptedModel([
        ModelResponse(tool_calls=[ToolCall(id="t1", name="step_tool", arguments={"n": 1})]),
        ModelResponse(tool_calls=[ToolCall(id="t2", name="step_tool", arguments={"n": 2})]),
        ModelResponse(text="all done"),
    ])
    agent = Agent(id="crashy", name="crashy", model=model, tools=[step_tool])
    settings = {
        "data_dir": data,
        "checkpoint_sql": {"lease_seconds": 0.5},
        "audit_sql": {"flush_interval": 3600},
    }

    async def main():
        async with Executor(settings=settings, disable=["critic", "budget_redis", "otel", "mcp"]) as ex:
            if where == "complete":
                store = ex.ports.checkpoints[1]
                made = store.for_run
                async def for_run(info, agent):
                    checkpointer = await made(info, agent)
                    async def complete():
                        os.kill(os.getpid(), signal.SIGKILL)
                    checkpointer.complete = complete
                    return checkpointer
                store.for_run = for_run
            await ex.run(agent, "go", caller_id="crash", run_id="crashed-run")
    asyncio.run(main())
    """
)


@tool
def step_tool(n: int) -> str:
    """The same tool, in the process that resumes the run."""
    return f"did {n}"


def _kill_child_at(where: str, data: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, where, str(data)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, (
        f"the child was not killed: {child.returncode}\n{child.stderr}"
    )


async def _resume(data: Path, model: ScriptedModel) -> tuple[Any, SqlAudit, Executor]:
    agent = Agent(id="crashy", name="crashy", model=model, tools=[step_tool])
    settings = {"data_dir": str(data), "checkpoint_sql": {"lease_seconds": 0.5}}
    ex = Executor(settings=settings, disable=["critic", "budget_redis", "otel", "mcp"])
    results = []
    for _ in range(50):  # the dead worker's lease lapses within half a second
        results = await ex.recover(agents={agent.id: agent})
        if results:
            break

        await asyncio.sleep(0.1)
    [result] = results
    audit = dict(ex.ports.audits)["audit_sql"]
    assert isinstance(audit, SqlAudit)
    return result, audit, ex


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
async def test_a_worker_killed_before_its_audit_batch_leaves_a_whole_trail_after_resume(
    tmp_path: Path,
) -> None:
    _kill_child_at("tool", tmp_path)
    result, audit, ex = await _resume(tmp_path, ScriptedModel([ModelResponse(text="all done")]))
    try:
        assert (result.status, result.output) == (RunStatus.OK, "all done")
        record = await audit.get_run("crashed-run")
        trail = await audit.trail("crashed-run")
    finally:
        await ex.shutdown()
    assert record is not None and (record.status, record.steps, record.tool_calls) == ("ok", 3, 2)
    # was: only the resumed attempt's rows (t2 and step 3): step 1, step 2 and t1 were lost with the
    # killed worker's unwritten batch, though the checkpoint had them
    assert sorted(e.iteration for e in trail if e.kind == "step") == [1, 2, 3]
    assert sorted(e.call_id for e in trail if e.kind == "tool") == ["t1", "t2"]
    ends = [e.data["status"] for e in trail if e.kind == "event" and e.name == "run.end"]
    assert ends == ["ok"]


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
async def test_a_worker_killed_between_its_answer_and_the_checkpoints_completion_loses_no_end(
    tmp_path: Path,
) -> None:
    _kill_child_at("complete", tmp_path)
    model = ScriptedModel([])  # asked nothing: the answer was saved before the worker died
    result, audit, ex = await _resume(tmp_path, model)
    try:
        record = await audit.get_run("crashed-run")
        trail = await audit.trail("crashed-run")
    finally:
        await ex.shutdown()
    # was: the checkpoint completed first and the audit's end was lost with the worker ("the run will
    # not go on (checkpoint: completed)"); now the end is recorded first and the saved answer ends the
    # resumed run without a model call
    assert (result.status, result.output) == (RunStatus.OK, "all done")
    assert model.requests == []
    assert record is not None and (record.status, record.output, record.steps) == ("ok", "all done", 3)
    assert sorted(e.call_id for e in trail if e.kind == "tool") == ["t1", "t2"]
    assert [e.iteration for e in trail if e.kind == "step"] == [1, 2, 3]
