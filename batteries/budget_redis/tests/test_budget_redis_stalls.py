"""Redis stalls (SIGSTOP), restarts and an exhausted pool, on a ``redis-server`` of each test's own
(started on a free loopback port, paused and killed by its PID): no run is counted that the client
refused, no charge is counted twice or lost, and each cause is named for what it is."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from executus_budget_redis import BudgetUnavailable, RedisBudget

from executus_core import Agent, Executor, ModelResponse, RunStatus, Usage
from executus_core.testing import ScriptedModel


def answer() -> ModelResponse:
    return ModelResponse(text="done", usage=Usage(input_tokens=10, output_tokens=5))


async def settle(budget: RedisBudget, seconds: float = 15.0) -> None:
    """Wait until nothing waits in the budget's spool (voids and commits reached Redis)."""
    async with asyncio.timeout(seconds):
        while not budget.settled:  # noqa: ASYNC110 - the spool is the state
            await asyncio.sleep(0.05)


async def test_a_short_stall_does_not_lock_the_caller_out(
    own_redis: Any, key_prefix: str, other_plugins: list[str]
) -> None:
    # Found case 1: a check that timed out in a ~1 s stall was run by Redis when it resumed; the
    # refused run was counted and held the caller's only slot for slot_ttl (an hour).
    settings = {
        "budget_redis": {"url": own_redis.url, "key_prefix": key_prefix, "max_concurrent": 1, "timeout": 1}
    }
    agent = Agent(name="a", model=ScriptedModel([answer()], per_run=True))
    async with Executor(settings=settings, disable=other_plugins) as ex:
        ((_, budget),) = ex.ports.budgets
        assert (await ex.run(agent, "hi", caller_id="u1")).status is RunStatus.OK
        own_redis.pause()
        try:
            stalled = await ex.run(agent, "hi", caller_id="u1")
        finally:
            await asyncio.sleep(0.2)
            own_redis.resume()
        assert stalled.status is RunStatus.ERROR
        assert "could not be reached (TimeoutError" in (stalled.error or "")
        await settle(budget)
        usage = await budget.usage("u1")
        assert (usage.windows[0].runs, usage.in_flight) == (1, 0), "the refused run was counted"
        after = await ex.run(agent, "hi", caller_id="u1")
        assert after.status is RunStatus.OK, after.error


@pytest.mark.parametrize("guard", ["deadline", "void"])
async def test_a_check_that_timed_out_is_never_counted(own_redis: Any, key_prefix: str, guard: str) -> None:
    # Two guards, each enough alone: the check carries its deadline in Redis time (Redis refuses
    # it after), and the client voids it by run id (undone if it ran, a tombstone if not yet).
    budget = RedisBudget(url=own_redis.url, key_prefix=key_prefix, max_concurrent=1, max_runs=5, timeout=0.5)
    try:
        await budget.check("warm", run_id="w")  # loads the scripts; learns Redis's clock
        if guard == "void":
            budget._offset_ms = None  # no deadline: only the void stands between us and a counted run
        own_redis.pause()
        try:
            with pytest.raises(BudgetUnavailable) as caught:
                await budget.check("u1", run_id="r1")
            assert caught.value.cause == "timeout"
            await asyncio.sleep(0.6)
        finally:
            own_redis.resume()
        await settle(budget)
        usage = await budget.usage("u1")
        assert (usage.windows[0].runs, usage.in_flight) == (0, 0)
        await budget.check("u1", run_id="r2")  # its one slot is free
    finally:
        await budget.aclose()


async def test_charges_cut_off_by_a_stall_are_counted_once(own_redis: Any, key_prefix: str) -> None:
    # Found case 2: commits that timed out in a stall were run by Redis when it resumed, and then
    # replayed from the spool: 2,000 tokens metered for 1,000.
    budget = RedisBudget(url=own_redis.url, key_prefix=key_prefix, timeout=0.5)
    try:
        await budget.check("warm", run_id="w")  # Redis has both scripts before it stalls
        await budget.commit("warm", 1.0, Usage(input_tokens=1), run_id="w")
        for n in range(5):
            await budget.check("u1", run_id=f"r{n}")
        own_redis.pause()
        try:
            for n in range(5):
                with pytest.raises(BudgetUnavailable, match="will be metered, once"):
                    await budget.commit("u1", 1.0, Usage(input_tokens=150, output_tokens=50), run_id=f"r{n}")
        finally:
            own_redis.resume()
        await settle(budget)
        usage = await budget.usage("u1")
        assert (usage.windows[0].runs, usage.windows[0].tokens, usage.in_flight) == (5, 1000, 0)
        assert usage.windows[0].seconds == 5.0
    finally:
        await budget.aclose()


async def test_a_restart_after_redis_took_the_commit_does_not_charge_it_again(
    start_redis: Any, key_prefix: str
) -> None:
    # Redis runs the commit (persisted in its append-only file) but its answer never arrives;
    # Redis is killed and started again; the spool's replay finds the run settled.
    server = start_redis(appendonly=True)
    budget = RedisBudget(url=server.url, key_prefix=key_prefix, timeout=0.5)
    try:
        await budget.check("warm", run_id="w")  # Redis has both scripts before it stalls
        await budget.commit("warm", 1.0, Usage(input_tokens=1), run_id="w")
        await budget.check("u1", run_id="r1")
        server.pause()
        with pytest.raises(BudgetUnavailable):
            await budget.commit("u1", 2.0, Usage(input_tokens=700), run_id="r1")
        server.resume()
        client = server.client()
        try:
            deadline = time.monotonic() + 10
            key = f"{key_prefix}{{u1}}:w:86400000"
            while int(client.hget(key, "tokens") or 0) != 700:
                assert time.monotonic() < deadline, "Redis never ran the commit it had received"
                await asyncio.sleep(0.02)
        finally:
            client.close()
        server.kill()
        server.start()  # same port, same append-only file
        await settle(budget)
        window = (await budget.usage("u1")).windows[0]
        assert (window.runs, window.tokens) == (1, 700)
    finally:
        await budget.aclose()
        server.kill()


async def test_an_exhausted_pool_says_so_and_names_max_connections(own_redis: Any, key_prefix: str) -> None:
    # Found case 4: a full pool was reported as "could not be reached ... Start Redis there".
    budget = RedisBudget(url=own_redis.url, key_prefix=key_prefix, max_connections=1, timeout=0.3)
    try:
        await budget.ping()
        pool = budget._connection().client.connection_pool
        taken = await pool.get_connection()  # every connection of the pool is busy
        try:
            with pytest.raises(BudgetUnavailable) as caught:
                await budget.check("u1", run_id="r1")
        finally:
            await pool.release(taken)
        error = caught.value
        assert error.cause == "pool_exhausted"
        message = str(error)
        assert "is up, but all 1 connections of this process's pool were busy for 0.3s" in message
        assert "max_connections" in message and "Start Redis" not in message
        assert budget.unvoided == 0  # the check never left this process: nothing to undo
        await budget.check("u1", run_id="r1")
        assert (await budget.usage("u1")).windows[0].runs == 1
    finally:
        await budget.aclose()
