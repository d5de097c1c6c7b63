"""The embedded default: with no url set, the battery keeps budgets in SQLite in the executus data
directory, so a first run needs no Redis; it says so; a url (or backend = "redis") picks Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import executus_budget_redis.plugin
import pytest
from executus_budget_redis import RedisBudget, SQLiteBudget, open_budget
from executus_budget_redis.settings import BudgetRedisSettings
from typer.testing import CliRunner

from executus_core import Agent, Executor, ModelResponse, RunStatus, Usage
from executus_core.cli import create_app
from executus_core.testing import ScriptedModel


def answer() -> ModelResponse:
    return ModelResponse(text="done", usage=Usage(input_tokens=10, output_tokens=5))


def the_budget(ex: Executor) -> Any:
    ((name, budget),) = ex.ports.budgets
    assert name == "budget_redis"
    return budget


async def test_with_no_settings_runs_need_no_redis(tmp_path: Path, other_plugins: list[str]) -> None:
    # _clean_env points EXECUTUS_DATA_DIR at tmp_path / "data"; no url is set anywhere.
    settings = {"budget_redis": {"max_runs": 2}}
    agent = Agent(name="a", model=ScriptedModel([answer()], per_run=True))
    async with Executor(settings=settings, disable=other_plugins) as ex:
        budget = the_budget(ex)
        assert isinstance(budget, SQLiteBudget) and budget.backend == "sqlite"
        assert budget.path == tmp_path / "data" / "budget.sqlite3"
        assert budget.describe() == (
            f"SQLite at {tmp_path / 'data' / 'budget.sqlite3'} (embedded: this machine only; "
            "set url to share budgets through Redis)"
        )
        results = [await ex.run(agent, "hi", caller_id="u1") for _ in range(3)]
        usage = await budget.usage("u1")
    assert [r.status for r in results] == [RunStatus.OK, RunStatus.OK, RunStatus.BUDGET_EXCEEDED]
    assert (usage.windows[0].runs, usage.windows[0].tokens, usage.in_flight) == (2, 30, 0)
    assert "caller u1 started 2 of 2 runs this day" in (results[2].error or "")


def test_a_url_picks_redis_and_backend_says_it_plainly(tmp_path: Path) -> None:
    redis_budget = open_budget(BudgetRedisSettings(url="redis://cache:6379/2"), tmp_path)
    assert isinstance(redis_budget, RedisBudget) and redis_budget.backend == "redis"
    assert redis_budget.describe() == "Redis at redis://cache:6379/2 (shared by every process using it)"
    assert isinstance(open_budget(BudgetRedisSettings(backend="redis"), tmp_path), RedisBudget)
    forced = open_budget(BudgetRedisSettings(backend="sqlite", url="redis://cache:6379/2"), tmp_path)
    assert isinstance(forced, SQLiteBudget) and forced.path == tmp_path / "budget.sqlite3"
    own = open_budget(BudgetRedisSettings(path=str(tmp_path / "x.db")), None)
    assert isinstance(own, SQLiteBudget) and own.path == tmp_path / "x.db"


def test_the_url_from_the_environment_picks_redis(
    monkeypatch: pytest.MonkeyPatch, other_plugins: list[str]
) -> None:
    monkeypatch.setenv("EXECUTUS_BUDGET_REDIS__URL", "redis://cache:6379/2")
    with Executor(disable=other_plugins) as ex:
        assert isinstance(the_budget(ex), RedisBudget)


def test_processes_on_one_machine_share_the_embedded_budget(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from executus_budget_redis import SQLiteBudget
        from executus_core import BudgetExceeded

        async def main():
            budget = SQLiteBudget(path={str(path)!r}, max_runs=10)
            admitted = 0
            for i in range(8):
                try:
                    await budget.check("u1", run_id=f"{{sys.argv[1]}}-{{i}}")
                    admitted += 1
                except BudgetExceeded:
                    pass
            await budget.aclose()
            print(admitted)

        asyncio.run(main())
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, f"p{n}"], stdout=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    admitted = sum(int(p.communicate(timeout=120)[0]) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert admitted == 10  # 24 checks from 3 processes, one limit


def test_budget_show_reads_the_embedded_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COLUMNS", "200")

    async def seed() -> None:
        budget = SQLiteBudget(data_dir=tmp_path / "data", max_tokens=10_000, token_hold=700)
        await budget.check("u1", run_id="run-in-flight")
        await budget.aclose()

    asyncio.run(seed())
    app = create_app(entry_points=False, plugins=[executus_budget_redis.plugin])
    shown = CliRunner().invoke(app, ["budget", "show", "-s", "budget_redis.max_tokens=10000"])
    assert shown.exit_code == 0, shown.output
    assert "SQLite at" in shown.stdout and "runs in flight" in shown.stdout
    assert "run-in-flight" in shown.stdout
    data = json.loads(CliRunner().invoke(app, ["budget", "show", "--json"]).stdout)
    assert data["backend"] == "sqlite"
    (u1,) = data["callers"]
    assert (u1["in_flight"], u1["held"], u1["runs"][0]["run_id"], u1["runs"][0]["hold"]) == (
        1,
        700,
        "run-in-flight",
        700,
    )


async def test_a_run_another_budget_refuses_is_released(tmp_path: Path) -> None:
    # The core asks this budget first (the last plugin passed is asked first), then one that
    # refuses: the release gives back the run's count, slot and hold, by run id.
    from executus_core.testing import MemoryBudget

    settings = {"budget_redis": {"path": str(tmp_path / "b.sqlite3"), "max_runs": 1, "max_tokens": 1000}}
    refuser = MemoryBudget(max_runs=0, name="refuser")
    agent = Agent(name="a", model=ScriptedModel([answer()], per_run=True))
    async with Executor(
        settings=settings, plugins=[refuser, executus_budget_redis.plugin], entry_points=False
    ) as ex:
        assert [name for name, _ in ex.ports.budgets] == ["budget_redis", "refuser"]
        refused = await ex.run(agent, "hi", caller_id="u1")
        budget = the_budget_named(ex, "budget_redis")
        usage = await budget.usage("u1")
    assert refused.status is RunStatus.BUDGET_EXCEEDED
    assert (usage.windows[0].runs, usage.in_flight, usage.held) == (0, 0, 0)


async def test_refusals_reach_the_result_as_data(tmp_path: Path, other_plugins: list[str]) -> None:
    settings = {"budget_redis": {"path": str(tmp_path / "b.sqlite3"), "max_runs": 1, "window": "1h"}}
    agent = Agent(name="a", model=ScriptedModel([answer()], per_run=True))
    async with Executor(settings=settings, disable=other_plugins) as ex:
        assert (await ex.run(agent, "hi", caller_id="u1")).status is RunStatus.OK
        refused = await ex.run(agent, "hi", caller_id="u1")
    assert refused.status is RunStatus.BUDGET_EXCEEDED
    assert refused.retry_after is not None and 3500 < refused.retry_after <= 3600
    assert "(max_runs)" in (refused.error or "")


def the_budget_named(ex: Executor, wanted: str) -> Any:
    return next(budget for name, budget in ex.ports.budgets if name == wanted)


async def test_a_recovered_run_is_one_run_charged_once(tmp_path: Path) -> None:
    # The run is interrupted in a tool (its first step's 100 tokens committed), then recovered by
    # a new executor over the same checkpoints and budget: it passes the check again under its
    # own run id without being counted twice, and its commit adds only what it used since.
    from executus_core import ToolCall, tool
    from executus_core.testing import MemoryCheckpointStore

    store = MemoryCheckpointStore()
    entered, release = asyncio.Event(), asyncio.Event()
    calls = 0

    @tool
    async def slow() -> str:
        """Waits the first time."""
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await release.wait()
        return "done"

    settings = {"budget_redis": {"path": str(tmp_path / "b.sqlite3"), "max_runs": 5, "max_tokens": 10_000}}
    step = ModelResponse(
        tool_calls=[ToolCall(id="c1", name="slow", arguments={})], usage=Usage(input_tokens=100)
    )
    first = Executor(settings=settings, plugins=[store, executus_budget_redis.plugin], entry_points=False)
    task = asyncio.ensure_future(
        first.run(
            Agent(name="w", model=ScriptedModel([step]), tools=[slow]), "go", caller_id="u1", run_id="r1"
        )
    )
    await asyncio.wait_for(entered.wait(), 10)
    await first.shutdown()
    assert (await task).status is RunStatus.INTERRUPTED
    reader = SQLiteBudget(path=str(tmp_path / "b.sqlite3"))
    after_first = (await reader.usage("u1")).windows[0]
    await reader.aclose()
    assert (after_first.runs, after_first.tokens) == (1, 100)

    resumed = Agent(
        name="w",
        model=ScriptedModel([ModelResponse(text="ok", usage=Usage(input_tokens=50))]),
        tools=[slow],
    )
    async with Executor(
        settings=settings, plugins=[store, executus_budget_redis.plugin], entry_points=False
    ) as second:
        (result,) = await asyncio.wait_for(second.recover(agents={"w": resumed}), 20)
        usage = await the_budget_named(second, "budget_redis").usage("u1")
    assert result.status is RunStatus.OK and result.run_id == "r1"
    assert result.stats.input_tokens == 150  # the run's total, restored from its checkpoint
    assert (usage.windows[0].runs, usage.windows[0].tokens, usage.in_flight) == (1, 150, 0)
