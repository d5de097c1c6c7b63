"""Loading the plugin (what every `executus` command and `Executor()` do) imports Alembic and SQLAlchemy's engine only on first use.

Issue 17, found case 3: every cold command paid for the batteries' heavy dependencies. Each check
runs in a fresh interpreter, so what an earlier test imported cannot hide an import.
"""

from __future__ import annotations

from executus_core.testing.imports import imported_after


def test_loading_the_plugin_imports_no_alembic_and_no_engine(tmp_path) -> None:
    found = imported_after(
        "import executus_audit_sql.plugin", ["alembic", "aiosqlite", "sqlalchemy.ext.asyncio"], tmp_path
    )
    assert found == []


def test_building_the_audit_imports_no_alembic(tmp_path) -> None:
    code = "from executus_core import Executor; Executor(entry_points=False, plugins=[__import__('executus_audit_sql.plugin').plugin])"
    assert imported_after(code, ["alembic"], tmp_path) == []


def test_the_package_still_offers_its_names(tmp_path) -> None:
    code = "import executus_audit_sql as a; assert all(getattr(a, n) is not None for n in a.__all__)"
    assert imported_after(code, [], tmp_path) == []
