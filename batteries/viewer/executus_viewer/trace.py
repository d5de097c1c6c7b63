"""A run's trace, read from its audit trail: model calls, tool calls, notes, children and a timeline.

The audit trail (`executus_audit_sql.TrailEntry`) holds, in order, the run events (``run.start``,
``step``, ``tool.start``, ``tool.end``, ``model.retry``, ``steer``, ``critic``, ``child``,
``run.end``), the audit's own ``step`` and ``tool`` rows (the model's full text and the tool's full
result) and ``error`` rows. `build_trace` folds them into what a person reads:

- a `ModelCall` per step: text, tool calls asked for, tokens, and its time — from the moment the
  run was ready to ask (its start, the last tool's end, a steer) to the step's row;
- a `ToolCallView` per tool call: arguments, result or error, time, ``attempt`` and ``resumed``,
  and the child runs it started;
- a `Note` for each steer message, critic decision, error, attempt start and end;
- a `Timeline` of where the time went.

Everything shown is masked again with `executus_core.secrets` (the audit stores tool arguments,
payloads and errors masked; texts, inputs and outputs are masked here too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from executus_audit_sql import RunRecord, TrailEntry

from executus_core.secrets import mask_text, mask_value
from executus_core.types import utcnow

__all__ = [
    "ModelCall",
    "Note",
    "Timeline",
    "TimelineBar",
    "ToolCallView",
    "Trace",
    "Waiting",
    "build_trace",
    "waiting_for",
]

DELEGATION_PREFIXES = ("agent__", "skill__")


def _masked(text: str | None) -> str | None:
    return mask_text(text) if text else text


@dataclasses.dataclass
class ModelCall:
    """One call to the model (one step)."""

    iteration: int | None
    text: str | None
    tool_calls: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    thinking_tokens: int
    model: str | None
    started_at: datetime
    ended_at: datetime
    retries: list[dict[str, Any]]
    kind: str = "model"

    @property
    def seconds(self) -> float:
        """How long the call took, as the trail shows it."""
        return max(0.0, (self.ended_at - self.started_at).total_seconds())


@dataclasses.dataclass
class ToolCallView:
    """One tool call: what it was asked, what it answered, how long it took, which attempt it was."""

    call_id: str
    name: str
    arguments: Any
    started_at: datetime
    ended_at: datetime | None = None
    result: str | None = None
    ok: bool | None = None
    seconds: float | None = None
    attempt: int = 1
    resumed: bool = False
    child_run_ids: list[str] = dataclasses.field(default_factory=list)
    children: list[Trace] = dataclasses.field(default_factory=list)
    kind: str = "tool"

    @property
    def delegation(self) -> bool:
        """A call to another agent or a skill (``agent__...``, ``skill__...``)."""
        return self.name.startswith(DELEGATION_PREFIXES)

    @property
    def running(self) -> bool:
        """Started and not ended (yet)."""
        return self.ended_at is None

    def duration(self, now: datetime) -> float:
        """Its time: as measured by the loop, else from the trail's rows (or until ``now``)."""
        if self.seconds is not None:
            return self.seconds
        return max(0.0, ((self.ended_at or now) - self.started_at).total_seconds())


@dataclasses.dataclass
class Note:
    """Something that happened between calls: ``start``, ``end``, ``steer``, ``critic``, ``error``, ``event``."""

    at: datetime
    what: str
    text: str
    data: Any = None
    kind: str = "note"


@dataclasses.dataclass
class TimelineBar:
    """A bar of the timeline: where it starts and how wide it is, in percent of the run's time."""

    kind: str
    label: str
    offset_pct: float
    width_pct: float
    seconds: float
    ok: bool = True


@dataclasses.dataclass
class Timeline:
    """Where the run's time went: one bar per call, and the totals by kind."""

    total_seconds: float
    bars: list[TimelineBar]
    model_seconds: float
    tool_seconds: float

    @property
    def other_seconds(self) -> float:
        """Time in neither a model call nor a tool call (the kernel, the ports, queues)."""
        return max(0.0, self.total_seconds - self.model_seconds - self.tool_seconds)

    def share(self, seconds: float) -> float:
        """``seconds`` as a percentage of the run's time."""
        return 100.0 * seconds / self.total_seconds if self.total_seconds > 0 else 0.0


@dataclasses.dataclass
class Waiting:
    """What a run that has not ended is waiting for, and since when."""

    what: str
    since: datetime


@dataclasses.dataclass
class Trace:
    """A run read from its trail: the record, the prompt, the items in order, the timeline."""

    record: RunRecord
    prompt: str | None
    model: str | None
    items: list[ModelCall | ToolCallView | Note]
    timeline: Timeline
    waiting: Waiting | None
    last_seq: int
    other_children: list[Trace] = dataclasses.field(default_factory=list)
    inputs: Any = None
    pending: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The tool calls waiting for a person's decision (``call_id``, ``tool``, ``arguments``), while
    the run is ``awaiting_approval``."""

    @property
    def output(self) -> str | None:
        """The final output, masked."""
        return _masked(self.record.output)

    @property
    def error(self) -> str | None:
        """The error the run ended with, masked."""
        return _masked(self.record.error)

    def tool_calls(self) -> list[ToolCallView]:
        """Every tool call of this run, in order."""
        return [item for item in self.items if isinstance(item, ToolCallView)]


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def build_trace(record: RunRecord, trail: Sequence[TrailEntry], *, now: datetime | None = None) -> Trace:
    """Fold a run's trail into a `Trace` (see the module's docstring). Children are attached later."""
    now = now or utcnow()
    items: list[ModelCall | ToolCallView | Note] = []
    calls: dict[str, ToolCallView] = {}
    prompt: str | None = None
    model: str | None = None
    ready = record.started_at
    retries: list[dict[str, Any]] = []
    attempt_no = 0
    step_events: dict[int, dict[str, Any]] = {}
    pending: dict[str, dict[str, Any]] = {}
    for entry in trail:
        data = entry.data if isinstance(entry.data, dict) else {}
        if entry.kind == "event":
            name = entry.name or ""
            if name == "run.start":
                attempt_no += 1
                if prompt is None and isinstance(data.get("prompt"), str):
                    prompt = data["prompt"]
                if model is None and isinstance(data.get("model"), str):
                    model = data["model"]
                calls = {}  # call ids restart meaning with each attempt (a resumed call is shown again)
                label = "resumed from its checkpoint" if data.get("resumed") else "started"
                items.append(Note(entry.at, "start", f"attempt {attempt_no}: {label}"))
                ready = entry.at
            elif name == "model.retry":
                retries.append(mask_value(data))
            elif name == "step":
                if isinstance(data.get("iteration"), int):
                    step_events[data["iteration"]] = data
            elif name == "tool.start":
                call_id = str(data.get("call_id") or f"seq{entry.seq}")
                view = ToolCallView(
                    call_id=call_id,
                    name=str(data.get("name") or "?"),
                    arguments=mask_value(data.get("arguments")),
                    started_at=entry.at,
                    attempt=_int(data.get("attempt")) or 1,
                    resumed=bool(data.get("resumed")),
                )
                calls[call_id] = view
                items.append(view)
            elif name == "tool.end":
                call_id = str(data.get("call_id") or "")
                view = calls.get(call_id) or _late_call(calls, items, call_id, data, entry)
                view.ended_at = entry.at
                view.ok = bool(data.get("ok"))
                if isinstance(data.get("seconds"), int | float):
                    view.seconds = float(data["seconds"])
                if view.result is None and isinstance(data.get("result"), str):
                    view.result = _masked(data["result"])
                attempt = _int(data.get("attempt"))
                if attempt:
                    view.attempt = attempt
                    view.resumed = view.resumed or attempt > 1
                ready = max(ready, entry.at)
            elif name == "child":
                child_id = data.get("child_run_id")
                tool = data.get("tool")
                if isinstance(child_id, str):
                    owner = _owner_of(calls, tool)
                    if owner is not None and child_id not in owner.child_run_ids:
                        owner.child_run_ids.append(child_id)
            elif name == "steer":
                messages = data.get("messages") or []
                text = "\n".join(str(m) for m in messages if m)
                items.append(Note(entry.at, "steer", _masked(text) or "(empty)"))
                ready = max(ready, entry.at)
            elif name == "critic":
                reason = data.get("reason") or "no reason given"
                due = data.get("deadline_in_seconds")
                when = f"deadline in {due:g}s" if isinstance(due, int | float) else "deadline moved"
                items.append(Note(entry.at, "critic", f"{when}: {mask_text(str(reason))}"))
            elif name == "approval.requested":
                requested = [c for c in data.get("calls") or [] if isinstance(c, dict)]
                for wanted in requested:
                    pending[str(wanted.get("call_id"))] = mask_value(wanted)
                names = ", ".join(f"{c.get('tool')} ({c.get('call_id')})" for c in requested)
                items.append(Note(entry.at, "approval", f"waiting for a decision on {names}"))
            elif name == "approval.decided":
                pending.pop(str(data.get("call_id")), None)
                kind = data.get("kind") or "decided"
                by = f" by {data['by']}" if data.get("by") else ""
                why = f": {data['reason']}" if data.get("reason") else ""
                text = f"{data.get('tool')} ({data.get('call_id')}): {kind}{by}{why}"
                edited = {"arguments": mask_value(data.get("arguments"))} if kind == "edit" else None
                items.append(Note(entry.at, "decision", mask_text(text), edited))
            elif name == "run.end":
                status = data.get("status") or "?"
                error = data.get("error")
                text = f"ended {status}" + (f": {mask_text(str(error))}" if error else "")
                items.append(Note(entry.at, "end", text))
            else:
                items.append(Note(entry.at, "event", name, mask_value(data)))
        elif entry.kind == "step":
            found_usage = data.get("usage")
            usage: dict[str, Any] = found_usage if isinstance(found_usage, dict) else {}
            event = step_events.get(entry.iteration or -1, {})
            found_calls = data.get("tool_calls")
            asked: list[Any] = found_calls if isinstance(found_calls, list) else []
            items.append(
                ModelCall(
                    iteration=entry.iteration,
                    text=_masked(entry.text),
                    tool_calls=[mask_value(c) for c in asked if isinstance(c, dict)],
                    input_tokens=_int(usage.get("input_tokens", event.get("input_tokens"))),
                    output_tokens=_int(usage.get("output_tokens", event.get("output_tokens"))),
                    thinking_tokens=_int(usage.get("thinking_tokens")),
                    model=data.get("model") if isinstance(data.get("model"), str) else None,
                    started_at=min(ready, entry.at),
                    ended_at=entry.at,
                    retries=retries,
                )
            )
            retries = []
            ready = entry.at
        elif entry.kind == "tool":
            call_id = entry.call_id or f"seq{entry.seq}"
            known = calls.get(call_id)
            if known is not None:
                view = known
            else:
                # No tool.start event stored (events skipped): the row alone says what ran.
                view = ToolCallView(call_id=call_id, name=entry.name or "?", arguments=None, started_at=ready)
                calls[call_id] = view
                items.append(view)
            view.result = _masked(entry.text)
            arguments = data.get("arguments")
            if arguments is not None:
                view.arguments = mask_value(arguments)
            if view.ended_at is None:
                view.ended_at = entry.at
            if view.ok is None:
                view.ok = not (entry.text or "").startswith("error")
            ready = max(ready, entry.at)
        elif entry.kind == "error":
            items.append(Note(entry.at, "error", _masked(entry.text) or "(no message)"))
    end = record.ended_at or (trail[-1].at if trail and record.status is not None else now)
    trace = Trace(
        record=record,
        prompt=_masked(prompt),
        model=model,
        items=items,
        timeline=_timeline(record.started_at, max(end, record.started_at), items, now),
        waiting=waiting_for(record, trail, now=now),
        last_seq=trail[-1].seq if trail else 0,
        inputs=mask_value(record.inputs),
        pending=list(pending.values()) if record.shown_status == "awaiting_approval" else [],
    )
    return trace


def _late_call(
    calls: dict[str, ToolCallView], items: list[Any], call_id: str, data: dict[str, Any], entry: TrailEntry
) -> ToolCallView:
    seconds = data.get("seconds")
    started = entry.at
    if isinstance(seconds, int | float):
        from datetime import timedelta

        started = entry.at - timedelta(seconds=float(seconds))
    view = ToolCallView(
        call_id=call_id or f"seq{entry.seq}",
        name=str(data.get("name") or "?"),
        arguments=None,
        started_at=started,
    )
    calls[view.call_id] = view
    items.append(view)
    return view


def _owner_of(calls: dict[str, ToolCallView], tool: Any) -> ToolCallView | None:
    """The delegating call a child event belongs to: the latest call of that tool still running, else the latest."""
    named = [view for view in calls.values() if view.name == tool]
    running = [view for view in named if view.ended_at is None]
    pick = running or named
    return pick[-1] if pick else None


def _timeline(
    start: datetime, end: datetime, items: Sequence[ModelCall | ToolCallView | Note], now: datetime
) -> Timeline:
    total = max((end - start).total_seconds(), 1e-6)
    bars: list[TimelineBar] = []
    model_seconds = tool_seconds = 0.0
    for item in items:
        if isinstance(item, ModelCall):
            seconds = item.seconds
            model_seconds += seconds
            bars.append(
                TimelineBar(
                    "model",
                    f"model call {item.iteration or '?'}",
                    _pct((item.started_at - start).total_seconds(), total),
                    _pct(seconds, total),
                    seconds,
                )
            )
        elif isinstance(item, ToolCallView):
            seconds = item.duration(now)
            tool_seconds += seconds
            began = (item.started_at - start).total_seconds()
            bars.append(
                TimelineBar(
                    "tool",
                    item.name + (f" (attempt {item.attempt})" if item.attempt > 1 else ""),
                    _pct(began, total),
                    _pct(seconds, total),
                    seconds,
                    ok=item.ok is not False,
                )
            )
    # Parallel tool calls overlap: the tools' share is their wall time, not the sum of their times.
    tool_wall = _union([(b.offset_pct, b.offset_pct + b.width_pct) for b in bars if b.kind == "tool"])
    return Timeline(
        total_seconds=total,
        bars=bars,
        model_seconds=min(model_seconds, total),
        tool_seconds=min(tool_wall * total / 100.0, tool_seconds, total),
    )


def _pct(seconds: float, total: float) -> float:
    return round(min(100.0, max(0.0, 100.0 * seconds / total)), 3)


def _union(spans: list[tuple[float, float]]) -> float:
    covered = 0.0
    last_end = -1.0
    for begin, end in sorted(spans):
        if end <= last_end:
            continue
        covered += end - max(begin, last_end)
        last_end = end
    return covered


def waiting_for(
    record: RunRecord, tail: Sequence[TrailEntry], *, now: datetime | None = None
) -> Waiting | None:
    """What a run that has not ended waits for, from the last rows of its trail; None once it ended.

    ``interrupted``: a resume, since it stopped. Running: a tool call started and not ended
    (a delegated run for ``agent__``/``skill__`` tools), else the model (retrying, if the last row
    says so), since the last row was written.
    """
    status = record.shown_status
    if status == "interrupted":
        return Waiting("a resume (interrupted; its checkpoint is kept)", record.ended_at or record.started_at)
    if status == "awaiting_approval":
        asked = [
            c
            for e in tail
            if e.kind == "event" and e.name == "approval.requested" and isinstance(e.data, dict)
            for c in e.data.get("calls") or []
            if isinstance(c, dict)
        ]
        names = ", ".join(sorted({str(c.get("tool")) for c in asked}))
        return Waiting(
            f"an approval of {names}" if names else "an approval", record.ended_at or record.started_at
        )
    if record.status is not None:
        return None
    if not tail:
        return Waiting("its first step", record.started_at)
    open_calls: dict[str, TrailEntry] = {}
    for entry in tail:
        data = entry.data if isinstance(entry.data, dict) else {}
        if entry.kind == "event" and entry.name == "tool.start":
            open_calls[str(data.get("call_id"))] = entry
        elif entry.kind == "event" and entry.name == "tool.end":
            open_calls.pop(str(data.get("call_id")), None)
        elif entry.kind == "tool":
            open_calls.pop(str(entry.call_id), None)
        elif entry.kind == "event" and entry.name == "run.start":
            open_calls.clear()
    if open_calls:
        first = min(open_calls.values(), key=lambda e: e.seq)
        running = sorted({str((e.data or {}).get("name")) for e in open_calls.values()})
        delegated = [n for n in running if n.startswith(DELEGATION_PREFIXES)]
        what = ("a delegated run: " if delegated else "tool ") + ", ".join(running)
        return Waiting(what, first.at)
    last = tail[-1]
    if last.kind == "event" and last.name == "model.retry":
        data = last.data if isinstance(last.data, dict) else {}
        return Waiting(f"the model (retry {data.get('attempt', '?')} after an error)", last.at)
    return Waiting("the model", last.at)
