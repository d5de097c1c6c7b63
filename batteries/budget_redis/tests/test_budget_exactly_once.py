"""Exactly once, keyed by run id, on both backends (Redis and the embedded SQLite): a check, a
commit and a release are each applied at most once per run; a check given up on is undone or
never applied; holds keep concurrent runs inside max_tokens; refusals carry the limit."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from executus_budget_redis.base import ADMITTED, ALREADY, LATE, VOIDED
from executus_budget_redis.spool import Commit, Pending

from executus_core import BudgetExceeded, Usage


def caller() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def refusal(budget: Any, who: str, run_id: str | None = None) -> BudgetExceeded | None:
    try:
        await budget.check(who, run_id=run_id or uuid.uuid4().hex)
    except BudgetExceeded as exc:
        return exc
    return None


async def test_a_second_check_of_a_run_counts_nothing(make_store: Any) -> None:
    budget = make_store(max_runs=5, max_concurrent=2)
    who = caller()
    try:
        await budget.check(who, run_id="r1")
        await budget.check(who, run_id="r1")  # a retried check, or the run recovered elsewhere
        usage = await budget.usage(who)
        assert (usage.windows[0].runs, usage.in_flight) == (1, 1)
        await budget.commit(who, 1.0, Usage(input_tokens=10), run_id="r1")
        assert (await budget.usage(who)).in_flight == 0
    finally:
        await budget.aclose()


async def test_a_retried_commit_charges_nothing(make_store: Any) -> None:
    budget = make_store(max_tokens=1_000_000)
    who = caller()
    try:
        await budget.check(who, run_id="r1")
        for _ in range(3):
            await budget.commit(who, 2.0, Usage(input_tokens=300, output_tokens=100), run_id="r1")
        window = (await budget.usage(who)).windows[0]
        assert (window.runs, window.tokens, window.seconds) == (1, 400, 2.0)
    finally:
        await budget.aclose()


async def test_a_later_part_of_a_run_that_commits_after_an_earlier_one_settled_is_charged(
    make_store: Any,
) -> None:
    """A paused worker loses its run to another; the paused one wakes and commits first (its part, 600
    tokens), the new owner commits the run's total (1,000) after: the run is charged 1,000, once."""
    budget = make_store(max_tokens=1_000_000)
    who = caller()
    try:
        await budget.check(who, run_id="r1")  # the first worker
        await budget.check(who, run_id="r1")  # the one that took it over
        await budget.commit(who, 1.0, Usage(input_tokens=600), run_id="r1")  # the paused one, woken
        await budget.commit(who, 2.0, Usage(input_tokens=1000), run_id="r1")  # the owner, at the end
        await budget.commit(who, 2.0, Usage(input_tokens=1000), run_id="r1")  # a retry of it
        window = (await budget.usage(who)).windows[0]
        # was: (1, 600, 1.0): the owner's commit found the run settled and charged nothing
        assert (window.runs, window.tokens, window.seconds) == (1, 1000, 3.0)
    finally:
        await budget.aclose()


async def test_a_replayed_spool_entry_of_a_commit_the_store_took_charges_nothing(make_store: Any) -> None:
    # The commit reached the store, but its answer was lost: the spool replays it.
    budget = make_store()
    who = caller()
    try:
        await budget.check(who, run_id="r1")
        await budget.commit(who, 1.0, Usage(input_tokens=1000), run_id="r1")
        budget._spool.put(who, Pending(commits={"r1": Commit("r1", 1000, 1000)}))
        await budget._flush_all()
        assert budget.unmetered == (0, 0, 0)
        assert (await budget.usage(who)).windows[0].tokens == 1000
    finally:
        await budget.aclose()


async def test_a_release_gives_back_the_count_the_slot_and_the_hold(make_store: Any) -> None:
    # Another budget refused the run after this one admitted it: the core commits nothing.
    budget = make_store(max_runs=1, max_concurrent=1, max_tokens=1000, token_hold=600)
    who = caller()
    try:
        await budget.check(who, run_id="r1")
        assert (await budget.usage(who)).held == 600
        await budget.commit(who, 0.0, Usage(), run_id="r1")
        await budget.commit(who, 0.0, Usage(), run_id="r1")  # retried: still one release
        usage = await budget.usage(who)
        assert (usage.windows[0].runs, usage.in_flight, usage.held) == (0, 0, 0)
        await budget.check(who, run_id="r2")  # max_runs=1: the released run did not count
        await budget.release(who, run_id="r2")
        assert (await budget.usage(who)).windows[0].runs == 0
    finally:
        await budget.aclose()


async def test_a_recovered_run_is_charged_only_what_it_used_since(make_store: Any) -> None:
    budget = make_store(max_runs=5)
    who = caller()
    try:
        await budget.check(who, run_id="r1")
        await budget.commit(who, 1.0, Usage(input_tokens=100), run_id="r1")  # interrupted at 100
        await budget.check(who, run_id="r1")  # resumed: admitted again, not a second run
        await budget.commit(who, 0.5, Usage(input_tokens=250), run_id="r1")  # its total is 250
        window = (await budget.usage(who)).windows[0]
        assert (window.runs, window.tokens, window.seconds) == (1, 250, 1.5)
    finally:
        await budget.aclose()


async def test_a_check_voided_before_the_store_ran_it_applies_nothing(make_store: Any) -> None:
    budget = make_store(max_concurrent=1)
    who = caller()
    limits = budget.limits_for(who)
    try:
        assert await budget._store_void(limits, "r1", "n1") == 2  # a tombstone: Redis has not run it yet
        reply = await budget._store_check(limits, "r1", "n1", time.time() + 5)  # ...now it does
        assert reply.code == VOIDED
        usage = await budget.usage(who)
        assert (usage.windows[0].runs, usage.in_flight) == (0, 0)
        # the run itself may still be checked again later (a new attempt, a new nonce)
        assert (await budget._store_check(limits, "r1", "n2", time.time() + 5)).code == ADMITTED
    finally:
        await budget.aclose()


async def test_a_check_voided_after_the_store_ran_it_is_undone(make_store: Any) -> None:
    budget = make_store(max_runs=1, max_concurrent=1, max_tokens=100, token_hold=50)
    who = caller()
    limits = budget.limits_for(who)
    try:
        assert (await budget._store_check(limits, "r1", "n1", time.time() + 5)).code == ADMITTED
        assert await budget._store_void(limits, "r1", "other") == 0  # another attempt's void: nothing
        assert await budget._store_void(limits, "r1", "n1") == 1
        assert await budget._store_void(limits, "r1", "n1") == 0  # once
        usage = await budget.usage(who)
        assert (usage.windows[0].runs, usage.in_flight, usage.held) == (0, 0, 0)
        await budget.check(who, run_id="r2")  # max_runs=1 and max_concurrent=1: both were given back
    finally:
        await budget.aclose()


async def test_a_check_that_reaches_the_store_after_its_deadline_applies_nothing(make_store: Any) -> None:
    budget = make_store(max_concurrent=1)
    who = caller()
    limits = budget.limits_for(who)
    try:
        await budget.ping()
        await budget.check(caller(), run_id="warm")  # Redis: learn its clock
        reply = await budget._store_check(limits, "r1", "n1", time.time() - 1)
        assert reply.code == LATE
        usage = await budget.usage(who)
        assert (usage.windows[0].runs, usage.in_flight) == (0, 0)
        assert (await budget._store_check(limits, "r1", "n2", time.time() + 5)).code == ADMITTED
        assert (await budget._store_check(limits, "r1", "n3", time.time() + 5)).code == ALREADY
    finally:
        await budget.aclose()


async def test_holds_keep_runs_in_flight_inside_max_tokens(make_store: Any) -> None:
    budget = make_store(max_tokens=1000, token_hold=400)
    who = caller()
    try:
        await budget.check(who, run_id="a")
        await budget.check(who, run_id="b")
        refused = await refusal(budget, who)  # 0 used + 800 held + 400 for a third run > 1000
        assert refused is not None
        assert refused.reason == (
            f"caller {who} used 0 of 1000 tokens this day, its runs in flight hold 800 more, and a run "
            "holds 400 (token_hold): 200 left is not enough; a run is admitted again when one in flight "
            "ends and gives back what it did not use"
        )
        assert refused.retry_after is None  # when a run ends is not known
        assert refused.limit == "max_tokens"
        usage = await budget.usage(who)
        assert (usage.in_flight, usage.held, usage.next_hold) == (2, 800, 400)
        assert sorted((r.run_id, r.hold) for r in usage.runs) == [("a", 400), ("b", 400)]
        await budget.commit(who, 1.0, Usage(input_tokens=100), run_id="a")  # settled: 100 used, 300 back
        await budget.check(who, run_id="c")  # 100 used + 400 held + 400 = 900
        usage = await budget.usage(who)
        assert (usage.windows[0].tokens, usage.held) == (100, 800)
        assert await refusal(budget, who) is not None
        for run in ("b", "c"):
            await budget.commit(who, 1.0, Usage(input_tokens=400), run_id=run)
        # 900 used, nothing in flight: 100 left cannot hold a run of 400 before the day resets
        refused = await refusal(budget, who)
        assert refused is not None and refused.retry_after is not None and refused.retry_after > 86_000
        assert "100 left is not enough; resets in" in refused.reason
    finally:
        await budget.aclose()


async def test_a_hold_is_never_more_than_the_limit(make_store: Any) -> None:
    budget = make_store(max_tokens=100)  # token_hold_initial (4000) is more than the whole limit
    who = caller()
    try:
        await budget.check(who, run_id="a")
        assert (await budget.usage(who)).held == 100
        assert await refusal(budget, who) is not None  # the one run holds it all
        await budget.commit(who, 1.0, Usage(input_tokens=10), run_id="a")
        await budget.check(who, run_id="b")  # its history says 10
        assert (await budget.usage(who)).held == 10
    finally:
        await budget.aclose()


async def test_auto_holds_follow_the_callers_recent_runs(make_store: Any) -> None:
    budget = make_store(max_tokens=1_000_000, token_hold_initial=5000)
    who = caller()
    try:
        assert (await budget.usage(who)).next_hold == 5000  # no history yet
        for index, tokens in enumerate((100, 300)):
            await budget.check(who, run_id=f"r{index}")
            await budget.commit(who, 1.0, Usage(input_tokens=tokens), run_id=f"r{index}")
        usage = await budget.usage(who)
        assert usage.average_tokens == pytest.approx(200)
        assert usage.next_hold == 200
        await budget.check(who, run_id="r9")
        assert (await budget.usage(who)).held == 200
    finally:
        await budget.aclose()


async def test_without_a_token_limit_nothing_is_held(make_store: Any) -> None:
    budget = make_store(max_runs=100)
    who = caller()
    try:
        await budget.check(who, run_id="r1")
        usage = await budget.usage(who)
        assert (usage.in_flight, usage.held, usage.next_hold) == (1, 0, 0)
    finally:
        await budget.aclose()


async def test_refusals_name_the_limit_for_programs(make_store: Any) -> None:
    budget = make_store(max_runs=1, window="1h", callers={"vip-*": {"max_concurrent": 0}})
    who = caller()
    try:
        await budget.check(who, run_id="r1")
        refused = await refusal(budget, who)
        assert refused is not None and refused.limit == "max_runs"
        assert refused.retry_after is not None and 3590 < refused.retry_after <= 3600
        vip = await refusal(budget, "vip-1")
        assert vip is not None and vip.limit == 'callers."vip-*".max_concurrent' and vip.retry_after is None
    finally:
        await budget.aclose()


async def test_without_run_ids_a_check_and_its_commit_pair_in_one_task(make_store: Any) -> None:
    # The call shape of a core older than run ids keeps working.
    budget = make_store(max_concurrent=1, max_runs=3)
    who = caller()
    try:
        await budget.check(who)
        await budget.commit(who, 1.0, Usage(input_tokens=5))
        await budget.check(who)
        await budget.commit(who, 0.0, Usage())  # a release: not counted
        usage = await budget.usage(who)
        assert (usage.windows[0].runs, usage.windows[0].tokens, usage.in_flight) == (1, 5, 0)
    finally:
        await budget.aclose()


async def test_many_checks_of_one_run_at_once_count_it_once(make_store: Any) -> None:
    budget = make_store(max_runs=10)
    who = caller()
    try:
        await asyncio.gather(*(budget.check(who, run_id="same") for _ in range(20)))
        assert (await budget.usage(who)).windows[0].runs == 1
    finally:
        await budget.aclose()
