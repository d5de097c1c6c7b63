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
from executus_service.jobs import RunHost, RunNotFinished
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


async def _interrupt_midway(
    settings: dict[str, Any], pool: AsyncConnectionPool, prompts: dict[str, str]
) -> None:
    """Start each run on a worker of its own and stop that worker once a tool ran: interrupted runs,
    their checkpoints released (as a worker that shuts down releases them), their transcripts saved."""
    async with Executor(settings=settings) as executor:
        agent = build_agents(pool, model=Clerk(), tool_seconds=0.3)["ledger"]  # type: ignore[arg-type]
        tasks = [
            asyncio.create_task(executor.run(agent, prompt, caller_id="c-1", run_id=run_id))
            for run_id, prompt in prompts.items()
        ]
        async with asyncio.timeout(30):
            while await _finished_calls(pool, list(prompts)) < 2 * len(prompts):  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.05)
        # shutdown() ends every run interrupted and releases its checkpoint for another worker
    results = await asyncio.gather(*tasks)
    assert [r.status.value for r in results] == ["interrupted"] * len(prompts), results


async def _finished_calls(pool: AsyncConnectionPool, run_ids: list[str]) -> int:
    async with pool.connection() as conn:
        found = await (
            await conn.execute(
                "SELECT count(*) FROM service_ledger_calls WHERE run_id = ANY(%s) AND finished_at IS NOT NULL",
                (run_ids,),
            )
        ).fetchone()
    return int(found[0]) if found else 0


async def _drive_to_end(host: RunHost, run_id: str, prompt: str) -> tuple[str, int]:
    """What Procrastinate does with the job: run it, and again after each `RunNotFinished`.
    Returns the status and how many times the job was retried."""
    retries = 0
    async with asyncio.timeout(60):
        while True:
            try:
                return await host.drive(run_id, prompt=prompt, caller_id="c-1", agent_name="ledger"), retries
            except RunNotFinished as later:
                retries += 1
                await asyncio.sleep(later.retry_in)


async def test_a_job_resumes_its_own_run_by_id_and_leaves_the_others(
    service_database: str, pool: AsyncConnectionPool
) -> None:
    mine, other = uuid.uuid4().hex, uuid.uuid4().hex
    prompts = {mine: "Record 6 payments for account m1", other: "Record 6 payments for account o1"}
    settings = _settings(service_database)
    await _interrupt_midway(settings, pool, prompts)
    async with Executor(settings=settings) as executor:
        host = _host(executor, pool)
        before, ran = await host.store.run_row(other), len(await _calls(pool, other))
        status, _ = await _drive_to_end(host, mine, prompts[mine])
        after = await host.store.run_row(other)
    assert status == "ok"
    assert await _ended(pool, mine) == ("ok", expected_output(6, "m1"), 1)
    # The other interrupted run was not touched: not resumed, not claimed, nothing of it ran.
    assert before is not None and after is not None
    assert (after["status"], after["epoch"], after["message_count"], after["claimed_at"]) == (
        "live",
        before["epoch"],
        before["message_count"],
        None,
    )
    assert await _ended(pool, other) is None
    assert len(await _calls(pool, other)) == ran


async def test_a_job_whose_run_a_live_worker_holds_is_retried_later_and_never_runs_it_twice(
    service_database: str, pool: AsyncConnectionPool
) -> None:
    run_id, prompt = uuid.uuid4().hex, "Record 4 payments for account h1"
    settings = _settings(service_database)
    holder = Executor(settings=settings)
    agent = build_agents(pool, model=Clerk(), tool_seconds=3)["ledger"]  # type: ignore[arg-type]
    held = asyncio.create_task(holder.run(agent, prompt, caller_id="c-1", run_id=run_id))
    try:
        async with asyncio.timeout(30):
            while not await _calls(pool, run_id):  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.05)
        async with Executor(settings=settings) as executor:
            host = _host(executor, pool)
            # The holder's tool runs for 3 s, well past the 2 s lease its heartbeat keeps renewing.
            await asyncio.sleep(2.5)
            with pytest.raises(RunNotFinished, match="held by the live worker") as later:
                await asyncio.wait_for(
                    host.drive(run_id, prompt=prompt, caller_id="c-1", agent_name="ledger"), timeout=10
                )
            assert later.value.retry_in == host.service.busy_retry_seconds
            assert run_id not in executor.running
            # The holder goes on and ends the run; the retried job then finds it ended.
            result = await asyncio.wait_for(held, timeout=60)
            assert result.status.value == "ok"
            status, retries = await _drive_to_end(host, run_id, prompt)
    finally:
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        await holder.shutdown()
    assert (status, retries) == ("ok", 0)
    async with pool.connection() as conn:
        workers = {
            w
            for (w,) in await (
                await conn.execute(
                    "SELECT DISTINCT worker FROM service_ledger_calls WHERE run_id = %s", (run_id,)
                )
            ).fetchall()
        }
    assert len(workers) == 1  # every call ran on the holder; the job ran none of them
    assert len(await _calls(pool, run_id)) == 4


async def _calls(pool: AsyncConnectionPool, run_id: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        return await (
            await conn.execute(
                "SELECT call_id, attempt FROM service_ledger_calls WHERE run_id = %s ORDER BY id", (run_id,)
            )
        ).fetchall()


async def test_a_job_whose_resume_finds_the_run_ended_elsewhere_keeps_that_end_not_an_error(
    service_database: str, pool: AsyncConnectionPool
) -> None:
    run_id, prompt = uuid.uuid4().hex, "Record 4 payments for account e1"
    settings = _settings(service_database)
    await _interrupt_midway(settings, pool, {run_id: prompt})
    async with Executor(settings=settings) as executor:
        host = _host(executor, pool)
        # The job reads the row while the run is interrupted (live, lease lapsed) ...
        stale = await host.store.run_row(run_id)
        assert stale is not None and stale["status"] == "live"
        # ... and before it resumes the run, another worker resumes it and ends it ok.
        async with Executor(settings=settings) as other:
            agent = build_agents(pool, model=Clerk(), tool_seconds=0)["ledger"]  # type: ignore[arg-type]
            done = await other.resume(run_id, agents={agent.id: agent})
        assert done.status.value == "ok"
        reads = [stale]
        real = host.store.run_row

        async def run_row(asked: str) -> Any:
            return reads.pop() if asked == run_id and reads else await real(asked)

        host.store.run_row = run_row
        status = await asyncio.wait_for(
            host.drive(run_id, prompt=prompt, caller_id="c-1", agent_name="ledger"), timeout=30
        )
    # Its resume found nothing to load: the end is the other worker's, kept from the audit, not an error.
    assert status == "ok"
    assert await _ended(pool, run_id) == ("ok", expected_output(4, "e1"), 0)
