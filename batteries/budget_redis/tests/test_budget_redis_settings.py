"""Settings: durations, limits per caller (exact ids, patterns, defaults), and errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest
from executus_budget_redis import (
    BudgetRedisSettings,
    WindowLimits,
    format_duration,
    parse_duration,
    resolve_limits,
)
from executus_budget_redis.durations import window_phrase

from executus_core import Executor
from executus_core.config import load_settings
from executus_core.errors import ConfigError, PluginError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("1d", 86400), ("90m", 5400), ("1h30m", 5400), ("500ms", 0.5), ("1w", 604800), (45, 45)],
)
def test_durations_read_as_people_write_them(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "1h soon", "0s", -5, True, "1y"])
def test_a_bad_duration_says_what_is_accepted(bad: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0.4s"),
        (45, "45s"),
        (725, "12m5s"),
        (11520, "3h12m"),
        (3600, "1h"),
        (90061, "1d1h"),
        (86400, "1d"),
    ],
)
def test_durations_print_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_windows_are_named_in_reasons() -> None:
    assert [window_phrase(s) for s in (3600, 86400, 1800, 0.5)] == [
        "this hour",
        "this day",
        "this 30m window",
        "this 0.5s window",
    ]


def test_defaults_meter_one_day_and_limit_nothing() -> None:
    limits = resolve_limits(BudgetRedisSettings(), "u1")
    assert limits.windows == (WindowLimits(86400.0),)
    assert (limits.max_concurrent, limits.source) == (None, "defaults")


def test_a_callers_entry_replaces_only_the_limits_it_names() -> None:
    config = BudgetRedisSettings(
        window="1h",
        max_runs=10,
        max_tokens={"1h": 1000, "1d": 5000},
        max_concurrent=2,
        callers={
            "vip-1": {"max_tokens": "unlimited"},
            "vip-*": {"max_runs": {"1m": 5}, "max_concurrent": "unlimited"},
            "slow-?": {"window": "1d", "max_seconds": 60},
        },
    )
    vip1 = resolve_limits(config, "vip-1")  # exact id before the pattern that also matches
    assert vip1.source == 'callers."vip-1"'
    assert vip1.windows == (WindowLimits(3600.0, max_runs=10),)
    assert vip1.max_concurrent == 2

    vip2 = resolve_limits(config, "vip-2")
    assert vip2.windows == (
        WindowLimits(60.0, max_runs=5),
        WindowLimits(3600.0, max_tokens=1000),
        WindowLimits(86400.0, max_tokens=5000),
    )
    assert vip2.max_concurrent is None

    slow = resolve_limits(config, "slow-a")  # plain numbers count in the caller's own window
    assert slow.windows == (
        WindowLimits(3600.0, max_tokens=1000),
        WindowLimits(86400.0, max_runs=10, max_tokens=5000, max_seconds=60.0),
    )
    assert slow.setting("max_seconds") == 'callers."slow-?".max_seconds'
    assert resolve_limits(config, "slow-ab").source == "defaults"


def test_limits_come_from_the_environment_too() -> None:
    settings = load_settings(
        environ={
            "EXECUTUS_BUDGET_REDIS__MAX_TOKENS": '{"1h": 100}',
            "EXECUTUS_BUDGET_REDIS__CALLERS": '{"ops-*": {"max_tokens": "unlimited"}}',
            "EXECUTUS_BUDGET_REDIS__KEY_PREFIX": "app:budget:",
        },
        read_pyproject=False,
    )
    config = settings.section("budget_redis", BudgetRedisSettings)
    assert config.key_prefix == "app:budget:"
    assert resolve_limits(config, "u1").windows[0] == WindowLimits(3600.0, max_tokens=100)
    assert resolve_limits(config, "ops-1").windows == (WindowLimits(86400.0),)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"max_runz": 5}, "max_runz"),
        ({"window": "soon"}, "window"),
        ({"max_tokens": {"1x": 5}}, "max_tokens"),
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"callers": {"u1": {"max_tokns": 1}}}, "callers.u1.max_tokns"),
        ({"max_concurrent": -1}, "max_concurrent"),
    ],
)
def test_a_bad_setting_stops_the_executor_naming_the_key(
    table: dict[str, Any], named: str, other_plugins: list[str]
) -> None:
    with pytest.raises(PluginError) as info:
        Executor(settings={"budget_redis": table}, disable=other_plugins)
    assert info.value.plugin == "budget_redis"
    assert named in str(info.value)
    # one line per bad key, not one per alternative of the limit's type
    assert str(info.value).count("[tool.executus.budget_redis]") == 1


def test_the_section_is_validated_like_every_plugins() -> None:
    with pytest.raises(ConfigError, match="known: "):
        load_settings({"budget_redis": {"nope": 1}}, read_pyproject=False).section(
            "budget_redis", BudgetRedisSettings, plugin="budget_redis"
        )
