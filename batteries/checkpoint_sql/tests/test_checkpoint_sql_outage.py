"""The database goes away mid-run: the run goes on with a warning, and nothing accepted is lost.

On PostgreSQL the store talks to the server through a TCP proxy that the test cuts (connections
reset, the port closed) and restores; on SQLite another connection takes the write lock, so every
write times out. Saves that fail are sent again, from the last saved offset, with the next save.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from checkpoint_sql_helpers import Backend, LockOutage, ProxyOutage, eventually, other_plugins
from executus_checkpoint_sql import DatabaseUnavailable

from executus_core import Agent, CheckpointState, Executor, Message, ModelResponse, RunStatus, ToolCall, tool
from executus_core.testing import ScriptedModel
from executus_core.testing.conformance import make_info

Outage = LockOutage | ProxyOutage


@pytest.fixture
async def outage(backend: Backend, request: pytest.FixtureRequest) -> Any:
    """A way to make this backend's database go away and come back; the backend points through it."""
    made: Outage
    if backend.name == "postgres":
        made = ProxyOutage(request.getfixturevalue("pg_url"))
        await made.start()
        backend.settings["url"] = made.url
    else:
        assert backend.path is not None
        made = LockOutage(backend.path)
        backend.settings["busy_timeout"] = 0.1
    yield made
    await made.close()


def _call(name: str, call_id: str) -> ModelResponse:
    return ModelResponse(tool_calls=[ToolCall(id=call_id, name=name, arguments={})])


async def test_a_run_goes_on_through_an_outage_and_its_checkpoint_catches_up(
    backend: Backend, outage: Outage
) -> None:
    held = asyncio.Event()

    @tool
    async def cut() -> str:
        """The database goes away."""
        await outage.cut()
        return "cut"

    @tool
    async def restore() -> str:
        """The database comes back."""
        await outage.restore()
        return "restored"

    @tool
    def work() -> str:
        """Some work."""
        return "worked"

    @tool
    async def hold() -> str:
        """Wait until the executor shuts down."""
        held.set()
        await asyncio.Event().wait()
        return "never"

    script = [
        _call("cut", "c1"),
        _call("work", "c2"),  # saved while the database is away: fails, the run goes on
        _call("restore", "c3"),
        _call("work", "c4"),
        _call("hold", "c5"),
    ]
    agent = Agent(name="outage", model=ScriptedModel(script), tools=[cut, restore, work, hold])
    settings = backend.executor_settings(worker_id="outage-worker", outage_backoff=0)
    async with Executor(settings=settings, disable=other_plugins()) as executor:
        running = asyncio.ensure_future(executor.run(agent, "go", caller_id="outage-test"))
        await asyncio.wait_for(held.wait(), 30)
        await executor.shutdown()  # ends the run interrupted, keeping its checkpoint
        result = await running

    assert result.status is RunStatus.INTERRUPTED
    assert [m.content for m in result.messages if m.role == "tool"] == ["cut", "worked", "restored", "worked"]
    saves = [w for w in result.warnings if w.startswith("checkpoint 'checkpoint_sql': save raised")]
    assert saves and all("DatabaseUnavailable: the checkpoint database" in w for w in saves), result.warnings
    assert len(result.warnings) == len(saves), result.warnings  # nothing else went wrong

    # Another worker sees the whole transcript: the saves after the outage caught up from the offset.
    rescuer = backend.store(worker_id="rescuer")
    try:
        found = await rescuer.interrupted()
        assert [item.info.run_id for item in found] == [result.run_id]
        assert found[0].messages == result.messages
        assert found[0].iteration == 5 and found[0].tool_calls == 4
    finally:
        await rescuer.aclose()


async def test_a_run_started_while_the_database_is_away_is_checkpointed_once_it_is_back(
    backend: Backend, outage: Outage
) -> None:
    store = backend.store(worker_id="late-start", outage_backoff=0)
    try:
        await store.list_runs()  # tables in place before the outage
        await outage.cut()
        info = make_info(caller_id="outage")
        checkpointer = await store.for_run(info, Agent(name="late", model="scripted:x"))
        first = [Message.user("a"), Message.user("b")]
        with pytest.raises(DatabaseUnavailable, match="is not available"):
            await checkpointer.save(
                CheckpointState(run_id=info.run_id, iteration=0, offset=0, messages=first)
            )
        await outage.restore()
        everything = [*first, Message.user("c")]
        await checkpointer.save(
            CheckpointState(run_id=info.run_id, iteration=1, offset=0, messages=everything)
        )
        assert await store.transcript(info.run_id) == everything
        await checkpointer.complete()
        row = await store.run_row(info.run_id)
        assert row is not None and row["status"] == "completed"
    finally:
        await store.aclose()


async def test_a_run_that_ends_during_an_outage_is_marked_ended_when_the_database_is_back(
    backend: Backend, outage: Outage
) -> None:
    store = backend.store(worker_id="ending", outage_backoff=0, heartbeat_seconds=0)
    try:
        info = make_info(caller_id="outage")
        checkpointer = await store.for_run(info, Agent(name="ending", model="scripted:x"))
        await checkpointer.save(
            CheckpointState(run_id=info.run_id, iteration=1, offset=0, messages=[Message.user("a")])
        )
        await outage.cut()
        with pytest.raises(DatabaseUnavailable, match="the run's end is written when the database is back"):
            await checkpointer.fail("model failed: 500")
        await outage.restore()
        await store.renew_leases()  # what the heartbeat does every heartbeat_seconds
        row = await store.run_row(info.run_id)
        assert row is not None and (row["status"], row["error"]) == ("failed", "model failed: 500")
        assert await store.interrupted() == []  # never resumed: it had ended
    finally:
        await store.aclose()


async def test_after_a_failure_calls_fail_at_once_for_the_backoff(backend: Backend, outage: Outage) -> None:
    store = backend.store(worker_id="backing-off", outage_backoff=0.5)
    try:
        info = make_info(caller_id="outage")
        checkpointer = await store.for_run(info, Agent(name="backoff", model="scripted:x"))
        state = CheckpointState(run_id=info.run_id, iteration=0, offset=0, messages=[Message.user("a")])
        await outage.cut()
        with pytest.raises(DatabaseUnavailable) as tried:
            await checkpointer.save(state)
        assert tried.value.__cause__ is not None  # it tried the database
        await outage.restore()
        with pytest.raises(DatabaseUnavailable) as fast:
            await checkpointer.save(state)
        assert fast.value.__cause__ is None and str(fast.value) == str(tried.value)  # it did not

        async def saved() -> bool:
            try:
                await checkpointer.save(state)
            except DatabaseUnavailable:
                return False
            return True

        await eventually(saved)
        assert await store.transcript(info.run_id) == [Message.user("a")]
    finally:
        await store.aclose()
