"""Both SQL batteries migrating at once in one process, as on a first run with both installed.

Alembic's ``op`` and ``context`` are module globals: without the one process-wide lock both
batteries take (`executus_core.sql.migration_lock`), one battery's DDL can run on the other's
connection, or its migration see the other's context. Each backend runs the batteries' first-run
upgrades together on fresh databases (the same database for both, as a deployment that points both at
one server), then checks that each battery's tables are exactly what its schema describes.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from checkpoint_sql_helpers import Backend
from executus_checkpoint_sql import VERSION_TABLE, upgrade_url
from executus_checkpoint_sql.engine import create_engine, resolve_url
from executus_checkpoint_sql.migrate import head_revision
from executus_checkpoint_sql.schema import Base
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from executus_core.sql import hold_migration_lock, migration_lock

# executus-checkpoint-sql does not need executus-audit-sql; the dev environment has both.
audit_sql = pytest.importorskip("executus_audit_sql.audit", reason="executus-audit-sql is not installed")
audit_migrate = pytest.importorskip("executus_audit_sql.migrate")
audit_schema = pytest.importorskip("executus_audit_sql.schema")
audit_settings = pytest.importorskip("executus_audit_sql.settings")


def _differences(conn: Connection, metadata: MetaData, version_table: str) -> list[Any]:
    """How the tables differ from ``metadata``, looking only at that battery's own tables."""

    def ours(name: str | None, type_: str, parent: Any) -> bool:
        return type_ != "table" or name in metadata.tables

    context = MigrationContext.configure(
        conn, opts={"version_table": version_table, "compare_type": True, "include_name": ours}
    )
    return list(compare_metadata(context, metadata))


async def _check_checkpoint_tables(url: str, db_schema: str | None) -> None:
    engine = create_engine(resolve_url(url), db_schema=db_schema, connect_timeout=5, busy_timeout=5)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences, Base.metadata, VERSION_TABLE) == []
    finally:
        await engine.dispose()


def _check_audit_tables(url: str, db_schema: str | None) -> None:
    from executus_audit_sql.database import make_sync_engine
    from executus_audit_sql.settings import async_url

    assert audit_migrate.current_revision(url, db_schema=db_schema) == audit_migrate.head_revision()
    engine = make_sync_engine(async_url(url), connect_timeout=5, db_schema=db_schema)
    try:
        with engine.connect() as conn:
            assert _differences(conn, audit_schema.Base.metadata, audit_schema.VERSION_TABLE) == []
    finally:
        engine.dispose()


async def _audit_first_run(url: str, db_schema: str | None, data_dir: Path) -> None:
    """What the audit trail does on its first use: upgrade its tables in a worker thread."""
    settings = audit_settings.AuditSqlSettings(url=url, db_schema=db_schema)  # auto_upgrade: on by default
    audit = audit_sql.SqlAudit(settings, data_dir=data_dir)
    try:
        await audit.ensure_schema()
    finally:
        await audit.aclose()


async def test_both_batteries_migrating_at_once_in_one_process_each_get_their_own_tables(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.name == "sqlite":
        # Several fresh files at once, so the two batteries' migrations overlap in time.
        databases = [(f"sqlite+aiosqlite:///{tmp_path / f'shared-{n}.db'}", None) for n in range(4)]
    else:
        databases = [(backend.settings["url"], backend.settings["db_schema"])] * 2  # two workers each
    try:
        work = []
        for url, schema in databases:
            work.append(_audit_first_run(url, schema, tmp_path / "data"))
            work.append(upgrade_url(url, db_schema=schema))  # what the store does on its first use
        outcomes = await asyncio.gather(*work, return_exceptions=True)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []

        for url, schema in dict.fromkeys(databases):
            await _check_checkpoint_tables(url, schema)
            await asyncio.to_thread(_check_audit_tables, url, schema)
        reports = [o for o in outcomes if o is not None]
        assert {r.after for r in reports} == {head_revision()}
        assert sum(r.changed for r in reports) == len(dict.fromkeys(databases))
    finally:
        audit_migrate.forget_ready()


async def test_the_shared_lock_is_one_lock_for_threads_and_the_event_loop() -> None:
    import alembic

    lock = migration_lock()
    assert lock is migration_lock() is alembic.__dict__["_executus_migration_lock"]
    assert audit_migrate.migration_lock() is lock  # the audit battery takes the very same lock
    entered = threading.Event()
    release = threading.Event()

    def hold_in_a_thread() -> None:
        with migration_lock():
            entered.set()
            release.wait()

    holder = threading.Thread(target=hold_in_a_thread)
    holder.start()
    await asyncio.to_thread(entered.wait)
    waiter = asyncio.create_task(_enter_and_report())
    await asyncio.sleep(0)
    assert not waiter.done() and lock.locked()  # the loop is not blocked: we are running
    release.set()
    assert await waiter == "entered"
    await asyncio.to_thread(holder.join)
    assert not lock.locked()


async def _enter_and_report() -> str:
    async with hold_migration_lock():
        assert migration_lock().locked()
        return "entered"


async def test_a_waiter_cancelled_before_it_gets_the_lock_leaves_it_free() -> None:
    lock = migration_lock()
    await asyncio.to_thread(lock.acquire)
    try:
        waiter = asyncio.create_task(_enter_and_report())
        await asyncio.sleep(0.05)  # let it start waiting in its thread
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    finally:
        lock.release()
    # The abandoned waiter's thread gave it back, or never took it: it can be taken again (the
    # deadline only stops a leaked lock from hanging the suite).
    for _ in range(2):
        await asyncio.wait_for(_enter_and_report(), timeout=30)
