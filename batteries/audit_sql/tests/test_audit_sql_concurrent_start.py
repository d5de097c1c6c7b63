"""Found case 9 of issue 15: workers that start together on a fresh SQLite file.

Before the SQLite migration lock, 4 processes running ``executus db upgrade`` at once failed with
"table executus_audit_sql_version already exists", and 4 workers starting together kept 10 of 15
runs in the database (the others went to spill files: their schema check had failed). Each process
here is a real one, started together behind a start line (a file they all wait for), so their
migrations race as in production.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_sql_helpers import other_plugins

PROCESSES = 4
RUNS_EACH = 4

WORKER = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.WARNING)
from pathlib import Path
from executus_core import Agent, Executor, ModelResponse
from executus_core.testing import ScriptedModel

start = Path(sys.argv[2])
while not start.exists():
    time.sleep(0.005)
settings = {"audit_sql": {"url": sys.argv[1]}}
agent = Agent(name="starter", model=ScriptedModel([ModelResponse(text="ok")], per_run=True))
ids = []
with Executor(settings=settings, disable=json.loads(sys.argv[3])) as executor:
    for i in range(int(sys.argv[4])):
        result = executor.run_sync(agent, f"run {i}", caller_id=f"worker-{os.getpid()}")
        assert result.status.value == "ok", result
        ids.append(result.run_id)
print(json.dumps(ids))
"""


def _executus() -> Path:
    script = Path(sys.executable).with_name("executus")
    if not script.exists():
        pytest.skip(f"no executus script beside {sys.executable}: install the project (scripts/bootstrap)")
    return script


def _together(
    commands: list[list[str]], start: Path, env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Start every command, let them all go at once (``start`` appears), and wait for them."""
    children = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    time.sleep(1.0)  # every interpreter is up and waiting at the start line
    start.touch()
    done = []
    for child, command in zip(children, commands, strict=True):
        out, err = child.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(command, child.returncode, out, err))
    return done


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["EXECUTUS_DATA_DIR"] = str(tmp_path / "data")
    env["EXECUTUS_DISABLE"] = ",".join(other_plugins())
    return env


def test_four_processes_upgrading_a_fresh_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    executus = _executus()
    database = tmp_path / "fresh" / "audit.db"
    start = tmp_path / "go"
    # Each waits for the start line in a tiny shell loop, then runs the real command.
    wait = f'while [ ! -e "{start}" ]; do sleep 0.005; done; exec "$0" "$@"'
    command = ["sh", "-c", wait, str(executus), "db", "upgrade", "audit_sql", "--json"]
    command += ["-s", f"audit_sql.url=sqlite:///{database}"]
    done = _together([command] * PROCESSES, start, _env(tmp_path))
    for result in done:
        assert result.returncode == 0, (
            f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
        report = json.loads(result.stdout)["upgraded"]["audit_sql"]
        assert report["ok"] is True, report
    with sqlite3.connect(database) as conn:
        (version,) = conn.execute("SELECT version_num FROM executus_audit_sql_version").fetchone()
    assert version


def test_four_workers_starting_together_keep_every_run_in_the_database(tmp_path: Path) -> None:
    database = tmp_path / "fresh" / "audit.db"
    start = tmp_path / "go"
    env = _env(tmp_path)
    command = [
        sys.executable,
        "-c",
        WORKER,
        f"sqlite:///{database}",
        str(start),
        json.dumps(other_plugins()),
        str(RUNS_EACH),
    ]
    done = _together([command] * PROCESSES, start, env)
    run_ids: list[str] = []
    said = "\n".join(result.stderr for result in done if result.stderr.strip())
    for result in done:
        assert result.returncode == 0, f"exit {result.returncode}\nstderr: {result.stderr}"
        run_ids += json.loads(result.stdout.strip().splitlines()[-1])
    assert len(set(run_ids)) == PROCESSES * RUNS_EACH
    with sqlite3.connect(database) as conn:
        stored = {row[0] for row in conn.execute("SELECT run_id FROM executus_runs")}
    assert stored == set(run_ids), (
        f"{len(stored)} of {len(run_ids)} runs are in the database; the others were spilled: "
        f"{sorted(p.name for p in (tmp_path / 'data').rglob('*') if p.is_file())}\nthe workers said:\n{said}"
    )
    spilled = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and "unwritten" in str(p)]
    assert spilled == [], f"rows went to spill files: {spilled}"
