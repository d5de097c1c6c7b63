"""The runs list filtered by agent name (the viewer's filter, ``executus runs list --agent``) is served
by an index, on both backends, once the database is migrated (issue 17, target: an index on the agent name)."""

from __future__ import annotations

from pathlib import Path

from audit_sql_helpers import Backend
from executus_audit_sql.database import make_sync_engine
from executus_audit_sql.migrate import upgrade
from executus_audit_sql.settings import async_url
from sqlalchemy import text

BY_AGENT = "SELECT run_id FROM executus_runs WHERE name = 'calc' ORDER BY started_at DESC LIMIT 20"


def _plan(backend: Backend) -> str:
    engine = make_sync_engine(async_url(backend.url), connect_timeout=5, db_schema=backend.db_schema)
    try:
        with engine.connect() as conn:
            if backend.name == "sqlite":
                rows = conn.execute(text("EXPLAIN QUERY PLAN " + BY_AGENT)).all()
                return "\n".join(str(row[-1]) for row in rows)
            # A small table is scanned whatever its indexes: ask whether an index *can* serve it.
            conn.execute(text("SET enable_seqscan = off"))
            return "\n".join(row[0] for row in conn.execute(text("EXPLAIN " + BY_AGENT)))
    finally:
        engine.dispose()


def test_the_runs_of_one_agent_are_found_through_an_index(backend: Backend) -> None:
    upgrade(backend.url, db_schema=backend.db_schema)
    plan = _plan(backend)
    assert "ix_executus_runs_name_started" in plan, plan


def test_the_index_comes_and_goes_with_its_migration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url, revision="0001")
    sqlite = Backend("sqlite", url, None, tmp_path)
    assert "ix_executus_runs_name_started" not in _plan(sqlite)
    upgrade(url)
    assert "ix_executus_runs_name_started" in _plan(sqlite)
