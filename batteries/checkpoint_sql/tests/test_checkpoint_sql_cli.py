"""The commands: ``executus db upgrade``, ``executus checkpoints list`` and ``executus recover``,
each for people and with ``--json``, through the real ``executus`` app with this battery loaded by
its entry point."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from checkpoint_sql_agents import crash_agent, lines
from checkpoint_sql_helpers import Backend, abandon, cli_settings, eventually, other_plugins
from typer.testing import CliRunner

from executus_core import Agent, CheckpointState, Executor, Message, RunStatus
from executus_core.cli import create_app
from executus_core.testing.conformance import make_info


@pytest.fixture(autouse=True)
def _only_this_battery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTUS_DISABLE", ",".join(other_plugins()))


def executus(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(create_app(), list(args))


def test_db_upgrade_creates_the_tables_once(backend: Backend) -> None:
    first = executus("db", "upgrade", *cli_settings(backend))
    assert first.exit_code == 0, first.output
    assert "✓ checkpoint_sql:" in first.stdout and "upgraded from no tables to 0002" in first.stdout
    again = executus("db", "upgrade", "checkpoint_sql", "--json", *cli_settings(backend))
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)["upgraded"]["checkpoint_sql"]
    assert report["ok"] is True and "already at 0002" in report["message"]
    assert "executus_checkpoint_sql_version" in report["message"]


def test_db_upgrade_that_cannot_reach_the_database_fails_with_its_reason(unused_tcp_port: int) -> None:
    url = f"postgresql+psycopg://127.0.0.1:{unused_tcp_port}/nowhere"
    result = executus(
        "db", "upgrade", "-s", f"checkpoint_sql.url={url}", "-s", "checkpoint_sql.connect_timeout=1"
    )
    assert result.exit_code == 1
    assert "✗ checkpoint_sql: OperationalError" in result.stdout and "refused" in result.stdout


async def _three_runs(backend: Backend) -> tuple[str, str, str]:
    """A run still held by a live worker, one interrupted (its worker shut down), one completed."""
    agent = Agent(name="listed", model="scripted:none")
    busy = backend.store(worker_id="busy-worker", lease_seconds=600, heartbeat_seconds=0)
    gone = backend.store(worker_id="gone-worker", lease_seconds=600)
    ids = []
    for index, store in enumerate((busy, gone, gone)):
        info = make_info(index, caller_id=f"caller-{index}")
        checkpointer = await store.for_run(info, agent)
        state = CheckpointState(run_id=info.run_id, iteration=1, offset=0, messages=[Message.user("hi")] * 2)
        await checkpointer.save(state)
        if index == 2:
            await checkpointer.complete()
        ids.append(info.run_id)
    await abandon(busy)  # as if its process were still going: its lease stands
    await gone.aclose()  # a clean shutdown: its run is released
    return ids[0], ids[1], ids[2]


def test_checkpoints_list_shows_live_runs_and_which_are_interrupted(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, interrupted, completed = asyncio.run(_three_runs(backend))
    monkeypatch.setenv("COLUMNS", "160")  # a roomy terminal: one line per row part, easy to read back

    human = executus("checkpoints", "list", *cli_settings(backend))
    assert human.exit_code == 0, human.output
    table = " ".join(human.stdout.split())
    assert running in table and interrupted in table and completed not in table
    assert "running" in table and "interrupted" in table and "busy-worker" in table
    assert "lease 600s left" in table or "lease 599s left" in table
    assert "1 interrupted run: `executus recover` resumes it" in " ".join(human.stderr.split())

    data = json.loads(executus("checkpoints", "list", "--all", "--json", *cli_settings(backend)).stdout)
    states = {row["run_id"]: row["state"] for row in data["runs"]}
    assert states == {running: "running", interrupted: "interrupted", completed: "completed"}
    by_id = {row["run_id"]: row for row in data["runs"]}
    assert by_id[running]["owner"].startswith("busy-worker:") and by_id[running]["lease_seconds_left"] > 500
    assert by_id[running]["held_seconds"] >= 0 and by_id[interrupted]["held_seconds"] is None
    assert by_id[interrupted]["messages"] == 2 and by_id[completed]["messages"] == 0
    assert data["database"].startswith(("sqlite+aiosqlite://", "postgresql+psycopg://"))


async def _interrupted_crash_run(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ECP_BLOCK", "1")
    async with Executor(
        settings=backend.executor_settings(worker_id="crashing"), disable=other_plugins()
    ) as ex:
        running = asyncio.ensure_future(ex.run(crash_agent, "note it, then wait", caller_id="cli-test"))
        before = len(lines("wait.log"))

        async def blocked() -> bool:
            return len(lines("wait.log")) > before

        await eventually(blocked)
        await ex.shutdown()
        result = await running
    monkeypatch.delenv("ECP_BLOCK")
    assert result.status is RunStatus.INTERRUPTED
    return result.run_id


def test_recover_resumes_interrupted_runs_and_reports_each(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECP_WORKDIR", str(tmp_path))
    monkeypatch.chdir(Path(__file__).parent)  # --agent module:attribute imports from here
    nothing = executus("recover", *cli_settings(backend))
    assert nothing.exit_code == 0 and "no interrupted runs" in nothing.stderr

    run_id = asyncio.run(_interrupted_crash_run(backend, monkeypatch))
    # Without --agent the saved spec names tools this process has not registered: the run cannot go
    # on, the command says why and exits 1, and the run stays there for the next try.
    missing = executus("recover", *cli_settings(backend))
    assert missing.exit_code == 1
    assert run_id[:12] in missing.stdout and "error" in missing.stdout  # run ids as every command shows them

    human = executus("recover", "--agent", "checkpoint_sql_agents:crash_agent", *cli_settings(backend))
    assert human.exit_code == 0, human.output
    assert f"resuming {run_id[:12]}" in human.stderr and f"✓ {run_id[:12]} ok · 3 steps" in human.stderr
    table = " ".join(human.stdout.split())
    assert "recovered 1 run" in table and run_id[:12] in table and "done" in table
    assert lines("record.log") == ["one"]

    second = asyncio.run(_interrupted_crash_run(backend, monkeypatch))
    scripted = executus(
        "recover", "--json", "-a", "checkpoint_sql_agents:crash_agent", *cli_settings(backend)
    )
    assert scripted.exit_code == 0, scripted.output
    results = json.loads(scripted.stdout)["results"]
    assert [(r["run_id"], r["status"], r["output"]) for r in results] == [(second, "ok", "done")]
    assert scripted.stderr == ""  # no progress in JSON mode


def test_checkpoints_list_shows_run_ids_as_long_as_runs_list(backend: Backend) -> None:
    """`checkpoints list` showed 32 characters of a run id where `runs list` shows 12."""
    import uuid

    from executus_core.cli.helpers import RUN_ID_LENGTH

    run_id = uuid.uuid4().hex  # the core's run ids

    async def seed() -> None:
        store = backend.store(worker_id="ids-worker", lease_seconds=600)
        checkpointer = await store.for_run(make_info(run_id=run_id), Agent(name="ids", model="scripted:none"))
        state = CheckpointState(run_id=run_id, iteration=1, offset=0, messages=[Message.user("hi")] * 2)
        await checkpointer.save(state)
        await store.aclose()

    asyncio.run(seed())
    human = executus("checkpoints", "list", "--all", *cli_settings(backend))
    assert human.exit_code == 0, human.output
    assert run_id[:RUN_ID_LENGTH] in human.stdout and run_id not in human.stdout
