"""The limits on the real Redis: concurrency, in-flight slots, windows and retry_after, reasons a
person can read, per-caller overrides, and two budgets (two clients) sharing one caller's limits."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from executus_budget_redis import RedisBudget

from executus_core import BudgetExceeded, Usage


def caller() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def admitted(budget: RedisBudget, caller_id: str) -> BudgetExceeded | None:
    try:
        await budget.check(caller_id)
    except BudgetExceeded as exc:
        return exc
    return None


async def test_fifty_checks_at_once_admit_exactly_ten_runs(make: Any) -> None:
    budget = make(max_runs=10)
    who = caller()
    try:
        outcomes = await asyncio.gather(*(admitted(budget, who) for _ in range(50)))
    finally:
        await budget.aclose()
    assert sum(o is None for o in outcomes) == 10
    refusals = [o for o in outcomes if o is not None]
    assert all(f"caller {who} started 10 of 10 runs this day; resets in" in r.reason for r in refusals)


async def test_fifty_checks_at_once_hold_exactly_ten_slots(make: Any) -> None:
    budget = make(max_concurrent=10)
    who = caller()
    try:
        outcomes = await asyncio.gather(*(admitted(budget, who) for _ in range(50)))
        assert sum(o is None for o in outcomes) == 10
        refusal = next(o for o in outcomes if o is not None)
        assert refusal.reason.startswith(f"caller {who} has 10 of 10 runs in flight; a slot frees when")
        # When a run finishes is not known: no retry_after is better than a made-up one.
        assert refusal.retry_after is None
        assert (await budget.usage(who)).in_flight == 10
    finally:
        await budget.aclose()


async def test_commit_frees_the_slot_its_check_took(make: Any) -> None:
    budget = make(max_concurrent=1)
    who = caller()
    try:
        assert await admitted(budget, who) is None
        assert await admitted(budget, who) is not None  # one in flight already
        await budget.commit(who, 0.5, Usage(input_tokens=3, output_tokens=4))
        assert await admitted(budget, who) is None
        await budget.commit(who, 0.5, Usage())
        usage = await budget.usage(who)
        assert (usage.in_flight, usage.windows[0].runs, usage.windows[0].tokens) == (0, 2, 7)
    finally:
        await budget.aclose()


async def test_a_commit_without_a_check_frees_no_slot(make: Any) -> None:
    # A run resumed by Executor.recover() is committed without a check: it must not free the slot
    # of another run of the same caller that is still going.
    budget = make(max_concurrent=1)
    who = caller()
    try:
        assert await admitted(budget, who) is None

        async def elsewhere() -> None:  # another task: it holds no slot of this caller
            await budget.commit(who, 1.0, Usage(input_tokens=10))

        await asyncio.create_task(elsewhere())
        assert (await budget.usage(who)).in_flight == 1
        assert await admitted(budget, who) is not None
    finally:
        await budget.aclose()


async def test_nested_runs_in_one_task_release_their_own_slots(make: Any) -> None:
    budget = make(max_concurrent=2)
    who = caller()
    try:
        await budget.check(who)  # the parent run
        await budget.check(who)  # a child run, in the parent's task (delegation)
        await budget.commit(who, 0.1, Usage())  # the child ends first
        assert (await budget.usage(who)).in_flight == 1
        await budget.commit(who, 0.2, Usage())
        assert (await budget.usage(who)).in_flight == 0
    finally:
        await budget.aclose()


async def test_a_crashed_worker_slot_expires_by_its_ttl(make: Any) -> None:
    crashed = make(max_concurrent=1, slot_ttl=0.3)
    budget = make(max_concurrent=1, slot_ttl=0.3)
    who = caller()
    try:
        await crashed.check(who)  # ...and the worker dies before it commits
        refusal = await admitted(budget, who)
        assert refusal is not None and "at the latest in 0.3s, when its slot expires" in refusal.reason
        await asyncio.sleep(0.5)
        assert await admitted(budget, who) is None
    finally:
        await crashed.aclose()
        await budget.aclose()


async def test_tokens_reason_and_exact_retry_after(make: Any) -> None:
    budget = make(max_tokens=100_000, window="1d")
    who = caller()
    try:
        await budget.check(who)
        await budget.commit(who, 3.0, Usage(input_tokens=60_000, output_tokens=40_000, thinking_tokens=9_000))
        refusal = await admitted(budget, who)
        usage = await budget.usage(who)
    finally:
        await budget.aclose()
    assert refusal is not None
    # thinking is part of output_tokens: counted once, not added again
    assert refusal.reason.startswith(f"caller {who} used 100000 of 100000 tokens this day; resets in 1d")
    assert refusal.retry_after is not None and 86_390 < refusal.retry_after <= 86_400
    assert usage.windows[0].resets_in is not None
    assert usage.windows[0].resets_in <= refusal.retry_after


async def test_a_window_resets_when_retry_after_has_passed(make: Any) -> None:
    budget = make(max_runs=1, max_seconds=5, window=0.4)
    who = caller()
    try:
        await budget.check(who)
        await budget.commit(who, 1.0, Usage())
        refusal = await admitted(budget, who)
        assert refusal is not None and refusal.retry_after is not None
        assert 0 < refusal.retry_after <= 0.4
        assert "started 1 of 1 runs this 0.4s window; resets in" in refusal.reason
        await asyncio.sleep(refusal.retry_after + 0.05)
        assert await admitted(budget, who) is None
        usage = await budget.usage(who)
        assert (usage.windows[0].runs, usage.windows[0].seconds) == (1, 0.0)
    finally:
        await budget.aclose()


async def test_several_windows_count_at_once_and_retry_after_waits_for_all(make: Any) -> None:
    budget = make(max_runs={"0.3s": 1, "1d": 3})
    who = caller()
    try:
        await budget.check(who)
        short = await admitted(budget, who)
        assert short is not None and short.retry_after is not None and short.retry_after <= 0.3
        await asyncio.sleep(short.retry_after + 0.05)
        await budget.check(who)
        await asyncio.sleep(0.35)
        await budget.check(who)
        await asyncio.sleep(0.35)
        refusal = await admitted(budget, who)  # the short window is free again; the day is not
        assert refusal is not None
        assert f"caller {who} started 3 of 3 runs this day" in refusal.reason
        assert "0.3s window" not in refusal.reason
        assert refusal.retry_after is not None and refusal.retry_after > 86_000
    finally:
        await budget.aclose()


async def test_runtime_limit_reason(make: Any) -> None:
    budget = make(max_seconds=60, window="1h")
    who = caller()
    try:
        await budget.check(who)
        await budget.commit(who, 61.25, Usage())
        refusal = await admitted(budget, who)
    finally:
        await budget.aclose()
    assert refusal is not None
    assert refusal.reason.startswith(f"caller {who} used 61.25 of 60 seconds of runtime this hour; resets in")


async def test_a_zero_limit_refuses_for_good(make: Any) -> None:
    budget = make(callers={"banned-*": {"max_runs": 0}})
    try:
        refusal = await admitted(budget, "banned-7")
        assert refusal is not None
        assert refusal.reason == 'caller banned-7 is allowed no runs (callers."banned-*".max_runs = 0)'
        assert refusal.retry_after is None  # waiting does not help
        assert await admitted(budget, "other") is None
    finally:
        await budget.aclose()


async def test_callers_exact_ids_then_patterns_then_defaults(make: Any) -> None:
    budget = make(
        max_runs=1,
        callers={
            "vip-1": {"max_runs": 3},
            # no hold: five runs may be in flight at once on 10 tokens (the caller's own token_hold)
            "vip-*": {"max_runs": "unlimited", "max_tokens": 10, "token_hold": 0},
            "team-?": {"window": "1h"},
        },
    )
    try:
        assert budget.limits_for("vip-1").source == 'callers."vip-1"'
        for _ in range(3):
            assert await admitted(budget, "vip-1") is None
        assert await admitted(budget, "vip-1") is not None
        for _ in range(5):  # unlimited runs, but tokens are limited
            assert await admitted(budget, "vip-2") is None
        await budget.commit("vip-2", 0.1, Usage(input_tokens=10))
        refusal = await admitted(budget, "vip-2")
        assert refusal is not None and "used 10 of 10 tokens this day" in refusal.reason
        assert await admitted(budget, "team-a") is None
        refusal = await admitted(budget, "team-a")
        assert refusal is not None and "started 1 of 1 runs this hour" in refusal.reason
        assert await admitted(budget, "plain") is None
        assert await admitted(budget, "plain") is not None
    finally:
        await budget.aclose()


async def test_two_budgets_with_their_own_clients_share_one_callers_limits(make: Any) -> None:
    first = make(max_runs=10, max_tokens=50, token_hold=0)
    second = make(max_runs=10, max_tokens=50, token_hold=0)
    who = caller()
    try:
        outcomes = await asyncio.gather(
            *(admitted(first, who) for _ in range(25)), *(admitted(second, who) for _ in range(25))
        )
        assert sum(o is None for o in outcomes) == 10
        other = caller()
        await first.check(other)
        await first.commit(other, 1.0, Usage(input_tokens=30))
        await second.check(other)
        await second.commit(other, 1.0, Usage(input_tokens=30))
        refusal = await admitted(first, other)
        assert refusal is not None and "used 60 of 50 tokens" in refusal.reason
    finally:
        await first.aclose()
        await second.aclose()


async def test_reset_forgets_a_caller_and_frees_its_slots(make: Any) -> None:
    budget = make(max_runs=1, max_concurrent=1)
    who, kept = caller(), caller()
    try:
        await budget.check(who)
        await budget.check(kept)
        assert await admitted(budget, who) is not None
        # its window, its slots, its holds and its run's record
        assert await budget.reset(who) == 4
        assert await admitted(budget, who) is None
        assert await admitted(budget, kept) is not None  # other callers are untouched
        assert set(await budget.callers()) == {who, kept}
    finally:
        await budget.aclose()


async def test_caller_ids_with_key_syntax_stay_apart(make: Any) -> None:
    budget = make(max_runs=1)
    odd = ["a}:w:1", "a", "{a}", "a*", "ü:{}"]
    try:
        for name in odd:
            assert await admitted(budget, name) is None, name
        for name in odd:
            assert await admitted(budget, name) is not None, name
        assert sorted(await budget.callers()) == sorted(odd)
        assert await budget.reset("a*") >= 1
        assert await admitted(budget, "a*") is None
        assert await admitted(budget, "a") is not None  # "a*" was not read as a pattern
    finally:
        await budget.aclose()


def test_the_budget_is_used_from_a_new_event_loop(make: Any) -> None:
    # run_sync hosts and CLIs use a loop per call: the pool follows the loop it is used from.
    budget = make(max_runs=2)
    who = caller()
    asyncio.run(budget.check(who))
    asyncio.run(budget.check(who))
    refusal = asyncio.run(admitted(budget, who))
    asyncio.run(budget.aclose())
    assert refusal is not None


@pytest.mark.parametrize("bad", [{"max_runs": -1}, {"window": "soon"}, {"max_tokens": {"1x": 5}}])
def test_bad_limits_are_refused_when_the_budget_is_built(make: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**bad)
