"""The database goes away mid-run: the run goes on, nothing accepted is lost, and a failure is reported.

The outage is real on both backends: SQLite is locked by another connection (``BEGIN EXCLUSIVE``:
every write of the battery fails with "database is locked"); PostgreSQL is reached through a TCP proxy
on loopback that the test stops (open connections cut, new ones refused) and starts again. The agent
itself drives the outage from its tools, so each step happens at a known point of the run, and the
core's `MemoryAudit` records the same run as the reference of what must end up in SQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from audit_sql_helpers import (
    Backend,
    TcpProxy,
    assert_same_trail,
    other_plugins,
    recorded,
    sql_audit,
    wait_for,
)
from executus_audit_sql import AuditWriteError, SqlAudit
from executus_audit_sql.migrate import upgrade

from executus_core import Agent, Executor, ModelResponse, RunStatus, ToolCall, tool
from executus_core.testing import MemoryAudit, ScriptedModel
from executus_core.testing.conformance import make_info
from executus_core.types import RunStats


class Outage:
    """Breaks and mends the database the battery writes to; ``settings`` point the battery at it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.proxy: TcpProxy | None = None
        self.lock: sqlite3.Connection | None = None

    async def __aenter__(self) -> Outage:
        if self.backend.name == "postgres":
            parts = urlsplit(self.backend.url)
            self.proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
            await self.proxy.start()
        else:
            upgrade(self.backend.url)  # the tables exist before the lock is taken
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.mend()
        if self.proxy is not None:
            await self.proxy.stop()

    def settings(self) -> dict[str, Any]:
        # Writes are triggered by each row (batch_size 1) and never by the clock before close, and
        # a locked SQLite answers within 0.2 s: every outcome below is decided by the steps, not timing.
        extra: dict[str, Any] = {"batch_size": 1, "flush_interval": 30, "connect_timeout": 0.2}
        table = self.backend.settings(**extra)
        if self.proxy is not None:
            parts = urlsplit(self.backend.url)
            table["url"] = self.backend.url.replace(parts.netloc, f"127.0.0.1:{self.proxy.port}")
        return table

    async def break_(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        else:
            path = self.backend.url.removeprefix("sqlite:///")
            self.lock = sqlite3.connect(path, timeout=10, isolation_level=None)
            self.lock.execute("BEGIN EXCLUSIVE")

    async def mend(self) -> None:
        if self.proxy is not None:
            if self.proxy._server is None:
                await self.proxy.start()
        elif self.lock is not None:
            self.lock.execute("ROLLBACK")
            self.lock.close()
            self.lock = None


@pytest.fixture
async def outage(backend: Backend) -> AsyncIterator[Outage]:
    async with Outage(backend) as made:
        yield made


def outage_agent(outage: Outage, executor_box: list[Executor], *, mend: bool) -> Agent:
    """Step 1 breaks the database; step 2 waits until the writer has failed on it, then (maybe) mends
    it; step 3 answers. Rows are recorded all along."""

    @tool
    async def break_database() -> str:
        """Take the database away."""
        await outage.break_()
        return "the database is gone"

    @tool
    async def after_a_failed_write() -> str:
        """Wait until the batch writer has tried and failed, then bring the database back (or not)."""
        audit = sql_audit(executor_box[0])
        await wait_for(
            lambda: audit.writer_stats is not None and audit.writer_stats.failures >= 1,
            what="a failed batch write",
        )
        if mend:
            await outage.mend()
        return "the writer failed; " + ("the database is back" if mend else "still down")

    model = ScriptedModel(
        [
            ModelResponse(tool_calls=[ToolCall(id="b1", name="break_database")]),
            ModelResponse(tool_calls=[ToolCall(id="w1", name="after_a_failed_write")]),
            ModelResponse(text="done despite the outage"),
        ]
    )
    return Agent(name="outage", model=model, tools=[break_database, after_a_failed_write])


async def test_rows_buffered_while_the_database_was_away_are_written_at_close(outage: Outage) -> None:
    reference = MemoryAudit()
    settings = {"audit_sql": outage.settings()}
    async with Executor(plugins=[reference], settings=settings, disable=other_plugins()) as executor:
        result = await executor.run(outage_agent(outage, [executor], mend=True), "go", caller_id="erin")
        audit = sql_audit(executor)
        assert audit.writer_stats is not None and audit.writer_stats.failures >= 1
    assert result.status is RunStatus.OK and result.output == "done despite the outage"
    assert result.warnings == [], "close() wrote everything once the database was back"

    reader = outage.backend.audit()
    try:
        assert_same_trail(await recorded(reader, result.run_id), reference.run(result.run_id))
        kept = await reader.transcript(result.run_id)
        assert kept is not None and kept.messages == result.messages
    finally:
        await reader.aclose()
    assert not list(outage.backend.data_dir.glob("audit_sql-unwritten/*.jsonl"))


async def test_rows_the_database_never_took_are_saved_reported_and_imported(outage: Outage) -> None:
    reference = MemoryAudit()
    settings = {"audit_sql": outage.settings()}
    async with Executor(plugins=[reference], settings=settings, disable=other_plugins()) as executor:
        result = await executor.run(outage_agent(outage, [executor], mend=False), "go", caller_id="frank")
    assert result.status is RunStatus.OK and result.output == "done despite the outage"
    [warning] = result.warnings
    assert warning.startswith("audit 'audit_sql': close raised AuditWriteError: run " + result.run_id)
    [spilled] = list(outage.backend.data_dir.glob("audit_sql-unwritten/*.jsonl"))
    assert f"saved to {spilled}" in warning and "executus runs import" in warning

    await outage.mend()
    reader = outage.backend.audit()
    try:
        await reader.import_spill(spilled)
        assert_same_trail(await recorded(reader, result.run_id), reference.run(result.run_id))
        assert not spilled.exists()
        record = await reader.get_run(result.run_id)
        assert record is not None and record.attempts == 1
        # the transcript went to the file with the rows, and came back with them
        kept = await reader.transcript(result.run_id)
        assert kept is not None and kept.messages == result.messages
    finally:
        await reader.aclose()


async def test_a_database_that_is_not_there_at_all_never_fails_a_run(tmp_path: Path) -> None:
    # A port nothing listens on: connections are refused at once.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    settings = {"audit_sql": {"url": f"postgresql+psycopg://127.0.0.1:{port}/nowhere"}}
    async with Executor(settings=settings, disable=other_plugins()) as executor:
        model = ScriptedModel([ModelResponse(text="fine")])
        result = await executor.run(Agent(name="lonely", model=model), "hi", caller_id="gina")
    assert result.status is RunStatus.OK and result.output == "fine"
    [warning] = result.warnings
    assert f"127.0.0.1:{port}/nowhere" in warning and "OperationalError" in warning and "saved to" in warning
    assert len(list((tmp_path / "data" / "audit_sql-unwritten").glob("*.jsonl"))) == 1


class TableLock:
    """Another connection that holds the trail table locked, so the battery's writes hang (not fail)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.conn: Any = None

    def __enter__(self) -> TableLock:
        if self.backend.name == "postgres":
            import psycopg

            self.conn = psycopg.connect("postgresql://" + self.backend.url.split("://", 1)[1])
            self.conn.execute(f'LOCK TABLE "{self.backend.db_schema}".executus_run_events IN EXCLUSIVE MODE')
        else:
            path = self.backend.url.removeprefix("sqlite:///")
            self.conn = sqlite3.connect(path, timeout=10, isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback() if self.backend.name == "postgres" else self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.parametrize("how", ["cancelled by the core", "its own write_timeout"])
async def test_a_close_whose_write_hangs_still_keeps_every_row(backend: Backend, how: str) -> None:
    upgrade(backend.url, db_schema=backend.db_schema)
    # A locked SQLite makes the write wait (busy timeout) instead of failing at once.
    audit: SqlAudit = backend.audit(
        connect_timeout=30, write_timeout=30 if how.startswith("cancelled") else 0.5
    )
    try:
        info = make_info(caller_id="hang")
        recorder = await audit.start_run(info)
        for k in range(5):
            recorder.log_event("tick", {"k": k})
        with TableLock(backend):
            task = asyncio.create_task(recorder.close(RunStats(status=RunStatus.OK, steps=5)))
            if how.startswith("cancelled"):
                writer = recorder._writer
                await wait_for(lambda: writer._flush_task is not None, what="the close's write starting")
                task.cancel()  # what the core does when close() outlives port_timeout
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                with pytest.raises(AuditWriteError, match=r"\(no answer within 0.5s\); they were saved to"):
                    await task
            [spilled] = audit.spill_files()
        assert await audit.get_run(info.run_id) is None, "the aborted write committed nothing"
        await audit.import_spill(spilled)
        got = await recorded(audit, info.run_id)
        assert got.events == [("tick", {"k": k}) for k in range(5)]
        assert got.stats is not None and got.stats.status is RunStatus.OK and got.stats.steps == 5
    finally:
        await audit.aclose()
