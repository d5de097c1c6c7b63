"""Create and upgrade the checkpoint tables with the Alembic migrations shipped in this package.

No alembic.ini is needed: the `Config` is built in code, the migrations run on a connection of the
store's own engine, and the version is kept in this battery's own table,
``executus_checkpoint_sql_version``, so a host's Alembic history in the same database is untouched.

Several workers may start at once against one database: on PostgreSQL the upgrade holds a
transaction-level advisory lock, on SQLite `executus_core.sql.hold_sqlite_migration_lock` (an
exclusive lock on a file beside the database, shared with executus-audit-sql), so one upgrades and
the others then find the tables at head. Within one process, Alembic runs under
`executus_core.sql.migration_lock`, shared with the other SQL batteries (Alembic's ``op`` and
``context`` are module globals, so two migrations at once in one process would collide).

::

    from executus_checkpoint_sql.migrate import upgrade_url

    report = await upgrade_url("postgresql+psycopg://app@db/app", db_schema="executus")
    print(report.before, "->", report.after)
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from executus_checkpoint_sql.engine import create_engine, safe_url, sqlite_path
from executus_core.sql import hold_migration_lock, hold_sqlite_migration_lock

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported inside the functions that use it: the store imports this module, and a
# command that never touches a checkpoint should not pay ~200 ms for it. The async entry points
# import it in a worker thread first (`_load_alembic`), so the first run does not stall the loop.

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "UpgradeReport",
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade_engine",
    "upgrade_url",
]

VERSION_TABLE = "executus_checkpoint_sql_version"
"""The table that holds this battery's schema revision (apart from the host's ``alembic_version``)."""

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# A fixed key for pg_advisory_xact_lock, so concurrent upgrades of this battery's tables queue up.
_LOCK_KEY = zlib.crc32(b"executus_checkpoint_sql.migrate")


@dataclasses.dataclass(frozen=True)
class UpgradeReport:
    """What an upgrade did: the database (password hidden), and the revision before and after.

    ``before`` is ``None`` for a database that had no checkpoint tables.
    """

    database: str
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        """True when the upgrade ran at least one migration."""
        return self.before != self.after


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic `Config` for this battery's migrations, built in code (no ini file)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The revision the shipped migrations lead to."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _upgrade(connection: Connection, revision: str) -> tuple[str | None, str | None]:
    before = _current(connection)
    from alembic import command

    command.upgrade(alembic_config(connection), revision)
    return before, _current(connection)


async def _create_schema(engine: AsyncEngine, db_schema: str) -> None:
    """Create the PostgreSQL schema in a transaction of its own, committed before migrating.

    Another SQL battery (or worker) may create the same schema at the same moment, under its own
    advisory lock: ``IF NOT EXISTS`` does not cover that race, and the loser gets a unique violation
    on ``pg_namespace`` (after waiting for the winner's transaction, so kept short), meaning the
    schema exists now.
    """
    try:
        async with engine.begin() as conn:
            # db_schema is checked against an identifier pattern by the settings model
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db_schema}"'))
    except IntegrityError:
        pass


def _import_alembic() -> None:
    for module in ("alembic.command", "alembic.config", "alembic.runtime.migration", "alembic.script"):
        importlib.import_module(module)


async def _load_alembic() -> None:
    """Import Alembic in a worker thread, once: imported on the event loop it would stall every run."""
    if "alembic.script" not in sys.modules:
        await asyncio.to_thread(_import_alembic)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database's checkpoint tables are at (``None``: no tables yet)."""
    await _load_alembic()
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade_engine(
    engine: AsyncEngine, *, db_schema: str | None = None, revision: str = "head"
) -> UpgradeReport:
    """Upgrade the checkpoint tables reached through ``engine`` to ``revision`` (default: head).

    With ``db_schema`` (PostgreSQL), the schema is created first if it does not exist; the engine's
    connections must have it on their ``search_path`` (`create_engine` does that).
    """
    await _load_alembic()
    url = engine.url
    postgres = url.get_backend_name() == "postgresql"
    if postgres and db_schema:
        await _create_schema(engine, db_schema)
    async with hold_sqlite_migration_lock(sqlite_path(url)), engine.begin() as conn:
        if postgres:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        # Alembic's op/context are module globals: hold the process-wide lock every SQL battery
        # takes, or another battery migrating now in this process would get our DDL. Taken last,
        # after the file and advisory locks, as executus-audit-sql does.
        async with hold_migration_lock():
            before, after = await conn.run_sync(_upgrade, revision)
    return UpgradeReport(safe_url(url), before, after)


async def upgrade_url(
    url: URL | str,
    *,
    db_schema: str | None = None,
    revision: str = "head",
    connect_timeout: float = 5.0,
    busy_timeout: float = 5.0,
) -> UpgradeReport:
    """Upgrade the checkpoint tables at ``url`` (an async SQLAlchemy URL) and dispose of the engine."""
    from executus_checkpoint_sql.engine import resolve_url

    resolved = resolve_url(str(url) if isinstance(url, str) else url.render_as_string(hide_password=False))
    engine = create_engine(
        resolved, db_schema=db_schema, connect_timeout=connect_timeout, busy_timeout=busy_timeout
    )
    try:
        return await upgrade_engine(engine, db_schema=db_schema, revision=revision)
    finally:
        await engine.dispose()
