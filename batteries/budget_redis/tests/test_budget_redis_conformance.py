"""`RedisBudget` (on the real Redis) and `SQLiteBudget` pass the Budget conformance suite of executus_core."""

from __future__ import annotations

from typing import Any

import pytest
from executus_budget_redis import RedisBudget, SQLiteBudget

from executus_core.testing.conformance import BudgetConformance


class TestRedisBudgetConformance(BudgetConformance):
    @pytest.fixture
    def make_budget(self, redis_url: str, key_prefix: str) -> Any:
        def make(
            max_runs: int | None = None,
            max_tokens: int | None = None,
            max_seconds: float | None = None,
            window_seconds: float | None = None,
        ) -> RedisBudget:
            # Without a window the suite counts "forever": a day is forever for a test.
            return RedisBudget(
                url=redis_url,
                key_prefix=key_prefix,
                window=window_seconds or "1d",
                max_runs=max_runs,
                max_tokens=max_tokens,
                max_seconds=max_seconds,
                token_hold=0,  # the suite meters committed tokens only; holds are tested on their own
            )

        return make


class TestSQLiteBudgetConformance(BudgetConformance):
    """The embedded backend passes the same suite, in a file of the test's own."""

    @pytest.fixture
    def make_budget(self, tmp_path: Any) -> Any:
        def make(
            max_runs: int | None = None,
            max_tokens: int | None = None,
            max_seconds: float | None = None,
            window_seconds: float | None = None,
        ) -> SQLiteBudget:
            return SQLiteBudget(
                path=str(tmp_path / "budget.sqlite3"),
                window=window_seconds or "1d",
                max_runs=max_runs,
                max_tokens=max_tokens,
                max_seconds=max_seconds,
                token_hold=0,
            )

        return make
