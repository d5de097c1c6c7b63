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
    assert "✓ checkpoint_sql:" in first.stdout and "upgraded from no tables to 0004" in first.stdout
    again = executus("db", "upgrade", "checkpoint_sql", "--json", *cli_settings(backend))
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)["upgraded"]["checkpoint_sql"]
    assert report["ok"] is True and "already at 0004" in report["message"]
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


ROOT = Path(__file__).resolve().parents[3]


async def _interrupted_cli_run(backend: Backend) -> str:
    """A run of examples/assistant.toml as `executus run ... --model scripted:...` starts it, left
    interrupted after its prompt was saved (its worker shut down)."""
    from executus_core.cli import load_agent

    model = f"scripted:{ROOT / 'examples' / 'assistant.replay.json'}"
    agent = load_agent(str(ROOT / "examples" / "assistant.toml")).model_copy(update={"model": model})
    store = backend.store(worker_id="cli-run")
    info = make_info(caller_id="cli", subject_id=agent.id, name=agent.name)
    checkpointer = await store.for_run(info, agent)
    prompt = [Message.system(agent.instructions or ""), Message.user("10 km in miles, and at 6 min/mile?")]
    await checkpointer.save(CheckpointState(run_id=info.run_id, iteration=0, offset=0, messages=prompt))
    await store.aclose()  # what the CLI's shutdown does: the run is released for any worker
    return info.run_id


def test_recover_resumes_a_cli_run_with_no_flags_on_the_model_it_used(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found case 8: a TOML agent's run needed --agent (its tools are not registered by name) and lost
    the model given with --model; the checkpoint now says where the agent came from."""
    run_id = asyncio.run(_interrupted_cli_run(backend))
    monkeypatch.chdir(ROOT.parent)  # anywhere: the saved source is an absolute path
    recovered = executus("recover", "--json", *cli_settings(backend))
    assert recovered.exit_code == 0, recovered.output
    (result,) = json.loads(recovered.stdout)["results"]
    assert (result["run_id"], result["status"]) == (run_id, "ok"), result["error"]
    # the scripted model given with --model answered (the agent file's "default" tier has no key here)
    assert result["output"].startswith("10 km is about 6.21 miles")
    assert [m["name"] for m in result["messages"] if m["role"] == "tool"] == [
        "convert_units",
        "calculate",
        "run_status",
    ]


async def _held_and_waiting(backend: Backend) -> tuple[str, str, str]:
    agent = Agent(name="explained", model="scripted:none")
    busy = backend.store(worker_id="busy", lease_seconds=600, heartbeat_seconds=0)
    held = make_info(0, caller_id="explain")
    await (await busy.for_run(held, agent)).save(
        CheckpointState(run_id=held.run_id, iteration=0, offset=0, messages=[Message.user("hi")])
    )
    await abandon(busy)  # still held: its lease runs for another ten minutes
    origin = backend.store(worker_id="origin")
    waiting = make_info(1, caller_id="explain")
    await (await origin.for_run(waiting, agent)).save(
        CheckpointState(run_id=waiting.run_id, iteration=0, offset=0, messages=[Message.user("hi")])
    )
    await origin.aclose()
    resumer = backend.store(worker_id="resumer", resume_backoff_seconds=600)
    (item,) = [i for i in await resumer.interrupted() if i.info.run_id == waiting.run_id]
    checkpointer = await resumer.for_run(item.info, agent)
    await checkpointer.release("agent 'explained' names unknown tool 'calculate'")
    await resumer.aclose()
    return held.run_id, waiting.run_id, busy.owner


def test_recover_with_nothing_to_do_says_which_runs_are_held_and_which_wait(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found case 8: right after a kill `executus recover` said only "no interrupted runs" while the
    lease was still alive; now it says who holds the run and when the lease lapses."""
    held, waiting, owner = asyncio.run(_held_and_waiting(backend))
    monkeypatch.setenv("COLUMNS", "200")
    result = executus("recover", *cli_settings(backend))
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "no interrupted runs: nothing to recover" in said
    assert f"{held[:8]} is held by {owner}" in said and "its lease lapses in" in said
    assert f"{waiting[:8]} waits after 1 failed resume" in said and "unknown tool 'calculate'" in said
    assert "--agent" in said

    listed = " ".join(executus("checkpoints", "list", *cli_settings(backend)).stdout.split())
    assert "backoff" in listed and "retried in" in listed and "1 failed resume" in listed
    assert owner in listed and "held" in listed
