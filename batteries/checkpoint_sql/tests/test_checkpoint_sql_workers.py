"""Several workers on one database: who may take which run, and when.

Each "worker" here is a `SqlCheckpointStore` with its own engine and connections, as in separate
processes; they race on the database itself.
"""

from __future__ import annotations

import asyncio

import pytest
from checkpoint_sql_helpers import Backend, eventually
from executus_checkpoint_sql import RunNotOwned, RunTakenOver, SqlCheckpointStore

from executus_core import Agent, CheckpointState, Message
from executus_core.testing.conformance import make_info

AGENT = Agent(name="worker-test", model="scripted:none")


async def _live_run(store: SqlCheckpointStore, index: int = 0, messages: int = 2) -> str:
    info = make_info(index, caller_id="workers")
    checkpointer = await store.for_run(info, AGENT)
    await checkpointer.save(
        CheckpointState(
            run_id=info.run_id,
            iteration=1,
            offset=0,
            messages=[Message.user(f"run {index} message {n}") for n in range(messages)],
        )
    )
    return info.run_id


async def test_two_workers_racing_on_interrupted_never_get_the_same_run(backend: Backend) -> None:
    dead = backend.store(worker_id="dead-worker")
    runs = [await _live_run(dead, i) for i in range(40)]
    assert await dead.release() == 40  # what a shutdown does: the runs are free to take at once
    await dead.aclose()

    # claim_limit: each call takes a few runs, so the two workers keep racing for the rest.
    first = backend.store(worker_id="worker-a", claim_limit=3)
    second = backend.store(worker_id="worker-b", claim_limit=3)
    try:
        got_a: list[str] = []
        got_b: list[str] = []
        for _ in range(40):
            round_a, round_b = await asyncio.gather(first.interrupted(), second.interrupted())
            if not round_a and not round_b:
                break
            got_a += [item.info.run_id for item in round_a]
            got_b += [item.info.run_id for item in round_b]
            for item in (*round_a, *round_b):  # each claimed run comes with its whole transcript
                index = runs.index(item.info.run_id)
                assert [m.content for m in item.messages] == [f"run {index} message {n}" for n in range(2)]
        both = set(got_a) & set(got_b)
        assert not both, f"both workers got {sorted(both)}"
        assert len(got_a) == len(set(got_a)) and len(got_b) == len(set(got_b)), "a worker got a run twice"
        assert sorted(got_a + got_b) == sorted(runs), "some interrupted runs were never handed out"
        assert got_a and got_b, "one worker took every run: the race was not a race"
        # claimed runs are not handed out again while their claimers live
        assert await first.interrupted() == [] and await second.interrupted() == []
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_running_run_is_not_taken_while_its_worker_holds_the_lease(backend: Backend) -> None:
    owner = backend.store(worker_id="busy-worker", lease_seconds=60)
    other = backend.store(worker_id="idle-worker")
    try:
        run_id = await _live_run(owner)
        assert await other.interrupted() == []
        with pytest.raises(RunTakenOver, match="held by 'busy-worker:") as refused:
            await other.for_run(make_info(run_id=run_id), AGENT)
        assert isinstance(refused.value, RunNotOwned) and refused.value.owner == owner.owner
        listed = {x.run_id: x for x in await other.list_runs()}
        assert listed[run_id].state == "running" and listed[run_id].owner == owner.owner
    finally:
        await owner.aclose()
        await other.aclose()


async def test_two_stores_with_one_worker_id_in_one_process_share_nothing(backend: Backend) -> None:
    """Found case 2: two executors in one process had one owner (``hostname:pid`` and the module's
    boot id), so one's ``interrupted()`` handed out the other's live run and a tool ran twice."""
    first = backend.store(worker_id="web-1", lease_seconds=60)
    second = backend.store(worker_id="web-1", lease_seconds=60)
    try:
        assert first.owner != second.owner and first.owner.startswith("web-1:")
        run_id = await _live_run(first)
        assert await second.interrupted() == []
        assert await first.interrupted() == []  # nor does a store hand out its own running run
        with pytest.raises(RunTakenOver):
            await second.for_run(make_info(run_id=run_id), AGENT)
    finally:
        for store in (first, second):
            await store.aclose()


async def test_a_lapsed_lease_lets_another_worker_take_over_and_fences_the_old_one(backend: Backend) -> None:
    slow = backend.store(worker_id="slow-worker", lease_seconds=0.05, heartbeat_seconds=0)
    rescuer = backend.store(worker_id="rescuer")
    try:
        info = make_info(caller_id="workers")
        old = await slow.for_run(info, AGENT)
        await old.save(
            CheckpointState(run_id=info.run_id, iteration=1, offset=0, messages=[Message.user("a")])
        )
        found = await eventually(rescuer.interrupted)
        assert [item.info.run_id for item in found] == [info.run_id]
        new = await rescuer.for_run(found[0].info, AGENT)
        await new.save(
            CheckpointState(run_id=info.run_id, iteration=2, offset=1, messages=[Message.user("b")])
        )

        # The old worker wakes up: it may neither save over the new owner's transcript nor end the run.
        with pytest.raises(RunTakenOver, match="now held by 'rescuer:"):
            await old.save(
                CheckpointState(run_id=info.run_id, iteration=2, offset=1, messages=[Message.user("stale")])
            )
        with pytest.raises(RunTakenOver):
            await old.complete()
        assert [m.content for m in await rescuer.transcript(info.run_id)] == ["a", "b"]
        await new.complete()
        row = await rescuer.run_row(info.run_id)
        assert row is not None and row["status"] == "completed"
    finally:
        await slow.aclose()
        await rescuer.aclose()


async def test_the_heartbeat_renews_every_lease_of_its_worker(backend: Backend) -> None:
    store = backend.store(worker_id="beating", lease_seconds=30, heartbeat_seconds=0.05)
    try:
        runs = [await _live_run(store, i) for i in range(3)]

        async def leases() -> list[float]:
            return [(await store.run_row(r) or {})["lease_until"] for r in runs]

        first = await leases()

        async def renewed() -> bool:
            return all(now > then for now, then in zip(await leases(), first, strict=True))

        await eventually(renewed)  # the heartbeat runs in the background: wait for its next beat
        assert await store.renew_leases() == 3
    finally:
        await store.aclose()


async def test_shutdown_releases_the_runs_for_any_worker_at_once(backend: Backend) -> None:
    store = backend.store(worker_id="leaving", lease_seconds=600)
    run_id = await _live_run(store)
    finished = await _live_run(store, 1)
    await (await store.for_run(make_info(run_id=finished), AGENT)).complete()
    await store.aclose()  # what Executor.shutdown calls

    other = backend.store(worker_id="staying", lease_seconds=600)
    try:
        listed = {x.run_id: x for x in await other.list_runs(include_finished=True)}
        assert listed[run_id].state == "interrupted" and listed[finished].state == "completed"
        assert [item.info.run_id for item in await other.interrupted()] == [run_id]
    finally:
        await other.aclose()


async def test_a_run_handed_out_but_never_resumed_is_free_again_once_its_claimer_is_gone(
    backend: Backend,
) -> None:
    origin = backend.store(worker_id="origin")
    run_id = await _live_run(origin)
    await origin.aclose()
    claimer = backend.store(worker_id="claimer")
    assert [i.info.run_id for i in await claimer.interrupted()] == [run_id]
    await claimer.aclose()  # it died (or gave up) before for_run: the claim is released with it
    late = backend.store(worker_id="late")
    try:
        assert [i.info.run_id for i in await late.interrupted()] == [run_id]
    finally:
        await late.aclose()


async def test_a_run_ended_interrupted_is_released_at_once_for_another_worker(backend: Backend) -> None:
    """The core calls Checkpointer.release() when a run ends interrupted (e.g. its caller's task was
    cancelled while the process lives on): the checkpoint stays, and the lease goes now, not at shutdown."""
    owner = backend.store(worker_id="cancelled-worker", lease_seconds=60)
    other = backend.store(worker_id="rescuer")
    try:
        info = make_info(7, caller_id="workers")
        checkpointer = await owner.for_run(info, AGENT)
        await checkpointer.save(
            CheckpointState(run_id=info.run_id, iteration=1, offset=0, messages=[Message.user("hello")])
        )
        kept = await _live_run(owner, 8)  # another live run of the same worker keeps its lease
        assert await other.interrupted() == []
        await checkpointer.release()
        taken = await other.interrupted()
        assert [item.info.run_id for item in taken] == [info.run_id]
        assert [m.content for m in taken[0].messages] == ["hello"]
        assert kept not in [item.info.run_id for item in await other.interrupted()]
    finally:
        await owner.aclose()
        await other.aclose()
