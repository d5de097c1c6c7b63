"""When Redis is not there: runs are refused with a message that says what to set (budgets fail
closed), usage accepted while Redis was away is kept and metered once it is back, and nothing
escapes `Executor.run`. Redis "goes away" through a proxy the test cuts, so the shared server
keeps running for everyone else."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from executus_budget_redis import BudgetUnavailable, RedisBudget

from executus_core import Agent, Executor, ModelResponse, RunStatus, ToolCall, Usage, tool
from executus_core.testing import ScriptedModel


def answer(tokens: tuple[int, int] = (10, 5)) -> ModelResponse:
    return ModelResponse(text="done", usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1]))


@pytest.fixture
def executor(key_prefix: str, other_plugins: list[str]) -> Any:
    """``executor(url, **settings)``: only this battery enabled, loaded by its entry point."""

    def build(url: str, **fields: Any) -> Executor:
        settings = {"budget_redis": {"url": url, "key_prefix": key_prefix, **fields}}
        return Executor(settings=settings, disable=other_plugins)

    return build


def the_budget(ex: Executor) -> RedisBudget:
    ((_, budget),) = ex.ports.budgets
    assert isinstance(budget, RedisBudget)
    return budget


async def test_a_closed_port_refuses_the_run_and_says_what_to_set(executor: Any, closed_url: str) -> None:
    model = ScriptedModel([answer()])
    async with executor(closed_url) as ex:
        result = await ex.run(Agent(name="a", model=model), "hi", caller_id="u1")
    assert result.status is RunStatus.ERROR
    assert result.error is not None
    assert result.error.startswith(
        f"budget 'budget_redis': check raised BudgetUnavailable: cannot check the budget of caller u1: "
        f"Redis at {closed_url} could not be reached (ConnectionError: "
    )
    for needed in ("Budgets fail closed", "EXECUTUS_BUDGET_REDIS__URL", 'disable = ["budget_redis"]'):
        assert needed in result.error
    assert model.requests == []  # refused before the first model call


def test_without_a_url_the_message_names_the_default_and_the_setting() -> None:
    budget = RedisBudget()  # no url: the default, and the message says it is one
    error = budget._unavailable_for_check("u1", ConnectionError("refused"))
    assert (
        "Redis at redis://127.0.0.1:6379/0 (the default: no url is set in [tool.executus.budget_redis])"
        in str(error)
    )
    assert isinstance(error, BudgetUnavailable) and error.caller_id == "u1"


async def test_the_password_never_shows_in_a_message(executor: Any, closed_url: str) -> None:
    url = closed_url.replace("redis://", "redis://app:s3cret@")
    async with executor(url) as ex:
        result = await ex.run(Agent(name="a", model=ScriptedModel([answer()])), "hi", caller_id="u1")
    assert result.error is not None and "s3cret" not in result.error
    assert closed_url.replace("redis://", "redis://app:***@") in result.error


async def test_redis_going_away_mid_run_keeps_the_usage_and_meters_it_later(
    executor: Any, proxy: Any, make: Any
) -> None:
    @tool
    async def cut_redis() -> str:
        """Redis goes away while the run is going."""
        await proxy.cut()
        return "cut"

    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[ToolCall(id="c1", name="cut_redis", arguments={})],
                usage=Usage(input_tokens=100, output_tokens=10),
            ),
            answer((200, 20)),
        ]
    )
    reader = make()  # straight to Redis, same prefix: what every other worker sees
    try:
        async with executor(proxy.url, max_tokens=10_000, max_concurrent=1) as ex:
            result = await ex.run(Agent(name="a", model=model, tools=[cut_redis]), "go", caller_id="u1")
            assert result.status is RunStatus.OK and result.output == "done"
            (warning,) = result.warnings
            assert warning.startswith(
                "budget 'budget_redis': commit raised BudgetUnavailable: cannot meter the run of caller u1: "
            )
            assert "its usage (330 tokens, " in warning and "kept in this process" in warning
            assert the_budget(ex).unmetered == (1, 330, 1)
            seen = await reader.usage("u1")
            assert (seen.windows[0].tokens, seen.in_flight) == (0, 1)  # not metered yet, slot still held

            # Redis away at the next check: the run is refused, nothing is lost
            refused = await ex.run(Agent(name="b", model=ScriptedModel([answer()])), "hi", caller_id="u1")
            assert refused.status is RunStatus.ERROR and "could not be reached" in (refused.error or "")
            assert the_budget(ex).unmetered == (1, 330, 1)

            await proxy.restore()
            again = await ex.run(Agent(name="c", model=ScriptedModel([answer()])), "hi", caller_id="u1")
            assert again.status is RunStatus.OK and again.warnings == []
            assert the_budget(ex).unmetered == (0, 0, 0)
        seen = await reader.usage("u1")
        # both runs counted; the first run's slot was released by the replay
        assert (seen.windows[0].runs, seen.windows[0].tokens, seen.in_flight) == (2, 330 + 15, 0)
    finally:
        await reader.aclose()


async def test_the_spool_is_replayed_in_the_background(proxy: Any, make: Any) -> None:
    budget = make(url=proxy.url)
    reader = make()
    try:
        await budget.check("u1")
        await proxy.cut()
        with pytest.raises(BudgetUnavailable, match="kept in this process"):
            await budget.commit("u1", 2.0, Usage(input_tokens=40, output_tokens=2))
        await proxy.restore()
        # no further call: the spool's own task meters it (first retry after half a second)
        async with asyncio.timeout(10):
            while (await reader.usage("u1")).windows[0].tokens != 42:  # noqa: ASYNC110 - Redis is the state
                await asyncio.sleep(0.05)
        assert budget.unmetered == (0, 0, 0)
        assert (await reader.usage("u1")).in_flight == 0
    finally:
        await budget.aclose()
        await reader.aclose()


async def test_aclose_meters_what_the_spool_holds(proxy: Any, make: Any) -> None:
    budget = make(url=proxy.url)
    reader = make()
    try:
        await proxy.cut()
        for caller in ("u1", "u2", "u1"):
            with pytest.raises(BudgetUnavailable):
                await budget.commit(caller, 1.0, Usage(input_tokens=5))
        assert budget.unmetered == (2, 15, 3)
        await proxy.restore()
        await budget.aclose()
        assert budget.unmetered == (0, 0, 0)
        assert [(await reader.usage(c)).windows[0].tokens for c in ("u1", "u2")] == [10, 5]
    finally:
        await reader.aclose()


async def test_a_full_spool_says_the_usage_is_lost(
    make: Any, closed_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    budget = make(url=closed_url, spool_limit=1)
    try:
        with pytest.raises(BudgetUnavailable, match="kept in this process"):
            await budget.commit("u1", 1.0, Usage(input_tokens=5))
        with pytest.raises(BudgetUnavailable, match=r"its usage \(7 tokens, 1s\) is LOST"):
            await budget.commit("u2", 1.0, Usage(input_tokens=7))
        with pytest.raises(BudgetUnavailable, match="kept in this process"):
            await budget.commit("u1", 1.0, Usage(input_tokens=5))  # merged into u1's entry
        assert budget.unmetered == (1, 10, 2)
    finally:
        await budget.aclose()
    assert "closed with 2 unmetered commits of 1 callers (10 tokens)" in caplog.text


async def test_a_redis_that_hangs_refuses_within_the_timeout(executor: Any, proxy: Any) -> None:
    await proxy.black_hole()
    model = ScriptedModel([answer()])
    async with executor(proxy.url, timeout=0.3) as ex:
        async with asyncio.timeout(5):  # far below port_timeout (10 s): our own timeout answered
            result = await ex.run(Agent(name="a", model=model), "hi", caller_id="u1")
    assert result.status is RunStatus.ERROR
    assert result.error is not None and "could not be reached (TimeoutError: " in result.error
    assert model.requests == []


async def test_redis_coming_back_needs_no_restart(executor: Any, proxy: Any) -> None:
    async with executor(proxy.url) as ex:
        agent = Agent(name="a", model=ScriptedModel([answer()], per_run=True))
        assert (await ex.run(agent, "hi", caller_id="u1")).status is RunStatus.OK
        await proxy.cut()  # the pooled connection dies with it
        assert (await ex.run(agent, "hi", caller_id="u1")).status is RunStatus.ERROR
        await proxy.restore()
        back = await ex.run(agent, "hi", caller_id="u1")
    assert back.status is RunStatus.OK and back.warnings == []
