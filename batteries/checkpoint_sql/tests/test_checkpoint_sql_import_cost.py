"""Loading the plugin (what every `executus` command and `Executor()` do) imports Alembic only on first use.

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
