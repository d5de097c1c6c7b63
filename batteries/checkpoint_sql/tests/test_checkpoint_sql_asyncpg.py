"""The same store on PostgreSQL through asyncpg (the ``asyncpg`` extra) instead of psycopg.

Skipped when asyncpg is not installed (``pip install executus-checkpoint-sql[asyncpg]``); the
PostgreSQL server itself is required as for the other tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from checkpoint_sql_helpers import Backend, damage, driver_url, make_worker, other_plugins
from executus_checkpoint_sql import SqlCheckpointStore

from executus_core import Agent, Executor, ModelResponse, RunStatus
from executus_core.testing import ScriptedModel
from executus_core.testing.conformance import CheckpointStoreConformance

pytest.importorskip("asyncpg", reason="the asyncpg extra is not installed")
pytestmark = pytest.mark.postgres


@pytest.fixture
def asyncpg_backend(pg_url: str, pg_schema: str) -> Backend:
    return Backend("asyncpg", {"url": driver_url(pg_url, "asyncpg"), "db_schema": pg_schema})


class TestSqlCheckpointStoreOnAsyncpg(CheckpointStoreConformance):
    """Every check of the contract, through asyncpg."""

    @pytest.fixture
    def make_store(self, asyncpg_backend: Backend) -> Callable[..., SqlCheckpointStore]:
        return make_worker(asyncpg_backend)

    @pytest.fixture
    def damage_checkpoint(self, asyncpg_backend: Backend) -> Callable[[str, str], Awaitable[None]]:
        return damage(asyncpg_backend)


async def test_an_executor_checkpoints_through_asyncpg(asyncpg_backend: Backend) -> None:
    agent = Agent(name="asyncpg", model=ScriptedModel([ModelResponse(text="ok")], per_run=True))
    async with Executor(settings=asyncpg_backend.executor_settings(), disable=other_plugins()) as executor:
        result = await executor.run(agent, "hi", caller_id="host")
        assert executor.ports.checkpoints is not None
        store = executor.ports.checkpoints[1]
        assert isinstance(store, SqlCheckpointStore) and store.url.get_driver_name() == "asyncpg"
        row = await store.run_row(result.run_id)
    assert result.status is RunStatus.OK and not result.warnings
    assert row is not None and row["status"] == "completed"
