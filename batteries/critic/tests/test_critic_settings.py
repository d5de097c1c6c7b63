"""``[tool.executus.critic]``: what is accepted, what is refused (and how it says so), and the
`Policy` each soft timeout resolves to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from executus_critic import CriticSettings, Policy
from pydantic import ValidationError

from executus_core import ConfigError, Settings, load_settings


def section(table: dict[str, Any]) -> CriticSettings:
    return Settings({"critic": table}).section("critic", CriticSettings, plugin="critic")


def test_the_defaults_leave_the_hard_timeout_to_the_core() -> None:
    policy = Policy.resolve(CriticSettings(), 90.0)
    assert (policy.steer_at, policy.hard_timeout, policy.latest, policy.max_extension) == (
        90.0,
        None,
        None,
        0.0,
    )
    assert (policy.hang_timeout, policy.loop_threshold, policy.stall_steps) == (180.0, 4, 6)
    assert not policy.owns_deadline and policy.lead == 0.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1.0, 1.0),
        (0.5, 0.5),
        ("0.8", 0.8),
        ("45s", "45s"),
        (" 2.5 s ", "2.5s"),
        (0, None),
        (False, None),
        ("0s", None),
    ],
)
def test_steer_after_takes_a_fraction_or_seconds(raw: Any, expected: Any) -> None:
    assert section({"steer_after": raw}).steer_after == expected


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (90, 'for seconds write "90s"'),
        ("soon", "neither a fraction"),
        (True, "not true"),
        (-1, "positive"),
        ([1], "fraction of the soft timeout"),
    ],
)
def test_a_bad_steer_after_says_what_to_write(raw: Any, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        section({"steer_after": raw})
    message = str(info.value)
    assert says in message and "[tool.executus.critic] steer_after" in message and "'critic'" in message


def test_zero_turns_a_check_off() -> None:
    cfg = section({"hang_timeout": 0, "loop_threshold": 0, "stall_steps": False, "hard_factor": 0})
    assert (cfg.hang_timeout, cfg.loop_threshold, cfg.stall_steps, cfg.hard_factor) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"hang_timout": 3}, "unknown setting [tool.executus.critic] hang_timout"),
        ({"loop_threshold": 1}, "loop_threshold: Input should be greater than or equal to 2"),
        ({"max_extension": -1}, "max_extension"),
        ({"hard_timeout": "inf"}, "finite"),
        ({"max_runtime": 60}, "set hard_factor or hard_timeout too"),
        ({"messages": {"repeat": "stop calling {tool} with {args}"}}, "unknown placeholder {args}"),
        ({"messages": {"stall": "{steps:d} steps {"}}, "not a valid template"),
        ({"messages": {"wrap_up": "{elapsed:d}"}}, "does not format"),
        ({"messages": {"wrap_up": "{} seconds"}}, "unknown placeholder {}"),
        ({"messages": {"hello": "x"}}, "messages.hello"),
    ],
)
def test_bad_settings_name_the_key_and_the_plugin(table: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as info:
        section(table)
    assert says in str(info.value) and "critic" in str(info.value)


def test_templates_may_use_their_placeholders_with_format_specs() -> None:
    cfg = section(
        {
            "messages": {
                "repeat": "{tool} x{count:d} {arguments!r}",
                "wrap_up": "{elapsed:.0f}/{soft_timeout:g}",
            }
        }
    )
    assert cfg.messages.repeat.format(tool="t", count=3, arguments="{}") == "t x3 '{}'"


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        CriticSettings().hang_timeout = 3  # type: ignore[misc]


def test_the_table_comes_from_pyproject_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.executus.critic]\nhard_factor = 3\nsteer_after = "30s"\n\n'
        '[tool.executus.critic.messages]\nwrap_up = "Stop at {elapsed:.0f}."\n'
    )
    settings = load_settings(project_dir=tmp_path, environ={"EXECUTUS_CRITIC__HANG_TIMEOUT": "20"})
    cfg = settings.section("critic", CriticSettings)
    assert (cfg.hard_factor, cfg.steer_after, cfg.hang_timeout) == (3, "30s", 20)
    assert cfg.messages.wrap_up == "Stop at {elapsed:.0f}."


@pytest.mark.parametrize(
    ("table", "soft", "expected"),
    [
        ({"hard_factor": 4}, 90, {"hard_timeout": 360, "latest": 600, "max_extension": 240}),
        ({"hard_factor": 4, "hard_timeout": 100}, 90, {"hard_timeout": 100, "latest": 340}),
        ({"hard_factor": 4, "max_runtime": 500}, 90, {"hard_timeout": 360, "latest": 500}),
        (
            {"hard_factor": 4, "max_runtime": 100},
            90,
            {"hard_timeout": 100, "latest": 100, "max_extension": 0},
        ),
        ({"hard_timeout": 10, "max_extension": 0}, 90, {"latest": 10}),
        (
            {"steer_after": 0.5, "hang_timeout": 0},
            30,
            {"steer_at": 15, "hang_timeout": None, "progress_window": 30},
        ),
        ({"steer_after": "5s"}, 30, {"steer_at": 5}),
    ],
)
def test_policy_resolution(table: dict[str, Any], soft: float, expected: dict[str, Any]) -> None:
    data = Policy.resolve(section(table), soft).as_dict()
    assert {key: data[key] for key in expected} == expected
    json.dumps(data)  # JSON-able, for the CLI
