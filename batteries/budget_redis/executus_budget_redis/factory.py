"""Which store a budget uses: `open_budget` reads ``backend`` (and whether ``url`` is set)."""

from __future__ import annotations

from pathlib import Path

from executus_budget_redis.base import StoreBudget
from executus_budget_redis.budget import RedisBudget
from executus_budget_redis.embedded import SQLiteBudget
from executus_budget_redis.settings import BudgetRedisSettings

__all__ = ["open_budget"]


def open_budget(config: BudgetRedisSettings, data_dir: str | Path | None = None) -> StoreBudget:
    """A `RedisBudget` when ``backend = "redis"``, or ``"auto"`` with a ``url`` set; else a
    `SQLiteBudget` on ``path`` (default: ``budget.sqlite3`` in ``data_dir``). Opens nothing yet."""
    if config.uses_redis:
        return RedisBudget(config)
    return SQLiteBudget(config, data_dir=data_dir)
