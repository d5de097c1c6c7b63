"""`build_trace` and `waiting_for` on trails written by hand: retries, steering, the critic, a resumed
attempt, parallel tools, and what a run waits for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from executus_audit_sql import RunRecord, TrailEntry
from executus_viewer import build_trace, waiting_for
from executus_viewer.trace import ModelCall, Note, ToolCallView

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Trail:
    def __init__(self) -> None:
        self.rows: list[TrailEntry] = []

    def add(self, kind: str, when: float, **fields: Any) -> Trail:
        self.rows.append(TrailEntry(seq=len(self.rows) + 1, kind=kind, at=at(when), **fields))  # type: ignore[arg-type]
        return self

    def event(self, type_: str, when: float, /, **data: Any) -> Trail:
        return self.add("event", when, name=type_, data=data)


def record(status: str | None = "ok", **fields: Any) -> RunRecord:
    base: dict[str, Any] = {
        "run_id": "r1",
        "subject_id": "a",
        "name": "a",
        "caller_id": "c",
        "started_at": T0,
        "status": status,
    }
    if status is not None:
        base.update(runtime_seconds=10.0, ended_at=at(10))
    return RunRecord.model_validate({**base, **fields})


def test_a_resumed_run_with_retries_steering_and_the_critic() -> None:
    trail = (
        Trail()
        .event("run.start", 0, prompt="pay the invoice", model="openai:gpt", resumed=False)
        .event("model.retry", 0.5, attempt=1, max_retries=3, wait_seconds=0.5, error="429 slow down")
        .add(
            "step",
            2,
            iteration=1,
            text=None,
            data={
                "tool_calls": [{"id": "t1", "name": "pay", "arguments": {"password": "pw"}}],
                "usage": {"input_tokens": 100, "output_tokens": 10},
            },
        )
        .event("tool.start", 2.1, name="pay", call_id="t1", arguments={"password": "***"})
        .event("run.start", 5, resumed=True)
        .event(
            "tool.start",
            5.1,
            name="pay",
            call_id="t1",
            arguments={"password": "***"},
            attempt=2,
            resumed=True,
        )
        .event("tool.end", 6, name="pay", call_id="t1", ok=True, seconds=0.9, result="paid", attempt=2)
        .add("tool", 6, name="pay", call_id="t1", text="paid", data={"arguments": {"password": "***"}})
        .event("steer", 6.5, messages=["wrap up, token=abc123"])
        .event("critic", 6.6, deadline_in_seconds=30.0, reason="slow tool")
        .add("step", 9, iteration=2, text="done", data={"usage": {"input_tokens": 150, "output_tokens": 5}})
        .event("run.end", 10, status="ok", steps=2)
    )
    trace = build_trace(record(attempts=2), trail.rows)
    assert trace.prompt == "pay the invoice" and trace.model == "openai:gpt"
    kinds = [(type(i).__name__, getattr(i, "what", None)) for i in trace.items]
    assert kinds == [
        ("Note", "start"),
        ("ModelCall", None),
        ("ToolCallView", None),  # attempt 1, cut off by the interruption
        ("Note", "start"),
        ("ToolCallView", None),  # attempt 2, resumed
        ("Note", "steer"),
        ("Note", "critic"),
        ("ModelCall", None),
        ("Note", "end"),
    ]
    first, second = (i for i in trace.items if isinstance(i, ModelCall))
    assert first.retries and first.retries[0]["error"] == "429 slow down"
    assert first.seconds == 2.0 and first.input_tokens == 100
    assert second.started_at == at(6.5)  # ready since the steer message
    cut, rerun = (i for i in trace.items if isinstance(i, ToolCallView))
    assert cut.running and cut.attempt == 1
    assert rerun.attempt == 2 and rerun.resumed and rerun.ok and rerun.seconds == 0.9
    assert rerun.result == "paid"
    notes = {i.what: i.text for i in trace.items if isinstance(i, Note)}
    assert "resumed from its checkpoint" in [i.text for i in trace.items if isinstance(i, Note)][1]
    assert "abc123" not in notes["steer"]  # masked
    assert notes["critic"] == "deadline in 30s: slow tool"
    assert trace.timeline.total_seconds == 10.0
    assert [b.kind for b in trace.timeline.bars] == ["model", "tool", "tool", "model"]
    assert waiting_for(trace.record, trail.rows) is None


def test_parallel_tools_count_once_in_the_timeline() -> None:
    trail = (
        Trail()
        .event("run.start", 0)
        .add("step", 1, iteration=1, data={})
        .event("tool.start", 1, name="a", call_id="a")
        .event("tool.start", 1, name="b", call_id="b")
        .event("tool.end", 5, name="a", call_id="a", ok=True, seconds=4.0)
        .event("tool.end", 5, name="b", call_id="b", ok=False, seconds=4.0)
        .add("step", 10, iteration=2, text="ok", data={})
    )
    trace = build_trace(record(), trail.rows)
    tl = trace.timeline
    assert tl.model_seconds == 1.0 + 5.0 and round(tl.tool_seconds, 6) == 4.0
    assert [b.ok for b in tl.bars if b.kind == "tool"] == [True, False]


def test_what_a_run_waits_for() -> None:
    running = record(status=None)
    assert waiting_for(running, []).what == "its first step"  # type: ignore[union-attr]
    trail = Trail().event("run.start", 0).add("step", 1, iteration=1, data={})
    trail.event("tool.start", 1, name="agent__helper", call_id="d1").event(
        "tool.start", 1, name="fetch", call_id="f1"
    )
    found = waiting_for(running, trail.rows)
    assert (
        found is not None and found.what == "a delegated run: agent__helper, fetch" and found.since == at(1)
    )
    trail.event("tool.end", 2, name="agent__helper", call_id="d1", ok=True).event(
        "tool.end", 3, name="fetch", call_id="f1", ok=True
    )
    found = waiting_for(running, trail.rows)
    assert found is not None and found.what == "the model" and found.since == at(3)
    trail.event("model.retry", 4, attempt=2)
    assert waiting_for(running, trail.rows).what == "the model (retry 2 after an error)"  # type: ignore[union-attr]
    stopped = record(status="interrupted")
    assert waiting_for(stopped, []).what.startswith("a resume")  # type: ignore[union-attr]
