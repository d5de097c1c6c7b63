"""Fixtures of the executus-audit-sql tests: the two backends, and helpers to run agents against them.

``backend`` is parametrized: every test that takes it runs on SQLite (a file in the test's tmp
directory) and on PostgreSQL (a schema of its own, made for this test session and dropped after it,
so parallel sessions and other suites on the same server never see each other's rows).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_sql_helpers import Backend
from executus_audit_sql.migrate import forget_ready, upgrade

from executus_core.testing.services import postgres_url


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[tuple[str, str]]:
    """A PostgreSQL schema of this session's own, migrated; dropped at the end."""
    rest = postgres_url().split("://", 1)[1]
    url, libpq = "postgresql+psycopg://" + rest, "postgresql://" + rest
    schema = f"audit_sql_test_{uuid.uuid4().hex[:10]}"
    upgrade(url, db_schema=schema)
    yield url, schema
    import psycopg

    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    forget_ready()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The database under test: SQLite in tmp_path, or this session's PostgreSQL schema."""
    data_dir = tmp_path / "data"
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'audit.db'}", None, data_dir)
    url, schema = request.getfixturevalue("pg_schema")
    return Backend("postgres", url, schema, data_dir)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No EXECUTUS_* settings from the machine; embedded defaults write under tmp_path."""
    for name in list(os.environ):
        if name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))
