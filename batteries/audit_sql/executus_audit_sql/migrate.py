"""Migrations, run in code: the Alembic scripts ship in ``executus_audit_sql/migrations``.

No ``alembic.ini``: the `alembic.config.Config` is built here, and the version lives in the
battery's own table ``executus_audit_sql_version``, so a host that manages its own schema with Alembic
in the same database keeps its history apart::

    from executus_audit_sql.migrate import upgrade
    upgrade("postgresql+psycopg://app@db/app")        # what `executus db upgrade` runs

Migrations use the synchronous driver (psycopg serves both; SQLite has sqlite3). Inside a running
event loop they run in a worker thread (`ensure_schema`), so the loop never waits on DDL. Workers
that start together migrate one at a time: on PostgreSQL under an advisory lock, on SQLite under
`executus_core.sql.sqlite_migration_lock` (a lock file beside the database, the one
executus-checkpoint-sql takes too).

A maintainer adds a revision with::

    from alembic import command
    from executus_audit_sql.migrate import alembic_config
    with make_sync_engine(url, ...).begin() as conn:
        command.revision(alembic_config(conn), "what changes", autogenerate=True)
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import threading
import zlib
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from executus_audit_sql.database import make_sync_engine
from executus_audit_sql.errors import SchemaNotReady
from executus_audit_sql.schema import VERSION_TABLE
from executus_audit_sql.settings import async_url, public_url

# one Alembic at a time in this process, and one migration of a SQLite file at a time between processes
from executus_core.sql import migration_lock, sqlite_migration_lock

__all__ = [
    "MIGRATIONS_DIR",
    "UpgradeReport",
    "alembic_config",
    "current_revision",
    "ensure_schema",
    "head_revision",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# One advisory lock key for this battery's migrations, the same in every process.
_LOCK_KEY = zlib.crc32(VERSION_TABLE.encode()) & 0x7FFFFFFF

# (url, schema) pairs found at head in this process: checked once, not on every engine.
_ready: set[tuple[str, str | None]] = set()
_ready_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class UpgradeReport:
    """What `upgrade` did: the database (password hidden), and the revision before and after."""

    url: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        if self.before == self.after:
            return f"{self.url}: already at revision {self.after}"
        return f"{self.url}: upgraded from revision {self.before or '(none)'} to {self.after}"


def alembic_config(connection: Connection | None = None, db_schema: str | None = None) -> Any:
    """The Alembic `Config` for this battery's migrations, built in code, on ``connection``."""
    from alembic.config import Config

    config = Config()
    # configparser interpolates %: a path holding one must be escaped.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    config.attributes["db_schema"] = db_schema
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision the installed migrations know."""
    from alembic.script import ScriptDirectory

    with migration_lock():
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations found in {MIGRATIONS_DIR}"
    return head


def _current(connection: Connection, db_schema: str | None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": db_schema}
    )
    return context.get_current_revision()


def current_revision(
    url: str | URL, *, db_schema: str | None = None, connect_timeout: float = 5.0
) -> str | None:
    """The revision the database is at (``None``: the tables were never created)."""
    engine = make_sync_engine(async_url(url), connect_timeout=connect_timeout, db_schema=db_schema)
    try:
        with engine.connect() as connection, migration_lock():
            return _current(connection, db_schema)
    finally:
        engine.dispose()


def _create_schema(engine: Engine, db_schema: str) -> None:
    """Create the PostgreSQL schema in a transaction of its own, committed before migrating.

    Another SQL battery (or worker) may create the same schema at the same moment, under its own
    advisory lock: ``IF NOT EXISTS`` does not cover that race, and the loser gets a unique violation
    on ``pg_namespace`` (after waiting for the winner's transaction, so kept short), meaning the
    schema exists now.
    """
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db_schema}"'))
    except IntegrityError:
        pass


def upgrade(
    url: str | URL,
    *,
    db_schema: str | None = None,
    revision: str = "head",
    connect_timeout: float = 5.0,
) -> UpgradeReport:
    """Bring the audit tables at ``url`` up to ``revision`` (creating the PostgreSQL schema if needed).

    Safe to run again and from several processes at once. Blocking: call it from a thread (see
    `ensure_schema`) or outside an event loop.
    """
    from alembic import command

    head = head_revision() if revision == "head" else None
    parsed = async_url(url)
    engine = make_sync_engine(parsed, connect_timeout=connect_timeout, db_schema=db_schema)
    postgres = parsed.get_backend_name() == "postgresql"
    sqlite_file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    try:
        if postgres and db_schema:
            _create_schema(engine, db_schema)
        with sqlite_migration_lock(sqlite_file), engine.begin() as connection:
            if postgres:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            with migration_lock():
                before = _current(connection, db_schema)
                command.upgrade(alembic_config(connection, db_schema), revision)
                after = _current(connection, db_schema)
    except SQLAlchemyError:
        # Two SQLite processes that both found no tables race to create them; the loser sees
        # "table already exists". If the winner got the database to head, so did we.
        if postgres or revision != "head":
            raise
        if current_revision(parsed, db_schema=db_schema, connect_timeout=connect_timeout) != head:
            raise
        after = before = head
    finally:
        engine.dispose()
    return UpgradeReport(public_url(parsed), before, after)


_REVISION = re.compile(r"""^revision\b[^=\n]*=\s*["']([^"']+)["']""", re.MULTILINE)
_DOWN_REVISION = re.compile(r"""^down_revision\b[^=\n]*=\s*["']([^"']+)["']""", re.MULTILINE)


@functools.cache
def declared_head() -> str | None:
    """The newest revision, read from the migration files' ``revision`` / ``down_revision`` lines
    without importing Alembic (``None`` if they do not name exactly one head)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if (found := _REVISION.search(text)) is not None:
            revisions.add(found[1])
        if (parent := _DOWN_REVISION.search(text)) is not None:
            parents.add(parent[1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(url: URL, db_schema: str | None, connect_timeout: float) -> bool:
    """One SELECT of the version table: the tables are at `declared_head` (no Alembic needed)."""
    head = declared_head()
    if head is None:
        return False
    table = f'"{db_schema}".{VERSION_TABLE}' if db_schema else VERSION_TABLE
    engine = make_sync_engine(url, connect_timeout=connect_timeout, db_schema=db_schema)
    try:
        with engine.connect() as connection:
            found = list(connection.exec_driver_sql(f"SELECT version_num FROM {table}").scalars())
    except SQLAlchemyError:
        return False  # no version table yet, or the database is away: the full path says which
    finally:
        engine.dispose()
    return found == [head]


def _ensure_sync(url: URL, db_schema: str | None, auto_upgrade: bool, connect_timeout: float) -> None:
    key = (url.render_as_string(hide_password=False), db_schema)
    with _ready_lock:
        if key in _ready:
            return
    if _at_head(url, db_schema, connect_timeout):
        # The common start: tables already at head. Alembic (~0.2 s to import) is not needed.
        with _ready_lock:
            _ready.add(key)
        return
    head = head_revision()
    if auto_upgrade:
        upgrade(url, db_schema=db_schema, connect_timeout=connect_timeout)
    else:
        found = current_revision(url, db_schema=db_schema, connect_timeout=connect_timeout)
        if found != head:
            where = public_url(url) + (f" (schema {db_schema})" if db_schema else "")
            state = "has no audit tables" if found is None else f"is at revision {found}"
            raise SchemaNotReady(
                f"the audit database {where} {state}; this executus-audit-sql needs revision {head}: run "
                "`executus db upgrade`, or set [tool.executus.audit_sql] auto_upgrade = true",
                found=found,
                needed=head,
            )
    with _ready_lock:
        _ready.add(key)


async def ensure_schema(
    url: URL, *, db_schema: str | None, auto_upgrade: bool, connect_timeout: float
) -> None:
    """Make sure the tables are at head: migrate (``auto_upgrade``) or check, in a worker thread.

    Raises `SchemaNotReady` when the tables are not at head and ``auto_upgrade`` is off; a
    database that cannot be reached raises the driver's error.
    """
    await asyncio.to_thread(_ensure_sync, url, db_schema, auto_upgrade, connect_timeout)


def forget_ready() -> None:
    """Forget which databases were found at head (tests that drop tables call this)."""
    with _ready_lock:
        _ready.clear()
