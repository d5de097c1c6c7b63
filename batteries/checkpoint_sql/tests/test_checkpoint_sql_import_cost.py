"""Loading the plugin (what every `executus` command and `Executor()` do) imports Alembic, SQLAlchemy
and the drivers only on first use.

Issue 17, found case 3: every cold command paid for the batteries' heavy dependencies. Each check
runs in a fresh interpreter, so what an earlier test imported cannot hide an import.
"""

from __future__ import annotations

import pytest

from executus_core.testing.imports import imported_after


@pytest.mark.parametrize(
    "code",
    [
        "import executus_checkpoint_sql.plugin",
        "import executus_checkpoint_sql.store",
        "from executus_core import Executor; Executor(entry_points=False, plugins=[__import__('executus_checkpoint_sql.plugin').plugin])",
    ],
)
def test_alembic_is_imported_only_when_a_migration_runs(code: str, tmp_path) -> None:
    assert imported_after(code, ["alembic"], tmp_path) == []


HEAVY = ["sqlalchemy", "aiosqlite", "alembic", "psycopg", "asyncpg"]


@pytest.mark.parametrize(
    "code",
    [
        "import executus_checkpoint_sql.plugin",
        "import executus_checkpoint_sql.store",
        "from executus_core import Executor; "
        "Executor(entry_points=False, plugins=[__import__('executus_checkpoint_sql.plugin').plugin])",
        "from executus_checkpoint_sql import SqlCheckpointStore; "
        "s = SqlCheckpointStore('postgresql://app@db.internal/app', db_schema='x'); "
        "assert s.database == 'postgresql+psycopg://app@db.internal/app' and s.dialect == 'postgresql'",
    ],
)
def test_building_a_store_imports_no_database_library(code: str, tmp_path) -> None:
    """Issue 17, found case 3: building an `Executor` imported SQLAlchemy (and aiosqlite) through the
    checkpoint store's module, ~0.3 s of every cold command; the store now checks its URL without it."""
    assert imported_after(code, HEAVY, tmp_path) == []


def test_the_first_call_imports_sqlalchemy(tmp_path) -> None:
    code = (
        "import asyncio\n"
        "from executus_checkpoint_sql import SqlCheckpointStore\n"
        f"store = SqlCheckpointStore('sqlite:///{tmp_path}/c.db')\n"
        "async def main():\n"
        "    try:\n"
        "        assert await store.list_runs() == []\n"
        "    finally:\n"
        "        await store.aclose()\n"
        "asyncio.run(main())\n"
        "assert store.url.get_driver_name() == 'aiosqlite'\n"
    )
    assert imported_after(code, ["sqlalchemy", "aiosqlite"], tmp_path) == ["aiosqlite", "sqlalchemy"]


def test_a_bad_url_is_still_refused_when_the_store_is_built(tmp_path) -> None:
    code = (
        "from executus_checkpoint_sql import SqlCheckpointStore\n"
        "from executus_core.errors import ConfigError\n"
        "for url, says in [('mysql://x/y', 'SQLite and PostgreSQL'), ('postgresql+psycopg2://x/y', 'not an async driver'),\n"
        "                  ('sqlite+aiosqlite:///:memory:', 'in-memory'), ('not a url', 'could not parse'),\n"
        "                  ('postgresql://app:s3cret@db:notaport/app', 'not a number')]:\n"
        "    try:\n"
        "        SqlCheckpointStore(url)\n"
        "    except ConfigError as exc:\n"
        "        assert says in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError(url)\n"
        "try:\n"
        "    SqlCheckpointStore('postgresql://app:s3cret@db/app', worker_id='')\n"
        "except ConfigError as exc:\n"
        "    assert 's3cret' not in str(exc)\n"
        "assert 's3cret' not in repr(SqlCheckpointStore('postgresql://app:s3cret@db/app'))\n"
    )
    assert imported_after(code, HEAVY, tmp_path) == []


def test_the_package_still_offers_its_names(tmp_path) -> None:
    code = "import executus_checkpoint_sql as c; assert all(getattr(c, n) is not None for n in c.__all__)"
    assert imported_after(code, [], tmp_path) == []


def test_the_first_migration_imports_alembic_off_the_event_loop(tmp_path) -> None:
    # An import hook notes the thread that first imports alembic: on the loop's thread, its import
    # would stall every run of the process.
    code = (
        "import asyncio, sys, threading\n"
        "seen = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'alembic': seen.append(threading.current_thread() is threading.main_thread())\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from executus_checkpoint_sql.migrate import upgrade_url\n"
        f"asyncio.run(upgrade_url('sqlite+aiosqlite:///{tmp_path}/c.db'))\n"
        "assert seen == [False], seen\n"
    )
    assert imported_after(code, ["alembic"], tmp_path) == ["alembic"]


def test_the_first_call_imports_sqlalchemy_off_the_event_loop(tmp_path) -> None:
    # Imported on the loop's thread, SQLAlchemy (a few hundred ms) would stall every run of the process.
    code = (
        "import asyncio, sys, threading\n"
        "seen = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sqlalchemy': seen.append(threading.current_thread() is threading.main_thread())\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from executus_checkpoint_sql import SqlCheckpointStore\n"
        f"store = SqlCheckpointStore('sqlite:///{tmp_path}/c.db')\n"
        "async def main():\n"
        "    try:\n"
        "        assert await store.list_runs() == []\n"
        "    finally:\n"
        "        await store.aclose()\n"
        "asyncio.run(main())\n"
        "assert seen == [False], seen\n"
    )
    assert imported_after(code, ["sqlalchemy"], tmp_path) == ["sqlalchemy"]
