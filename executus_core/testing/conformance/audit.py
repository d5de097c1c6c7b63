"""The conformance suite of `Audit` / `RunRecorder`.

Optional capabilities are detected, as the checkpoint suite does: ``transcript`` is an audit with
``Audit.transcript(run_id)`` whose recorders have ``on_transcript(messages)`` (what
``Executor.run(..., continue_run=...)`` reads). A check of a capability the audit lacks is skipped,
naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import unittest
from collections.abc import Awaitable, Callable
from typing import Any

from executus_core.ports import Audit, RunRecorder
from executus_core.testing.conformance._harness import (
    LoopLag,
    built,
    call,
    make_info,
    maybe_await,
    run_check,
)
from executus_core.testing.memory import RecordedRun
from executus_core.types import (
    Message,
    ModelResponse,
    RunInfo,
    RunStats,
    RunStatus,
    RunTranscript,
    ToolCall,
    Usage,
)

__all__ = [
    "AUDIT_CHECKS",
    "AuditConformance",
    "AuditSubject",
    "audit_capabilities",
    "check_audit_concurrent_runs_stay_apart",
    "check_audit_flushes_everything_at_close",
    "check_audit_keeps_transcripts",
    "check_audit_never_blocks_the_loop",
    "check_audit_records_a_run",
    "check_audit_rollup_is_written_by_close",
]

ALL_FIELDS = frozenset({"steps", "tool_calls", "events", "errors"})


@dataclasses.dataclass
class AuditSubject:
    """An `Audit` under test, and how to read back what it stored.

    Attributes:
        audit: the `Audit`.
        read: ``read(run_id)`` (sync or async) returns a `RecordedRun` with what the audit stored
            for the run, after its recorder was closed. Fill the fields your audit keeps.
        stores: which of ``steps``, ``tool_calls``, ``events`` and ``errors`` the audit keeps; the
            suite compares only those (``stats`` is always compared).
    """

    audit: Audit
    read: Callable[[str], RecordedRun | Awaitable[RecordedRun]]
    stores: frozenset[str] = ALL_FIELDS

    @property
    def port(self) -> Audit:
        """The port object under test; the harness closes it (``aclose``) after each check."""
        return self.audit


async def _start(subject: AuditSubject, info: RunInfo) -> RunRecorder:
    assert isinstance(subject, AuditSubject), (
        f"the make_audit fixture must build an AuditSubject(audit, read), got {type(subject).__name__}"
    )
    recorder = await call("Audit.start_run", subject.audit.start_run, info)
    assert isinstance(recorder, RunRecorder), (
        f"Audit.start_run returned {type(recorder).__name__}, not a RunRecorder (on_step, on_tool, "
        "log_event, log_error, close); the suite needs a recorder for every run"
    )
    return recorder


async def _read(subject: AuditSubject, run_id: str) -> RecordedRun:
    recorded = await call("read", subject.read, run_id)
    assert isinstance(recorded, RecordedRun), (
        f"read({run_id!r}) returned {type(recorded).__name__}, not a RecordedRun"
    )
    assert recorded.run_id == run_id, f"read({run_id!r}) returned the record of run {recorded.run_id!r}"
    return recorded


def _same_stats(got: RunStats | None, sent: RunStats, run_id: str) -> None:
    assert got is not None, f"run {run_id}: close({sent!r}) was called but no roll-up was stored"
    for field in (
        "status",
        "output",
        "error",
        "steps",
        "tool_calls",
        "input_tokens",
        "output_tokens",
        "thinking_tokens",
    ):
        assert getattr(got, field) == getattr(sent, field), (
            f"run {run_id}: the roll-up's {field} is {getattr(got, field)!r}, close() was given "
            f"{getattr(sent, field)!r}"
        )
    assert abs(got.runtime_seconds - sent.runtime_seconds) < 1e-3, (
        f"run {run_id}: the roll-up's runtime_seconds is {got.runtime_seconds}, close() was given "
        f"{sent.runtime_seconds}"
    )


async def check_audit_records_a_run(factory: Any) -> None:
    """Every step, tool call, event and error of a run is stored in order, with its roll-up."""
    async with built(factory) as subject:
        info = make_info(caller_id="audit-caller", inputs={"topic": "tides"})
        recorder = await _start(subject, info)
        long_text = "résumé ✓ 漢字 " * 400  # unicode, and longer than a short column
        events: list[tuple[str, dict[str, Any]]] = [
            ("run.start", {"agent": "a", "model": "scripted", "caller_id": "audit-caller", "resumed": False}),
            ("step", {"iteration": 1, "text": None, "tool_calls": ["add", "search"], "input_tokens": 10}),
            ("tool.start", {"name": "add", "call_id": "call-1", "arguments": {"a": 1, "b": 2.5}}),
            ("tool.end", {"name": "search", "ok": False, "seconds": 0.25, "result": long_text[:500]}),
            ("critic", {"deadline_in_seconds": 12.5, "nested": {"list": [1, "two", None, True]}}),
        ]
        for iteration in (1, 2, 3):
            response = ModelResponse(
                text=f"step {iteration}", usage=Usage(input_tokens=10 * iteration, output_tokens=iteration)
            )
            await call("RunRecorder.on_step", recorder.on_step, iteration, response)
        await call(
            "RunRecorder.on_tool",
            recorder.on_tool,
            ToolCall(id="call-1", name="add", arguments={"a": 1}),
            "3",
        )
        await call("RunRecorder.on_tool", recorder.on_tool, ToolCall(id="call-2", name="search"), long_text)
        for type_, payload in events:
            await call("RunRecorder.log_event", recorder.log_event, type_, payload)
        await call("RunRecorder.log_error", recorder.log_error, "tool search failed: timed out after 10s")
        stats = RunStats(
            status=RunStatus.OK,
            output="done ✓",
            steps=3,
            tool_calls=2,
            runtime_seconds=1.25,
            input_tokens=60,
            output_tokens=6,
            thinking_tokens=2,
        )
        await call("RunRecorder.close", recorder.close, stats)

        recorded = await _read(subject, info.run_id)
        if recorded.info is not None:
            assert (recorded.info.caller_id, recorded.info.name) == (info.caller_id, info.name), (
                f"the stored run info {recorded.info!r} does not match start_run's {info!r}"
            )
        if "steps" in subject.stores:
            assert recorded.steps == [1, 2, 3], f"steps stored: {recorded.steps}, sent: [1, 2, 3]"
        if "tool_calls" in subject.stores:
            assert recorded.tool_calls == [("call-1", "add", "3"), ("call-2", "search", long_text)], (
                f"tool calls stored: {[c[:2] for c in recorded.tool_calls]}; results must round-trip exactly"
            )
        if "events" in subject.stores:
            assert recorded.events == events, f"events stored: {recorded.events!r}\nsent: {events!r}"
        if "errors" in subject.stores:
            assert recorded.errors == ["tool search failed: timed out after 10s"], (
                f"errors stored: {recorded.errors}"
            )
        _same_stats(recorded.stats, stats, info.run_id)


async def check_audit_concurrent_runs_stay_apart(factory: Any) -> None:
    """Many runs recorded at once: each run's trail holds all of its own events and nobody else's."""
    runs, per_run = 30, 15
    async with built(factory) as subject:

        async def one(index: int) -> RunInfo:
            info = make_info(index, caller_id=f"caller-{index % 4}")
            recorder = await _start(subject, info)
            for k in range(per_run):
                await call(
                    "RunRecorder.on_step",
                    recorder.on_step,
                    k + 1,
                    ModelResponse(text=f"run {index} step {k}"),
                )
                await call(
                    "RunRecorder.on_tool",
                    recorder.on_tool,
                    ToolCall(id=f"{index}-{k}", name="tool"),
                    f"run {index} result {k}",
                )
                await call("RunRecorder.log_event", recorder.log_event, "marker", {"run": index, "k": k})
                await asyncio.sleep(0)  # interleave the runs
            await call("RunRecorder.log_error", recorder.log_error, f"run {index} error")
            await call(
                "RunRecorder.close",
                recorder.close,
                RunStats(status=RunStatus.OK, output=f"run {index}", steps=per_run, tool_calls=per_run),
            )
            return info

        infos = await asyncio.gather(*(one(i) for i in range(runs)))
        for index, info in enumerate(infos):
            recorded = await _read(subject, info.run_id)
            if "steps" in subject.stores:
                assert recorded.steps == list(range(1, per_run + 1)), (
                    f"run {index}: its {len(recorded.steps)} steps {recorded.steps[:20]}... are not its own "
                    f"{per_run} steps in order"
                )
            if "tool_calls" in subject.stores:
                expected_tools = [(f"{index}-{k}", "tool", f"run {index} result {k}") for k in range(per_run)]
                assert recorded.tool_calls == expected_tools, (
                    f"run {index}: its {len(recorded.tool_calls)} tool calls {recorded.tool_calls[:3]}... are not its "
                    f"own {per_run} calls in order"
                )
            if "events" in subject.stores:
                expected_events = [("marker", {"run": index, "k": k}) for k in range(per_run)]
                assert recorded.events == expected_events, (
                    f"run {index}: its {len(recorded.events)} events {recorded.events[:3]}... are not its own "
                    f"{per_run} events in order"
                )
            if "errors" in subject.stores:
                assert recorded.errors == [f"run {index} error"], f"run {index}: errors {recorded.errors}"
            assert recorded.stats is not None and recorded.stats.output == f"run {index}", (
                f"run {index}: roll-up {recorded.stats!r} is not its own"
            )


async def check_audit_flushes_everything_at_close(factory: Any) -> None:
    """Whatever a recorder buffered is written by ``close``: nothing sent before close is lost."""
    count = 1000
    async with built(factory) as subject:
        info = make_info(caller_id="flush-caller")
        recorder = await _start(subject, info)
        for k in range(count):
            await call("RunRecorder.log_event", recorder.log_event, "tick", {"k": k})
        await call("RunRecorder.on_step", recorder.on_step, 1, ModelResponse(text="last step"))
        await call("RunRecorder.on_tool", recorder.on_tool, ToolCall(id="last", name="tool"), "last result")
        await call("RunRecorder.log_error", recorder.log_error, "the last error")
        await call(
            "RunRecorder.close", recorder.close, RunStats(status=RunStatus.ERROR, error="the last error")
        )
        recorded = await _read(subject, info.run_id)
        if "events" in subject.stores:
            ks = [payload.get("k") for type_, payload in recorded.events if type_ == "tick"]
            missing = count - len(ks)
            assert ks == list(range(count)), (
                f"{missing} of {count} events logged before close() are missing or out of order: "
                "close() must write everything still buffered"
            )
        if "steps" in subject.stores:
            assert recorded.steps == [1], (
                f"the step recorded just before close() is missing: {recorded.steps}"
            )
        if "tool_calls" in subject.stores:
            assert recorded.tool_calls == [("last", "tool", "last result")], (
                f"the tool call recorded just before close() is missing: {recorded.tool_calls}"
            )
        if "errors" in subject.stores:
            assert recorded.errors == ["the last error"], (
                f"the error logged before close() is missing: {recorded.errors}"
            )


async def check_audit_rollup_is_written_by_close(factory: Any) -> None:
    """``close`` writes the roll-up, for every status; before it there is none."""
    async with built(factory) as subject:
        pending: list[tuple[RunInfo, RunRecorder, RunStats]] = []
        for index, status in enumerate(RunStatus):
            info = make_info(index, caller_id="rollup-caller")
            recorder = await _start(subject, info)
            await call("RunRecorder.log_event", recorder.log_event, "run.start", {"index": index})
            stats = RunStats(
                status=status,
                output=f"output {index}" if status is RunStatus.OK else None,
                error=None if status is RunStatus.OK else f"ended {status.value}",
                steps=index,
                tool_calls=2 * index,
                runtime_seconds=0.5 + index,
                input_tokens=100 + index,
                output_tokens=10 + index,
                thinking_tokens=index,
            )
            pending.append((info, recorder, stats))
        for info, _, _ in pending:
            try:
                early = await maybe_await(subject.read(info.run_id))
            except Exception:
                continue  # an audit may store nothing readable before close
            assert early.stats is None, (
                f"run {info.run_id} shows a roll-up {early.stats!r} before close() was called"
            )
        for _, recorder, stats in pending:
            await call("RunRecorder.close", recorder.close, stats)
        for info, _, stats in pending:
            _same_stats((await _read(subject, info.run_id)).stats, stats, info.run_id)


async def check_audit_never_blocks_the_loop(factory: Any) -> None:
    """Recording and closing many runs never stalls the event loop."""
    async with built(factory) as subject:

        async def one(index: int) -> None:
            recorder = await _start(subject, make_info(index, caller_id="lag-caller"))
            for k in range(200):
                await call("RunRecorder.log_event", recorder.log_event, "tick", {"k": k, "text": "x" * 200})
                if k % 10 == 0:
                    await call(
                        "RunRecorder.on_step", recorder.on_step, k // 10 + 1, ModelResponse(text="step")
                    )
                    await call("RunRecorder.on_tool", recorder.on_tool, ToolCall(id=f"c{k}", name="t"), "ok")
                    await asyncio.sleep(0)
            await call(
                "RunRecorder.close", recorder.close, RunStats(status=RunStatus.OK, steps=20, tool_calls=20)
            )

        # First use (connections, schema checks, imports deferred to it) happens before the clock
        # starts: what is checked is the per-run path, as the checkpoint suite does with _warm.
        warm_info = make_info(99, caller_id="lag-warm-up")
        warm = await _start(subject, warm_info)
        await call("RunRecorder.close", warm.close, RunStats(status=RunStatus.OK))
        await _read(subject, warm_info.run_id)  # its write went all the way to the store
        async with LoopLag() as lag:
            await asyncio.gather(*(one(i) for i in range(10)))
        lag.check("recording 10 runs of 200 events and closing them")


def audit_capabilities(audit: Any, recorder: Any = None) -> frozenset[str]:
    """The optional capabilities an audit has: ``transcript`` (``Audit.transcript(run_id)``, and
    ``on_transcript(messages)`` on its recorder when one is given)."""
    found: set[str] = set()
    if callable(getattr(audit, "transcript", None)) and (
        recorder is None or callable(getattr(recorder, "on_transcript", None))
    ):
        found.add("transcript")
    return frozenset(found)


async def check_audit_keeps_transcripts(factory: Any) -> None:
    """(capability ``transcript``) The messages ``on_transcript`` got come back from ``transcript``
    with the run's info and status once it is closed; a run closed without them has none; an unknown
    run is ``None``."""
    async with built(factory) as subject:
        info = make_info(caller_id="transcript-caller").model_copy(update={"conversation_id": "conv-7"})
        recorder = await _start(subject, info)
        if "transcript" not in audit_capabilities(subject.audit, recorder):
            raise unittest.SkipTest(
                "the audit has no transcript capability (Audit.transcript, on_transcript)"
            )
        read: Callable[[str], Awaitable[Any]] = getattr(subject.audit, "transcript")  # noqa: B009 - optional
        messages = [
            Message.system("Be brief."),
            Message.user("résumé ✓ 漢字: what is 2 + 2?"),
            Message(role="assistant", tool_calls=[ToolCall(id="c1", name="add", arguments={"a": 2, "b": 2})]),
            Message(role="tool", content="4", tool_call_id="c1", name="add"),
            Message.assistant("4."),
        ]
        await call("RunRecorder.on_transcript", getattr(recorder, "on_transcript"), list(messages))  # noqa: B009
        early = await call("Audit.transcript", read, info.run_id)
        assert early is None or (isinstance(early, RunTranscript) and early.status is None), (
            f"transcript({info.run_id!r}) before close() shows {early!r}: a run not closed has not ended"
        )
        await call("RunRecorder.close", recorder.close, RunStats(status=RunStatus.OK, output="4.", steps=2))
        got = await call("Audit.transcript", read, info.run_id)
        assert isinstance(got, RunTranscript), f"transcript({info.run_id!r}) returned {type(got).__name__}"
        assert got.status is RunStatus.OK, f"transcript({info.run_id!r}).status is {got.status!r}, not ok"
        assert (got.info.run_id, got.info.caller_id, got.info.conversation_id) == (
            info.run_id,
            "transcript-caller",
            "conv-7",
        ), f"transcript({info.run_id!r}).info is {got.info!r}, not the info the run started with"
        assert got.messages == messages, (
            f"transcript({info.run_id!r}) gave back {got.messages!r}, not the messages on_transcript got"
        )

        bare = make_info(1, caller_id="transcript-caller")
        recorder = await _start(subject, bare)
        await call("RunRecorder.log_event", recorder.log_event, "run.start", {"agent": "a"})
        await call("RunRecorder.close", recorder.close, RunStats(status=RunStatus.ERROR, error="failed"))
        none_kept = await call("Audit.transcript", read, bare.run_id)
        assert isinstance(none_kept, RunTranscript) and none_kept.messages == [], (
            f"transcript({bare.run_id!r}) of a run closed without on_transcript is {none_kept!r}, not one "
            "with no messages"
        )
        assert none_kept.status is RunStatus.ERROR
        assert await call("Audit.transcript", read, "no-such-run") is None, "an unknown run must be None"


AUDIT_CHECKS = (
    check_audit_records_a_run,
    check_audit_concurrent_runs_stay_apart,
    check_audit_flushes_everything_at_close,
    check_audit_rollup_is_written_by_close,
    check_audit_never_blocks_the_loop,
    check_audit_keeps_transcripts,
)


class AuditConformance:
    """The contract every `Audit` battery honours. Subclass it in your tests and provide ``make_audit``.

    ``make_audit`` is a fixture returning a factory: a callable (sync or ``async``) that builds an
    `AuditSubject` around a fresh audit (empty storage) inside the test's event loop. Each test
    runs in its own event loop (``asyncio.run``), so pytest-asyncio is not needed; if the built
    audit has ``aclose()``, it is called at the end::

        class TestSqlAudit(AuditConformance):
            @pytest.fixture
            def make_audit(self, tmp_path):
                async def make():
                    audit = SqlAudit(url=f"sqlite+aiosqlite:///{tmp_path}/audit.db")
                    return AuditSubject(audit, read=audit.read_run)
                return make

    The checks (each also a function you can call with `run_check`): a run's steps, tool calls,
    events, errors and roll-up round-trip in order; 30 runs recorded at once stay apart; ``close``
    flushes everything buffered; the roll-up appears only with ``close``, for every status; the
    event loop never stalls for more than `LAG_BOUND` seconds; and, for an audit with the
    ``transcript`` capability, the messages a run ended with come back with its info and status.
    """

    def test_records_a_run(self, make_audit: Any) -> None:
        run_check(check_audit_records_a_run, make_audit)

    def test_concurrent_runs_stay_apart(self, make_audit: Any) -> None:
        run_check(check_audit_concurrent_runs_stay_apart, make_audit)

    def test_flushes_everything_at_close(self, make_audit: Any) -> None:
        run_check(check_audit_flushes_everything_at_close, make_audit)

    def test_rollup_is_written_by_close(self, make_audit: Any) -> None:
        run_check(check_audit_rollup_is_written_by_close, make_audit)

    def test_never_blocks_the_loop(self, make_audit: Any) -> None:
        run_check(check_audit_never_blocks_the_loop, make_audit)

    def test_keeps_transcripts(self, make_audit: Any) -> None:
        run_check(check_audit_keeps_transcripts, make_audit)
