"""A new user's first commands need nothing but Python: no PostgreSQL, no Redis, no API key.

The README's commands — ``scripts/run-example`` and ``.venv/bin/executus run examples/assistant.toml``
— run here inside a network namespace of their own (``unshare --net``), where nothing listens on
any port: the PostgreSQL and Redis this machine runs for the other tests cannot be reached, as on
a laptop that has neither. HOME is a fresh directory, so the batteries' embedded defaults start
from nothing. The run must end ``ok`` and its header must say which batteries took part, on what.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "I run 10 km at 6 minutes per mile. How many miles is that, and how long will it take?"
ANSWER = "10 km is about 6.21 miles."
KEYS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "XDG_DATA_HOME")


def _isolated() -> list[str]:
    """The command prefix that runs a command with no network but its own loopback."""
    reason = None
    if sys.platform != "linux" or shutil.which("unshare") is None or shutil.which("ip") is None:
        reason = "needs Linux with unshare and ip (util-linux, iproute2) to cut the services off"
    else:
        probe = subprocess.run(
            ["unshare", "--net", "--map-root-user", "sh", "-c", "ip link set lo up"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            reason = f"cannot make a network namespace here: {probe.stderr.strip()}"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return ["unshare", "--net", "--map-root-user", "sh", "-c", 'ip link set lo up && exec "$@"', "isolated"]


def _fresh_user(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS and not k.startswith("EXECUTUS_")}
    home = tmp_path / "home"
    home.mkdir()
    # If a setting pointed at the services, it would meet closed ports; none is set, as on a new machine.
    env.update(
        HOME=str(home),
        EXECUTUS_TEST_POSTGRES_URL="postgresql://127.0.0.1:5432/test",
        EXECUTUS_TEST_REDIS_URL="redis://127.0.0.1:6379/0",
    )
    return env


def _services_are_unreachable(prefix: list[str], env: dict[str, str]) -> None:
    check = (
        "import socket\n"
        "for port in (5432, 6379):\n"
        "    s = socket.socket(); s.settimeout(1)\n"
        "    assert s.connect_ex(('127.0.0.1', port)) != 0, port\n"
    )
    subprocess.run([*prefix, sys.executable, "-c", check], env=env, check=True, timeout=30)


def _check_first_run(proc: subprocess.CompletedProcess[str], home: Path) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ANSWER in proc.stdout
    header = " ".join(proc.stderr.split())
    data = home / ".local" / "share" / "executus"
    assert f"audit_sql (audit on sqlite+aiosqlite:///{data}/audit.db)" in header, header
    assert f"budget_redis (budget on SQLite at {data}/budget.sqlite3" in header, header
    assert f"checkpoint_sql (checkpoint on sqlite+aiosqlite:///{data}/checkpoints.db)" in header, header
    assert "ok · 3 steps · 3 tool calls" in header
    # nothing on the way tried a service: no connection refused, no fallback warning about one
    for word in ("refused", "unreachable", "cannot connect", "6379", "5432", "postgres"):
        assert word not in header.lower(), header


def test_run_example_needs_no_database_and_no_redis(tmp_path: Path) -> None:
    prefix = _isolated()
    env = _fresh_user(tmp_path)
    _services_are_unreachable(prefix, env)
    proc = subprocess.run(
        [*prefix, str(ROOT / "scripts" / "run-example")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_first_run(proc, tmp_path / "home")


def test_executus_run_needs_no_database_and_no_redis(tmp_path: Path) -> None:
    prefix = _isolated()
    env = _fresh_user(tmp_path)
    executus = Path(sys.executable).with_name("executus")
    proc = subprocess.run(
        [
            *prefix,
            str(executus),
            "run",
            "examples/assistant.toml",
            PROMPT,
            "--model",
            "scripted:examples/assistant.replay.json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _check_first_run(proc, tmp_path / "home")


def test_run_example_refuses_to_answer_your_question_with_the_replay(tmp_path: Path) -> None:
    env = _fresh_user(tmp_path)
    proc = subprocess.run(
        [str(ROOT / "scripts" / "run-example"), "What is the capital of France?"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    message = " ".join(proc.stderr.split())
    assert 'no model to ask "What is the capital of France?"' in message and "OPENAI_API_KEY" in message
