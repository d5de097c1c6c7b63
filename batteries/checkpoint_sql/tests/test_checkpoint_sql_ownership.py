"""What the conformance suite cannot see from outside: what the rows and `checkpoints list` say about
failed resumes, quarantined runs and claims, on SQLite and PostgreSQL (issue 15, found cases 3-5)."""

from __future__ import annotations

import asyncio

import pytest
from checkpoint_sql_helpers import Backend, abandon, damage, eventually
from executus_checkpoint_sql import RunTakenOver, SqlCheckpointStore

from executus_core import Agent, CheckpointState, Message
from executus_core.errors import RunTakenOver as CoreRunTakenOver
from executus_core.testing.conformance import make_info

AGENT = Agent(name="ownership-test", model="scripted:none")


async def _interrupted_run(backend: Backend, index: int = 0, messages: int = 2) -> str:
    """A run saved by a worker that then shut down (its run released)."""
    origin = backend.store(worker_id="origin")
    info = make_info(index, caller_id="ownership")
    checkpointer = await origin.for_run(info, AGENT)
    texts = [Message.user(f"run {index} message {n}") for n in range(messages)]
    await checkpointer.save(CheckpointState(run_id=info.run_id, iteration=1, offset=0, messages=texts))
    await origin.aclose()
    return info.run_id


async def _listing(store: SqlCheckpointStore, run_id: str) -> dict[str, object]:
    found = {x.run_id: x for x in await store.list_runs(include_finished=True)}
    return found[run_id].as_dict()


async def test_a_failed_resume_is_kept_with_its_error_backs_off_and_is_given_up(backend: Backend) -> None:
    """Found case 4: a run whose resume failed stayed claimed for ever (the heartbeat renewed the claim)."""
    run_id = await _interrupted_run(backend)
    options = {"max_resume_attempts": 2, "resume_backoff_seconds": 600}
    worker = backend.store(worker_id="worker", **options)
    try:
        (item,) = await worker.interrupted()
        checkpointer = await worker.for_run(item.info, AGENT)
        await checkpointer.release("agent 'ownership-test' names unknown tool 'calculate'")
        listed = await _listing(worker, run_id)
        assert listed["state"] == "backoff" and listed["resume_failures"] == 1
        assert "unknown tool 'calculate'" in str(listed["error"])
        assert 590 < float(str(listed["retry_in_seconds"])) <= 600
        assert await worker.interrupted() == []

        assert await worker.retry_now([run_id]) == 1  # a person fixed it: `recover --agent` does this
        (item,) = await worker.interrupted()
        assert item.info.run_id == run_id
        checkpointer = await worker.for_run(item.info, AGENT)
        await checkpointer.release("still unknown tool 'calculate'")
        row = await worker.run_row(run_id)
        assert row is not None and row["status"] == "failed"
        assert row["error"] == "gave up after 2 failed resumes; the last: still unknown tool 'calculate'"
        assert [m.content for m in await worker.transcript(run_id)] == ["run 0 message 0", "run 0 message 1"]
        assert await worker.interrupted() == [] and await worker.retry_now([run_id]) == 0
    finally:
        await worker.aclose()


async def test_a_refusal_with_retry_after_holds_the_run_without_counting_a_failure(backend: Backend) -> None:
    run_id = await _interrupted_run(backend)
    worker = backend.store(worker_id="worker")
    try:
        (item,) = await worker.interrupted()
        checkpointer = await worker.for_run(item.info, AGENT)
        await checkpointer.release("caller 'ownership' used 10 runs in the last 60s", retry_after=0.5)
        listed = await _listing(worker, run_id)
        assert listed["state"] == "backoff" and listed["resume_failures"] == 0
        assert await worker.interrupted() == []
        found = await eventually(worker.interrupted)
        assert [i.info.run_id for i in found] == [run_id]
    finally:
        await worker.aclose()


async def test_the_heartbeat_renews_running_runs_but_not_claims(backend: Backend) -> None:
    """Found case 4: the heartbeat renewed a claim nobody resumed, so no other worker could take it."""
    claimed = await _interrupted_run(backend, 0)
    claimer = backend.store(worker_id="claimer", lease_seconds=1.0, heartbeat_seconds=0.1)
    other = backend.store(worker_id="other")
    try:
        running = make_info(1, caller_id="ownership")
        checkpointer = await claimer.for_run(running, AGENT)
        await checkpointer.save(
            CheckpointState(run_id=running.run_id, iteration=0, offset=0, messages=[Message.user("hi")])
        )
        assert [i.info.run_id for i in await claimer.interrupted()] == [claimed]
        taken = await eventually(other.interrupted)  # the claim lapses while its claimer beats on
        assert [i.info.run_id for i in taken] == [claimed]
        row = await other.run_row(claimed)
        assert row is not None and row["resume_failures"] == 1
        assert f"claimed by {claimer.owner}, which never resumed nor released it" == row["error"]
        await asyncio.sleep(1.2)
        assert await other.interrupted() == []  # the running run's lease is kept by the heartbeat
    finally:
        await claimer.aclose()
        await other.aclose()


async def test_a_corrupt_checkpoint_is_quarantined_named_and_kept(backend: Backend) -> None:
    """Found case 5: one bad message row made interrupted() raise; recover() resumed nothing and did
    not name the bad run."""
    good = await _interrupted_run(backend, 0, messages=3)
    bad = await _interrupted_run(backend, 1, messages=3)
    await damage(backend)(bad, "message")
    worker = backend.store(worker_id="worker")
    try:
        assert [i.info.run_id for i in await worker.interrupted()] == [good]
        listed = await _listing(worker, bad)
        assert listed["state"] == "corrupt" and listed["status"] == "corrupt"
        assert str(listed["error"]).startswith("corrupt checkpoint: message 1 does not read back")
        assert {x.run_id for x in await worker.list_runs()} >= {bad}  # quarantined runs are listed
        row = await worker.run_row(bad)
        assert row is not None and row["message_count"] == 3  # the rows are kept for a person
    finally:
        await worker.aclose()


async def test_a_run_with_bad_info_json_is_quarantined(backend: Backend) -> None:
    run_id = await _interrupted_run(backend)
    await damage(backend)(run_id, "info")
    worker = backend.store(worker_id="worker")
    try:
        assert await worker.interrupted() == []
        listed = await _listing(worker, run_id)
        assert listed["state"] == "corrupt" and "the run info does not read back" in str(listed["error"])
    finally:
        await worker.aclose()


async def test_a_stale_checkpointer_raises_the_cores_run_taken_over(backend: Backend) -> None:
    """Found case 1, the store's side: the refusal is the core's RunTakenOver, naming run and owner."""
    paused = backend.store(worker_id="paused", lease_seconds=0.3, heartbeat_seconds=0)
    rescuer = backend.store(worker_id="rescuer")
    try:
        info = make_info(caller_id="ownership")
        stale = await paused.for_run(info, AGENT)
        await stale.save(
            CheckpointState(run_id=info.run_id, iteration=0, offset=0, messages=[Message.user("a")])
        )
        (item,) = await eventually(rescuer.interrupted)
        await rescuer.for_run(item.info, AGENT)
        state = CheckpointState(run_id=info.run_id, iteration=1, offset=1, messages=[Message.user("b")])
        with pytest.raises(CoreRunTakenOver) as refused:
            await stale.save(state)
        assert isinstance(refused.value, RunTakenOver)
        assert (refused.value.run_id, refused.value.owner) == (info.run_id, rescuer.owner)
        listed = await _listing(rescuer, info.run_id)
        assert listed["owner"] == rescuer.owner and listed["state"] == "running"
        assert listed["held_seconds"] is not None and float(str(listed["held_seconds"])) >= 0
    finally:
        await abandon(paused)
        await rescuer.aclose()
