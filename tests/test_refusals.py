"""Refusals as data: a refused run's `Result` carries ``retry_after`` and the limit, and budgets that
accept it get the run's id, so they can apply each check and commit exactly once."""

from __future__ import annotations

from typing import Any

from executus_core import Agent, BudgetExceeded, Executor, RunStatus, Usage, hookimpl
from executus_core.testing import ScriptedModel

from .conftest import answer


class Refusing:
    executus_name = "refusing"

    @hookimpl
    def executus_budget(self, settings: Any) -> Any:
        return self

    async def check(self, caller_id: str) -> None:
        raise BudgetExceeded("3 of 3 runs today", retry_after=12.5, limit="max_runs")

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage) -> None:
        pass


class Keyed:
    executus_name = "keyed"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @hookimpl
    def executus_budget(self, settings: Any) -> Any:
        return self

    async def check(self, caller_id: str, *, run_id: str) -> None:
        self.calls.append(("check", run_id))

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage, *, run_id: str) -> None:
        self.calls.append(("commit", run_id))


async def test_a_refusal_carries_retry_after_and_names_the_limit() -> None:
    async with Executor(entry_points=False, plugins=[Refusing()]) as ex:
        result = await ex.run(Agent(name="a", model=ScriptedModel([answer("x")])), "go", caller_id="u1")
    assert result.status is RunStatus.BUDGET_EXCEEDED
    assert result.retry_after == 12.5
    assert result.error == "budget 'refusing' refused the run (max_runs): 3 of 3 runs today (retry after 13s)"


async def test_budgets_that_take_run_id_get_the_runs_id_and_old_ones_keep_working() -> None:
    keyed = Keyed()
    async with Executor(entry_points=False, plugins=[keyed]) as ex:
        result = await ex.run(
            Agent(name="a", model=ScriptedModel([answer("x")])), "go", caller_id="u1", run_id="r1"
        )
    assert result.status is RunStatus.OK
    assert keyed.calls == [("check", "r1"), ("commit", "r1")]
