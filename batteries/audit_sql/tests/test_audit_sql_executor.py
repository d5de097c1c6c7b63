"""End to end: `Executor()` loads audit_sql through its entry point, and every run lands in SQL.

Each run also goes to the core's `MemoryAudit`, the reference: what SQL holds must equal what the
reference recorded, event for event.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from audit_sql_helpers import (
    Backend,
    arithmetic_agent,
    assert_same_trail,
    calls,
    other_plugins,
    recorded,
    sql_audit,
    wait_for,
)
from executus_audit_sql import SqlAudit

from executus_core import Agent, Executor, ModelResponse, RunStatus, tool
from executus_core.errors import ConfigError, PluginError
from executus_core.testing import MemoryAudit, MemoryCheckpointStore, ScriptedModel


async def test_installed_it_records_to_sqlite_in_the_data_dir_with_no_settings(tmp_path: Path) -> None:
    reference = MemoryAudit()
    async with Executor(plugins=[reference], disable=other_plugins()) as executor:
        audit = sql_audit(executor)
        result = await executor.run(arithmetic_agent(), "add things", caller_id="alice")
    assert result.status is RunStatus.OK and result.warnings == []
    assert (tmp_path / "data" / "audit.db").is_file()
    assert audit.describe_database().endswith(str(tmp_path / "data" / "audit.db"))

    reader = SqlAudit(data_dir=tmp_path / "data")
    try:
        got = await recorded(reader, result.run_id)
        assert_same_trail(got, reference.run(result.run_id))
        assert got.steps == [1, 2, 3]
        assert [c[:2] for c in got.tool_calls] == [("c1", "add"), ("c2", "explode"), ("c3", "add")]
        record = await reader.get_run(result.run_id)
        assert record is not None
        assert (record.caller_id, record.name, record.attempts, record.shown_status) == (
            "alice",
            "arithmetic",
            1,
            "ok",
        )
        assert record.output == "1+2=3 and 3+4=7"
    finally:
        await reader.aclose()


async def test_a_run_and_its_trail_match_the_reference(backend: Backend) -> None:
    reference = MemoryAudit()
    settings = {"audit_sql": backend.settings()}
    async with Executor(plugins=[reference], settings=settings, disable=other_plugins()) as executor:
        audit = sql_audit(executor)
        caller = f"bob-{uuid.uuid4().hex[:8]}"
        result = await executor.run(
            arithmetic_agent(), "add things", caller_id=caller, channel_id="chan-1", inputs={"topic": "sums"}
        )
        assert result.status is RunStatus.OK and result.warnings == []
        got = await recorded(audit, result.run_id)
        assert_same_trail(got, reference.run(result.run_id))
        trail = await audit.trail(result.run_id)
        assert [e.seq for e in trail] == list(range(1, len(trail) + 1))
        tool_rows = [e for e in trail if e.kind == "tool"]
        assert tool_rows[1].text is not None and "on purpose" in tool_rows[1].text
        assert tool_rows[0].data == {"arguments": {"a": 1, "b": 2}}
        step = next(e for e in trail if e.kind == "step")
        assert step.data["tool_calls"][1] == {
            "id": "c2",
            "name": "explode",
            "arguments": {"reason": "on purpose"},
        }
        record = await audit.get_run(result.run_id)
        assert record is not None and record.info.inputs == {"topic": "sums"}
        assert (record.channel_id, record.steps, record.tool_calls) == ("chan-1", 3, 3)
        listed = await audit.list_runs(caller_id=caller)
        assert [r.run_id for r in listed] == [result.run_id]


async def test_many_runs_at_once_each_keep_their_own_trail(backend: Backend) -> None:
    reference = MemoryAudit()
    settings = {"audit_sql": backend.settings(batch_size=20, flush_interval=0.01)}
    prefix = uuid.uuid4().hex[:8]  # the PostgreSQL schema is shared by the session's tests
    async with Executor(plugins=[reference], settings=settings, disable=other_plugins()) as executor:
        audit = sql_audit(executor)
        results = await asyncio.gather(
            *(executor.run(arithmetic_agent(), f"run {i}", caller_id=f"{prefix}-{i % 3}") for i in range(20))
        )
        assert all(r.status is RunStatus.OK and not r.warnings for r in results)
        for result in results:
            assert_same_trail(await recorded(audit, result.run_id), reference.run(result.run_id))
        assert len(await audit.list_runs(caller_id=f"{prefix}-0", limit=100)) == 7


async def test_a_run_resumed_by_recover_continues_its_trail(backend: Backend) -> None:
    store = MemoryCheckpointStore()
    started: list[int] = []

    @tool
    async def slow(x: int) -> str:
        """Hangs the first time, so the host can shut down mid-tool."""
        started.append(x)
        if len(started) == 1:
            await asyncio.Event().wait()
        return f"done {x}"

    model = ScriptedModel([calls(("s1", "slow", {"x": 7})), ModelResponse(text="finished")], per_run=True)
    agent = Agent(name="resumable", model=model, tools=[slow])
    settings = {"audit_sql": backend.settings()}

    first = Executor(plugins=[store], settings=settings, disable=other_plugins())
    task = asyncio.create_task(first.run(agent, "go", caller_id="carol"))
    await wait_for(lambda: started, what="the tool starting")
    await first.shutdown()
    interrupted = await task
    assert interrupted.status is RunStatus.INTERRUPTED and interrupted.warnings == []

    async with Executor(plugins=[store], settings=settings, disable=other_plugins()) as second:
        audit = sql_audit(second)
        [resumed] = await second.recover(agents={agent.id: agent})
        assert (resumed.run_id, resumed.status, resumed.output) == (
            interrupted.run_id,
            RunStatus.OK,
            "finished",
        )
        assert resumed.warnings == []
        record = await audit.get_run(resumed.run_id)
        assert record is not None
        assert (record.attempts, record.shown_status, record.steps, record.tool_calls) == (2, "ok", 2, 1)
        trail = await audit.trail(resumed.run_id)
        seqs = [e.seq for e in trail]
        # the trail goes on after the first attempt (a replayed row the trail had leaves a gap)
        assert seqs == sorted(set(seqs)) and seqs[0] == 1
        steps = [(e.iteration, (e.data or {}).get("replayed", False)) for e in trail if e.kind == "step"]
        assert steps == [(1, False), (2, False)], "step 1, saved and written, is not written again"
        starts = [e.data for e in trail if e.kind == "event" and e.name == "run.start"]
        assert [s["resumed"] for s in starts] == [False, True]
        ends = [e.data["status"] for e in trail if e.kind == "event" and e.name == "run.end"]
        assert ends == ["interrupted", "ok"]
        assert [(e.call_id, e.text) for e in trail if e.kind == "tool"] == [("s1", "done 7")]


async def test_without_auto_upgrade_a_missing_schema_is_a_clear_warning_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    settings = {"audit_sql": {"url": f"sqlite:///{tmp_path / 'fresh.db'}", "auto_upgrade": False}}
    async with Executor(settings=settings, disable=other_plugins()) as executor:
        result = await executor.run(arithmetic_agent(), "add", caller_id="dave")
    assert result.status is RunStatus.OK
    [warning] = result.warnings
    assert "audit 'audit_sql': close raised AuditWriteError" in warning
    assert "has no audit tables" in warning and "executus db upgrade" in warning
    spilled = list((tmp_path / "data" / "audit_sql-unwritten").glob("*.jsonl"))
    assert len(spilled) == 1 and str(spilled[0]) in warning

    audit = SqlAudit(url=f"sqlite:///{tmp_path / 'fresh.db'}", data_dir=tmp_path / "data")  # upgrades
    try:
        await audit.import_spill(spilled[0])
        record = await audit.get_run(result.run_id)
        assert record is not None and record.shown_status == "ok" and record.steps == 3
        assert not spilled[0].exists()
    finally:
        await audit.aclose()


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"url": "mysql://db/app"}, "driver 'mysql' is not supported"),
        ({"url": "sqlite://"}, "in-memory SQLite"),
        ({"url": "sqlite:///a.db", "db_schema": "s"}, "schemas are a PostgreSQL setting"),
        ({"db_schema": "x; drop table"}, "plain identifier"),
        ({"batch_size": 0}, "batch_size"),
        ({"urls": "sqlite:///a.db"}, "unknown setting [tool.executus.audit_sql] urls"),
    ],
)
def test_bad_settings_stop_the_executor_with_the_key_named(table: dict[str, object], needle: str) -> None:
    with pytest.raises((ConfigError, PluginError)) as info:
        Executor(settings={"audit_sql": table}, disable=other_plugins())
    assert needle in str(info.value)
    assert "audit_sql" in str(info.value)


def test_disabled_it_records_nothing(tmp_path: Path) -> None:
    executor = Executor(disable=[*other_plugins(), "audit_sql"])
    assert executor.ports.audits == []
    executor.close()
