"""The data executus passes around: messages, model calls, agents, run info and results.

Everything a host or a battery stores or sends is a pydantic v2 model (it validates on the way in and
dumps to JSON on the way out). The two objects made on every step, `ModelRequest` and `RunEvent`, are
slotted dataclasses instead, so the per-step path never re-validates the transcript.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from executus_core.errors import RunFailed

__all__ = [
    "Artifact",
    "CheckpointState",
    "DeliveryTarget",
    "Interrupted",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "PaletteEntry",
    "PendingCall",
    "Result",
    "RunEvent",
    "RunInfo",
    "RunStats",
    "RunStatus",
    "RunTranscript",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC): the only kind of time executus hands out."""
    return datetime.now(UTC)


class ToolCall(BaseModel):
    """One tool call the model asked for.

    ``arguments_error`` is set by a provider when the model's arguments were not valid JSON: the
    loop then answers the call with that error instead of running the tool, so the model can retry.
    ``raw_arguments`` is then what the model really sent (``arguments`` is ``{}``), for the audit
    trail and progress lines; it is ``None`` whenever the arguments parsed.
    """

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    arguments_error: str | None = None
    raw_arguments: str | None = None


class Message(BaseModel):
    """One message of a transcript.

    ``provider_data`` keeps what a provider must send back verbatim on later steps (Anthropic's
    thinking blocks and their signatures); other providers ignore it.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False
    provider_data: dict[str, Any] | None = None

    # Each provider caches this message's wire form here the first time it sends it, so a request
    # body is assembled from cached bytes instead of re-serializing the history on every step.
    _wire: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        # pydantic compares private attributes too; the wire cache is not part of a message's value,
        # so a message that was sent still equals a fresh copy of it (or one read from a checkpoint).
        if not isinstance(other, Message):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @classmethod
    def system(cls, content: str) -> Message:
        """A system message."""
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str) -> Message:
        """A user message."""
        return cls(role="user", content=content)

    @classmethod
    def assistant(cls, content: str | None, tool_calls: list[ToolCall] | None = None) -> Message:
        """An assistant message: text, tool calls, or both."""
        return cls(role="assistant", content=content, tool_calls=tool_calls or [])

    @classmethod
    def tool(
        cls, tool_call_id: str, content: str, *, name: str | None = None, is_error: bool = False
    ) -> Message:
        """The result of the tool call ``tool_call_id``."""
        return cls(role="tool", content=content, tool_call_id=tool_call_id, name=name, is_error=is_error)


class Usage(BaseModel):
    """Tokens one model call (or a whole run) used. Cached input tokens are part of ``input_tokens``."""

    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            thinking_tokens=self.thinking_tokens + other.thinking_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
        )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class ModelResponse(BaseModel):
    """What one model call returned: text, tool calls, or both.

    ``warnings`` are what the provider noticed but did not fail on (a server that reports no token
    usage, an answer with neither text nor tool calls); the loop copies each distinct one into
    ``Result.warnings`` once, however many calls repeat it.
    """

    text: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    model: str | None = None
    provider_data: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)

    def to_message(self) -> Message:
        """The assistant message this response adds to the transcript."""
        return Message(
            role="assistant", content=self.text, tool_calls=self.tool_calls, provider_data=self.provider_data
        )


class ToolSpec(BaseModel):
    """A tool as the model sees it: a name, a description and a JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ModelSettings(BaseModel):
    """Per-call settings passed through to the provider; ``None`` leaves the provider's default."""

    model_config = ConfigDict(extra="allow")

    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False


@dataclasses.dataclass(slots=True)
class ModelRequest:
    """One call to a model.

    ``messages`` is the run's transcript itself, not a copy: a provider must not mutate it.
    ``deadline`` is the ``loop.time()`` after which the run ends (retries never sleep past it);
    ``emit(type, data)`` reports run events (retries, streamed text) and never raises.
    ``output_schema`` is set, for a model that declares ``supports_output_schema = True``, when the
    agent wants a typed answer: the JSON schema its final text must follow (OpenAI's
    ``response_format``); other models get a ``final_result`` tool instead.
    """

    messages: list[Message]
    tools: list[ToolSpec] = dataclasses.field(default_factory=list)
    settings: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    run_id: str = ""
    deadline: float | None = None
    emit: Callable[[str, dict[str, Any]], None] | None = None
    output_schema: dict[str, Any] | None = None


class RunStatus(enum.StrEnum):
    """How a run ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"
    DRY_RUN = "dry_run"
    INTERRUPTED = "interrupted"
    AWAITING_APPROVAL = "awaiting_approval"


class PendingCall(BaseModel):
    """A tool call waiting for a person's decision (see `Executor.resume`)."""

    call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class RunInfo(BaseModel):
    """Who runs what: the attribution every port gets when a run starts.

    ``conversation_id`` links the turns of one conversation (runs that continued one another with
    ``history=``), as the host names it with ``Executor.run(..., conversation_id=...)``.
    """

    run_id: str
    subject_id: str
    name: str
    caller_id: str
    channel_id: str | None = None
    parent_run_id: str | None = None
    inputs: dict[str, Any] | None = None
    started_at: datetime = Field(default_factory=utcnow)
    conversation_id: str | None = None


class RunStats(BaseModel):
    """The roll-up of a finished run, as recorders store it."""

    status: RunStatus
    output: str | None = None
    error: str | None = None
    steps: int = 0
    tool_calls: int = 0
    runtime_seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0

    @property
    def usage(self) -> Usage:
        """The run's tokens as a `Usage` (what budgets are charged)."""
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            thinking_tokens=self.thinking_tokens,
        )


class Artifact(BaseModel):
    """A file a tool produced during a run; delivered beside the result (base64 in JSON)."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    name: str
    content: bytes
    media_type: str = "application/octet-stream"


class Result(BaseModel):
    """What `Executor.run` returns, always.

    ``error`` says what ended the run when ``status`` is not ``ok``. ``warnings`` lists the port
    failures the run survived (an audit recorder that raised, a delivery that failed, ...).
    ``request`` holds, for a ``dry_run``, the first request that would have been sent.
    ``output`` is the model's final answer: its text, or, for an agent with an ``output_type``, the
    answer validated as that type (``text`` then keeps the raw text it was read from).
    ``pending`` lists, for a run ``awaiting_approval``, the tool calls waiting for a decision.
    ``retry_after`` is, for a refused run (``budget_exceeded``, or a provider's rate limit), the
    seconds to wait before trying again, where the refusing side knows it; else ``None``.
    """

    run_id: str
    status: RunStatus
    output: Any = None
    error: str | None = None
    stats: RunStats
    messages: list[Message] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    request: dict[str, Any] | None = None
    retry_after: float | None = None
    text: str | None = None
    pending: list[PendingCall] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the run ended ``ok``."""
        return self.status is RunStatus.OK

    def raise_for_status(self) -> Result:
        """Raise `RunFailed` unless the run ended ``ok``; return the result otherwise (to chain)."""
        if self.status is not RunStatus.OK:
            raise RunFailed(self)
        return self


@dataclasses.dataclass(slots=True, frozen=True)
class RunEvent:
    """Something that happened in a run: a step, a tool start or end, a retry, a streamed delta...

    ``type`` is one of ``run.start``, ``step``, ``tool.start``, ``tool.end``, ``model.retry``,
    ``model.delta``, ``steer``, ``critic``, ``checkpoint``, ``child``, ``run.end`` (or
    ``run.taken_over`` when another worker took the run over) and, as the last event of
    `Executor.stream`, ``result`` (whose ``data["result"]`` is the `Result`).
    """

    run_id: str
    type: str
    data: dict[str, Any]
    at: datetime


class DeliveryTarget(BaseModel):
    """Where a run's result goes: ``kind`` picks the `Delivery`; the other fields are its options.

    Example: ``DeliveryTarget(kind="webhook", url="https://host/hook", secret="...")``.
    """

    model_config = ConfigDict(extra="allow")

    kind: str

    @property
    def options(self) -> dict[str, Any]:
        """The target's fields other than ``kind``, for its `Delivery` to validate."""
        return dict(self.model_extra or {})

    def __repr__(self) -> str:
        # Targets carry secrets (webhook signing keys): show only their kind.
        return f"DeliveryTarget(kind={self.kind!r})"

    __str__ = __repr__


class CheckpointState(BaseModel):
    """What one `Checkpointer.save` call persists: only what is new since the previous save.

    ``messages`` are appended after the ``offset`` messages already saved; ``iteration`` is the step
    count so far and ``usage`` the run's tokens so far. ``attempts`` maps a tool call id to how many
    times it has been started (sent only when a recovered run starts a call again); a store keeps
    the latest count per call and hands it back in `Interrupted.attempts`.
    """

    run_id: str
    iteration: int
    offset: int
    messages: list[Message]
    usage: Usage = Field(default_factory=Usage)
    tool_calls: int = 0
    attempts: dict[str, int] = Field(default_factory=dict)


class RunTranscript(BaseModel):
    """A run's messages as an audit kept them: what ``Executor.run(..., continue_run=run_id)`` reads.

    ``status`` is ``None`` while the run has not ended (it is running, or its process died before
    it could end it). ``messages`` is the whole transcript the run ended with — the history it was
    given, its prompt, the model's answers and the tool results — as `Result.messages` held it
    (an audit may store secrets masked); empty when the audit kept none.
    """

    info: RunInfo
    status: RunStatus | None = None
    messages: list[Message] = Field(default_factory=list)


class Interrupted(BaseModel):
    """A run a `CheckpointStore` holds for recovery: its info, its agent and its saved transcript.

    ``attempts`` holds, per tool call id, the starts the store recorded (see `CheckpointState`); a
    call without a result and without an entry was started once, by the run that was interrupted
    (0: never started, as for a call that waits for approval). ``paused_at`` is when a run paused
    for approval (`Checkpointer.pause`), for a store that keeps it.
    """

    info: RunInfo
    agent: dict[str, Any]
    messages: list[Message]
    iteration: int = 0
    usage: Usage = Field(default_factory=Usage)
    tool_calls: int = 0
    attempts: dict[str, int] = Field(default_factory=dict)
    paused_at: datetime | None = None


class PaletteEntry(BaseModel):
    """A skill or agent a `PaletteSource` resolved: what the model sees as ``skill__<name>`` / ``agent__<name>``.

    ``input_schema`` is the JSON schema of a skill's inputs (agents always take a ``prompt``).
    """

    name: str
    id: str = ""
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


def __getattr__(name: str) -> Any:
    # `Agent` lives in executus_core.agent (it needs `Tool`, and tools need these types); it stays
    # importable from here for code written before the move.
    if name == "Agent":
        from executus_core.agent import Agent

        return Agent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
