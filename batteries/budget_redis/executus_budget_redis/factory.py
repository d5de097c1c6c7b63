"""Which store a budget uses: `open_budget` reads ``backend`` (and whether ``url`` is set)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from executus_budget_redis.base import StoreBudget
    from executus_budget_redis.settings import BudgetRedisSettings

__all__ = ["open_budget"]


def open_budget(config: BudgetRedisSettings, data_dir: str | Path | None = None) -> StoreBudget:
    """A `RedisBudget` when ``backend = "redis"``, or ``"auto"`` with a ``url`` set; else a
    `SQLiteBudget` on ``path`` (default: ``budget.sqlite3`` in ``data_dir``). Opens nothing yet."""
    # Each store's module is imported only when it is the one used: redis-py costs ~0.5 s to import
    # on a loaded machine, which a host on the embedded SQLite store (or a CLI command) never needs.
    if config.uses_redis:
        from executus_budget_redis.budget import RedisBudget

        return RedisBudget(config)
    from executus_budget_redis.embedded import SQLiteBudget

    return SQLiteBudget(config, data_dir=data_dir)
