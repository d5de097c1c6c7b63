"""Fixtures of the executus-viewer tests: the audit database on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from executus_audit_sql.migrate import forget_ready, upgrade
from viewer_helpers import ViewerDb

from executus_core.testing.services import postgres_url


@pytest.fixture(scope="session")
def viewer_pg_schema() -> Iterator[tuple[str, str]]:
    """A PostgreSQL schema of this session's own, migrated; dropped at the end."""
    rest = postgres_url().split("://", 1)[1]
    url, libpq = "postgresql+psycopg://" + rest, "postgresql://" + rest
    schema = f"viewer_test_{uuid.uuid4().hex[:10]}"
    upgrade(url, db_schema=schema)
    yield url, schema
    import psycopg

    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    forget_ready()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> ViewerDb:
    """The audit database under test: SQLite in tmp_path, or this session's PostgreSQL schema."""
    if request.param == "sqlite":
        return ViewerDb("sqlite", f"sqlite:///{tmp_path / 'audit.db'}", None, tmp_path / "data")
    url, schema = request.getfixturevalue("viewer_pg_schema")
    return ViewerDb("postgres", url, schema, tmp_path / "data")


@pytest.fixture(autouse=True)
def viewer_isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No EXECUTUS_* settings from the machine; embedded defaults write under tmp_path."""
    for name in list(os.environ):
        if name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))
