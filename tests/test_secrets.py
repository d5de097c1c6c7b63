"""Secrets are masked wherever executus echoes a setting or a value (issue 16, case 9): settings
errors, plugin errors, ``executus plugins --json``, settings dumps and log lines."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from typer.testing import CliRunner

from executus_core import ConfigError, Executor, PluginError, hookimpl, load_settings
from executus_core.cli import create_app
from executus_core.config import Settings
from executus_core.secrets import (
    MASK,
    SecretsFilter,
    is_secret_name,
    mask_exception,
    mask_text,
    mask_url,
    mask_value,
)

PG_PASSWORD = "pg-Hunter2-pw"
REDIS_PASSWORD = "redis-Hunter2-pw"
API_KEY = "sk-live-Hunter2-0123456789"
SECRETS = (PG_PASSWORD, REDIS_PASSWORD, API_KEY)


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into: {text}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no pyproject.toml of ours is read
    yield


# -- the rule ----------------------------------------------------------------------------------


def test_url_passwords_are_masked_and_the_rest_of_the_url_kept() -> None:
    assert mask_url(f"postgresql+psycopg://app:{PG_PASSWORD}@db:5432/prod") == (
        "postgresql+psycopg://app:***@db:5432/prod"
    )
    assert mask_url(f"redis://:{REDIS_PASSWORD}@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"
    # an unencoded '@' or '/' in the password is still hidden whole
    assert mask_url("postgresql://u:p@ss/w@h/db") == "postgresql://u:***@h/db"
    text = f"cannot reach 'postgresql://app:{PG_PASSWORD}@db/prod' nor redis://:{REDIS_PASSWORD}@c:1"
    assert mask_text(text) == "cannot reach 'postgresql://app:***@db/prod' nor redis://:***@c:1"


@pytest.mark.parametrize(
    "name",
    ["password", "PASSWORD", "db_password", "passwd", "client_secret", "token", "access-token", "api_key",
     "apikey", "X-Api-Key", "Authorization", "Proxy-Authorization", "Cookie", "private_key", "credentials",
     "aws_secret_access_key", "pwd", "auth"],
)  # fmt: skip
def test_names_that_say_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["tokens", "input_tokens", "max_tokens", "keyword", "oauth_url", "author", "url"]
)
def test_names_that_do_not(name: str) -> None:
    assert not is_secret_name(name)


def test_text_pairs_headers_and_prose() -> None:
    assert mask_text(f"rejected api_key={API_KEY} (region eu)") == "rejected api_key=*** (region eu)"
    assert mask_text(f"{{'api_key': '{API_KEY}', 'n': 1}}") == "{'api_key': '***', 'n': 1}"
    assert mask_text(f'{{"token": "{API_KEY}"}}') == '{"token": "***"}'
    assert mask_text(f"Authorization: Bearer {API_KEY}") == "Authorization: ***"
    assert mask_text(f"https://h/hook?token={API_KEY}&x=1") == "https://h/hook?token=***&x=1"
    # a key named in prose keeps the message readable; only values are hidden
    prose = "unknown setting [tool.executus.x] api_key; api_key: must be a string; input_tokens=5"
    assert mask_text(prose) == prose


def test_nested_values_are_masked_without_copying_clean_ones() -> None:
    clean = {"query": "cats", "n": 3, "items": [1, "two", {"k": None}]}
    assert mask_value(clean) is clean
    data = {
        "url": f"redis://:{REDIS_PASSWORD}@cache:6379",
        "headers": {"Authorization": f"Bearer {API_KEY}", "Accept": "json"},
        "list": [{"password": PG_PASSWORD}, (f"postgresql://u:{PG_PASSWORD}@h/db",)],
        "token": None,
        "secret": SecretStr("x"),
        "credentials": {"user": "a", "key": "b"},
    }
    masked = mask_value(data)
    assert masked == {
        "url": "redis://:***@cache:6379",
        "headers": {"Authorization": MASK, "Accept": "json"},
        "list": [{"password": MASK}, ("postgresql://u:***@h/db",)],
        "token": None,  # "not set" is no secret
        "secret": MASK,
        "credentials": MASK,
    }
    assert data["headers"]["Authorization"].endswith(API_KEY), "the input is not changed"
    assert mask_value(masked) == masked, "masking is idempotent"
    assert mask_text(mask_text(f"api_key={API_KEY}")) == "api_key=***"


def test_an_exception_chain_is_masked_in_place() -> None:
    try:
        try:
            raise OSError(f"cannot connect to postgresql://u:{PG_PASSWORD}@h/db")
        except OSError as inner:
            raise RuntimeError(f"token={API_KEY}", 3) from inner
    except RuntimeError as exc:
        assert mask_exception(exc) is exc
        assert exc.args == ("token=***", 3)
        assert str(exc.__cause__) == "cannot connect to postgresql://u:***@h/db"
        assert_clean("".join(traceback.format_exception(exc)))


def test_settings_dump_is_masked() -> None:
    settings = load_settings(
        {
            "audit_sql": {"url": f"postgresql+psycopg://app:{PG_PASSWORD}@db/prod"},
            "budget_redis": {"url": f"redis://:{REDIS_PASSWORD}@cache:6379/0"},
            "vendor": {"api_key": API_KEY},
        },
        read_pyproject=False,
        environ={},
    )
    dumped = settings.masked()
    assert dumped["audit_sql"]["url"] == "postgresql+psycopg://app:***@db/prod"
    assert dumped["vendor"]["api_key"] == MASK
    assert_clean(json.dumps(dumped))
    assert_clean(repr(settings))
    assert settings.raw["vendor"]["api_key"] == API_KEY, "the settings themselves keep the real value"


def test_the_logging_filter_masks_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_secrets.filter")
    handler_filter = SecretsFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger="test_secrets.filter"):
            logger.info("connecting to %s with api_key=%s", f"postgresql://u:{PG_PASSWORD}@h/db", API_KEY)
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "postgresql://u:***@h/db" in caplog.text and "api_key=***" in caplog.text
    assert_clean(caplog.text)


def test_the_cores_own_loggers_mask_what_they_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="executus"):
        logging.getLogger("executus").warning(
            "closing %r failed", f"Engine(postgresql://u:{PG_PASSWORD}@h/db)"
        )
        logging.getLogger("executus.delivery").info("retrying with token=%s", API_KEY)
    assert "postgresql://u:***@h/db" in caplog.text and "token=***" in caplog.text
    assert_clean(caplog.text)


# -- ConfigError and PluginError ------------------------------------------------------------------


def test_a_core_setting_error_never_echoes_a_password() -> None:
    with pytest.raises(ConfigError) as info:
        Executor(entry_points=False, settings={"soft_timeout": f"postgresql://u:{PG_PASSWORD}@h/db"})
    assert "soft_timeout" in str(info.value) and "postgresql://u:***@h/db" in str(info.value)
    assert_clean(str(info.value))


def test_config_error_masks_whatever_message_it_is_given() -> None:
    error = ConfigError(f"bad url postgresql://u:{PG_PASSWORD}@h/db and api_key={API_KEY}")
    assert str(error) == "bad url postgresql://u:***@h/db and api_key=***"
    error = PluginError(f"redis://:{REDIS_PASSWORD}@h refused", plugin="p")
    assert str(error) == "redis://:***@h refused" and error.plugin == "p"


class VendorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=64)
    url: str = "https://vendor.example"


class VendorPlugin:
    """A host plugin that reads its own table, and whose hook echoes its key when the vendor says no."""

    executus_name = "vendor"

    @hookimpl
    def executus_audit(self, settings: Settings) -> Any:
        cfg = settings.section("vendor", VendorSettings)
        raise RuntimeError(f"vendor refused api_key={cfg.api_key!r} at {cfg.url}")


def test_a_secret_field_with_a_bad_value_is_named_but_not_shown() -> None:
    with pytest.raises(PluginError) as info:
        Executor(entry_points=False, plugins=[VendorPlugin()], settings={"vendor": {"api_key": API_KEY}})
    assert "api_key" in str(info.value) and "at least 64 characters" in str(info.value)
    assert_clean(str(info.value))
    assert_clean(str(info.value.__cause__))


def test_a_hook_that_echoes_its_key_and_url_is_masked_in_the_error_and_the_record() -> None:
    settings = {"vendor": {"api_key": API_KEY * 3, "url": f"https://bot:{PG_PASSWORD}@vendor.example/v1"}}
    with pytest.raises(PluginError) as info:
        Executor(entry_points=False, plugins=[VendorPlugin()], settings=settings)
    assert "vendor refused api_key='***' at https://bot:***@vendor.example/v1" in str(info.value)
    assert_clean(str(info.value))
    # a logged traceback prints the plugin's own exception (the cause) too
    assert "RuntimeError: vendor refused api_key='***'" in "".join(traceback.format_exception(info.value))
    assert_clean("".join(traceback.format_exception(info.value)))
    with pytest.warns(RuntimeWarning) as caught:
        ex = Executor(
            entry_points=False,
            plugins=[VendorPlugin()],
            settings={**settings, "skip_broken_plugins": True},
        )
    record = {r.name: r for r in ex.plugins}["vendor"]
    assert record.status == "broken"
    assert_clean(str(record.error)) and assert_clean(json.dumps(record.as_dict()))
    assert_clean(" ".join(str(w.message) for w in caught))


def _installed(*names: str) -> list[str]:
    found = {ep.name for ep in importlib.metadata.entry_points(group="executus")}
    missing = [n for n in names if n not in found]
    if missing:
        pytest.skip(f"battery {', '.join(missing)} is not installed (scripts/bootstrap installs it)")
    return sorted(found - set(names))


def test_battery_settings_errors_never_echo_the_database_or_redis_password() -> None:
    others = _installed("audit_sql", "budget_redis")
    cases = [
        {"audit_sql": {"url": f"mysql://app:{PG_PASSWORD}@db/prod"}},
        {"audit_sql": {"url": f"postgresql://app:{PG_PASSWORD}@db:notaport/prod"}},
        {"budget_redis": {"url": f"http://:{REDIS_PASSWORD}@cache:6379/0"}},
    ]
    for settings in cases:
        with pytest.raises((ConfigError, PluginError)) as info:
            Executor(settings=settings, disable=others)
        assert_clean(str(info.value))
        cause = info.value.__cause__
        while cause is not None:  # the chain a traceback would print
            if isinstance(cause, ConfigError | PluginError):
                assert_clean(str(cause))
            cause = cause.__cause__


def test_plugins_json_never_shows_a_password_or_key() -> None:
    others = _installed("audit_sql", "budget_redis")
    app = create_app(entry_points=True, plugins=[VendorPlugin()])
    result = CliRunner().invoke(
        app,
        [
            "plugins",
            "--json",
            "-s",
            f"audit_sql.url=mysql://app:{PG_PASSWORD}@db/prod",
            "-s",
            f"budget_redis.url=http://:{REDIS_PASSWORD}@cache:6379/0",
            "-s",
            f"vendor.api_key={API_KEY * 3}",
            "-s",
            f"disable={','.join(n for n in others if n not in ('checkpoint_sql', 'critic'))}",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["plugins"]}
    assert rows["audit_sql"]["status"] == "broken" and "mysql://app:***@db/prod" in rows["audit_sql"]["error"]
    assert rows["budget_redis"]["status"] == "broken" and rows["vendor"]["status"] == "broken"
    assert_clean(result.output)


def test_a_settings_error_note_in_plugins_json_is_masked() -> None:
    result = CliRunner().invoke(
        create_app(entry_points=False),
        ["plugins", "--json", "-s", f"soft_timeout=postgresql://u:{PG_PASSWORD}@h/db"],
    )
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert any("soft_timeout" in note for note in notes)
    assert_clean(result.output)
