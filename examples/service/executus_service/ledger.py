"""The service's tables, and the ledger agent whose tool appends to them.

``append_ledger`` is a tool with a side effect, written the way the durability docs ask a host to
write one: the entry is keyed by ``ToolContext.idempotency_key``, so running the call again (a
recovered run re-executes the call that was in flight at a crash, flagged with ``attempt`` > 1 and
``resumed``) finds the entry instead of adding a second one. ``ToolContext.attempt`` is its fencing
token: a worker paused between the core's ownership check and the side effect (another worker took
the run over and started the call again, with a higher attempt) is refused by the ledger, at the
start and at the write. Every execution is also logged in ``service_ledger_calls`` with its attempt,
resumed flag and whether it was fenced off, which is how the proof test sees what ran where and how
often.

Tables (PostgreSQL, created by `ensure_tables`):

- ``service_ledger_entries``: one row per entry, primary key the idempotency key (the effect);
- ``service_ledger_fences``: per idempotency key, the highest attempt that started (the fence);
- ``service_ledger_calls``: one row per execution of the tool (no constraint: duplicates show);
- ``service_results``: one row per run that ended, with its status and output or error; ``ends``
  counts the workers whose run ended there (1; 0 when the worker died before keeping the end and a
  later job kept it; more if a run ended twice). The audit trail has
  the same and more, except for a run refused before it started (``budget_exceeded``) or
  cancelled before it started, which the audit never sees;
- ``service_cancels``: one row per run someone asked to cancel (`REQUEST_CANCEL`); a worker reads
  it when it takes the run's job up, so a cancel is kept while no worker runs the run.
"""

from __future__ import annotations

import asyncio
import os
import socket

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from executus_core import Agent, ToolContext, tool
from executus_core.tools import Tool

__all__ = [
    "REQUEST_CANCEL",
    "TABLES",
    "StaleAttempt",
    "build_agents",
    "cancel_requested",
    "ensure_tables",
    "read_result",
    "record_end",
    "worker_name",
]

TABLES = """
CREATE TABLE IF NOT EXISTS service_ledger_entries (
    idempotency_key text PRIMARY KEY,
    run_id text NOT NULL,
    account text NOT NULL,
    amount bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS service_ledger_calls (
    id bigserial PRIMARY KEY,
    idempotency_key text NOT NULL,
    run_id text NOT NULL,
    call_id text NOT NULL,
    attempt integer NOT NULL,
    resumed boolean NOT NULL,
    worker text NOT NULL,
    account text NOT NULL,
    amount bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    fenced boolean NOT NULL DEFAULT false
);
ALTER TABLE service_ledger_calls ADD COLUMN IF NOT EXISTS fenced boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS service_ledger_fences (
    idempotency_key text PRIMARY KEY,
    attempt integer NOT NULL
);
CREATE INDEX IF NOT EXISTS service_ledger_calls_run ON service_ledger_calls (run_id);
CREATE TABLE IF NOT EXISTS service_results (
    run_id text PRIMARY KEY,
    status text NOT NULL,
    output text,
    error text,
    worker text NOT NULL,
    ends integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS service_cancels (
    run_id text PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

REQUEST_CANCEL = """
WITH asked AS (
    INSERT INTO service_cancels (run_id) VALUES (%(run_id)s)
    ON CONFLICT (run_id) DO UPDATE SET requested_at = service_cancels.requested_at
    RETURNING run_id
)
SELECT pg_notify(%(channel)s, run_id) FROM asked
"""
"""Keep a cancel of ``run_id`` and notify every worker (``%(channel)s``) when it commits."""

# Workers starting together take turns creating the tables (CREATE ... IF NOT EXISTS races otherwise).
_LOCK = 0x65786563_7376  # "execsv"


def worker_name() -> str:
    """``<hostname>:<pid>``: this process, as the ledger and the outputs name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def ensure_tables(conn: AsyncConnection) -> None:
    """Create the service's tables if they are missing (under an advisory lock; idempotent)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute(TABLES)


async def record_end(
    pool: AsyncConnectionPool,
    run_id: str,
    status: str,
    output: str | None,
    error: str | None,
    *,
    produced: bool,
    once: bool = False,
) -> None:
    """Keep how a run ended.

    ``produced``: this worker's run just ended (a second such end of one run counts in ``ends``);
    False: a job found the run already ended and only makes sure its end is kept. ``once``: an end
    that a job repeated after a crash would find again (a cancel before the start) counts once.
    """
    conflict = "DO UPDATE SET ends = service_results.ends + 1" if produced and not once else "DO NOTHING"
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO service_results (run_id, status, output, error, worker, ends) "
            f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) {conflict}",
            (run_id, status, output, error, worker_name(), 1 if produced else 0),
        )


async def cancel_requested(pool: AsyncConnectionPool, run_id: str) -> bool:
    """True when someone asked to cancel ``run_id`` (a row in ``service_cancels``)."""
    async with pool.connection() as conn:
        found = await (
            await conn.execute("SELECT 1 FROM service_cancels WHERE run_id = %s", (run_id,))
        ).fetchone()
    return found is not None


async def read_result(conn: AsyncConnection, run_id: str) -> dict[str, object] | None:
    """The kept end of ``run_id`` (status, output, error, ends), or None."""
    row = await (
        await conn.execute(
            "SELECT status, output, error, ends FROM service_results WHERE run_id = %s", (run_id,)
        )
    ).fetchone()
    if row is None:
        return None
    return {"status": row[0], "output": row[1], "error": row[2], "ends": row[3]}


class StaleAttempt(RuntimeError):
    """A later attempt of this call has started (the run was taken over): this one must not write."""

    def __init__(self, key: str, attempt: int) -> None:
        super().__init__(
            f"ledger call {key}: attempt {attempt} refused: a later attempt has started on another worker"
        )


def build_agents(pool: AsyncConnectionPool, *, model: str, tool_seconds: float) -> dict[str, Agent]:
    """The agents this service runs, by name; their tools write through ``pool``."""

    @tool
    async def append_ledger(account: str, amount: int, context: ToolContext) -> dict[str, object]:
        """Append a payment of ``amount`` to the ledger of ``account``; returns the entry and the balance."""
        me = worker_name()
        key, attempt = context.idempotency_key, context.attempt
        async with pool.connection() as conn, conn.transaction():
            # The fence: this attempt goes on only if no later attempt of the call has started.
            current = await (
                await conn.execute(
                    "INSERT INTO service_ledger_fences (idempotency_key, attempt) VALUES (%s, %s) "
                    "ON CONFLICT (idempotency_key) DO UPDATE SET attempt = excluded.attempt "
                    "WHERE service_ledger_fences.attempt <= excluded.attempt RETURNING attempt",
                    (key, attempt),
                )
            ).fetchone()
            row = await (
                await conn.execute(
                    "INSERT INTO service_ledger_calls "
                    "(idempotency_key, run_id, call_id, attempt, resumed, worker, account, amount, fenced) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (
                        key,
                        context.info.run_id,
                        context.call_id,
                        attempt,
                        context.resumed,
                        me,
                        account,
                        amount,
                        current is None,
                    ),
                )
            ).fetchone()
        assert row is not None
        call_row = row[0]
        if current is None:
            raise StaleAttempt(key, attempt)
        # The slow part of a real tool (a payment API): the window in which a crash leaves a call in flight.
        await asyncio.sleep(tool_seconds)
        async with pool.connection() as conn, conn.transaction():
            latest = await (
                await conn.execute(
                    "SELECT attempt FROM service_ledger_fences WHERE idempotency_key = %s FOR UPDATE", (key,)
                )
            ).fetchone()
            if latest is None or latest[0] != attempt:
                await conn.execute("UPDATE service_ledger_calls SET fenced = true WHERE id = %s", (call_row,))
            else:
                await conn.execute(
                    "INSERT INTO service_ledger_entries (idempotency_key, run_id, account, amount) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING",
                    (key, context.info.run_id, account, amount),
                )
                await conn.execute(
                    "UPDATE service_ledger_calls SET finished_at = clock_timestamp() WHERE id = %s",
                    (call_row,),
                )
            balance = await (
                await conn.execute(
                    "SELECT coalesce(sum(amount), 0) FROM service_ledger_entries WHERE account = %s",
                    (account,),
                )
            ).fetchone()
        if latest is None or latest[0] != attempt:
            raise StaleAttempt(key, attempt)
        return {
            "entry": key,
            "account": account,
            "amount": amount,
            "balance": int(balance[0]) if balance else 0,
        }

    tools: list[Tool | str] = [append_ledger]
    ledger = Agent(
        id="ledger",
        name="ledger",
        instructions="You keep the payment ledger. Record each payment with append_ledger, then say what "
        "you recorded in one sentence.",
        model=model,
        tools=tools,
        max_steps=40,
    )
    return {ledger.name: ledger}
