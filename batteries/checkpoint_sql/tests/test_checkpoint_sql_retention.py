"""Issue 17, found case 6: ended runs kept a row each until someone deleted them by hand with SQL.
Now ``retention_days`` prunes them in the background, and ``executus checkpoints prune`` on demand
(counting first, asking before it deletes, like ``executus runs prune``)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from checkpoint_sql_helpers import Backend, cli_settings, eventually, other_plugins
from executus_checkpoint_sql import SqlCheckpointStore
from executus_checkpoint_sql.schema import CheckpointRun
from sqlalchemy import update
from typer.testing import CliRunner

from executus_core import Agent, CheckpointState, Message, PendingCall
from executus_core.cli import create_app
from executus_core.testing.conformance import make_info
from executus_core.types import utcnow

AGENT = Agent(name="retention-test", model="scripted:none")


@pytest.fixture(autouse=True)
def _only_this_battery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTUS_DISABLE", ",".join(other_plugins()))


def executus(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(create_app(), list(args))


async def _seed(store: SqlCheckpointStore) -> dict[str, str]:
    """Runs that ended 10 days ago (completed, failed), one that ended yesterday, and runs 10 days
    old that have not ended (live, paused): only the first two are old enough to go."""
    ids: dict[str, str] = {}
    for n, label in enumerate(("old-completed", "old-failed", "new-completed", "old-live", "old-paused")):
        checkpointer = await store.for_run(make_info(n, caller_id="retention"), AGENT)
        await checkpointer.save(
            CheckpointState(run_id=checkpointer.run_id, iteration=1, offset=0, messages=[Message.user(label)])
        )
        if label.endswith("completed"):
            await checkpointer.complete()
        elif label.endswith("failed"):
            await checkpointer.fail("it broke")
        elif label.endswith("paused"):
            await checkpointer.pause([PendingCall(call_id="c1", tool="pay", arguments={})])
        ids[label] = checkpointer.run_id
    for label, days in (("new-completed", 1), *((k, 10) for k in ids if k.startswith("old"))):
        async with store._transaction() as conn:
            await conn.execute(
                update(CheckpointRun)
                .where(CheckpointRun.run_id == ids[label])
                .values(updated_at=utcnow() - timedelta(days=days))
            )
    return ids


async def _left(store: SqlCheckpointStore) -> set[str]:
    return {x.run_id for x in await store.list_runs(include_finished=True, limit=100)}


async def test_prune_deletes_ended_runs_older_than_the_cutoff_only(backend: Backend) -> None:
    store = backend.store(worker_id="pruner")
    try:
        ids = await _seed(store)
        assert await store.prune(5, dry_run=True) == 2
        assert await _left(store) == set(ids.values())  # a dry run deletes nothing
        assert await store.prune(5) == 2
        assert await _left(store) == {ids["new-completed"], ids["old-live"], ids["old-paused"]}
        assert await store.prune(5) == 0
    finally:
        await store.aclose()


async def test_the_heartbeat_prunes_by_retention_days(backend: Backend) -> None:
    seeder = backend.store(worker_id="seeder")
    try:
        ids = await _seed(seeder)
    finally:
        await seeder.aclose()
    store = backend.store(worker_id="beating", retention_days=5, lease_seconds=3, heartbeat_seconds=0.05)
    try:
        await store.for_run(make_info(9, caller_id="retention"), AGENT)  # starts the heartbeat

        async def pruned() -> bool:
            return ids["old-completed"] not in await _left(store)

        await eventually(pruned)
        left = await _left(store)
        assert ids["old-failed"] not in left and {ids["new-completed"], ids["old-live"]} <= left
    finally:
        await store.aclose()


async def test_retention_zero_keeps_ended_runs(backend: Backend) -> None:
    store = backend.store(worker_id="keeper", retention_days=0, lease_seconds=3, heartbeat_seconds=0.05)
    try:
        ids = await _seed(store)
        await store._prune_by_retention()
        assert await _left(store) == set(ids.values())
    finally:
        await store.aclose()


def test_checkpoints_prune_counts_asks_and_deletes(backend: Backend) -> None:
    import asyncio

    async def seed() -> dict[str, str]:
        store = backend.store(worker_id="seeder")
        try:
            return await _seed(store)
        finally:
            await store.aclose()

    ids = asyncio.run(seed())
    dry = executus("checkpoints", "prune", "--older-than", "5", "--dry-run", *cli_settings(backend))
    assert dry.exit_code == 0, dry.output
    assert "would delete 2 ended runs older than 5 days" in " ".join(dry.stdout.split())

    refused = CliRunner().invoke(
        create_app(), ["checkpoints", "prune", "--older-than", "5", *cli_settings(backend)], input="n\n"
    )
    assert refused.exit_code == 2

    done = executus("checkpoints", "prune", "--older-than", "5", "--yes", "--json", *cli_settings(backend))
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"deleted": 2, "older_than_days": 5.0}

    again = executus("checkpoints", "prune", "--json", *cli_settings(backend, retention_days=5))
    assert json.loads(again.stdout) == {"deleted": 0, "would_delete": 0, "older_than_days": 5.0}
    listed = json.loads(executus("checkpoints", "list", "--all", "--json", *cli_settings(backend)).stdout)
    assert {r["run_id"] for r in listed["runs"]} == {ids["new-completed"], ids["old-live"], ids["old-paused"]}


def test_checkpoints_prune_with_retention_off_says_how_to_say_how_old(backend: Backend) -> None:
    result = executus("checkpoints", "prune", *cli_settings(backend, retention_days=0))
    assert result.exit_code == 2 and "--older-than DAYS" in result.stderr
