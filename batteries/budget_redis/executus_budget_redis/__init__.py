"""executus-budget-redis: per-caller budgets shared by every worker process, in Redis.

Install it and every ``Executor()`` checks each run against the caller's limits (runs, tokens and
runtime per window, runs in flight at once) before the first model call, and meters what the run
used when it ends, exactly once per run id::

    [tool.executus.budget_redis]
    url = "redis://127.0.0.1:6379/0"   # without a url: SQLite in the data dir (one machine)
    max_tokens = 1_000_000          # per caller per day (window = "1d")
    max_concurrent = 4

In code, `RedisBudget` and `SQLiteBudget` are the port objects (`open_budget` picks one from
settings); ``executus budget show`` and ``executus budget reset`` read and clear the usage.
"""

from typing import TYPE_CHECKING

from executus_core.lazy import lazy_exports

if TYPE_CHECKING:
    from executus_budget_redis.base import CallerUsage, InFlightRun, StoreBudget, WindowUsage
    from executus_budget_redis.budget import RedisBudget
    from executus_budget_redis.durations import format_duration, parse_duration
    from executus_budget_redis.embedded import SQLiteBudget
    from executus_budget_redis.errors import BudgetUnavailable
    from executus_budget_redis.factory import open_budget
    from executus_budget_redis.settings import (
        DEFAULT_KEY_PREFIX,
        DEFAULT_URL,
        BudgetRedisSettings,
        CallerLimits,
        ResolvedLimits,
        WindowLimits,
        resolve_limits,
    )

# The public names are imported on first use (PEP 562): loading the plugin imports this package
# first, and a command that never touches the battery's port should not pay for its dependencies.
_LAZY = {
    "CallerUsage": "executus_budget_redis.base",
    "InFlightRun": "executus_budget_redis.base",
    "StoreBudget": "executus_budget_redis.base",
    "WindowUsage": "executus_budget_redis.base",
    "RedisBudget": "executus_budget_redis.budget",
    "format_duration": "executus_budget_redis.durations",
    "parse_duration": "executus_budget_redis.durations",
    "SQLiteBudget": "executus_budget_redis.embedded",
    "BudgetUnavailable": "executus_budget_redis.errors",
    "open_budget": "executus_budget_redis.factory",
    "DEFAULT_KEY_PREFIX": "executus_budget_redis.settings",
    "DEFAULT_URL": "executus_budget_redis.settings",
    "BudgetRedisSettings": "executus_budget_redis.settings",
    "CallerLimits": "executus_budget_redis.settings",
    "ResolvedLimits": "executus_budget_redis.settings",
    "WindowLimits": "executus_budget_redis.settings",
    "resolve_limits": "executus_budget_redis.settings",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_URL",
    "BudgetRedisSettings",
    "BudgetUnavailable",
    "CallerLimits",
    "CallerUsage",
    "InFlightRun",
    "RedisBudget",
    "ResolvedLimits",
    "SQLiteBudget",
    "StoreBudget",
    "WindowLimits",
    "WindowUsage",
    "format_duration",
    "open_budget",
    "parse_duration",
    "resolve_limits",
]
