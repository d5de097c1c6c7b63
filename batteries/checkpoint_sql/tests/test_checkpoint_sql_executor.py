"""End to end: an `Executor` with this battery loaded through its entry point, as a host has it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from checkpoint_sql_agents import crash_agent, lines
from checkpoint_sql_helpers import Backend, eventually, other_plugins
from executus_checkpoint_sql import SqlCheckpointStore, upgrade_url

from executus_core import (
    Agent,
    Executor,
    Message,
    ModelResponse,
    PluginError,
    ProviderStatusError,
    RunStatus,
    ToolCall,
    ToolContext,
    tool,
)
from executus_core.testing import ScriptedModel


def _store_of(executor: Executor) -> SqlCheckpointStore:
    assert executor.ports.checkpoints is not None
    name, store = executor.ports.checkpoints
    assert name == "checkpoint_sql" and isinstance(store, SqlCheckpointStore)
    return store


async def test_installed_it_checkpoints_every_run_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    seen: list[list[Message]] = []

    @tool
    async def peek(ctx: ToolContext) -> str:
        """Read the run's own checkpoint while the run goes on."""
        reader = SqlCheckpointStore(worker_id="reader")  # the default database, as the executor's
        try:
            seen.append(await reader.transcript(ctx.info.run_id))
        finally:
            await reader.aclose()
        return "peeked"

    model = ScriptedModel(
        [ModelResponse(tool_calls=[ToolCall(id="p1", name="peek", arguments={})]), ModelResponse(text="done")]
    )
    agent = Agent(name="peeker", instructions="Look.", model=model, tools=[peek])
    async with Executor(disable=other_plugins()) as executor:  # no settings at all
        store = _store_of(executor)
        assert store.url.database == str(tmp_path / "data" / "checkpoints.db")
        result = await executor.run(agent, "look at yourself", caller_id="host")

    assert result.status is RunStatus.OK and result.output == "done" and not result.warnings
    assert (tmp_path / "data" / "checkpoints.db").is_file()
    # While the tool ran, the checkpoint held everything up to the call that started it.
    assert seen == [result.messages[:3]]
    reader = SqlCheckpointStore(worker_id="reader")
    try:
        row = await reader.run_row(result.run_id)
        assert row is not None and row["status"] == "completed" and row["message_count"] == 0
        # as of the last save: the answer's, before the run completed (a crash then ends the run with it)
        assert row["iteration"] == 2 and row["tool_calls"] == 1
        assert await reader.transcript(result.run_id) == []
    finally:
        await reader.aclose()


async def test_a_failed_run_is_marked_failed_with_its_error(backend: Backend) -> None:
    model = ScriptedModel([ProviderStatusError("the server said 500", provider="test", status_code=500)])
    async with Executor(settings=backend.executor_settings(), disable=other_plugins()) as executor:
        result = await executor.run(Agent(name="doomed", model=model), "try", caller_id="host")
        store = _store_of(executor)
        row = await store.run_row(result.run_id)
    assert result.status is RunStatus.ERROR
    assert row is not None and row["status"] == "failed" and "500" in (row["error"] or "")
    assert row["message_count"] == 0


async def test_shutdown_interrupts_a_run_and_another_worker_resumes_it_at_once(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECP_WORKDIR", str(tmp_path))
    monkeypatch.setenv("ECP_BLOCK", "1")
    # A long lease: only the release at shutdown lets the second worker in this soon.
    settings = backend.executor_settings(worker_id="first", lease_seconds=600)
    async with Executor(settings=settings, disable=other_plugins()) as first:
        running = asyncio.ensure_future(first.run(crash_agent, "note it, then wait", caller_id="host"))

        async def waiting() -> bool:
            return bool(lines("wait.log"))

        await eventually(waiting)
        await first.shutdown()
        interrupted = await running
    assert interrupted.status is RunStatus.INTERRUPTED

    monkeypatch.delenv("ECP_BLOCK")
    settings = backend.executor_settings(worker_id="second", lease_seconds=600)
    async with Executor(settings=settings, disable=other_plugins()) as second:
        second.register_agent(crash_agent)
        results = await second.recover()
    assert [(r.run_id, r.status, r.output) for r in results] == [(interrupted.run_id, RunStatus.OK, "done")]
    assert lines("record.log") == ["one"]  # saved before the shutdown: not run again
    assert lines("wait.log") == [str(os.getpid())] * 2  # cut off by the shutdown: run again


def test_a_synchronous_host_gets_checkpoints_too(backend: Backend) -> None:
    model = ScriptedModel([ModelResponse(text="hi")], per_run=True)
    with Executor(settings=backend.executor_settings(), disable=other_plugins()) as executor:
        results = [
            executor.run_sync(Agent(name="sync", model=model), "hi", caller_id="host") for _ in range(2)
        ]
        store = _store_of(executor)
    assert [r.status for r in results] == [RunStatus.OK, RunStatus.OK]

    async def statuses() -> list[str]:
        reader = SqlCheckpointStore(**backend.settings, worker_id="reader")
        try:
            return [(await reader.run_row(r.run_id) or {}).get("status", "missing") for r in results]
        finally:
            await reader.aclose()

    assert asyncio.run(statuses()) == ["completed", "completed"]
    assert store._closed


async def test_with_auto_upgrade_off_an_old_schema_is_a_warning_and_runs_still_work(backend: Backend) -> None:
    settings = backend.executor_settings(auto_upgrade=False)
    agent = Agent(name="strict", model=ScriptedModel([ModelResponse(text="ok")], per_run=True))
    async with Executor(settings=settings, disable=other_plugins()) as executor:
        before = await executor.run(agent, "hi", caller_id="host")
    assert before.status is RunStatus.OK
    assert any("SchemaOutOfDate" in w and "executus db upgrade" in w for w in before.warnings), (
        before.warnings
    )

    await upgrade_url(backend.settings["url"], db_schema=backend.settings.get("db_schema"))
    async with Executor(settings=settings, disable=other_plugins()) as executor:
        after = await executor.run(agent, "hi", caller_id="host")
    assert after.status is RunStatus.OK and not after.warnings


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"url": "postgresql+psycopg2://127.0.0.1/app"}, "not an async driver"),
        ({"url": "sqlite+pysqlite:///x.db"}, "not an async driver"),
        ({"url": "mysql+aiomysql://127.0.0.1/app"}, "works with SQLite and PostgreSQL"),
        ({"url": "sqlite+aiosqlite:///:memory:"}, "in-memory SQLite"),
        ({"url": "sqlite:///x.db", "db_schema": "app"}, "db_schema is for PostgreSQL"),
        ({"db_schema": "no spaces"}, "db_schema"),
        ({"lease_seconds": 10, "heartbeat_seconds": 20}, "must be shorter than lease_seconds"),
        ({"lease": 10}, "unknown setting [tool.executus.checkpoint_sql] lease"),
    ],
)
def test_bad_settings_stop_the_executor_with_a_clear_error(section: dict[str, object], message: str) -> None:
    with pytest.raises(PluginError) as refused:
        Executor(settings={"checkpoint_sql": section}, disable=other_plugins())
    assert message in str(refused.value)
    assert "checkpoint_sql" in str(refused.value)


def test_disabled_in_its_settings_it_fills_no_port() -> None:
    executor = Executor(settings={"checkpoint_sql": {"enabled": False}}, disable=other_plugins())
    assert executor.ports.checkpoints is None


async def test_two_executors_in_one_process_never_resume_each_others_live_runs(backend: Backend) -> None:
    """Found case 2: two executors in one process shared the default worker id and the module's boot
    id, so one's recover() handed it the other's live run and charge_card ran twice for one call."""
    charges: list[str] = []
    gate = asyncio.Event()

    @tool
    async def charge_card(order: str) -> str:
        """Charge the card for an order (once!)."""
        charges.append(order)
        await gate.wait()
        return f"charged {order}"

    model = ScriptedModel(
        [
            ModelResponse(tool_calls=[ToolCall(id="c1", name="charge_card", arguments={"order": "42"})]),
            ModelResponse(text="charged"),
        ],
        per_run=True,
    )
    agent = Agent(name="shop", model=model, tools=[charge_card])
    settings = backend.executor_settings()  # both: the default worker_id, <hostname>:<pid>
    async with (
        Executor(settings=settings, disable=other_plugins()) as first,
        Executor(settings=settings, disable=other_plugins()) as second,
    ):
        second.register_agent(agent)
        running = asyncio.ensure_future(first.run(agent, "charge order 42", caller_id="shop"))
        await eventually(lambda: asyncio.sleep(0, result=charges))
        async with asyncio.timeout(20):  # before the fix: it resumed the live run, charged again, hung
            assert await second.recover() == []  # the first executor's run is live: not the second's
        gate.set()
        result = await running
    assert result.status is RunStatus.OK and result.output == "charged", result.error
    assert charges == ["42"]


async def test_a_run_paused_for_approval_is_resumed_by_another_executor_through_the_store(
    backend: Backend,
) -> None:
    """Checkpointer.pause keeps the run out of recover(); the store's load() hands it to
    Executor.resume in another executor (as another process would be), and the approved call runs once."""
    from executus_core import Approve

    ledger: list[tuple[str, int]] = []

    @tool(requires_approval=lambda arguments: arguments["amount"] > 100)
    def transfer(to: str, amount: int) -> str:
        """Move money."""
        ledger.append((to, amount))
        return f"sent {amount} to {to}"

    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[ToolCall(id="t1", name="transfer", arguments={"to": "bob", "amount": 500})]
            ),
            ModelResponse(text="paid"),
        ],
        per_run=True,
    )
    agent = Agent(name="payer", model=model, tools=[transfer])
    settings = backend.executor_settings()
    async with Executor(settings=settings, disable=other_plugins()) as first:
        paused = await first.run(agent, "pay bob", caller_id="u1")
        assert paused.status is RunStatus.AWAITING_APPROVAL, paused.error
        row = await _store_of(first).run_row(paused.run_id)
        assert row is not None and row["status"] == "paused" and row["lease_until"] is None
        assert await first.recover() == []  # a paused run waits for a decision, not for recovery
    async with Executor(settings=settings, disable=other_plugins()) as second:
        second.register_agent(agent)
        done = await second.resume(paused.run_id, decisions={"t1": Approve(by="alice")})
        assert done.status is RunStatus.OK and done.output == "paid", done.error
        again = await second.resume(paused.run_id, decisions={"t1": Approve(by="alice")})
        assert again.status is RunStatus.ERROR and "no paused or interrupted run" in (again.error or "")
    assert ledger == [("bob", 500)]
