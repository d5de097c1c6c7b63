"""The commands: ``executus runs list / show / prune / import`` and ``executus db upgrade``, for people and
with ``--json``, on both backends; the shared ``db`` group; and the real console script end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import executus_audit_sql.plugin
import pytest
import typer
from audit_sql_helpers import Backend, arithmetic_agent, other_plugins
from executus_audit_sql.cli import _short_id
from executus_audit_sql.migrate import head_revision
from executus_audit_sql.writes import RunState
from typer.testing import CliRunner

from executus_core import Agent, Executor, ModelResponse, RunStatus, hookimpl
from executus_core.cli import create_app, db_upgraders
from executus_core.config import Settings
from executus_core.testing import ScriptedModel
from executus_core.testing.conformance import make_info
from executus_core.types import RunStats, utcnow

ROOT = Path(__file__).resolve().parents[3]


def invoke(*args: str, plugins: list[object] | None = None) -> Any:
    app = create_app(entry_points=False, plugins=plugins or [executus_audit_sql.plugin])
    # A wide terminal: the checks look for whole words in the tables.
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def where(backend: Backend) -> list[str]:
    """The ``-s`` settings that point the commands at the backend."""
    args = ["-s", f"audit_sql.url={backend.url}"]
    if backend.db_schema:
        args += ["-s", f"audit_sql.db_schema={backend.db_schema}"]
    return args


def record_runs(backend: Backend, caller: str) -> dict[str, str]:
    """One ok run, one that ends in error (step limit), one still running; returns status -> run id."""

    async def main() -> dict[str, str]:
        settings = {"audit_sql": backend.settings(), "max_steps": 1}
        ids: dict[str, str] = {}
        async with Executor(settings=settings, disable=other_plugins()) as executor:
            ok = await executor.run(
                Agent(name="answer", model=ScriptedModel([ModelResponse(text="42")])), "q", caller_id=caller
            )
            ids["ok"] = ok.run_id
            looping = await executor.run(arithmetic_agent(), "add", caller_id=caller, inputs={"n": 1})
            assert looping.status is RunStatus.ERROR
            ids["error"] = looping.run_id
        audit = backend.audit()
        try:
            recorder = await audit.start_run(make_info(caller_id=caller, name="still going"))
            recorder.log_event("run.start", {"agent": "still going"})
            await audit.flush()
            ids["running"] = recorder.run_id
        finally:
            await audit.aclose()
        return ids

    return asyncio.run(main())


def test_runs_list_for_people_and_for_scripts(backend: Backend) -> None:
    caller = f"lister-{uuid.uuid4().hex[:8]}"
    ids = record_runs(backend, caller)

    shown = invoke("runs", "list", "--caller", caller, *where(backend))
    assert shown.exit_code == 0, shown.output
    for run_id in ids.values():
        assert _short_id(run_id) in shown.stdout
    for text in ("run id", "agent", "caller", "status", "steps", "tools", "tokens", "started", "duration"):
        assert text in shown.stdout
    for status in ("ok", "error", "running"):
        assert status in shown.stdout

    data = json.loads(invoke("runs", "list", "--caller", caller, "--json", *where(backend)).stdout)
    by_id = {row["run_id"]: row for row in data["runs"]}
    assert set(by_id) == set(ids.values())
    assert by_id[ids["ok"]]["status"] == "ok" and by_id[ids["ok"]]["output"] == "42"
    assert by_id[ids["error"]]["status"] == "error" and "step limit" in by_id[ids["error"]]["error"]
    assert by_id[ids["running"]]["status"] == "running" and by_id[ids["running"]]["ended_at"] is None
    assert by_id[ids["error"]]["inputs"] == {"n": 1} and by_id[ids["error"]]["tool_calls"] == 2

    for status, run_id in ids.items():
        filtered = json.loads(
            invoke("runs", "list", "--caller", caller, "--status", status, "--json", *where(backend)).stdout
        )
        assert [row["run_id"] for row in filtered["runs"]] == [run_id]
    limited = json.loads(
        invoke("runs", "list", "--caller", caller, "-n", "1", "--json", *where(backend)).stdout
    )
    assert len(limited["runs"]) == 1

    bad = invoke("runs", "list", "--status", "great", *where(backend))
    assert bad.exit_code == 2 and "is not a status" in bad.stderr
    nobody = invoke("runs", "list", "--caller", "nobody-" + caller, *where(backend))
    assert nobody.exit_code == 0 and "no runs recorded" in nobody.stderr


def test_runs_show_draws_the_trail_and_dumps_it(backend: Backend) -> None:
    caller = f"shower-{uuid.uuid4().hex[:8]}"
    ids = record_runs(backend, caller)
    run_id = ids["error"]

    shown = invoke("runs", "show", run_id, *where(backend))
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    for text in (
        "arithmetic",
        caller,
        "step limit reached",
        "step 1",
        "tool add",
        "tool explode",
        "on purpose",
        "run.start",
        "run.end",
    ):
        assert text in out, f"{text!r} missing from:\n{out}"
    assert "tool.end" not in out, "events that repeat a tool row are hidden without --all"
    assert "tool.end" in invoke("runs", "show", run_id, "--all", *where(backend)).stdout

    data = json.loads(invoke("runs", "show", run_id, "--json", *where(backend)).stdout)
    assert data["run"]["run_id"] == run_id and data["run"]["status"] == "error"
    kinds = [row["kind"] for row in data["trail"]]
    assert kinds.count("step") == 1 and kinds.count("tool") == 2 and "error" in kinds
    assert [row["seq"] for row in data["trail"]] == list(range(1, len(kinds) + 1))

    by_prefix = invoke("runs", "show", run_id[:10], "--json", *where(backend))
    assert json.loads(by_prefix.stdout)["run"]["run_id"] == run_id

    missing = invoke("runs", "show", "no-such-run", *where(backend))
    assert missing.exit_code == 1 and "no run 'no-such-run'" in missing.stderr


def test_runs_prune_deletes_old_finished_runs_only(backend: Backend) -> None:
    caller = f"pruner-{uuid.uuid4().hex[:8]}"

    async def seed() -> dict[str, str]:
        audit = backend.audit()
        ids = {}
        try:
            for label, days_ago, closed in (("old", 40, True), ("new", 1, True), ("old-running", 40, False)):
                info = make_info(caller_id=caller, started_at=utcnow() - timedelta(days=days_ago))
                recorder = await audit.start_run(info)
                recorder.log_event("run.start", {"label": label})
                if closed:
                    await recorder.close(RunStats(status=RunStatus.OK))
                ids[label] = info.run_id
            await audit.flush()
        finally:
            await audit.aclose()
        return ids

    ids = asyncio.run(seed())
    needs_age = invoke("runs", "prune", *where(backend))
    assert needs_age.exit_code == 2 and "--older-than" in needs_age.stderr
    dry = invoke("runs", "prune", "--older-than", "30", "--dry-run", *where(backend))
    assert dry.exit_code == 0 and "would delete" in dry.stdout
    unconfirmed = invoke("runs", "prune", "--older-than", "30", "--json", *where(backend))
    assert unconfirmed.exit_code == 2 and "pass --yes" in unconfirmed.stderr  # no terminal to ask on
    assert ids["old"] in {
        r["run_id"]
        for r in json.loads(invoke("runs", "list", "--caller", caller, "--json", *where(backend)).stdout)[
            "runs"
        ]
    }
    pruned = invoke("runs", "prune", "--older-than", "30", "--json", "--yes", *where(backend))
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.stdout)["deleted"] >= 1
    left = {
        r["run_id"]
        for r in json.loads(invoke("runs", "list", "--caller", caller, "--json", *where(backend)).stdout)[
            "runs"
        ]
    }
    assert left == {ids["new"], ids["old-running"]}
    gone = json.loads(invoke("runs", "show", ids["new"], "--json", *where(backend)).stdout)
    assert [row["data"] for row in gone["trail"]] == [{"label": "new"}]
    assert (
        "deleted 0 runs older than 30 days"
        in invoke("runs", "prune", "--older-than", "30", *where(backend)).stdout
    )


def test_runs_import_loads_spill_files(backend: Backend, tmp_path: Path) -> None:
    info = make_info(caller_id=f"importer-{uuid.uuid4().hex[:8]}")
    audit = backend.audit()
    rows = [(k + 1, "event", "tick", None, None, None, {"k": k}, utcnow()) for k in range(3)]
    path = audit.spill(RunState(info, steps=2), rows, RunStats(status=RunStatus.OK, steps=2), utcnow())
    (audit.spill_dir / "junk.jsonl").write_text("not json\n")

    imported = invoke("runs", "import", "--json", *where(backend))
    assert imported.exit_code == 1
    assert json.loads(imported.stdout)["database"] == audit.describe_database()
    outcomes = {Path(o["file"]).name: o for o in json.loads(imported.stdout)["imported"]}
    assert outcomes[path.name]["ok"] and outcomes[path.name]["rows"] == 3
    assert (
        not outcomes["junk.jsonl"]["ok"]
        and "not an executus-audit-sql spill file" in outcomes["junk.jsonl"]["error"]
        and outcomes["junk.jsonl"]["kept"]
    )
    assert not path.exists() and (audit.spill_dir / "junk.jsonl").exists()

    shown = json.loads(invoke("runs", "show", info.run_id, "--json", *where(backend)).stdout)
    assert [row["data"] for row in shown["trail"]] == [{"k": 0}, {"k": 1}, {"k": 2}]
    assert shown["run"]["status"] == "ok" and shown["run"]["steps"] == 2

    (audit.spill_dir / "junk.jsonl").unlink()
    nothing = invoke("runs", "import", *where(backend))
    assert nothing.exit_code == 0 and "nothing to import" in nothing.stdout


def test_db_upgrade_creates_and_then_keeps_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = invoke("db", "upgrade", "-s", f"audit_sql.url={url}")
    assert first.exit_code == 0, first.output
    assert (
        f"audit_sql: sqlite+aiosqlite:///{tmp_path / 'fresh.db'}: upgraded from revision (none) to {head_revision()}"
        in first.stdout
    )
    again = json.loads(invoke("db", "upgrade", "--json", "-s", f"audit_sql.url={url}").stdout)
    assert again["upgraded"]["audit_sql"] == {
        "ok": True,
        "message": f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}: already at revision {head_revision()}",
    }


def test_db_upgrade_on_postgres_makes_the_schema(pg_schema: tuple[str, str]) -> None:
    url, _ = pg_schema
    schema = f"audit_sql_upgrade_{uuid.uuid4().hex[:8]}"
    try:
        done = invoke(
            "db", "upgrade", "--json", "-s", f"audit_sql.url={url}", "-s", f"audit_sql.db_schema={schema}"
        )
        assert done.exit_code == 0, done.output
        message = json.loads(done.stdout)["upgraded"]["audit_sql"]["message"]
        assert f"upgraded from revision (none) to {head_revision()} (schema {schema})" in message
    finally:
        import psycopg

        with psycopg.connect("postgresql://" + url.split("://", 1)[1], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_db_upgrade_that_cannot_reach_the_database_exits_1_with_the_reason(unused_tcp_port: int) -> None:
    failed = invoke(
        "db", "upgrade", "-s", f"audit_sql.url=postgresql+psycopg://127.0.0.1:{unused_tcp_port}/x"
    )
    assert failed.exit_code == 1
    assert "✗ audit_sql: OperationalError" in failed.stdout and str(unused_tcp_port) in failed.stdout


class OtherSqlBattery:
    """Another SQL battery following the shared ``db`` convention (as executus-checkpoint-sql does)."""

    executus_name = "other_sql"

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl
    def executus_register_commands(self, cli: typer.Typer) -> None:
        def step(settings: Settings) -> str:
            self.log.append(str(settings.core.data_dir))
            return "other tables at head"

        db_upgraders(cli)["other_sql"] = step


@pytest.mark.parametrize("ours_first", [True, False])
def test_db_upgrade_runs_every_sql_batterys_step_whoever_registers_first(
    tmp_path: Path, ours_first: bool
) -> None:
    log: list[str] = []
    other = OtherSqlBattery(log)
    # pluggy calls the last registered plugin first: the order decides who makes the `db` group
    plugins: list[object] = (
        [other, executus_audit_sql.plugin] if ours_first else [executus_audit_sql.plugin, other]
    )
    both = json.loads(invoke("db", "upgrade", "--json", plugins=plugins).stdout)["upgraded"]
    assert set(both) == {"audit_sql", "other_sql"} and all(o["ok"] for o in both.values())
    assert log == [str(tmp_path / "data")]
    only = json.loads(invoke("db", "upgrade", "other_sql", "--json", plugins=plugins).stdout)["upgraded"]
    assert set(only) == {"other_sql"}
    unknown = invoke("db", "upgrade", "nope", plugins=plugins)
    assert unknown.exit_code == 2 and "no SQL battery named nope" in unknown.stderr


def test_db_upgrade_runs_checkpoint_sql_too_when_it_is_installed() -> None:
    checkpoint = pytest.importorskip("executus_checkpoint_sql.plugin")
    result = invoke("db", "upgrade", "--json", plugins=[executus_audit_sql.plugin, checkpoint])
    assert set(json.loads(result.stdout)["upgraded"]) >= {"audit_sql", "checkpoint_sql"}


def test_the_installed_console_script_records_and_lists_a_run(tmp_path: Path) -> None:
    executus = Path(sys.executable).with_name("executus")
    if not executus.exists():
        pytest.skip(f"no executus script beside {sys.executable}: install the project (scripts/bootstrap)")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(EXECUTUS_DATA_DIR=str(tmp_path / "data"), EXECUTUS_DISABLE=",".join(other_plugins()))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(executus), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    done = run(
        "run",
        "examples/assistant.toml",
        "10 km in miles?",
        "-m",
        "scripted:examples/assistant.replay.json",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["warnings"] == []
    listed = json.loads(run("runs", "list", "--json").stdout)["runs"]
    assert [(r["run_id"], r["status"], r["tool_calls"]) for r in listed] == [(result["run_id"], "ok", 3)]
    shown = run("runs", "show", result["run_id"][:8])
    assert shown.returncode == 0 and "tool convert_units" in shown.stdout


def test_runs_prune_asks_first_and_can_only_count(backend: Backend) -> None:
    """`runs prune --older-than 0` used to delete every finished run at once, without a word."""
    caller = f"asker-{uuid.uuid4().hex[:8]}"
    ids = record_runs(backend, caller)

    def mine() -> set[str]:
        listed = invoke("runs", "list", "--caller", caller, "--json", *where(backend)).stdout
        return {r["run_id"] for r in json.loads(listed)["runs"]}

    dry = invoke("runs", "prune", "--older-than", "0", "--dry-run", "--json", *where(backend))
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["would_delete"] >= 2 and mine() == set(ids.values())

    refused = invoke("runs", "prune", "--older-than", "0", *where(backend))
    assert refused.exit_code == 2 and "Not asking without a terminal: pass --yes" in " ".join(
        refused.stderr.split()
    )
    assert mine() == set(ids.values())

    done = invoke("runs", "prune", "--older-than", "0", "--yes", *where(backend))
    assert done.exit_code == 0 and "deleted" in done.stdout
    assert mine() == {ids["running"]}  # a run still going is never pruned


def test_runs_import_says_where_it_writes_and_keeps_what_it_could_not(
    backend: Backend, tmp_path: Path
) -> None:
    info = make_info(caller_id=f"importer-{uuid.uuid4().hex[:8]}")
    audit = backend.audit()
    rows = [(1, "event", "tick", None, None, None, {"k": 0}, utcnow())]
    path = audit.spill(RunState(info, steps=1), rows, RunStats(status=RunStatus.OK, steps=1), utcnow())
    dry = invoke("runs", "import", "--dry-run", *where(backend))
    assert dry.exit_code == 0 and f"into {audit.describe_database()}" in " ".join(dry.stdout.split())
    assert path.exists()
    # a database that cannot be written: the file stays for the next try
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = f"postgresql+psycopg://127.0.0.1:{closed}/test"
    broken = invoke(
        "runs", "import", str(path), "-s", f"audit_sql.url={down}", "-s", "audit_sql.connect_timeout=2"
    )
    assert broken.exit_code == 1 and "(file kept)" in broken.stdout and path.exists()
    assert f"importing 1 spill file into postgresql+psycopg://127.0.0.1:{closed}/test" in " ".join(
        broken.stderr.split()
    )
    done = invoke("runs", "import", *where(backend))
    assert done.exit_code == 0, done.output
    assert "(file deleted)" in done.stdout and not path.exists()


def test_runs_show_has_the_prompt_and_the_model_that_answered(backend: Backend) -> None:
    """The audit used to keep neither the prompt nor the model: only the tier name ("default")."""
    from executus_core import ModelResponse, Usage

    info = make_info(caller_id=f"prompt-{uuid.uuid4().hex[:8]}")

    async def record() -> None:
        audit = backend.audit()
        try:
            recorder = await audit.start_run(info)
            recorder.log_event(
                "run.start",
                {"agent": "a", "model": "openai:gpt-4o-mini", "tier": "default", "prompt": "What is 2 + 40?"},
            )
            recorder.on_step(1, ModelResponse(text="42", usage=Usage(), model="gpt-4o-mini-2024-07-18"))
            await recorder.close(RunStats(status=RunStatus.OK, steps=1, output="42"))
            await audit.flush()
        finally:
            await audit.aclose()

    asyncio.run(record())
    shown = invoke("runs", "show", info.run_id, *where(backend))
    assert shown.exit_code == 0, shown.output
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    assert "prompt What is 2 + 40?" in lines
    assert "model openai:gpt-4o-mini (tier default) · answered by gpt-4o-mini-2024-07-18" in lines
    data = json.loads(invoke("runs", "show", info.run_id, "--json", *where(backend)).stdout)["run"]
    assert data["prompt"] == "What is 2 + 40?" and data["model"] == "openai:gpt-4o-mini"
    assert data["answered_by"] == ["gpt-4o-mini-2024-07-18"]


def test_run_ids_are_shown_as_long_as_everywhere(backend: Backend) -> None:
    from executus_core.cli.helpers import RUN_ID_LENGTH

    caller = f"ids-{uuid.uuid4().hex[:8]}"
    ids = record_runs(backend, caller)
    shown = invoke("runs", "list", "--caller", caller, *where(backend)).stdout
    assert ids["ok"][:RUN_ID_LENGTH] in shown and ids["ok"][: RUN_ID_LENGTH + 1] not in shown
