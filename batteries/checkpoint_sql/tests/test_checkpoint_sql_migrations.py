"""The shipped Alembic migrations: their own version table, safe to run at once, and in step with schema.py."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from checkpoint_sql_helpers import Backend
from executus_checkpoint_sql import VERSION_TABLE, upgrade_url
from executus_checkpoint_sql.engine import create_engine, resolve_url
from executus_checkpoint_sql.migrate import head_revision
from executus_checkpoint_sql.schema import Base
from sqlalchemy import text
from sqlalchemy.engine import Connection


def _engine(backend: Backend):  # type: ignore[no-untyped-def]
    return create_engine(
        resolve_url(backend.settings["url"]),
        db_schema=backend.settings.get("db_schema"),
        connect_timeout=5,
        busy_timeout=5,
    )


async def _upgrade(backend: Backend):  # type: ignore[no-untyped-def]
    return await upgrade_url(backend.settings["url"], db_schema=backend.settings.get("db_schema"))


async def test_it_keeps_its_own_version_table_beside_the_hosts_alembic_history(backend: Backend) -> None:
    engine = _engine(backend)
    try:
        if backend.name == "postgres":
            async with engine.begin() as conn:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{backend.settings["db_schema"]}"'))
        async with engine.begin() as conn:  # the host's own Alembic history, at its own revision
            await conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO alembic_version VALUES ('host_rev_42')"))

        first = await _upgrade(backend)
        again = await _upgrade(backend)
        assert (first.before, first.after, first.changed) == (None, head_revision(), True)
        assert (again.before, again.after, again.changed) == (head_revision(), head_revision(), False)
        async with engine.connect() as conn:
            host = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            ours = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalars().all()
        assert host == ["host_rev_42"] and ours == [head_revision()]
    finally:
        await engine.dispose()


async def test_workers_upgrading_at_once_all_succeed_and_one_does_the_work(backend: Backend) -> None:
    reports = await asyncio.gather(*(_upgrade(backend) for _ in range(4)))
    assert {r.after for r in reports} == {head_revision()}
    assert sum(r.changed for r in reports) == 1


async def test_the_migrations_make_exactly_the_tables_schema_py_describes(backend: Backend) -> None:
    await _upgrade(backend)
    engine = _engine(backend)

    def differences(conn: Connection) -> list[object]:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(differences) == []
    finally:
        await engine.dispose()
