"""Fixtures for executus-checkpoint-sql's tests: one backend fixture for SQLite and PostgreSQL.

Every test that takes ``backend`` runs twice: on a SQLite file of its own, and on PostgreSQL in a
schema of its own (``ecp_<session>_<n>``, dropped when the test ends), so tests never see each
other's runs, nor those of other suites using the same server. PostgreSQL comes from
``EXECUTUS_TEST_POSTGRES_URL`` (default 127.0.0.1:5432/test): unreachable, its tests skip, except
under ``CI=true``, where they fail.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from checkpoint_sql_helpers import Backend, TcpProxy, driver_url

from executus_core.testing.services import postgres_url

SESSION = uuid.uuid4().hex[:8]
_counter = itertools.count()


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test PostgreSQL server's URL (plain ``postgresql://``)."""
    return postgres_url()


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A fresh schema name on the test server, dropped (with everything in it) after the test."""
    schema = f"ecp_{SESSION}_{next(_counter)}"
    yield schema
    _drop_schema(pg_url, schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The database of one test: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        path = tmp_path / "checkpoints.db"
        return Backend("sqlite", {"url": f"sqlite+aiosqlite:///{path}"}, path=path)
    url = request.getfixturevalue("pg_url")
    schema = request.getfixturevalue("pg_schema")
    return Backend("postgres", {"url": driver_url(url), "db_schema": schema})


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every embedded default (this battery's and others') inside the test's tmp_path."""
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
async def pg_proxy(pg_url: str) -> AsyncIterator[TcpProxy]:
    """A `TcpProxy` in front of the test PostgreSQL server, listening."""
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.up()
    yield proxy
    await proxy.aclose()
