"""`OtelRecorder`: one run as an ``invoke_agent`` span with its ``chat`` and ``execute_tool`` spans.

The loop feeds a recorder from a queue of its own, after the fact: ``on_step`` arrives once the model
call has returned, ``on_tool`` once the tool has. So every span is made with explicit times:

- a ``chat`` span starts when the run became ready for the model call — the ``run.start`` event, or
  the end of the tool calls before it — and ends when the step was recorded (a ``step`` event that
  carries ``seconds``, the call's duration, is used instead where the core sends it);
- an ``execute_tool`` span ends when its ``tool.end`` event arrived and starts ``seconds`` (from that
  event) before; without the event, it spans ``tool.start`` to ``on_tool``.

A top-level run's ``invoke_agent`` span is started at ``start_run`` (under the host's current span,
if any), and its ``chat`` / ``execute_tool`` spans are emitted as they complete. A child run (its
``parent_run_id`` is a run this process is recording) is kept as a record tree until it closes, then
handed to its parent, which emits it under the ``agent__<name>`` / ``skill__<name>`` tool span that
started it.

No method raises: a failure is logged as a warning on ``executus.otel`` and the run goes on.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from executus_core.types import ModelResponse, RunInfo, RunStats, RunStatus, ToolCall
from executus_otel import spans as sc
from executus_otel.spans import SpanRecord, emit

if TYPE_CHECKING:
    from executus_otel.audit import OtelAudit

__all__ = ["OtelRecorder", "split_model"]

log = logging.getLogger("executus.otel")

DELEGATION_PREFIXES = ("agent__", "skill__")
"""Tool names that start a child run (see `executus_core.palette`)."""

CONTENT_KEYS = frozenset(
    {"text", "result", "arguments", "messages", "output", "prompt", "content", "data", "inputs"}
)
"""Event payload fields that hold content: on span events only with ``capture_content``."""

FAILED_STATUSES = frozenset({RunStatus.ERROR, RunStatus.TIMEOUT, RunStatus.BUDGET_EXCEEDED})
"""Run statuses whose ``invoke_agent`` span gets the ERROR status (cancelled, interrupted and dry
runs are not failures of the run itself)."""

PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "scripted": "executus.scripted"}
"""executus model id prefixes and their ``gen_ai.provider.name``."""

_TOOL_FAILED = re.compile(r"^error: tool \S+ failed: ([A-Za-z_][\w.]*)")
# How the core words a run that ended in its model call (see executus_core.loop).
_MODEL_FAILED = re.compile(r"^model \S+ (failed|timed out|returned)|during model call \d+")

# Runs being recorded in this process, by run id: where a child run finds its parent.
_live: dict[str, OtelRecorder] = {}
_live_lock = threading.Lock()


def split_model(model_id: str, tiers: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(gen_ai.provider.name, model name)`` of an executus model id: ``openai:gpt-4o`` gives
    ``("openai", "gpt-4o")``; a tier name is looked up in ``tiers`` first."""
    if tiers and ":" not in model_id and model_id in tiers:
        model_id = tiers[model_id]
    prefix, sep, name = model_id.partition(":")
    if not sep:
        if model_id == "scripted":
            return PROVIDERS["scripted"], model_id
        return "unknown", model_id
    return PROVIDERS.get(prefix, prefix), name or model_id


def _ns(seconds: Any) -> int | None:
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return int(seconds * 1e9)
    return None


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def tool_error_type(text: str) -> str:
    """``error.type`` of a failed tool call, from the error text the loop sent the model."""
    found = _TOOL_FAILED.match(text)
    if found:
        return found.group(1)
    if text.startswith("error: there is no tool named"):
        return "tool_not_found"
    if "were not valid JSON" in text[:200] or text.startswith("error: invalid arguments"):
        return "invalid_arguments"
    return "_OTHER"


class OtelRecorder:
    """The `RunRecorder` of `OtelAudit` for one run.

    The live tally is ``recorder.steps``, ``tool_calls``, ``input_tokens``, ``output_tokens`` and
    ``thinking_tokens``: what this recorder saw so far.
    """

    def __init__(self, audit: OtelAudit, info: RunInfo, parent: OtelRecorder | None) -> None:
        self.run_id = info.run_id
        self.info = info
        self._audit = audit
        self._tracer = audit.tracer
        self._capture = audit.settings.capture_content
        self._masker = audit.masker
        self._skip = audit.skip_events
        self.parent = parent
        self.steps = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.thinking_tokens = 0
        self.closed = False
        started = int(info.started_at.timestamp() * 1e9)
        self._started = started
        self._ready = started  # when the run became ready for its next model call
        self._provider, self._model = "unknown", ""
        self._step_seconds: int | None = None
        self._tool_starts: dict[str, tuple[str, int, Any]] = {}  # call id -> (name, at, arguments)
        self._tool_ends: dict[str, tuple[bool, int | None, int]] = {}  # call id -> (ok, ns, at)
        self._done: set[str] = set()  # call ids already recorded: a late tool.start/end is not a new call
        self._retries: list[tuple[str, dict[str, Any], int]] = []  # for the next chat span
        self._child_tools: dict[str, str] = {}  # child run id -> the delegation tool that started it
        self._adopted: list[tuple[str, SpanRecord]] = []  # finished child runs: (run id, record)
        self._adopt_lock = threading.Lock()
        self._warned = False
        self._base: dict[str, Any] = {sc.RUN_ID: info.run_id}
        if info.channel_id:
            self._base[sc.CONVERSATION_ID] = info.channel_id
        attributes: dict[str, Any] = {
            sc.OPERATION: "invoke_agent",
            sc.AGENT_NAME: info.name,
            sc.AGENT_ID: info.subject_id,
            sc.CALLER_ID: info.caller_id,
            **self._base,
        }
        if info.parent_run_id:
            attributes[sc.PARENT_RUN_ID] = info.parent_run_id
        if self._capture and info.inputs:
            attributes[sc.RUN_INPUTS] = _json(self._masker.value(info.inputs))
        self.record = SpanRecord(f"invoke_agent {info.name}", SpanKind.INTERNAL, started, started, attributes)
        # A top-level run's span is real from the start; a child's stays a record until it closes.
        self.span: trace.Span | None = None
        self._context: Any = None
        if parent is None:
            self.span = self._tracer.start_span(
                self.record.name, kind=SpanKind.INTERNAL, attributes=attributes, start_time=started
            )
            self._context = trace.set_span_in_context(self.span)

    # -- helpers ------------------------------------------------------------------------------

    def _failed(self, method: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "executus-otel: %s of run %s failed (%s: %s); its spans may be incomplete, the run is not affected",
                method,
                self.run_id,
                type(exc).__name__,
                exc,
            )

    def _emit(self, record: SpanRecord) -> None:
        if self.span is not None:
            emit(self._tracer, record, self._context)
        else:
            self.record.children.append(record)

    def _event(self, name: str, attributes: dict[str, Any], at: int) -> None:
        if self.span is not None:
            self.span.add_event(name, attributes, at)
        else:
            self.record.events.append((name, attributes, at))

    def _set(self, key: str, value: Any) -> None:
        self.record.attributes[key] = value
        if self.span is not None:
            self.span.set_attribute(key, value)

    # -- the per-step path --------------------------------------------------------------------

    def on_step(self, iteration: int, response: ModelResponse) -> None:
        """A model call finished: one ``chat {model}`` span."""
        try:
            now = time.time_ns()
            usage = response.usage
            if iteration > self.steps:
                self.steps = iteration
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
            self.thinking_tokens += usage.thinking_tokens
            start = self._ready
            if self._step_seconds is not None:
                start, self._step_seconds = now - self._step_seconds, None
            attributes: dict[str, Any] = {
                sc.OPERATION: "chat",
                sc.PROVIDER: self._provider,
                sc.REQUEST_MODEL: self._model,
                sc.STEP: iteration,
                sc.INPUT_TOKENS: usage.input_tokens,
                sc.OUTPUT_TOKENS: usage.output_tokens,
                **self._base,
            }
            if usage.thinking_tokens:
                attributes[sc.REASONING_TOKENS] = usage.thinking_tokens
            if usage.cached_input_tokens:
                attributes[sc.CACHE_READ_TOKENS] = usage.cached_input_tokens
            if response.model:
                attributes[sc.RESPONSE_MODEL] = response.model
            finish = response.finish_reason or ("tool_calls" if response.tool_calls else None)
            if finish:
                attributes[sc.FINISH_REASONS] = (finish,)
            if self._capture:
                attributes[sc.OUTPUT_MESSAGES] = _json([self._output_message(response, finish)])
            record = SpanRecord(
                f"chat {self._model}" if self._model else "chat",
                SpanKind.CLIENT,
                max(start, self._started),
                now,
                attributes,
            )
            if self._retries:
                record.events, self._retries = self._retries, []
            self._emit(record)
            self._ready = now
        except Exception as exc:
            self._failed("on_step", exc)

    def _output_message(self, response: ModelResponse, finish: str | None) -> dict[str, Any]:
        masker = self._masker
        parts: list[dict[str, Any]] = []
        if response.text:
            parts.append({"type": "text", "content": masker.text(response.text)})
        for call in response.tool_calls:
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.name,
                    "arguments": masker.value(call.arguments),
                }
            )
        return {"role": "assistant", "parts": parts, "finish_reason": finish or "stop"}

    def on_tool(self, call: ToolCall, result: str) -> None:
        """A tool call finished: one ``execute_tool {tool}`` span (a child run it started beneath it)."""
        try:
            now = time.time_ns()
            self.tool_calls += 1
            self._done.add(call.id)
            started = self._tool_starts.pop(call.id, None)
            ended = self._tool_ends.pop(call.id, None)
            if ended is not None:
                ok, took, end = ended
                start = end - took if took is not None else (started[1] if started else end)
            else:
                ok, end = not result.startswith("error:"), now
                start = started[1] if started else end
            record = self._tool_record(call.id, call.name, max(start, self._started), end, call.arguments)
            if ok:
                if self._capture:
                    record.attributes[sc.TOOL_RESULT] = self._masker.text(result)
            else:
                record.attributes[sc.ERROR_TYPE] = tool_error_type(result)
                record.error = self._masker.text(result)
            if call.name.startswith(DELEGATION_PREFIXES):
                self._attach_child(record, call.name)
            self._emit(record)
            if now > self._ready:
                self._ready = now
        except Exception as exc:
            self._failed("on_tool", exc)

    def _tool_record(self, call_id: str, name: str, start: int, end: int, arguments: Any) -> SpanRecord:
        attributes: dict[str, Any] = {
            sc.OPERATION: "execute_tool",
            sc.TOOL_NAME: name,
            sc.TOOL_CALL_ID: call_id,
            sc.TOOL_TYPE: "function",
            **self._base,
        }
        if self._capture and arguments is not None:
            attributes[sc.TOOL_ARGUMENTS] = _json(self._masker.value(arguments))
        return SpanRecord(f"execute_tool {name}", SpanKind.INTERNAL, start, end, attributes)

    def _attach_child(self, record: SpanRecord, tool: str) -> None:
        with self._adopt_lock:
            if not self._adopted:
                return
            index = next(
                (i for i, (run_id, _) in enumerate(self._adopted) if self._child_tools.get(run_id) == tool),
                None,
            )
            if index is None:
                index = next(
                    (i for i, (run_id, _) in enumerate(self._adopted) if run_id not in self._child_tools),
                    None,
                )
            if index is None:
                return
            run_id, child = self._adopted.pop(index)
        record.attributes[sc.CHILD_RUN_ID] = run_id
        record.children.append(child)
        # The tool span holds its child run, whatever the times it was reconstructed from say.
        record.start = min(record.start, child.start)
        record.end = max(record.end, child.end)

    def log_event(self, type: str, payload: Mapping[str, Any]) -> None:
        """A run event: timing for the spans, and a span event on ``invoke_agent`` unless skipped."""
        try:
            now = time.time_ns()
            if type == "tool.start":
                call_id = payload.get("call_id")
                if isinstance(call_id, str) and call_id not in self._done:
                    self._tool_starts[call_id] = (str(payload.get("name")), now, payload.get("arguments"))
            elif type == "tool.end":
                call_id = payload.get("call_id")
                if isinstance(call_id, str) and call_id not in self._done:
                    self._tool_ends[call_id] = (
                        payload.get("ok") is not False,
                        _ns(payload.get("seconds")),
                        now,
                    )
            elif type == "step":
                self._step_seconds = _ns(payload.get("seconds"))
            elif type == "run.start":
                self._ready = now
                model = payload.get("model")
                if isinstance(model, str) and model:
                    self._provider, self._model = split_model(model, self._audit.tiers)
                    self._set(sc.PROVIDER, self._provider)
                    self._set(sc.REQUEST_MODEL, self._model)
            elif type == "child":
                child_id, tool = payload.get("child_run_id"), payload.get("tool")
                if isinstance(child_id, str) and isinstance(tool, str):
                    self._child_tools.setdefault(child_id, tool)
            if type in self._skip:
                return
            attributes = self._event_attributes(payload)
            if type == "model.retry":
                self._retries.append((f"executus.{type}", attributes, now))
            else:
                self._event(f"executus.{type}", attributes, now)
        except Exception as exc:
            self._failed("log_event", exc)

    def _event_attributes(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        masker = self._masker
        attributes: dict[str, Any] = {}
        for key, value in payload.items():
            if key in CONTENT_KEYS or not isinstance(value, str | int | float | bool):
                continue
            if isinstance(value, str):
                value = "***" if masker.is_secret_key(key) else masker.text(value)
            attributes[f"executus.{key}"] = value
        if self._capture:
            attributes[sc.EVENT_PAYLOAD] = _json(masker.value(payload))
        return attributes

    def log_error(self, message: str) -> None:
        """An error the run survived or that ended it: an ``executus.error`` span event."""
        try:
            self._event(sc.ERROR_EVENT, {sc.ERROR_MESSAGE: self._masker.text(message)}, time.time_ns())
        except Exception as exc:
            self._failed("log_error", exc)

    # -- child runs ---------------------------------------------------------------------------

    def adopt(self, run_id: str, record: SpanRecord) -> bool:
        """Take a finished child run's record, to emit under the tool span that started it.

        Returns False when this run has closed already (the caller then emits the child itself).
        """
        with self._adopt_lock:
            if self.closed:
                return False
            self._adopted.append((run_id, record))
            return True

    # -- the end ------------------------------------------------------------------------------

    async def close(self, stats: RunStats) -> None:
        """The run ended: the roll-up on ``invoke_agent``, which ends (a child's tree goes to its parent)."""
        try:
            self._close(stats)
        except Exception as exc:
            self._failed("close", exc)
        finally:
            self.closed = True
            with _live_lock:
                if _live.get(self.run_id) is self:
                    del _live[self.run_id]

    def _close(self, stats: RunStats) -> None:
        now = time.time_ns()
        # Tool calls that never ended: the run was cut (a deadline, a cancellation) while they ran.
        for call_id, (name, at, arguments) in list(self._tool_starts.items()):
            record = self._tool_record(call_id, name, max(at, self._started), now, arguments)
            record.attributes[sc.ERROR_TYPE] = "unfinished"
            record.error = f"the run ended {stats.status.value} while this tool call was running"
            if name.startswith(DELEGATION_PREFIXES):
                self._attach_child(record, name)
            self._emit(record)
        self._tool_starts.clear()
        failed_call = self._failed_model_call(stats, now)
        if failed_call is not None:
            self._emit(failed_call)
        for event_name, event_attributes, event_at in self._retries:
            self._event(event_name, event_attributes, event_at)
        self._retries = []
        attributes: dict[str, Any] = {
            sc.RUN_STATUS: stats.status.value,
            sc.RUN_STEPS: stats.steps,
            sc.RUN_TOOL_CALLS: stats.tool_calls,
            sc.RUN_SECONDS: stats.runtime_seconds,
            sc.INPUT_TOKENS: stats.input_tokens,
            sc.OUTPUT_TOKENS: stats.output_tokens,
        }
        if stats.thinking_tokens:
            attributes[sc.REASONING_TOKENS] = stats.thinking_tokens
        if stats.error is not None:
            attributes[sc.RUN_ERROR] = self._masker.text(stats.error)
        if stats.status in FAILED_STATUSES:
            attributes[sc.ERROR_TYPE] = stats.status.value
        if self._capture and stats.output is not None:
            attributes[sc.OUTPUT_MESSAGES] = _json(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": self._masker.text(stats.output)}],
                        "finish_reason": "stop",
                    }
                ]
            )
        with self._adopt_lock:
            self.closed = True
            leftovers, self._adopted = self._adopted, []
        record = self.record
        record.attributes.update(attributes)
        record.end = now
        if stats.status in FAILED_STATUSES:
            record.error = self._masker.text(stats.error or stats.status.value)
        for _, child in leftovers:  # children whose tool span could not be told: under the run
            self._emit(child)
        span = self.span
        if span is not None:
            span.set_attributes(attributes)
            if record.error is not None:
                span.set_status(Status(StatusCode.ERROR, record.error))
            span.end(end_time=now)
            return
        parent = self.parent
        if parent is None or not parent.adopt(self.run_id, record):
            # The parent closed first (it should not): the child goes out under the parent's run span.
            context = parent._context if parent is not None else None
            emit(self._tracer, record, context)

    def _failed_model_call(self, stats: RunStats, now: int) -> SpanRecord | None:
        """The ``chat`` span of the model call the run ended in, if it ended in one: the core records
        no step for it, so it is rebuilt from the run's error (ready since the last step or tool)."""
        error = stats.error or ""
        if stats.status not in (RunStatus.ERROR, RunStatus.TIMEOUT) or not _MODEL_FAILED.search(error):
            return None
        attributes: dict[str, Any] = {
            sc.OPERATION: "chat",
            sc.PROVIDER: self._provider,
            sc.REQUEST_MODEL: self._model,
            sc.STEP: self.steps + 1,
            sc.ERROR_TYPE: "timeout"
            if stats.status is RunStatus.TIMEOUT or "timed out" in error
            else "_OTHER",
            **self._base,
        }
        record = SpanRecord(
            f"chat {self._model}" if self._model else "chat",
            SpanKind.CLIENT,
            max(self._ready, self._started),
            now,
            attributes,
            error=self._masker.text(error),
        )
        if self._retries:
            record.events, self._retries = self._retries, []
        return record

    def abandon(self) -> None:
        """End a run that never closed (its executor shut down first), marked ``unfinished``."""
        if self.closed:
            return
        self.closed = True
        if self.span is not None:
            self.span.set_attribute(sc.RUN_STATUS, "unfinished")
            self.span.end()


def register(recorder: OtelRecorder) -> None:
    """Make ``recorder`` findable by its child runs."""
    with _live_lock:
        _live[recorder.run_id] = recorder


def live_parent(run_id: str | None) -> OtelRecorder | None:
    """The open recorder of ``run_id`` in this process, if any."""
    if not run_id:
        return None
    with _live_lock:
        found = _live.get(run_id)
    return found if found is not None and not found.closed else None


def forget(recorder: OtelRecorder) -> None:
    """Drop ``recorder`` from the registry."""
    with _live_lock:
        if _live.get(recorder.run_id) is recorder:
            del _live[recorder.run_id]
