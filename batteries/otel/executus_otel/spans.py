"""The span vocabulary (GenAI semantic conventions plus ``executus.*``), and spans kept as records.

A `SpanRecord` is a finished span that has not been handed to a tracer yet: a name, a kind, explicit
start and end times, attributes, events and children. Recorders build records on the per-step path
(plain objects, no tracer call) and `emit` turns one into real spans, children included. A child run
(a delegation) is kept as a record tree until its parent's tool span exists, then emitted under it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = [
    "AGENT_ID",
    "AGENT_NAME",
    "CONVERSATION_ID",
    "ERROR_TYPE",
    "FINISH_REASONS",
    "OPERATION",
    "OUTPUT_MESSAGES",
    "PROVIDER",
    "REQUEST_MODEL",
    "RESPONSE_MODEL",
    "RUN_ID",
    "SpanRecord",
    "emit",
]

# GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/), development status.
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
AGENT_NAME = "gen_ai.agent.name"
AGENT_ID = "gen_ai.agent.id"
AGENT_DESCRIPTION = "gen_ai.agent.description"
CONVERSATION_ID = "gen_ai.conversation.id"
OUTPUT_MESSAGES = "gen_ai.output.messages"
TOOL_NAME = "gen_ai.tool.name"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"
ERROR_TYPE = "error.type"

# executus's own, for what the conventions have no name for.
RUN_ID = "executus.run.id"
PARENT_RUN_ID = "executus.run.parent_id"
CHILD_RUN_ID = "executus.run.child_id"
CALLER_ID = "executus.run.caller_id"
RUN_STATUS = "executus.run.status"
RUN_ERROR = "executus.run.error"
RUN_STEPS = "executus.run.steps"
RUN_TOOL_CALLS = "executus.run.tool_calls"
RUN_SECONDS = "executus.run.runtime_seconds"
RUN_INPUTS = "executus.run.inputs"
STEP = "executus.step"
EVENT_PAYLOAD = "executus.event.payload"
ERROR_MESSAGE = "executus.error.message"
ERROR_EVENT = "executus.error"

Attributes = dict[str, Any]


@dataclasses.dataclass(slots=True)
class SpanRecord:
    """A span to emit later, with its times in nanoseconds since the epoch."""

    name: str
    kind: SpanKind
    start: int
    end: int
    attributes: Attributes
    error: str | None = None  # the status description of a span that failed
    events: list[tuple[str, Attributes, int]] = dataclasses.field(default_factory=list)
    children: list[SpanRecord] = dataclasses.field(default_factory=list)


def emit(tracer: trace.Tracer, record: SpanRecord, parent: Context | None) -> None:
    """Start and end the spans of ``record`` and its children, under ``parent`` (a context)."""
    span = tracer.start_span(
        record.name, context=parent, kind=record.kind, attributes=record.attributes, start_time=record.start
    )
    for name, attributes, at in record.events:
        span.add_event(name, attributes, at)
    if record.error is not None:
        span.set_status(Status(StatusCode.ERROR, record.error))
    if record.children:
        inner = trace.set_span_in_context(span, parent)
        for child in record.children:
            emit(tracer, child, inner)
    span.end(end_time=max(record.end, record.start))
