"""`MemoryAudit`: every run's trail in memory, strict about the recorder's contract.

It keeps each run's transcript too (the optional ``on_transcript`` / ``transcript``), so
``Executor.run(..., continue_run=run_id)`` can continue a run it recorded.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

from executus_core.config import Settings
from executus_core.hookspecs import hookimpl
from executus_core.ports import Audit
from executus_core.types import Message, ModelResponse, RunInfo, RunStats, RunTranscript, ToolCall

__all__ = ["MemoryAudit", "MemoryRecorder", "RecordedRun"]


@dataclasses.dataclass
class RecordedRun:
    """What an audit holds about one run, in a shape every audit battery can produce.

    The conformance suite of `Audit` compares what it sent with this; `MemoryAudit` stores it
    directly. ``stats`` is ``None`` until the recorder is closed.

    Attributes:
        run_id: the run's id.
        info: the `RunInfo` given to ``start_run``.
        steps: the ``iteration`` of each ``on_step``, in order.
        tool_calls: ``(call id, tool name, result text)`` of each ``on_tool``, in order.
        events: ``(type, payload)`` of each ``log_event``, in order.
        errors: each ``log_error`` message, in order.
        stats: the roll-up given to ``close``.
        responses: the `ModelResponse` of each ``on_step`` (kept by `MemoryAudit`; batteries may
            leave it empty).
        messages: the transcript the run ended with (``on_transcript``), or ``None`` before.
    """

    run_id: str
    info: RunInfo | None = None
    steps: list[int] = dataclasses.field(default_factory=list)
    tool_calls: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    stats: RunStats | None = None
    responses: list[ModelResponse] = dataclasses.field(default_factory=list)
    messages: list[Message] | None = None

    def event_types(self) -> list[str]:
        """The types of the logged events, in order (``["run.start", "step", ...]``)."""
        return [type_ for type_, _ in self.events]


class MemoryRecorder:
    """The `RunRecorder` of `MemoryAudit`: appends to the run's `RecordedRun` as events arrive.

    It also keeps the live tally (``steps``, ``tool_calls``, tokens) that a ``run_status`` tool
    could report. Strict: an event after ``close``, or a second ``close``, raises `RuntimeError`.
    """

    def __init__(self, record: RecordedRun, lock: threading.Lock) -> None:
        self.record = record
        self._lock = lock
        self.closed = False
        self.steps = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.thinking_tokens = 0

    def _open(self, method: str) -> None:
        if self.closed:
            raise RuntimeError(f"recorder of run {self.record.run_id}: {method} called after close")

    def on_step(self, iteration: int, response: ModelResponse) -> None:
        """Record a finished model call."""
        with self._lock:
            self._open("on_step")
            self.record.steps.append(iteration)
            self.record.responses.append(response)
            self.steps = max(self.steps, iteration)
            self.input_tokens += response.usage.input_tokens
            self.output_tokens += response.usage.output_tokens
            self.thinking_tokens += response.usage.thinking_tokens

    def on_tool(self, call: ToolCall, result: str) -> None:
        """Record a finished tool call."""
        with self._lock:
            self._open("on_tool")
            self.record.tool_calls.append((call.id, call.name, result))
            self.tool_calls += 1

    def log_event(self, type: str, payload: Mapping[str, Any]) -> None:
        """Record a run event (the payload is copied: the caller may reuse its dict)."""
        with self._lock:
            self._open("log_event")
            self.record.events.append((type, dict(payload)))

    def log_error(self, message: str) -> None:
        """Record an error the run survived or that ended it."""
        with self._lock:
            self._open("log_error")
            self.record.errors.append(message)

    def on_transcript(self, messages: list[Message]) -> None:
        """Keep the messages the run ended with (what `MemoryAudit.transcript` gives back)."""
        with self._lock:
            self._open("on_transcript")
            self.record.messages = [m.model_copy() for m in messages]

    async def close(self, stats: RunStats) -> None:
        """Write the roll-up; a second call raises (the core calls it exactly once)."""
        with self._lock:
            if self.closed:
                raise RuntimeError(f"recorder of run {self.record.run_id}: close called twice")
            self.closed = True
            self.record.stats = stats.model_copy()


class MemoryAudit:
    """An `Audit` that keeps every run's trail in memory: ``audit.run(run_id)`` or ``audit.runs``.

    Args:
        name: the plugin name (give two instances different names to use both in one executor).
    """

    def __init__(self, *, name: str = "memory_audit") -> None:
        self.executus_name = name
        self.runs: dict[str, RecordedRun] = {}
        self.recorders: dict[str, MemoryRecorder] = {}
        self._lock = threading.Lock()

    @hookimpl
    def executus_audit(self, settings: Settings) -> Audit:
        return self

    async def start_run(self, info: RunInfo) -> MemoryRecorder:
        """Start recording ``info.run_id`` (a resumed run keeps appending to its earlier trail)."""
        with self._lock:
            record = self.runs.get(info.run_id)
            if record is None:
                record = self.runs[info.run_id] = RecordedRun(run_id=info.run_id, info=info)
            else:
                record.stats = None  # resumed: the new roll-up replaces the interrupted one
            recorder = self.recorders[info.run_id] = MemoryRecorder(record, self._lock)
            return recorder

    async def transcript(self, run_id: str) -> RunTranscript | None:
        """The run's info, status (``None`` until closed) and transcript; ``None`` for an unknown run."""
        with self._lock:
            record = self.runs.get(run_id)
            if record is None or record.info is None:
                return None
            status = record.stats.status if record.stats is not None else None
            return RunTranscript(info=record.info, status=status, messages=list(record.messages or []))

    def run(self, run_id: str) -> RecordedRun:
        """The trail of ``run_id``; raises `KeyError` naming the runs recorded when there is none."""
        with self._lock:
            try:
                return self.runs[run_id]
            except KeyError:
                known = ", ".join(self.runs) or "none"
                raise KeyError(f"run {run_id!r} was not recorded; recorded runs: {known}") from None
