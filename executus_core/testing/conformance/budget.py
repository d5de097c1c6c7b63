"""The conformance suite of `Budget`."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from typing import Any

from executus_core.errors import BudgetExceeded
from executus_core.ports import Budget
from executus_core.testing.conformance._harness import LoopLag, built, call, maybe_await, run_check
from executus_core.types import Usage

__all__ = [
    "BUDGET_CHECKS",
    "BudgetConformance",
    "check_budget_concurrent_checks_admit_at_most_the_limit",
    "check_budget_concurrent_commits_all_count",
    "check_budget_limits_runs_per_caller",
    "check_budget_limits_seconds_per_caller",
    "check_budget_limits_tokens_per_caller",
    "check_budget_never_blocks_the_loop",
    "check_budget_run_ids_apply_each_call_once",
    "check_budget_unlimited_allows_everyone",
    "check_budget_window_says_when_to_retry",
]


def _callers(count: int) -> list[str]:
    # Unique per check, so a budget over shared storage (Redis) never sees another check's usage.
    prefix = uuid.uuid4().hex[:10]
    return [f"caller-{prefix}-{i}" for i in range(count)]


def _budget(made: Any) -> Budget:
    assert isinstance(made, Budget), (
        f"make_budget built {type(made).__name__}, not a Budget (async check(caller_id) and "
        "commit(caller_id, runtime_seconds, usage))"
    )
    return made


async def _refusal(budget: Budget, caller_id: str) -> BudgetExceeded | None:
    """``None`` if ``check`` allowed the run, the `BudgetExceeded` if it refused; anything else fails."""
    try:
        answer = await maybe_await(budget.check(caller_id))
    except BudgetExceeded as exc:
        assert isinstance(exc.reason, str) and exc.reason.strip(), (
            f"BudgetExceeded for {caller_id} has no reason: say which limit was hit"
        )
        return exc
    except Exception as exc:
        raise AssertionError(
            f"Budget.check({caller_id!r}) raised {type(exc).__name__}: {exc}; refuse with BudgetExceeded"
        ) from exc
    assert answer is None, f"Budget.check({caller_id!r}) returned {answer!r}: allow by returning None"
    return None


async def _commit(
    budget: Budget, caller_id: str, seconds: float = 0.1, tokens: tuple[int, int] = (0, 0)
) -> None:
    usage = Usage(input_tokens=tokens[0], output_tokens=tokens[1])
    answer = await call("Budget.commit", budget.commit, caller_id, seconds, usage)
    assert answer is None, f"Budget.commit returned {answer!r}, not None"


async def check_budget_unlimited_allows_everyone(factory: Any) -> None:
    """With no limits configured, every check passes and every commit is taken."""
    async with built(factory) as made:
        budget = _budget(made)
        for caller in _callers(20):
            for _ in range(3):
                refusal = await _refusal(budget, caller)
                assert refusal is None, f"a budget with no limits refused {caller}: {refusal}"
                await _commit(budget, caller, 5.0, (10_000, 1_000))


async def check_budget_limits_runs_per_caller(factory: Any) -> None:
    """``max_runs=2``: a caller's third run is refused with `BudgetExceeded`; other callers are untouched."""
    async with built(factory, max_runs=2) as made:
        budget = _budget(made)
        first, second = _callers(2)
        for n in (1, 2):
            refusal = await _refusal(budget, first)
            assert refusal is None, f"run {n} of {first} was refused under max_runs=2: {refusal}"
            await _commit(budget, first)
        assert await _refusal(budget, first) is not None, (
            f"{first} started a third run under max_runs=2: the budget never refused"
        )
        for n in (1, 2):
            refusal = await _refusal(budget, second)
            assert refusal is None, (
                f"{second} was refused on its run {n} after only {first} used its runs: limits are per caller "
                f"({refusal})"
            )


async def check_budget_limits_tokens_per_caller(factory: Any) -> None:
    """``max_tokens=100`` counts input + output tokens committed; at 100 the caller is refused."""
    async with built(factory, max_tokens=100) as made:
        budget = _budget(made)
        first, second = _callers(2)
        assert await _refusal(budget, first) is None
        await _commit(budget, first, tokens=(40, 20))
        refusal = await _refusal(budget, first)
        assert refusal is None, f"{first} was refused at 60 of 100 tokens: {refusal}"
        await _commit(budget, first, tokens=(30, 10))
        assert await _refusal(budget, first) is not None, (
            f"{first} committed 100 tokens under max_tokens=100 and was not refused"
        )
        refusal = await _refusal(budget, second)
        assert refusal is None, (
            f"{second} was refused for {first}'s tokens: limits are per caller ({refusal})"
        )


async def check_budget_limits_seconds_per_caller(factory: Any) -> None:
    """``max_seconds=1.0`` counts committed runtime; past it the caller is refused."""
    async with built(factory, max_seconds=1.0) as made:
        budget = _budget(made)
        first, second = _callers(2)
        assert await _refusal(budget, first) is None
        await _commit(budget, first, seconds=0.6)
        refusal = await _refusal(budget, first)
        assert refusal is None, f"{first} was refused at 0.6 of 1.0 seconds: {refusal}"
        await _commit(budget, first, seconds=0.6)
        assert await _refusal(budget, first) is not None, (
            f"{first} committed 1.2 s of runtime under max_seconds=1.0 and was not refused"
        )
        assert await _refusal(budget, second) is None, f"{second} was refused for {first}'s runtime"


async def check_budget_window_says_when_to_retry(factory: Any) -> None:
    """``max_runs=1, window_seconds=0.5``: the refusal carries ``retry_after`` (0 < it <= the window),
    and once that much time has passed the caller is let through again."""
    window = 0.5
    async with built(factory, max_runs=1, window_seconds=window) as made:
        budget = _budget(made)
        (caller,) = _callers(1)
        assert await _refusal(budget, caller) is None
        await _commit(budget, caller)
        refusal = await _refusal(budget, caller)
        assert refusal is not None, f"{caller}'s second run within {window}s was let through under max_runs=1"
        retry = refusal.retry_after
        assert retry is not None, "a budget with a window knows when the caller may retry: set retry_after"
        assert 0 < retry <= window + 0.05, f"retry_after is {retry}, not within (0, {window}]"
        await asyncio.sleep(retry + 0.1)
        refusal = await _refusal(budget, caller)
        assert refusal is None, (
            f"{caller} was still refused {retry + 0.1:.2f}s later, after retry_after={retry}"
        )


async def check_budget_concurrent_commits_all_count(factory: Any) -> None:
    """Commits for many callers at once are all counted (no lost update) and never mixed up."""
    async with built(factory, max_tokens=100) as made:
        budget = _budget(made)
        full, short = _callers(12), _callers(12)
        commits = [_commit(budget, caller, tokens=(5, 5)) for caller in full for _ in range(10)]
        commits += [_commit(budget, caller, tokens=(5, 5)) for caller in short for _ in range(9)]
        # Interleave the callers so a budget that mixes them up or loses updates shows it.
        commits = commits[::2] + commits[1::2]
        await asyncio.gather(*commits)
        for caller in full:
            assert await _refusal(budget, caller) is not None, (
                f"{caller} committed 10 x 10 tokens concurrently under max_tokens=100 and was not refused: "
                "concurrent commits were lost"
            )
        for caller in short:
            refusal = await _refusal(budget, caller)
            assert refusal is None, (
                f"{caller} committed 90 tokens under max_tokens=100 and was refused: another caller's "
                f"usage was counted against it ({refusal})"
            )


async def check_budget_concurrent_checks_admit_at_most_the_limit(factory: Any) -> None:
    """``max_runs=5`` and 20 checks at once for one caller: at most 5 pass (a check counts its run
    atomically), and at least one does."""
    async with built(factory, max_runs=5) as made:
        budget = _budget(made)
        (caller,) = _callers(1)
        outcomes = await asyncio.gather(*(_refusal(budget, caller) for _ in range(20)))
        admitted = sum(outcome is None for outcome in outcomes)
        assert 1 <= admitted <= 5, (
            f"{admitted} of 20 concurrent checks passed under max_runs=5: a check must count the run it "
            "admits in the same atomic step as it reads the count"
        )


async def check_budget_never_blocks_the_loop(factory: Any) -> None:
    """Checking and committing for many callers at once never stalls the event loop."""
    async with built(factory, max_tokens=10**9, max_runs=10**6) as made:
        budget = _budget(made)

        async def one(caller: str) -> None:
            for _ in range(10):
                assert await _refusal(budget, caller) is None
                await _commit(budget, caller, tokens=(10, 10))

        async with LoopLag() as lag:
            await asyncio.gather(*(one(caller) for caller in _callers(20)))
        lag.check("checking and committing 200 runs")


def takes_run_id(method: Any) -> bool:
    """Whether a budget method accepts ``run_id=`` (a keyword of its own, or ``**kwargs``): the
    core passes the run id only to methods that do."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "run_id" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


async def check_budget_run_ids_apply_each_call_once(factory: Any) -> None:
    """With run ids (a budget whose ``check`` and ``commit`` take ``run_id=``): a second check of a
    run already admitted counts nothing (a retry, or a recovered run), a second commit of a run
    charges nothing (a retry, or a replay), and a release — the commit of nothing the core sends
    when a later budget refused the run — charges nothing."""
    async with built(factory, max_runs=2, max_tokens=100) as made:
        budget = _budget(made)
        if not (takes_run_id(budget.check) and takes_run_id(budget.commit)):
            import pytest  # here, not at the top: executus_core.testing imports without pytest

            pytest.skip("this budget takes no run_id: the core calls it without one")
        runs, tokens, released = _callers(3)
        for label in ("the first check", "the same run's second check"):
            assert await _refusal_of_run(budget, runs, "r1") is None, f"{label} of r1 was refused"
        assert await _refusal_of_run(budget, runs, "r2") is None, (
            f"{runs}'s second run was refused under max_runs=2: checking run r1 twice counted it twice"
        )
        assert await _refusal_of_run(budget, runs, "r3") is not None, f"{runs} started a third run"

        usage = Usage(input_tokens=40, output_tokens=20)
        assert await _refusal_of_run(budget, tokens, "t1") is None
        for _ in range(2):
            await call("Budget.commit", budget.commit, tokens, 0.5, usage, run_id="t1")
        refusal = await _refusal_of_run(budget, tokens, "t2")
        assert refusal is None, (
            f"{tokens} was refused at 60 of 100 tokens after one run committed twice: a commit's retry "
            f"charged it again ({refusal})"
        )

        assert await _refusal_of_run(budget, released, "x1") is None
        await call("Budget.commit", budget.commit, released, 0.0, Usage(), run_id="x1")
        assert await _refusal_of_run(budget, released, "x2") is None, "a released run used up the budget"
        await call("Budget.commit", budget.commit, released, 0.5, Usage(input_tokens=99), run_id="x2")
        assert await _refusal_of_run(budget, released, "x3") is None, (
            f"{released} was refused at 99 of 100 tokens: the release of run x1 was charged"
        )


async def _refusal_of_run(budget: Any, caller_id: str, run_id: str) -> BudgetExceeded | None:
    try:
        await maybe_await(budget.check(caller_id, run_id=run_id))
    except BudgetExceeded as exc:
        return exc
    return None


BUDGET_CHECKS = (
    check_budget_unlimited_allows_everyone,
    check_budget_limits_runs_per_caller,
    check_budget_limits_tokens_per_caller,
    check_budget_limits_seconds_per_caller,
    check_budget_window_says_when_to_retry,
    check_budget_concurrent_commits_all_count,
    check_budget_concurrent_checks_admit_at_most_the_limit,
    check_budget_never_blocks_the_loop,
    check_budget_run_ids_apply_each_call_once,
)


class BudgetConformance:
    """The contract every `Budget` battery honours. Subclass it and provide ``make_budget``.

    ``make_budget`` is a fixture returning a factory ``make(**limits)`` (sync or ``async``) that
    builds a fresh budget with these per-caller limits, each ``None`` when not given:

    - ``max_runs``: runs admitted by ``check`` (counted when ``check`` lets the run through, in the
      same atomic step as the limit is read, so concurrent checks never admit more);
    - ``max_tokens``: input + output tokens committed;
    - ``max_seconds``: runtime seconds committed;
    - ``window_seconds``: count only the last this-many seconds (a sliding window); the refusal then
      carries ``retry_after``.

    A caller at or over a limit is refused with `BudgetExceeded` (a reason that names the limit).
    Callers never share usage. A budget whose ``check`` and ``commit`` take ``run_id=`` must apply
    each call at most once per run id (the suite skips that check for a budget without run ids). If your budget has no such limit, ``pytest.skip`` from the factory.
    Each test runs in its own event loop (no pytest-asyncio needed); ``aclose()`` is called if the
    budget has one::

        class TestRedisBudget(BudgetConformance):
            @pytest.fixture
            def make_budget(self, redis_url):
                return lambda **limits: RedisBudget(url=redis_url, **limits)
    """

    def test_unlimited_allows_everyone(self, make_budget: Any) -> None:
        run_check(check_budget_unlimited_allows_everyone, make_budget)

    def test_limits_runs_per_caller(self, make_budget: Any) -> None:
        run_check(check_budget_limits_runs_per_caller, make_budget)

    def test_limits_tokens_per_caller(self, make_budget: Any) -> None:
        run_check(check_budget_limits_tokens_per_caller, make_budget)

    def test_limits_seconds_per_caller(self, make_budget: Any) -> None:
        run_check(check_budget_limits_seconds_per_caller, make_budget)

    def test_window_says_when_to_retry(self, make_budget: Any) -> None:
        run_check(check_budget_window_says_when_to_retry, make_budget)

    def test_concurrent_commits_all_count(self, make_budget: Any) -> None:
        run_check(check_budget_concurrent_commits_all_count, make_budget)

    def test_concurrent_checks_admit_at_most_the_limit(self, make_budget: Any) -> None:
        run_check(check_budget_concurrent_checks_admit_at_most_the_limit, make_budget)

    def test_never_blocks_the_loop(self, make_budget: Any) -> None:
        run_check(check_budget_never_blocks_the_loop, make_budget)

    def test_run_ids_apply_each_call_once(self, make_budget: Any) -> None:
        run_check(check_budget_run_ids_apply_each_call_once, make_budget)
