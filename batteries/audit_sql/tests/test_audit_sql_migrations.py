"""The shipped migrations: they create exactly what schema.py declares, keep their own version table,
run again harmlessly, and leave a host's own tables and Alembic history alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_sql_helpers import Backend
from executus_audit_sql.database import make_sync_engine
from executus_audit_sql.migrate import current_revision, head_revision, upgrade
from executus_audit_sql.schema import VERSION_TABLE, Base
from executus_audit_sql.settings import async_url
from sqlalchemy import create_engine, inspect, text


def test_the_migrations_create_what_the_models_declare(backend: Backend) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    upgrade(backend.url, db_schema=backend.db_schema)
    engine = make_sync_engine(async_url(backend.url), connect_timeout=5, db_schema=backend.db_schema)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": VERSION_TABLE,
                    "compare_type": True,
                    "compare_server_default": False,
                    # only this battery's tables: the schema may hold others (a host's, a test's)
                    "include_name": lambda name, type_, parent: (
                        type_ != "table" or name in Base.metadata.tables
                    ),
                },
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_reports_the_revisions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    assert current_revision(url) is None
    first = upgrade(url)
    assert (first.before, first.after) == (None, head_revision())
    assert "upgraded from revision (none)" in str(first)
    second = upgrade(url)
    assert (second.before, second.after) == (head_revision(), head_revision())
    assert "already at revision" in str(second)


def test_a_hosts_own_alembic_history_and_tables_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "host.db"
    host = create_engine(f"sqlite:///{path}")
    with host.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('host_rev_7')"))
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
    upgrade(f"sqlite:///{path}")
    with host.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "host_rev_7"
        tables = set(inspect(conn).get_table_names())
    host.dispose()
    assert {"orders", "alembic_version", VERSION_TABLE, "executus_runs", "executus_run_events"} <= tables


def test_the_sqlite_file_and_its_folder_are_made_when_missing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'audit.db'}"
    upgrade(url)
    assert (tmp_path / "deep" / "er" / "audit.db").is_file()


def test_the_migrations_refuse_to_run_from_the_alembic_command_line() -> None:
    from alembic import command
    from executus_audit_sql.migrate import alembic_config

    with pytest.raises(RuntimeError, match="need a connection"):
        command.upgrade(alembic_config(None), "head")


def test_the_head_read_from_the_files_is_alembics() -> None:
    from executus_audit_sql.migrate import declared_head

    assert declared_head() == head_revision()


def test_a_database_at_head_is_used_without_importing_alembic(tmp_path: Path) -> None:
    """Issue 17, found case 3: every process's first run imported Alembic (about 0.2 s, most of what
    `executus run` still paid for the audit) to learn that the tables were already at head; one
    SELECT of the version table tells it now. A database not at head still goes through Alembic."""
    from executus_core.testing.imports import imported_after

    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    code = (
        "import asyncio\n"
        "from executus_audit_sql import SqlAudit\n"
        "from executus_core.testing.conformance import make_info\n"
        "from executus_core.types import RunStats, RunStatus\n"
        f"audit = SqlAudit(url={url!r}, data_dir={str(tmp_path)!r})\n"
        "async def main():\n"
        "    recorder = await audit.start_run(make_info())\n"
        "    await recorder.close(RunStats(status=RunStatus.OK))\n"
        "    assert (await audit.get_run(recorder.run_id)).shown_status == 'ok'\n"
        "    await audit.aclose()\n"
        "asyncio.run(main())\n"
    )
    assert imported_after(code, ["alembic"], tmp_path) == []
    fresh = code.replace(str(tmp_path / "a.db"), str(tmp_path / "fresh.db"))
    assert imported_after(fresh, ["alembic"], tmp_path) == ["alembic"]
