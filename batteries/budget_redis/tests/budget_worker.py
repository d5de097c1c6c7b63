"""A worker process for the multi-process tests: many runs at once against one caller's budget.

Run as ``python budget_worker.py JSON``; JSON holds ``settings`` (for `RedisBudget`), ``caller``,
``runs``, ``at_once``, ``name`` (run ids start with it), ``tokens`` ([low, high] per run, drawn with
``seed``), ``hold_seconds`` (how long a run stays in flight at most) and ``ready_file`` (written
once the worker is connected, before its runs start). Each run checks with its
run id, waits, and commits; the worker prints one JSON line: what it was told and what it did, so
the test can compare the budget in Redis with the truth.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

from executus_budget_redis import BudgetUnavailable, RedisBudget

from executus_core import BudgetExceeded, Usage


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    budget = RedisBudget(**spec["settings"])
    rng = random.Random(spec.get("seed", 0))
    low, high = spec.get("tokens", [10, 10])
    gate = asyncio.Semaphore(spec["at_once"])
    out: dict[str, Any] = {"admitted": 0, "refused": 0, "unavailable": 0, "tokens": 0, "spooled": 0}

    async def one(index: int) -> None:
        run_id = f"{spec['name']}-{index}"
        tokens = rng.randint(low, high)
        pause = rng.random() * spec.get("hold_seconds", 0.01)
        async with gate:
            try:
                await budget.check(spec["caller"], run_id=run_id)
            except BudgetExceeded:
                out["refused"] += 1
                return
            except BudgetUnavailable as exc:
                out["unavailable"] += 1
                out.setdefault("causes", {}).setdefault(exc.cause, 0)
                out["causes"][exc.cause] += 1
                out["last_error"] = str(exc)
                return
            out["admitted"] += 1
            await asyncio.sleep(pause)
            out["tokens"] += tokens
            try:
                await budget.commit(spec["caller"], 0.001, Usage(input_tokens=tokens), run_id=run_id)
            except BudgetUnavailable:
                out["spooled"] += 1  # kept, and replayed once Redis answers

    if ready := spec.get("ready_file"):
        await budget.ping()  # connected: the test may start its trouble now
        Path(ready).write_text("ready")  # noqa: ASYNC240 - once, before any run starts
    await asyncio.gather(*(one(i) for i in range(spec["runs"])))
    for _ in range(200):  # let the spool reach Redis before closing (aclose tries briefly too)
        if budget.settled:
            break
        await asyncio.sleep(0.1)
    await budget.aclose()
    out["unmetered"] = list(budget.unmetered)
    out["unvoided"] = budget.unvoided
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
