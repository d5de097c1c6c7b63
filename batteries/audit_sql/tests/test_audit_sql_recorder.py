"""The recorder and its batch writer: buffered on the per-step path, written in batches while the run
goes on (with a live tally), a restarted run id continues its trail, and odd data never blocks a batch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_sql_helpers import Backend, recorded, wait_for
from executus_audit_sql import AuditSqlSettings, SqlAudit
from executus_audit_sql.settings import async_url, public_url
from executus_audit_sql.spill import read_spill
from executus_audit_sql.writes import ATTEMPT_GAP

from executus_core.testing.conformance import make_info
from executus_core.types import Message, ModelResponse, RunStats, RunStatus, ToolCall, Usage


async def test_the_per_step_methods_only_buffer(backend: Backend) -> None:
    audit = backend.audit(batch_size=10_000, flush_interval=30)
    try:
        info = make_info(caller_id="buffer")
        recorder = await audit.start_run(info)
        for k in range(100):
            assert recorder.on_step(k + 1, ModelResponse(text="t")) is None
            assert recorder.on_tool(ToolCall(id=f"c{k}", name="t"), "r") is None
            assert recorder.log_event("tick", {"k": k}) is None
            assert recorder.log_error("e") is None
        assert recorder.buffered == 400
        assert await audit.get_run(info.run_id) is None, "nothing is written on the per-step path"
        await recorder.close(RunStats(status=RunStatus.OK, steps=100))
        got = await recorded(audit, info.run_id)
        assert len(got.events) == 100 and got.steps == list(range(1, 101))
    finally:
        await audit.aclose()


async def test_batches_are_written_while_the_run_goes_on_with_a_live_tally(backend: Backend) -> None:
    audit = backend.audit(batch_size=10, flush_interval=30)
    try:
        info = make_info(caller_id="live")
        recorder = await audit.start_run(info)
        for iteration in (1, 2, 3):
            recorder.on_step(
                iteration, ModelResponse(text="s", usage=Usage(input_tokens=100, output_tokens=7))
            )
            recorder.on_tool(ToolCall(id=f"c{iteration}", name="t"), "r")
        for k in range(20):
            recorder.log_event("tick", {"k": k})
        stats = audit.writer_stats
        assert stats is not None
        await wait_for(lambda: stats.rows_written >= 20, what="the batch writer writing full batches")
        record = await audit.get_run(info.run_id)
        assert record is not None and record.running and record.stats is None
        assert (record.steps, record.tool_calls, record.input_tokens, record.output_tokens) == (3, 3, 300, 21)
        assert (recorder.steps, recorder.tool_calls, recorder.input_tokens) == (3, 3, 300)
        await recorder.close(
            RunStats(status=RunStatus.OK, steps=3, tool_calls=3, input_tokens=300, output_tokens=21)
        )
        done = await audit.get_run(info.run_id)
        assert done is not None and done.shown_status == "ok" and done.ended_at is not None
        assert [e.seq for e in await audit.trail(info.run_id)] == list(range(1, 27))
    finally:
        await audit.aclose()


async def test_the_same_run_id_started_again_continues_its_trail(backend: Backend) -> None:
    audit = backend.audit(batch_size=1)
    try:
        info = make_info(caller_id="again")
        first = await audit.start_run(info)
        first.on_step(1, ModelResponse(text="one", usage=Usage(input_tokens=10)))
        first.on_tool(ToolCall(id="a", name="t"), "r")
        await first.close(RunStats(status=RunStatus.INTERRUPTED, steps=1, tool_calls=1, input_tokens=10))

        second = await audit.start_run(info)
        second.on_step(2, ModelResponse(text="two", usage=Usage(input_tokens=5)))
        await audit.flush()
        record = await audit.get_run(info.run_id)
        assert record is not None and record.running and record.attempts == 2
        assert (record.steps, record.tool_calls, record.input_tokens) == (2, 1, 15), "the live tally goes on"
        await second.close(RunStats(status=RunStatus.OK, steps=2, tool_calls=1, input_tokens=15))

        got = await recorded(audit, info.run_id)
        assert got.steps == [1, 2] and got.stats is not None and got.stats.status is RunStatus.OK
        # the second attempt's rows start ATTEMPT_GAP past the first's: two attempts writing at once
        # (a paused worker woken after another took its run over) never take each other's seq
        assert [e.seq for e in await audit.trail(info.run_id)] == [1, 2, 2 + ATTEMPT_GAP + 1]
    finally:
        await audit.aclose()


async def test_odd_data_is_stored_and_never_blocks_a_batch(backend: Backend) -> None:
    audit = backend.audit()
    try:
        info = make_info(caller_id="odd", run_id="odd-" + "x" * 300)
        recorder = await audit.start_run(info)
        recorder.on_tool(ToolCall(id="c" * 400, name="n" * 400), "binary \x00 output")
        recorder.log_event(
            "when", {"at": datetime(2026, 1, 1, tzinfo=UTC), 1: "int key", "obj": object.__name__}
        )
        recorder.log_event("nul", {"text": "a\x00b"})
        recorder.log_event("model.delta", {"text": "streamed"})  # skipped by default
        await recorder.close(RunStats(status=RunStatus.OK, output="out \x00 put"))
        got = await recorded(audit, info.run_id)
        nul = "\x00" if backend.name == "sqlite" else "\ufffd"  # PostgreSQL cannot hold NUL
        assert got.tool_calls == [("c" * 400, "n" * 400, f"binary {nul} output")]
        assert got.events == [
            ("when", {"at": "2026-01-01T00:00:00+00:00", "1": "int key", "obj": "object"}),
            ("nul", {"text": f"a{nul}b"}),
        ]
        assert got.stats is not None and got.stats.output == f"out {nul} put"
    finally:
        await audit.aclose()


async def test_skip_events_is_a_setting(backend: Backend) -> None:
    audit = backend.audit(skip_events=["tick"])
    try:
        info = make_info(caller_id="skip")
        recorder = await audit.start_run(info)
        for type_ in ("tick", "model.delta", "tock"):
            recorder.log_event(type_, {})
        await recorder.close(RunStats(status=RunStatus.OK))
        assert [t for t, _ in (await recorded(audit, info.run_id)).events] == ["model.delta", "tock"]
    finally:
        await audit.aclose()


def test_one_audit_serves_one_event_loop_after_another(backend: Backend) -> None:
    audit = backend.audit()
    ids = []

    async def one_run() -> None:
        info = make_info(caller_id="loops")
        recorder = await audit.start_run(info)
        recorder.log_event("hello", {})
        await recorder.close(RunStats(status=RunStatus.OK))
        ids.append(info.run_id)
        assert (await audit.get_run(info.run_id)) is not None

    asyncio.run(one_run())
    asyncio.run(one_run())  # a new loop: new engine and writer, no "attached to a different loop"

    async def check() -> None:
        try:
            for run_id in ids:
                record = await audit.get_run(run_id)
                assert record is not None and record.shown_status == "ok"
        finally:
            await audit.aclose()

    asyncio.run(check())


async def test_rows_of_a_run_never_closed_are_written_or_saved_at_shutdown(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    settings = AuditSqlSettings(url=f"postgresql+psycopg://127.0.0.1:{unused_tcp_port}/x", write_timeout=1)
    down = SqlAudit(settings, data_dir=tmp_path)
    info = make_info(caller_id="abandoned")
    recorder = await down.start_run(info)
    recorder.log_event("orphan", {"k": 1})
    await down.aclose()
    [spilled] = down.spill_files()
    read = read_spill(spilled)
    assert read.state.info.run_id == info.run_id and read.stats is None and len(read.rows) == 1

    up = SqlAudit(url=f"sqlite:///{tmp_path / 'up.db'}", data_dir=tmp_path)
    recorder = await up.start_run(info)
    recorder.log_event("orphan", {"k": 1})
    await up.aclose()
    reader = SqlAudit(url=f"sqlite:///{tmp_path / 'up.db'}", data_dir=tmp_path)
    try:
        got = await recorded(reader, info.run_id)
        assert got.events == [("orphan", {"k": 1})] and got.stats is None
    finally:
        await reader.aclose()


def test_urls_get_the_async_driver_and_messages_never_show_passwords(tmp_path: Path) -> None:
    assert str(async_url("sqlite:///a.db")) == "sqlite+aiosqlite:///a.db"
    assert str(async_url("postgresql://u@h/db")) == "postgresql+psycopg://u@h/db"
    assert str(async_url("postgres://u@h/db")) == "postgresql+psycopg://u@h/db"
    assert async_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"
    assert public_url("postgresql+psycopg://user:s3cret@h/db") == "postgresql+psycopg://user:***@h/db"
    audit = SqlAudit(url="postgresql://user:s3cret@127.0.0.1/db", data_dir=tmp_path)
    assert "s3cret" not in audit.describe_database() and "s3cret" not in repr(audit)
    with pytest.raises(ValueError, match="driver 'postgresql\\+psycopg2' is not supported"):
        async_url("postgresql+psycopg2://h/db")


def test_write_timeout_leaves_room_inside_the_cores_port_timeout(tmp_path: Path) -> None:
    assert SqlAudit(data_dir=tmp_path, port_timeout=10).write_timeout == 5
    assert SqlAudit(data_dir=tmp_path, port_timeout=2).write_timeout == 1
    settings = AuditSqlSettings(write_timeout=0.5)
    assert SqlAudit(settings, data_dir=tmp_path, port_timeout=10).write_timeout == 0.5


async def test_a_worker_that_lost_the_run_cannot_overwrite_the_end_another_wrote(backend: Backend) -> None:
    """Attempt 1 (a paused worker) registered, attempt 2 (the worker that took the run over) ended it
    ``ok``; attempt 1 then wakes and closes ``interrupted``: the run's row keeps attempt 2's end."""
    audit = backend.audit(batch_size=1, flush_interval=0.05)
    try:
        info = make_info(caller_id="stale")
        stale = await audit.start_run(info)
        stale.on_step(1, ModelResponse(text="s"))
        await wait_for(lambda: stale.state.registered, what="the first attempt registering")
        owner = await audit.start_run(info)
        owner.on_step(2, ModelResponse(text="s"))
        owner.on_transcript([Message.user("go"), Message(role="assistant", content="done")])
        await owner.close(RunStats(status=RunStatus.OK, output="done", steps=4, tool_calls=6))
        stale.on_step(2, ModelResponse(text="late"))  # its batch carries its live tally too
        stale.log_event("run.taken_over", {"status": "interrupted"})
        # (the core sends no transcript for a run its worker lost: tests/test_ownership.py)
        await stale.close(RunStats(status=RunStatus.INTERRUPTED, error="taken over", steps=2))
        record = await audit.get_run(info.run_id)
        assert record is not None
        # was: ("interrupted", None, 2, 0): the stale attempt's roll-up and live tally won
        assert (record.status, record.output, record.steps, record.tool_calls) == ("ok", "done", 4, 6)
        assert record.attempts == 2
        # the woken worker's rows do not take the owner's seqs, and its
        # step 2 is not stored beside the owner's: one row per step
        trail = await audit.trail(info.run_id)
        assert [e.name for e in trail if e.kind == "event"] == ["run.taken_over"]
        assert [(e.iteration, e.text) for e in trail if e.kind == "step"] == [(1, "s"), (2, "s")]
        kept = await audit.transcript(info.run_id)
        assert kept is not None and [m.content for m in kept.messages] == ["go", "done"]
    finally:
        await audit.aclose()


async def test_a_paused_worker_that_registers_after_the_run_ended_changes_nothing(backend: Backend) -> None:
    """The paused worker had not written anything before it was paused (its first batch registers the
    attempt): waking after the new owner ended the run, it registers last, as the "latest" attempt;
    an end for good is kept all the same."""
    audit = backend.audit(batch_size=10_000, flush_interval=30)
    try:
        info = make_info(caller_id="late")
        stale = await audit.start_run(info)
        stale.log_event("run.start", {"resumed": True})  # buffered: not yet registered
        owner = await audit.start_run(info)
        owner.on_step(1, ModelResponse(text="s"))
        owner.on_transcript([Message.user("go"), Message(role="assistant", content="done")])
        await owner.close(RunStats(status=RunStatus.OK, output="done", steps=5, tool_calls=8))
        stale.on_step(1, ModelResponse(text="late"))
        stale.log_event("run.taken_over", {"status": "interrupted"})
        await stale.close(RunStats(status=RunStatus.INTERRUPTED, error="taken over", steps=2))
        record = await audit.get_run(info.run_id)
        assert record is not None
        # was: ("interrupted", None, 2, 0): the late registration reset the end, and the roll-up won
        assert (record.status, record.output, record.steps, record.tool_calls) == ("ok", "done", 5, 8)
        kept = await audit.transcript(info.run_id)
        assert kept is not None and [m.content for m in kept.messages] == ["go", "done"]
    finally:
        await audit.aclose()
