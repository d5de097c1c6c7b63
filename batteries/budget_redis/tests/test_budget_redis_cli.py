"""``executus budget show`` and ``executus budget reset``: tables for people, JSON for scripts."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import executus_budget_redis.plugin
import pytest
from typer.testing import CliRunner

from executus_core import Usage
from executus_core.cli import create_app


@pytest.fixture
def cli(redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli(*args)``: run ``executus`` with this battery, pointed at the test Redis and prefix."""
    monkeypatch.setenv("EXECUTUS_BUDGET_REDIS__URL", redis_url)
    monkeypatch.setenv("EXECUTUS_BUDGET_REDIS__KEY_PREFIX", key_prefix)
    monkeypatch.setenv("COLUMNS", "200")  # rich sizes its tables to the terminal

    def invoke(*args: str, app: Any = None) -> Any:
        app = app or create_app(entry_points=False, plugins=[executus_budget_redis.plugin])
        result = CliRunner().invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


@pytest.fixture
def seeded(make: Any) -> None:
    """u1: 2 runs, 1,500 tokens, 3.5 s in its day; u2: one run still in flight."""

    async def seed() -> None:
        budget = make(max_runs=10, max_tokens=100_000)
        try:
            for tokens in (1000, 500):
                await budget.check("u1")
                await budget.commit("u1", 1.75, Usage(input_tokens=tokens))
            await budget.check("u2")
        finally:
            await budget.aclose()

    asyncio.run(seed())


def test_show_draws_a_table_of_usage_against_limits(cli: Any, seeded: None) -> None:
    result = cli("budget", "show", "-s", "budget_redis.max_runs=10", "-s", "budget_redis.max_tokens=100000")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "limits from" not in result.stdout  # every caller has the defaults
    u1 = next(line for line in lines if "│ u1" in line)
    for cell in ("1d", "2 / 10", "1,500 / 100,000", "3.5s", "│ 0 "):
        assert cell in u1, (cell, u1)
    u2 = next(line for line in lines if "│ u2" in line)
    assert "1 / 10" in u2 and "│ 1 " in u2  # its run is in flight (no concurrency limit set)

    own = cli("budget", "show", "-s", 'budget_redis.callers={"u2": {"max_concurrent": 1}}')
    u2 = next(line for line in own.stdout.splitlines() if "│ u2" in line)
    assert 'callers."u2"' in u2 and "1 / 1" in u2
    assert "limits from" in own.stdout


def test_show_json_is_for_scripts(cli: Any, seeded: None, key_prefix: str) -> None:
    result = cli(
        "budget",
        "show",
        "--json",
        "-s",
        "budget_redis.max_tokens=100000",
        "-s",
        "budget_redis.max_concurrent=3",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["key_prefix"] == key_prefix
    callers = {c["caller"]: c for c in data["callers"]}
    assert set(callers) == {"u1", "u2"}
    (window,) = callers["u1"]["windows"]
    assert (window["window"], window["window_seconds"], window["runs"], window["tokens"]) == (
        "1d",
        86400.0,
        2,
        1500,
    )
    assert (window["seconds"], window["max_tokens"], window["max_runs"]) == (3.5, 100000, None)
    assert 0 < window["resets_in"] <= 86400
    assert (callers["u2"]["in_flight"], callers["u2"]["max_concurrent"]) == (1, 3)


def test_show_one_caller_even_without_usage(cli: Any) -> None:
    result = cli("budget", "show", "nobody", "--json", "-s", "budget_redis.max_runs=3")
    assert result.exit_code == 0, result.output
    (caller,) = json.loads(result.stdout)["callers"]
    assert caller["caller"] == "nobody" and caller["limits_from"] == "defaults"
    assert caller["windows"][0]["runs"] == 0 and caller["windows"][0]["resets_in"] is None
    table = cli("budget", "show", "nobody")
    assert "not started" in table.stdout


def test_show_lists_callers_named_in_settings(cli: Any) -> None:
    result = cli(
        "budget", "show", "--json", "-s", 'budget_redis.callers={"vip": {"max_runs": 1}, "team-*": {}}'
    )
    assert [c["caller"] for c in json.loads(result.stdout)["callers"]] == ["vip"]  # not the pattern


def test_show_without_usage_says_so(cli: Any, key_prefix: str) -> None:
    result = cli("budget", "show")
    assert result.exit_code == 0 and result.stdout == ""
    assert f"no budget usage under key prefix '{key_prefix}'" in " ".join(result.stderr.split())
    assert json.loads(cli("budget", "show", "--json").stdout)["callers"] == []


def test_reset_forgets_one_caller(cli: Any, seeded: None) -> None:
    result = cli("budget", "reset", "u1")
    assert result.exit_code == 0, result.output
    assert re.search(r"reset caller u1: \d+ keys deleted", result.stdout), result.stdout
    data = json.loads(cli("budget", "show", "--json").stdout)
    assert [c["caller"] for c in data["callers"]] == ["u2"]
    again = cli("budget", "reset", "u2", "--json")
    reply = json.loads(again.stdout)
    assert reply["caller"] == "u2" and reply["deleted_keys"] >= 3  # its window, slot, hold and run


def test_unreachable_redis_exits_1_with_what_to_set(cli: Any, closed_url: str) -> None:
    for args in (("show",), ("show", "u1", "--json"), ("reset", "u1")):
        result = cli("budget", *args, "-s", f"budget_redis.url={closed_url}")
        assert result.exit_code == 1
        assert result.stdout == ""
        message = " ".join(result.stderr.split())
        assert f"Redis at {closed_url} could not be reached" in message
        assert "EXECUTUS_BUDGET_REDIS__URL" in message


def test_bad_settings_exit_2_naming_the_key(cli: Any) -> None:
    result = cli("budget", "show", "-s", "budget_redis.max_runs=-1")
    assert result.exit_code == 2
    assert "[tool.executus.budget_redis] max_runs" in " ".join(result.stderr.split())


def test_the_commands_come_from_the_entry_point(
    cli: Any, monkeypatch: pytest.MonkeyPatch, other_plugins: list[str]
) -> None:
    monkeypatch.setenv("EXECUTUS_DISABLE", ",".join(other_plugins))
    app = create_app()
    result = cli("budget", "--help", app=app)
    assert result.exit_code == 0
    assert "show" in result.stdout and "reset" in result.stdout
    listed = cli("plugins", "--json", app=app)
    row = next(p for p in json.loads(listed.stdout)["plugins"] if p["name"] == "budget_redis")
    assert (row["status"], row["ports"]) == ("enabled", ["budget", "commands"])


def test_show_title_is_one_line_at_120_columns(
    cli: Any, seeded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The title used to be squeezed into the table's width, and wrapped."""
    monkeypatch.setenv("COLUMNS", "120")
    result = cli("budget", "show")
    assert result.exit_code == 0, result.output
    title = result.stdout.splitlines()[0]
    assert title.startswith("executus budget · Redis at ") and title.rstrip().endswith("'")
    assert "prefix '" in title and "┃" not in title
