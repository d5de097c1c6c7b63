"""Settings: precedence, environment parsing, per-plugin sections and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from executus_core import ConfigError, Executor, load_settings


def write_pyproject(folder: Path, body: str) -> Path:
    (folder / "pyproject.toml").write_text(body)
    return folder


def test_precedence_explicit_over_env_over_pyproject_over_defaults(tmp_path: Path) -> None:
    write_pyproject(tmp_path, "[tool.executus]\nsoft_timeout = 30\nmax_steps = 7\nport_timeout = 3\n")
    env = {"EXECUTUS_MAX_STEPS": "9", "EXECUTUS_PORT_TIMEOUT": "4"}
    settings = load_settings({"port_timeout": 5}, project_dir=tmp_path, environ=env)
    assert settings.core.soft_timeout == 30  # pyproject
    assert settings.core.max_steps == 9  # env beats pyproject
    assert settings.core.port_timeout == 5  # explicit beats env
    assert settings.core.hard_timeout == 600  # default


def test_pyproject_is_found_in_a_parent_folder(tmp_path: Path) -> None:
    write_pyproject(tmp_path, '[tool.executus.models]\nfast = "openai:gpt-4o-mini"\n')
    nested = tmp_path / "src" / "app"
    nested.mkdir(parents=True)
    assert load_settings(project_dir=nested, environ={}).core.models == {"fast": "openai:gpt-4o-mini"}


def test_env_sections_lists_and_reserved_test_variables(tmp_path: Path) -> None:
    env = {
        "EXECUTUS_DISABLE": "critic, audit_sql",
        "EXECUTUS_MODELS__FAST": "openai:gpt-4o-mini",
        "EXECUTUS_AUDIT_SQL__URL": "sqlite:///x.db",
        "EXECUTUS_TEST_POSTGRES_URL": "postgresql://127.0.0.1/test",  # for test suites, not a setting
    }
    settings = load_settings(project_dir=tmp_path, environ=env)
    assert settings.core.disable == ["critic", "audit_sql"]
    assert settings.core.models["fast"] == "openai:gpt-4o-mini"
    assert settings.get("audit_sql") == {"url": "sqlite:///x.db"}


def test_unknown_core_key_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting soft_timout"):
        load_settings({"soft_timout": 3}, project_dir=tmp_path, environ={})
    with pytest.raises(ConfigError, match="unknown setting soft_timout"):
        load_settings(project_dir=tmp_path, environ={"EXECUTUS_SOFT_TIMOUT": "3"})


def test_bad_core_value_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"soft_timeout": "soon"}, project_dir=tmp_path, environ={})
    message = str(info.value)
    assert "[tool.executus] soft_timeout" in message and "'soon'" in message and "executus-core" in message


def test_broken_pyproject_is_a_clear_error(tmp_path: Path) -> None:
    write_pyproject(tmp_path, "[tool.executus\n")
    with pytest.raises(ConfigError, match="cannot read settings from"):
        load_settings(project_dir=tmp_path, environ={})


class AuditSqlSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "sqlite:///default.db"
    pool_size: int = 5


def test_plugin_section_validation(tmp_path: Path) -> None:
    settings = load_settings({"audit_sql": {"pool_size": "7"}}, project_dir=tmp_path, environ={})
    assert settings.section("audit_sql", AuditSqlSettings).pool_size == 7
    assert settings.section("missing", AuditSqlSettings).url == "sqlite:///default.db"

    bad = load_settings({"audit_sql": {"pool_size": "many"}}, project_dir=tmp_path, environ={})
    with pytest.raises(ConfigError) as info:
        bad.section("audit_sql", AuditSqlSettings, plugin="executus-audit-sql")
    assert "[tool.executus.audit_sql] pool_size" in str(info.value)
    assert "executus-audit-sql" in str(info.value)

    typo = load_settings({"audit_sql": {"ulr": "x"}}, project_dir=tmp_path, environ={})
    with pytest.raises(
        ConfigError, match=r"unknown setting \[tool.executus.audit_sql\] ulr.*known: pool_size, url"
    ):
        typo.section("audit_sql", AuditSqlSettings)


def test_executor_refuses_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_steps"):
        Executor(entry_points=False, settings={"max_steps": 0}, project_dir=tmp_path)


def test_disable_argument_overrides_settings(tmp_path: Path) -> None:
    ex = Executor(
        entry_points=False, settings={"disable": ["delivery"]}, disable=["tools"], project_dir=tmp_path
    )
    statuses = {r.name: r.status for r in ex.plugins}
    assert statuses["tools"] == "disabled" and statuses["delivery"] == "enabled"
    assert "run_status" not in ex.tools
