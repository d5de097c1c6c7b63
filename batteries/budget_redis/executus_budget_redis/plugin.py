"""The pluggy hooks of executus-budget-redis (the ``budget_redis`` entry point).

Installed, the battery is active: every ``Executor()`` gets a `RedisBudget` built from
``[tool.executus.budget_redis]`` (Redis at ``redis://127.0.0.1:6379/0`` when no ``url`` is set), and
the command line gets ``executus budget``. Building the budget opens no connection, so an
``Executor`` always starts; the first ``check`` that cannot reach Redis refuses its run, with a
message saying what to set. Turn the battery off with ``disable = ["budget_redis"]``.
"""

from __future__ import annotations

from typing import Any

from executus_budget_redis.budget import RedisBudget
from executus_budget_redis.settings import SECTION, BudgetRedisSettings
from executus_core import hookimpl
from executus_core.config import Settings

__all__ = ["executus_budget", "executus_register_commands"]


@hookimpl
def executus_budget(settings: Settings) -> RedisBudget:
    """The executor's `RedisBudget`; a bad ``[tool.executus.budget_redis]`` table raises `ConfigError`."""
    return RedisBudget(settings.section(SECTION, BudgetRedisSettings, plugin=SECTION))


@hookimpl
def executus_register_commands(cli: Any) -> None:
    """Add ``executus budget show`` and ``executus budget reset``."""
    from executus_budget_redis.cli import make_budget_app

    cli.add_typer(make_budget_app(), name="budget")
