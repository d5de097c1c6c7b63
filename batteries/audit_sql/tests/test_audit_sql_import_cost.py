"""Loading the plugin, registering its commands and building the audit (what every `executus` command
and `Executor()` do) import no SQLAlchemy, no driver and no Alembic; the first use imports them, off
the event loop.

Issue 17, found case 3: every cold command paid for the batteries' heavy dependencies (SQLAlchemy
through the audit's settings and module: about 0.25 s of `executus plugins` alone on the shared
machine). Each check runs in a fresh interpreter, so what an earlier test imported cannot hide an import.
"""

from __future__ import annotations

import pytest

from executus_core.testing.imports import imported_after

HEAVY = ["sqlalchemy", "aiosqlite", "alembic", "psycopg", "asyncpg"]
BUILD = (
    "from executus_core import Executor; "
    "Executor(entry_points=False, plugins=[__import__('executus_audit_sql.plugin').plugin])"
)


@pytest.mark.parametrize(
    "code",
    [
        "import executus_audit_sql.plugin",
        BUILD,
        # `executus plugins` and every other command register the battery's commands
        "import typer, executus_audit_sql.plugin as p; p.executus_register_commands(typer.Typer())",
        "from executus_audit_sql import AuditSqlSettings, SqlAudit; "
        "a = SqlAudit(AuditSqlSettings(url='postgresql://app:s3cret@db.internal/app', db_schema='x')); "
        "assert a.describe_database() == 'postgresql+psycopg://app:***@db.internal/app (schema x)'",
    ],
)
def test_building_the_audit_imports_no_database_library(code: str, tmp_path) -> None:
    assert imported_after(code, HEAVY, tmp_path) == []


def test_the_first_run_imports_sqlalchemy_in_a_worker_thread(tmp_path) -> None:
    code = (
        "import asyncio, threading, sys\n"
        "from executus_audit_sql import SqlAudit\n"
        "from executus_core.testing.conformance import make_info\n"
        "from executus_core.types import RunStats, RunStatus\n"
        "seen = {}\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sqlalchemy' and name not in seen:\n"
        "            seen[name] = threading.current_thread() is threading.main_thread()\n"
        "sys.meta_path.insert(0, Watch())\n"
        f"audit = SqlAudit(url='sqlite:///{tmp_path}/a.db', data_dir='{tmp_path}')\n"
        "async def main():\n"
        "    recorder = await audit.start_run(make_info())\n"
        "    recorder.log_event('tick', {})\n"
        "    await recorder.close(RunStats(status=RunStatus.OK))\n"
        "    assert (await audit.get_run(recorder.run_id)).shown_status == 'ok'\n"
        "    await audit.aclose()\n"
        "asyncio.run(main())\n"
        "assert seen == {'sqlalchemy': False}, seen\n"
    )
    assert imported_after(code, ["sqlalchemy", "aiosqlite"], tmp_path) == ["aiosqlite", "sqlalchemy"]


def test_a_bad_url_or_a_missing_driver_still_stops_the_build(tmp_path) -> None:
    code = (
        "from executus_audit_sql import SqlAudit\n"
        "for url, says in [('mysql://x/y', \"driver 'mysql' is not supported\"), ('sqlite://', 'in-memory'),\n"
        "                  ('not a url', 'not a database URL'), ('postgresql://h:notaport/db', 'is not a number')]:\n"
        "    try:\n"
        "        SqlAudit(url=url)\n"
        "    except ValueError as exc:\n"
        "        assert says in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError(url)\n"
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'asyncpg' else real(name, *a)\n"
        "try:\n"
        "    SqlAudit(url='postgresql+asyncpg://db/app')\n"
        "except ImportError as exc:\n"
        "    assert 'asyncpg' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('a missing driver was not noticed')\n"
    )
    assert imported_after(code, HEAVY, tmp_path) == []


def test_the_package_still_offers_its_names(tmp_path) -> None:
    code = "import executus_audit_sql as a; assert all(getattr(a, n) is not None for n in a.__all__)"
    assert imported_after(code, [], tmp_path) == []
