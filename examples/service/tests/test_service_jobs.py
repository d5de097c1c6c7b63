"""What a worker's job does with the run it is given, in edge cases a crash leaves behind.

In process, on a database of the test's own: a `RunHost` with a real `Executor` (audit and
checkpoints in PostgreSQL), the ledger agent and a model that answers like the fake model.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from executus_checkpoint_sql.store import SqlCheckpointStore
from executus_service.fake_model import expected_output, reply_for
from executus_service.jobs import RunHost
from executus_service.ledger import build_agents, ensure_tables
from executus_service.settings import ServiceSettings
from psycopg_pool import AsyncConnectionPool

from executus_core import Executor, ModelResponse, RunInfo, ToolCall, Usage
from executus_core.types import ModelRequest

pytestmark = [pytest.mark.postgres]


class Clerk:
    """The fake model's answers, in process."""

    id = "clerk"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        message = reply_for([m.model_dump(mode="json") for m in request.messages])
        calls = [
            ToolCall(id=c["id"], name=c["function"]["name"], arguments=json.loads(c["function"]["arguments"]))
            for c in message.get("tool_calls", [])
        ]
        return ModelResponse(text=message.get("content"), tool_calls=calls, usage=Usage(input_tokens=10))


def _settings(database_url: str, *, audit: bool = True) -> dict[str, Any]:
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    disable = ["budget_redis", "otel", "critic", *([] if audit else ["audit_sql"])]
    return {
        "disable": disable,
        "audit_sql": {"url": url, "db_schema": "executus", "flush_interval": 0.05},
        "checkpoint_sql": {"url": url, "db_schema": "executus", "lease_seconds": 2, "heartbeat_seconds": 0.5},
    }


@pytest.fixture
async def pool(service_database: str) -> AsyncIterator[AsyncConnectionPool]:
    async with await psycopg.AsyncConnection.connect(service_database, autocommit=True) as conn:
        await ensure_tables(conn)
    ledger = AsyncConnectionPool(service_database, min_size=1, max_size=4, open=False)
    await ledger.open()
    yield ledger
    await ledger.close()


def _host(executor: Executor, pool: AsyncConnectionPool) -> RunHost:
    service = ServiceSettings(busy_retry_seconds=0.2, tool_seconds=0)
    return RunHost(executor, build_agents(pool, model=Clerk(), tool_seconds=0), pool, service)  # type: ignore[arg-type]


async def _ended(pool: AsyncConnectionPool, run_id: str) -> tuple[Any, ...] | None:
    async with pool.connection() as conn:
        return await (
            await conn.execute(
                "SELECT status, output, ends FROM service_results WHERE run_id = %s", (run_id,)
            )
        ).fetchone()


async def test_a_run_whose_worker_died_before_saving_its_prompt_starts_afresh(
    service_database: str, pool: AsyncConnectionPool
) -> None:
    run_id = uuid.uuid4().hex
    settings = _settings(service_database)
    async with Executor(settings=settings) as executor:
        host = _host(executor, pool)
        agent = host.agents["ledger"]
        # Another worker registered the run and died before its first save: a live row, no messages.
        dead = SqlCheckpointStore(
            config=host.store.config, worker_id="dead-worker", lease_seconds=0.5, heartbeat_seconds=0
        )
        info = RunInfo(run_id=run_id, subject_id=agent.id, name=agent.name, caller_id="c-1")
        await dead.for_run(info, agent)
        await asyncio.sleep(0.8)  # its lease lapses; the store never hands out a run with no messages
        try:
            status = await asyncio.wait_for(
                host.drive(
                    run_id, prompt="Record 3 payments for account a1", caller_id="c-1", agent_name="ledger"
                ),
                timeout=30,
            )
        finally:
            await dead.aclose()
    assert status == "ok"
    assert await _ended(pool, run_id) == ("ok", expected_output(3, "a1"), 1)
    async with pool.connection() as conn:
        amounts = [
            a
            for (a,) in await (
                await conn.execute(
                    "SELECT amount FROM service_ledger_entries WHERE run_id = %s ORDER BY amount", (run_id,)
                )
            ).fetchall()
        ]
    assert amounts == [1, 2, 3]


async def test_a_run_that_completed_without_its_audit_end_is_kept_as_ended(
    service_database: str, pool: AsyncConnectionPool
) -> None:
    run_id = uuid.uuid4().hex
    # The run completes on a worker whose audit never wrote its end (here: no audit at all).
    async with Executor(settings=_settings(service_database, audit=False)) as executor:
        agent = _host(executor, pool).agents["ledger"]
        result = await executor.run(agent, "Record 2 payments for account a2", caller_id="c-2", run_id=run_id)
        assert result.status.value == "ok"
    # A retried job for it finds the checkpoint completed and no end in the audit.
    async with Executor(settings=_settings(service_database)) as executor:
        host = _host(executor, pool)
        status = await asyncio.wait_for(
            host.drive(
                run_id, prompt="Record 2 payments for account a2", caller_id="c-2", agent_name="ledger"
            ),
            timeout=30,
        )
    # Without a trail nothing says it was ok: it is kept as ended, with what is known.
    assert status == "error"
    kept = await _ended(pool, run_id)
    assert kept is not None and kept[0] == "error" and kept[2] == 0  # kept by a later job, not its worker
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT error FROM service_results WHERE run_id = %s", (run_id,))
        ).fetchone()
    assert row is not None and "the audit has no record of how it ended" in row[0]
