"""``executus critic policy``, for people and with ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from critic_helpers import other_plugins
from executus_critic import plugin
from typer.testing import CliRunner

from executus_core.cli import create_app


@pytest.fixture(autouse=True)
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pyproject.toml around: the settings are the defaults plus what a test passes."""
    monkeypatch.chdir(tmp_path)


def invoke(*args: str) -> Any:
    # wide enough that rich never wraps a table cell in the middle of a phrase
    result = CliRunner().invoke(
        create_app(entry_points=False, plugins=[plugin]), list(args), env={"COLUMNS": "200"}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_policy_for_people() -> None:
    result = invoke("critic", "policy")
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "nudge to wrap up" in out and "at 90 s" in out
    assert "the core's" in out and "600 s" in out  # no hard_factor: the core's hard timeout holds
    assert "nothing started or finished for 180 s" in out
    assert "4 times in a row" in out and "6 steps in a row" in out


def test_policy_as_json_follows_settings_and_the_soft_timeout() -> None:
    result = invoke(
        "critic",
        "policy",
        "--json",
        "--soft-timeout",
        "60",
        "-s",
        "critic.hard_factor=4",
        "-s",
        "critic.hang_timeout=0",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    policy = data["policy"]
    assert data["enabled"] is True and data["core_hard_timeout"] == 600
    assert policy["soft_timeout"] == 60 and policy["steer_at"] == 60
    assert policy["hard_timeout"] == 240 and policy["max_extension"] == 240 and policy["latest"] == 480
    assert policy["hang_timeout"] is None and policy["progress_window"] == 60
    assert "{tool}" in data["messages"]["repeat"]


def test_policy_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTUS_CRITIC__STEER_AFTER", "45s")
    monkeypatch.setenv("EXECUTUS_CRITIC__ENABLED", "false")
    data = json.loads(invoke("critic", "policy", "--json").stdout)
    assert data["enabled"] is False and data["policy"] is None
    monkeypatch.delenv("EXECUTUS_CRITIC__ENABLED")
    data = json.loads(invoke("critic", "policy", "--json").stdout)
    assert data["policy"]["steer_at"] == 45


def test_bad_settings_exit_2_naming_the_key() -> None:
    result = invoke("critic", "policy", "-s", "critic.loop_threshold=1")
    assert result.exit_code == 2
    assert "loop_threshold" in result.stderr and "greater than or equal to 2" in result.stderr
    assert result.stdout == ""


def test_the_installed_command_in_a_subprocess(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("EXECUTUS_") or k.startswith("EXECUTUS_TEST_")
    }
    env["EXECUTUS_DISABLE"] = ",".join(other_plugins())  # only the critic's own commands
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "executus"),
            "critic",
            "policy",
            "--json",
            "-s",
            "critic.hard_timeout=120",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["policy"]["hard_timeout"] == 120
