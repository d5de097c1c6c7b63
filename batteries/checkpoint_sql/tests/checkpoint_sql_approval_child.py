"""A worker whose run pauses for approval; it then stays up, holding nothing, until the test kills it.

Run by test_checkpoint_sql_approval.py as ``python checkpoint_sql_approval_child.py SETTINGS DISABLE
RUN_ID`` (JSON settings for `Executor`, a JSON list of plugins to disable, the run's id). When the
run has paused, the `Result` is written to ``$ECP_WORKDIR/paused.json``; the process then waits
inside the executor (no shutdown), as a service waits for its next request.
"""

from __future__ import annotations

import asyncio
import json
import sys

from checkpoint_sql_agents import approval_agent, workdir

from executus_core import Executor


async def main(settings: dict[str, object], disable: list[str], run_id: str) -> None:
    async with Executor(settings=settings, disable=disable) as executor:
        assert executor.ports.checkpoints is not None and executor.ports.checkpoints[0] == "checkpoint_sql"
        result = await executor.run(
            approval_agent, "note it, then pay bob", caller_id="approval-test", run_id=run_id
        )
        (workdir() / "paused.json").write_text(result.model_dump_json())
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]))
