"""The per-row statements are built once: trail rows, live tallies and roll-ups go to the driver as
SQL text made once per dialect, all rows of a write in one JSON parameter — SQLAlchemy compiles nothing
for them and processes no value, and a batch is one statement, not one per row (issue 17: client CPU
per recorded step, and writes that a busy process does not stretch). What they store reads back exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from audit_sql_helpers import Backend
from executus_audit_sql import AuditSqlSettings, SqlAudit
from sqlalchemy import event

from executus_core.testing.conformance import make_info
from executus_core.types import ModelResponse, RunStats, RunStatus, ToolCall, Usage


def _watch(audit: SqlAudit) -> list[tuple[str, Any, Any]]:
    """(SQL, parameters, compiled) of every statement the audit's engines send."""
    seen: list[tuple[str, Any, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, params: Any, context: Any, _many: bool) -> None:
        seen.append((statement, params, context.compiled if context is not None else None))

    event.listen(audit._engine.sync_engine, "before_cursor_execute", before)
    assert audit._writer_engine is not None, "the writer's engine is made with the writer"
    event.listen(audit._writer_engine, "before_cursor_execute", before)
    return seen


async def _record(audit: SqlAudit, run_id_hint: str, steps: int) -> str:
    info = make_info(caller_id=run_id_hint)
    recorder = await audit.start_run(info)
    for k in range(1, steps + 1):
        recorder.on_step(k, ModelResponse(text=f"s{k}", usage=Usage(input_tokens=10, output_tokens=2)))
        recorder.on_tool(ToolCall(id=f"c{k}", name="add", arguments={"a": k}), str(k))
        recorder.log_event("tick", {"k": k})
    await audit.flush()
    await recorder.close(RunStats(status=RunStatus.OK, steps=steps, tool_calls=steps, output="done"))
    return info.run_id


async def test_rows_tallies_and_rollups_are_sent_as_driver_sql(backend: Backend) -> None:
    audit = backend.audit(batch_size=10_000, flush_interval=30)
    try:
        await _record(audit, "warm", 1)  # the schema, the first registration
        seen = _watch(audit)
        await _record(audit, "watched", 20)
        writes = [(sql, params, compiled) for sql, params, compiled in seen if not sql.startswith("SELECT")]
        inserts = [w for w in writes if "INSERT INTO executus_run_events" in w[0]]
        updates = [w for w in writes if w[0].startswith("UPDATE executus_runs")]
        assert inserts and updates, writes
        for sql, _, compiled in inserts + updates:
            assert compiled is None, f"compiled by SQLAlchemy: {sql}"
        # the 60 rows of the flushed batch: one statement with one parameter, not one per row
        [(_, params, _)] = inserts
        assert len(params) == 1 and len(orjson.loads(params[0])) == 60
    finally:
        await audit.aclose()


async def test_what_the_driver_statements_store_reads_back(backend: Backend) -> None:
    audit = backend.audit(batch_size=10_000, flush_interval=30)
    try:
        info = make_info(caller_id="exact")
        recorder = await audit.start_run(info)
        recorder.on_step(1, ModelResponse(text="nul\x00here", usage=Usage(input_tokens=5)))
        recorder.on_tool(ToolCall(id="c\x001", name="t", arguments={"nested": [1, {"x": None}]}), "r")
        recorder.log_error("plain error")
        await recorder.close(
            RunStats(status=RunStatus.ERROR, error="bad", steps=1, tool_calls=1, input_tokens=5)
        )
        trail = await audit.trail(info.run_id)
        assert [e.kind for e in trail] == ["step", "tool", "error"]
        step, call, error = trail
        assert step.text in ("nul\x00here", "nul\ufffdhere") and step.iteration == 1
        assert call.data == {"arguments": {"nested": [1, {"x": None}]}} and call.text == "r"
        assert error.data is None and error.text == "plain error"
        for entry in trail:
            assert entry.at.tzinfo is not None and abs(entry.at - datetime.now(UTC)) < timedelta(minutes=5)
        record = await audit.get_run(info.run_id)
        assert record is not None and record.shown_status == "error" and record.stats is not None
        assert (record.stats.error, record.steps, record.tool_calls, record.input_tokens) == ("bad", 1, 1, 5)
        assert record.ended_at is not None and record.ended_at.tzinfo is not None
    finally:
        await audit.aclose()


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 2, 1, 4, 5, 7, tzinfo=UTC),
    ],
)
def test_a_sqlite_timestamp_is_stored_as_sqlalchemy_stores_it(at: datetime) -> None:
    from executus_audit_sql.writes import _sqlite_time
    from sqlalchemy.dialects import sqlite

    processor = sqlite.DATETIME().bind_processor(sqlite.dialect())
    assert processor is not None
    assert _sqlite_time(at) == processor(at.astimezone(UTC).replace(tzinfo=None))


async def test_asyncpg_speaks_the_same_statements(pg_schema: tuple[str, str], tmp_path: Any) -> None:
    pytest.importorskip("asyncpg")
    url, schema = pg_schema
    audit = SqlAudit(
        AuditSqlSettings(url=url.replace("+psycopg", "+asyncpg"), db_schema=schema), data_dir=tmp_path
    )
    try:
        run_id = await _record(audit, "asyncpg", 3)
        record = await audit.get_run(run_id)
        assert (
            record is not None and record.shown_status == "ok" and (record.steps, record.tool_calls) == (3, 3)
        )
        assert [e.seq for e in await audit.trail(run_id)] == list(range(1, 10))
    finally:
        await audit.aclose()
