"""The pluggy hooks of executus-budget-redis (the ``budget_redis`` entry point).

Installed, the battery is active: every ``Executor()`` gets a budget built from
``[tool.executus.budget_redis]``: a `RedisBudget` when a ``url`` is set (or ``backend = "redis"``),
shared by every process that uses that Redis; otherwise the embedded `SQLiteBudget` on
``budget.sqlite3`` in the executus data directory, shared by the processes of this machine, so a
first run needs no server. Building the budget opens no connection, so an ``Executor`` always
starts. The command line gets ``executus budget``. Turn the battery off with
``disable = ["budget_redis"]``.

For ``Executor(plugins=[...])`` with entry points off, pass this module:
``import executus_budget_redis.plugin``.
"""

from __future__ import annotations

from typing import Any

from executus_budget_redis.base import StoreBudget
from executus_budget_redis.factory import open_budget
from executus_budget_redis.settings import SECTION, BudgetRedisSettings
from executus_core import hookimpl
from executus_core.config import Settings

__all__ = ["executus_budget", "executus_name", "executus_register_commands"]

executus_name = "budget_redis"
"""The plugin's name, passed in ``Executor(plugins=[...])`` or loaded by its entry point alike:
``disable = ["budget_redis"]`` and ``executor.ports.budgets`` use it."""


@hookimpl
def executus_budget(settings: Settings) -> StoreBudget:
    """The executor's budget (`RedisBudget` or `SQLiteBudget`); a bad ``[tool.executus.budget_redis]``
    table raises `ConfigError`. ``budget.describe()`` says which, for the run header."""
    return open_budget(settings.section(SECTION, BudgetRedisSettings, plugin=SECTION), settings.core.data_dir)


@hookimpl
def executus_register_commands(cli: Any) -> None:
    """Add ``executus budget show`` and ``executus budget reset``."""
    from executus_budget_redis.cli import make_budget_app

    cli.add_typer(make_budget_app(), name="budget")
