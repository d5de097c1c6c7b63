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
