"""Group commit (issue 17, found case 2): concurrent runs' saves share a transaction, a refused or
failing save does not fail the others in its batch, and on SQLite this process's writers take turns
instead of racing for the file's lock (the heartbeat said "database is locked" at 5,000 runs)."""

from __future__ import annotations

import asyncio

import pytest
from checkpoint_sql_helpers import Backend, eventually
from executus_checkpoint_sql import DatabaseUnavailable, RunTakenOver, SqlCheckpointStore

from executus_core import Agent, CheckpointState, Message
from executus_core.testing.conformance import make_info

AGENT = Agent(name="group-commit-test", model="scripted:none")


def _state(run_id: str, offset: int, *texts: str) -> CheckpointState:
    return CheckpointState(
        run_id=run_id, iteration=offset // 2 + 1, offset=offset, messages=[Message.user(t) for t in texts]
    )


async def _started(store: SqlCheckpointStore, runs: int, first: int = 0) -> list:
    return list(
        await asyncio.gather(
            *(store.for_run(make_info(first + n, caller_id="group"), AGENT) for n in range(runs))
        )
    )


async def test_concurrent_saves_share_transactions_and_all_land(backend: Backend) -> None:
    store = backend.store(worker_id="grouped")
    try:
        checkpointers = await _started(store, 200)
        for step in range(3):
            await asyncio.gather(
                *(
                    cp.save(
                        _state(cp.run_id, 2 * step, f"{cp.run_id} asks {step}", f"{cp.run_id} hears {step}")
                    )
                    for cp in checkpointers
                )
            )
        assert store._group is not None
        # 600 saves; each step's 200 saves went in a few transactions, not 200 (a run whose for_run
        # found no free connection on a busy server writes its first save alone)
        assert store._group.saves >= 500 and store._group.batches <= 30, store._group.batches
        for cp in checkpointers[::50]:
            saved = [m.content for m in await store.transcript(cp.run_id)]
            assert saved == [f"{cp.run_id} {verb} {step}" for step in range(3) for verb in ("asks", "hears")]
            row = await store.run_row(cp.run_id)
            assert row is not None and row["message_count"] == 6 and row["iteration"] == 3
    finally:
        await store.aclose()


async def test_a_refused_run_does_not_fail_the_others_in_its_batch(backend: Backend) -> None:
    store = backend.store(worker_id="grouped")
    try:
        checkpointers = await _started(store, 20)
        lost = checkpointers[7]
        assert await store.release([lost.run_id]) == 1  # its epoch moved on: its writes are fenced off
        outcomes = await asyncio.gather(
            *(cp.save(_state(cp.run_id, 0, "hello")) for cp in checkpointers), return_exceptions=True
        )
        assert isinstance(outcomes[7], RunTakenOver) and "released" in str(outcomes[7])
        assert [o for n, o in enumerate(outcomes) if n != 7] == [None] * 19
        assert store._group is not None and store._group.batches <= 3
        assert await store.transcript(lost.run_id) == []  # the refused run's message was never written
        for cp in checkpointers[:7] + checkpointers[8:]:
            assert [m.content for m in await store.transcript(cp.run_id)] == ["hello"]
    finally:
        await store.aclose()


async def test_a_save_the_database_rejects_fails_alone(backend: Backend) -> None:
    """A save that breaks its batch's statement is written again alone: only it fails."""
    store = backend.store(worker_id="grouped")
    try:
        checkpointers = await _started(store, 10)
        broken = checkpointers[3]
        # Its next save lands at offset 0 again while the database holds a message there: the
        # insert of its batch hits the primary key (a state only a hand edit or a bug can make).
        await broken.save(_state(broken.run_id, 0, "first"))
        broken._saved = 0
        outcomes = await asyncio.gather(
            *(cp.save(_state(cp.run_id, 0, "hello")) for cp in checkpointers),
            return_exceptions=True,
        )
        assert outcomes[3] is not None and not isinstance(outcomes[3], RunTakenOver | DatabaseUnavailable)
        assert [o for n, o in enumerate(outcomes) if n != 3] == [None] * 9
        for cp in checkpointers[:3] + checkpointers[4:]:
            assert [m.content for m in await store.transcript(cp.run_id)] == ["hello"]
    finally:
        await store.aclose()


async def test_back_pressure_a_save_waits_its_turn(backend: Backend) -> None:
    """More saves than one batch holds: they queue and every one lands, none times out."""
    store = backend.store(worker_id="grouped", save_batch=7)
    try:
        checkpointers = await _started(store, 100)
        async with asyncio.timeout(60):
            await asyncio.gather(*(cp.save(_state(cp.run_id, 0, "queued")) for cp in checkpointers))
        assert store._group is not None and store._group.batches >= 100 // 7
        for cp in checkpointers[::10]:
            assert [m.content for m in await store.transcript(cp.run_id)] == ["queued"]
    finally:
        await store.aclose()


async def test_sqlite_writers_of_one_process_take_turns(tmp_path) -> None:
    """Runs starting, saving, ending and a heartbeat all at once on one SQLite file: with a short
    busy_timeout they raced for the file's write lock and lost ("database is locked")."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}"
    store = SqlCheckpointStore(url, worker_id="busy", busy_timeout=0.05, heartbeat_seconds=0)
    try:
        await store.renew_leases()  # creates the tables

        async def one(n: int) -> None:
            cp = await store.for_run(make_info(n, caller_id="busy"), AGENT)
            for step in range(3):
                await cp.save(_state(cp.run_id, step, f"step {step}"))
            await cp.complete()

        async def beat() -> None:
            for _ in range(20):
                await store.renew_leases()
                await asyncio.sleep(0)

        await asyncio.gather(*(one(n) for n in range(150)), beat())
        finished = await store.list_runs(include_finished=True, limit=1000)
        assert len(finished) == 150 and {run.status for run in finished} == {"completed"}
    finally:
        await store.aclose()


@pytest.mark.postgres
async def test_postgres_saves_use_one_connection(pg_url: str, pg_schema: str) -> None:
    """The saves of 100 concurrent runs do not each take a pool connection."""
    from checkpoint_sql_helpers import driver_url

    store = SqlCheckpointStore(driver_url(pg_url), db_schema=pg_schema, pool_size=2, max_overflow=0)
    try:
        checkpointers = await _started(store, 100)
        await asyncio.gather(*(cp.save(_state(cp.run_id, 0, "one connection")) for cp in checkpointers))
        assert store._engine is not None
        assert store._engine.pool.checkedout() == 1  # the writer's own; the rest went back
    finally:
        await store.aclose()


async def test_runs_start_and_end_in_shared_transactions(backend: Backend) -> None:
    """At 5,000 runs, each run's own for_run and complete transaction queued for the pool (PostgreSQL)
    or for the file's lock (SQLite) and timed out; they are group-committed like saves now."""
    store = backend.store(worker_id="grouped")
    try:
        checkpointers = await _started(store, 200)
        assert store._starts is not None and store._starts.saves == 200 and store._starts.batches <= 20
        await asyncio.gather(*(cp.save(_state(cp.run_id, 0, "one")) for cp in checkpointers))
        await asyncio.gather(
            *(cp.complete() if n % 2 else cp.fail("it broke") for n, cp in enumerate(checkpointers))
        )
        assert store._ends is not None and store._ends.saves == 200 and store._ends.batches <= 20
        rows = {x.run_id: x for x in await store.list_runs(include_finished=True, limit=500)}
        assert {rows[cp.run_id].status for cp in checkpointers[1::2]} == {"completed"}
        assert {rows[cp.run_id].status for cp in checkpointers[::2]} == {"failed"}
        assert {rows[cp.run_id].error for cp in checkpointers[::2]} == {"it broke"}
        for cp in checkpointers[::40]:
            assert await store.transcript(cp.run_id) == []
        # an ended run's id run again starts a new life, empty, under a higher epoch
        again = await store.for_run(make_info(0, caller_id="group", run_id=checkpointers[0].run_id), AGENT)
        assert again.epoch is not None and checkpointers[0].epoch is not None
        assert again.epoch > checkpointers[0].epoch
        with pytest.raises(RunTakenOver):
            await checkpointers[0].complete()  # the earlier life's checkpointer is fenced off
    finally:
        await store.aclose()


def test_a_deadlock_is_not_an_outage() -> None:
    """PostgreSQL aborts one side of a deadlock: the database answered, and a store that took that
    for an outage failed every call for outage_backoff seconds."""
    import psycopg
    from executus_checkpoint_sql.engine import is_driver_outage

    assert not is_driver_outage(psycopg.errors.DeadlockDetected("deadlock detected"))
    assert not is_driver_outage(psycopg.errors.SerializationFailure("could not serialize"))
    assert is_driver_outage(psycopg.OperationalError("connection refused"))


@pytest.mark.postgres
async def test_the_heartbeat_skips_a_row_being_written(pg_url: str, pg_schema: str) -> None:
    """The heartbeat waited for rows a batch held, locked in another order: a deadlock at 5,000
    runs. A row being written gets its lease from that write; the heartbeat takes the others."""
    import psycopg
    from checkpoint_sql_helpers import driver_url

    store = SqlCheckpointStore(driver_url(pg_url), db_schema=pg_schema, heartbeat_seconds=0)
    try:
        checkpointers = await _started(store, 5)
        with psycopg.connect(pg_url, options=f"-c search_path={pg_schema}") as other:
            other.execute(
                "SELECT run_id FROM executus_checkpoint_runs WHERE run_id = %s FOR UPDATE",
                (checkpointers[2].run_id,),
            )
            async with asyncio.timeout(10):
                assert await store.renew_leases() == 4
            other.rollback()
        assert await store.renew_leases() == 5
    finally:
        await store.aclose()


async def test_a_start_given_up_while_written_does_not_leave_a_live_row(backend: Backend) -> None:
    """A for_run whose caller stops waiting (port_timeout) while its batch is written: the run goes
    on without the checkpoint, so its row is ended, not left live for the heartbeat to hold."""
    store = backend.store(worker_id="grouped")
    try:
        await _started(store, 1)  # tables and the writer exist
        hold = store._sqlite_lock if backend.name == "sqlite" else store._pg_batch.lock  # type: ignore[union-attr]
        assert hold is not None
        info = make_info(7, caller_id="group")
        async with hold:  # the writer takes the batch, then waits here
            starting = asyncio.ensure_future(store.for_run(info, AGENT))

            async def taken() -> bool:
                return store._starts is not None and bool(store._starts._inflight)

            await eventually(taken, interval=0.01)
            starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting

        async def ended() -> object:
            row = await store.run_row(info.run_id)
            return row is not None and row["status"] == "failed" and row

        row = await eventually(ended)
        assert "given up" in row["error"]
    finally:
        await store.aclose()
