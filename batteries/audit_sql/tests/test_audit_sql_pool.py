"""The engine's connection pool is sized by settings (issue 17): ``pool_size``, ``max_overflow``, ``pool_timeout``."""

from __future__ import annotations

from pathlib import Path

import pytest
from executus_audit_sql import AuditSqlSettings, SqlAudit

from executus_core.config import load_settings
from executus_core.errors import ConfigError


def test_the_pool_takes_its_size_from_the_settings(tmp_path: Path) -> None:
    settings = AuditSqlSettings(pool_size=3, max_overflow=2, pool_timeout=7.5)
    audit = SqlAudit(settings, data_dir=tmp_path)
    pool = audit._engine.pool
    assert (pool.size(), pool._max_overflow, pool._timeout) == (3, 2, 7.5)  # type: ignore[attr-defined]


def test_the_defaults_fit_one_writer_and_a_few_readers(tmp_path: Path) -> None:
    pool = SqlAudit(data_dir=tmp_path)._engine.pool
    assert (pool.size(), pool._max_overflow) == (5, 10)  # type: ignore[attr-defined]


def test_an_in_memory_database_has_no_pool_to_size() -> None:
    from executus_audit_sql.database import make_async_engine
    from sqlalchemy.engine import make_url

    engine = make_async_engine(
        make_url("sqlite+aiosqlite://"), connect_timeout=1, db_schema=None, pool_size=3
    )
    assert type(engine.pool).__name__ == "StaticPool"


@pytest.mark.parametrize("bad", [{"pool_size": 0}, {"max_overflow": -1}, {"pool_timeout": 0}])
def test_a_pool_setting_out_of_range_is_refused_naming_it(bad: dict[str, float]) -> None:
    settings = load_settings({"audit_sql": bad}, environ={}, read_pyproject=False)
    with pytest.raises(ConfigError, match=next(iter(bad))):
        settings.section("audit_sql", AuditSqlSettings, plugin="audit_sql")
