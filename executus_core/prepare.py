"""Preparing a run: what was asked (`RunRequest`), checked and filled in (`RunPlan`).

Nothing here calls a model, a budget or a recorder; a problem found here ends the run as ``error``
before anything ran, with a message that says what to fix.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from executus_core.agent import Agent
from executus_core.approval import Decision
from executus_core.events import EventHandler
from executus_core.guard import Failure, describe, guarded
from executus_core.output import FINAL_RESULT, OutputPlan
from executus_core.ports import Model
from executus_core.tools import Tool, ToolSet
from executus_core.types import Interrupted, Message, RunInfo

if TYPE_CHECKING:
    from executus_core.executor import Executor

__all__ = ["RunPlan", "RunRequest", "prepare"]


@dataclasses.dataclass(slots=True, kw_only=True)
class RunRequest:
    """One run as its caller asked for it: the arguments of `Executor.run`, in one object.

    ``resume`` is set for a run `Executor.recover` resumes from its checkpoint (then ``prompt`` is
    unused); ``run_id`` is the id to give the run (default: a new uuid4 hex). ``history`` holds the
    messages of earlier turns of a conversation (``Result.messages`` of the previous run).
    """

    agent: Any
    prompt: Any
    caller_id: Any
    channel_id: str | None = None
    parent_run_id: str | None = None
    inputs: Mapping[str, Any] | None = None
    delivery: Any = None
    dry_run: bool = False
    on_event: EventHandler | None = None
    run_id: Any = None
    resume: Interrupted | None = None
    history: Any = None
    conversation_id: str | None = None
    decisions: dict[str, Decision] | None = None

    def __post_init__(self) -> None:
        if self.run_id is None:
            self.run_id = self.resume.info.run_id if self.resume is not None else uuid.uuid4().hex


@dataclasses.dataclass(slots=True)
class RunPlan:
    """A run that passed its checks: the agent, its model and tools, its limits and its transcript."""

    agent: Agent
    model: Model
    info: RunInfo
    transcript: list[Message]
    tools: dict[str, Tool]
    max_steps: int
    soft_timeout: float
    hard_timeout: float
    depth: int
    output: OutputPlan | None = None


class Refused(Exception):
    """A request that cannot run; the message is the run's error."""


async def prepare(
    executor: Executor, request: RunRequest, depth_of_parent: int | None, warnings: list[str]
) -> RunPlan:
    """Check ``request`` and fill its defaults; raises `Refused` with what to fix.

    ``depth_of_parent`` is the delegation depth of the run named by ``parent_run_id`` when that
    run is live in this executor; what the run should be told (a history cut) goes to ``warnings``.
    """
    settings = executor.settings.core
    if not isinstance(request.run_id, str) or not request.run_id:
        raise Refused(f"run_id must be a non-empty string, got {type(request.run_id).__name__}")
    if not isinstance(request.caller_id, str) or not request.caller_id:
        raise Refused(f"caller_id must be a non-empty string, got {request.caller_id!r}"[:300])
    resume = request.resume
    if resume is None and not isinstance(request.prompt, str):
        raise Refused(f"prompt must be a string, got {type(request.prompt).__name__}")
    if request.inputs is not None and not isinstance(request.inputs, Mapping):
        raise Refused(f"inputs must be a mapping, got {type(request.inputs).__name__}")
    for name in ("channel_id", "parent_run_id", "conversation_id"):
        value = getattr(request, name)
        if value is not None and not isinstance(value, str):
            raise Refused(f"{name} must be a string or None, got {type(value).__name__}")
    try:
        agent = request.agent if isinstance(request.agent, Agent) else Agent.model_validate(request.agent)
    except Exception as exc:
        raise Refused(f"not an agent: {exc}") from None

    depth = 0 if depth_of_parent is None else depth_of_parent + 1
    if depth > settings.max_delegation_depth:
        raise Refused(
            f"delegation depth limit ({settings.max_delegation_depth}) reached: run "
            f"{request.parent_run_id} is already {depth_of_parent} levels deep; raise "
            "max_delegation_depth if this nesting is intended"
        )
    try:
        model = executor.models.resolve(agent.model)
    except Exception as exc:
        raise Refused(f"model {agent.model_id!r}: {exc}") from None
    tools = await _tools(executor, agent)
    output = None
    if agent.output_type is not None:
        try:
            output = OutputPlan.build(agent.output_type, agent.output_retries)
        except TypeError as exc:
            raise Refused(f"agent {agent.name!r}: {exc}") from None
        if FINAL_RESULT in tools:
            raise Refused(f"agent {agent.name!r} has a tool named {FINAL_RESULT!r}, which output_type uses")

    if resume is not None:
        info = resume.info
        transcript = list(resume.messages)
        if not transcript:
            raise Refused(f"the checkpoint of run {request.run_id} holds no messages to resume from")
    else:
        info = RunInfo(
            run_id=request.run_id,
            subject_id=agent.id,
            name=agent.name,
            caller_id=request.caller_id,
            channel_id=request.channel_id,
            parent_run_id=request.parent_run_id,
            inputs=dict(request.inputs) if request.inputs is not None else None,
            conversation_id=request.conversation_id,
        )
        transcript = []
        if agent.instructions:
            transcript.append(Message(role="system", content=agent.instructions))
        if request.history is not None:
            transcript += _history(request.history, settings.max_history_messages, warnings)
        transcript.append(Message(role="user", content=request.prompt))
    return RunPlan(
        agent=agent,
        model=model,
        info=info,
        transcript=transcript,
        tools=tools,
        max_steps=agent.max_steps or settings.max_steps,
        soft_timeout=agent.soft_timeout or settings.soft_timeout,
        hard_timeout=agent.hard_timeout or settings.hard_timeout,
        depth=depth,
        output=output,
    )


def _history(history: Any, limit: int, warnings: list[str]) -> list[Message]:
    """The earlier turns to continue from: messages (or their dicts), no system messages, the last
    ``limit`` of them, cut where a user message starts so no tool result loses its call."""
    if not isinstance(history, list | tuple):
        raise Refused(f"history must be a list of Message, got {type(history).__name__}")
    messages: list[Message] = []
    for index, item in enumerate(history):
        try:
            message = item if isinstance(item, Message) else Message.model_validate(item)
        except Exception as exc:
            raise Refused(f"history[{index}] is not a message: {exc}"[:500]) from None
        if message.role != "system":  # the agent's instructions come first, once
            messages.append(message)
    if len(messages) > limit:
        start = len(messages) - limit
        while start < len(messages) and messages[start].role != "user":
            start += 1
        warnings.append(
            f"history has {len(messages)} messages; the oldest {start} were left out (max_history_messages "
            f"is {limit}: trim or summarize the history yourself to choose what stays)"
        )
        messages = messages[start:]
    return messages


async def _tools(executor: Executor, agent: Agent) -> dict[str, Tool]:
    """The agent's tools by name: `Tool` objects, registered names, and ``prefix:name`` tool sets."""
    found: dict[str, Tool] = {}

    def add(item: Tool) -> None:
        if item.name in found:
            raise Refused(f"agent {agent.name!r} has two tools named {item.name!r}")
        found[item.name] = item

    for item in agent.tools:
        if isinstance(item, Tool):
            add(item)
        elif (registered := executor.tools.get(item)) is not None:
            add(registered)
        elif ":" in item and (toolset := executor.toolsets.get(item.split(":", 1)[0])) is not None:
            for made in await _resolve_toolset(executor, toolset, item):
                add(made)
        else:
            sets = ", ".join(f"{prefix}:<name>" for prefix in sorted(executor.toolsets))
            raise Refused(
                f"agent {agent.name!r} names unknown tool {item!r}; registered tools: "
                f"{', '.join(sorted(executor.tools)) or 'none'}" + (f"; tool sets: {sets}" if sets else "")
            )
    return found


async def _resolve_toolset(executor: Executor, toolset: ToolSet, item: str) -> list[Tool]:
    label = f"tool set {toolset.prefix!r}: resolve({item.split(':', 1)[1]!r})"
    made = await guarded(
        label, toolset.resolve, item.split(":", 1)[1], timeout=executor.settings.core.port_timeout
    )
    if isinstance(made, Failure):
        reason = f"did not answer within {made.timeout:g}s" if made.error is None else describe(made.error)
        raise Refused(f"the tools {item!r} are not available: {reason}")
    if not isinstance(made, list | tuple) or not all(isinstance(t, Tool) for t in made):
        raise Refused(f"{label} returned {type(made).__name__}, not a list of Tool")
    return list(made)
