"""A worker that runs `checkpoint_sql_agents.crash_agent` until the test kills it.

Run by test_checkpoint_sql_crash.py as ``python checkpoint_sql_crash_child.py SETTINGS DISABLE RUN_ID``
(JSON settings for `Executor`, a JSON list of plugins to disable, the run's id). This battery is
loaded through its entry point, as in any host.
"""

from __future__ import annotations

import asyncio
import json
import sys

from checkpoint_sql_agents import crash_agent

from executus_core import Executor


async def main(settings: dict[str, object], disable: list[str], run_id: str) -> None:
    async with Executor(settings=settings, disable=disable) as executor:
        assert executor.ports.checkpoints is not None and executor.ports.checkpoints[0] == "checkpoint_sql"
        result = await executor.run(crash_agent, "note it, then wait", caller_id="crash-test", run_id=run_id)
    print(result.status.value, result.error)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]))
