"""Many runs closing at once while the database is healthy but slow: every close waits its turn and
nothing is spilled (issue 17: ~2,000 audit closes spilled to files at 1,000 concurrent runs on
PostgreSQL, because every closing run's rows went into one transaction that outlived write_timeout).

The database is a real SQLite file; the writer's engine is made slow with a pause per row written
(in the writer's thread, as a busy database server would be), so the test decides by row counts:
all the closing rows in one write take longer than ``write_timeout``; a write of ``max_write_rows``
takes a quarter of it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from audit_sql_helpers import Backend
from executus_audit_sql import SqlAudit
from sqlalchemy import event

from executus_core.testing.conformance import make_info
from executus_core.types import RunStats, RunStatus

PER_ROW = 0.005  # seconds the slow database takes per row written
RUNS, ROWS = 40, 5  # 200 closing rows: 1 s in one write
WRITE_TIMEOUT = 0.5  # ... twice write_timeout, while a write of 25 rows takes 0.125 s


def _slow(audit: SqlAudit) -> None:
    assert audit._writer_engine is not None

    def pause(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO executus_run_events"):
            rows = len(params) if many else len(orjson.loads(params[0])) if len(params) == 1 else 1
            time.sleep(PER_ROW * rows)

    event.listen(audit._writer_engine, "before_cursor_execute", pause)


async def test_runs_closing_together_wait_their_turn_and_spill_nothing(tmp_path: Any) -> None:
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'audit.db'}", None, tmp_path / "data")
    audit = backend.audit(
        batch_size=10_000, flush_interval=30, write_timeout=WRITE_TIMEOUT, max_write_rows=25
    )
    try:
        warm = await audit.start_run(make_info(caller_id="warm"))
        await warm.close(RunStats(status=RunStatus.OK))  # the schema and the writer's engine exist now
        _slow(audit)
        recorders = [await audit.start_run(make_info(caller_id=f"c{i}")) for i in range(RUNS)]
        for recorder in recorders:
            for k in range(ROWS):
                recorder.log_event("tick", {"k": k})
        results = await asyncio.gather(
            *(r.close(RunStats(status=RunStatus.OK, steps=ROWS)) for r in recorders), return_exceptions=True
        )
        assert [r for r in results if r is not None] == []
        assert audit.spill_files() == []
        stats = audit.writer_stats
        assert stats is not None and stats.failures == 0 and stats.batches >= RUNS * ROWS // 25
        for recorder in recorders:
            record = await audit.get_run(recorder.run_id)
            assert record is not None and record.shown_status == "ok"
            assert len(await audit.trail(recorder.run_id)) == ROWS
    finally:
        await audit.aclose()


async def test_a_close_still_gives_up_when_no_write_finishes(tmp_path: Any) -> None:
    """Back-pressure is not patience without end: a database that takes no write within write_timeout
    still gets the close's rows saved to a file."""
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'audit.db'}", None, tmp_path / "data")
    audit = backend.audit(
        batch_size=10_000, flush_interval=30, write_timeout=WRITE_TIMEOUT, connect_timeout=30
    )
    try:
        warm = await audit.start_run(make_info(caller_id="warm"))
        await warm.close(RunStats(status=RunStatus.OK))
        assert audit._writer_engine is not None

        def stuck(*_: Any) -> None:
            time.sleep(3 * WRITE_TIMEOUT)

        event.listen(audit._writer_engine, "before_cursor_execute", stuck)
        recorder = await audit.start_run(make_info(caller_id="stuck"))
        recorder.log_event("tick", {"k": 0})
        try:
            await recorder.close(RunStats(status=RunStatus.OK, steps=1))
        except Exception as exc:
            assert "saved to" in str(exc)
        else:
            raise AssertionError("the close did not give up")
        assert len(audit.spill_files()) == 1
        event.remove(audit._writer_engine, "before_cursor_execute", stuck)
    finally:
        await audit.aclose()
