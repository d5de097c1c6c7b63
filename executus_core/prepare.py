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
from executus_core.types import Interrupted, Message, RunInfo, RunStatus, RunTranscript

if TYPE_CHECKING:
    from executus_core.executor import Executor

__all__ = ["RunPlan", "RunRequest", "prepare"]


@dataclasses.dataclass(slots=True, kw_only=True)
class RunRequest:
    """One run as its caller asked for it: the arguments of `Executor.run`, in one object.

    ``resume`` is set for a run `Executor.recover` resumes from its checkpoint (then ``prompt`` is
    unused); ``run_id`` is the id to give the run (default: a new uuid4 hex). ``history`` holds the
    messages of earlier turns of a conversation (``Result.messages`` of the previous run);
    ``continue_run`` names an earlier run whose transcript the audit gives instead.
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
    continue_run: Any = None

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

    history, conversation_id = request.history, request.conversation_id
    if resume is None and request.continue_run is not None:
        if history is not None:
            raise Refused("pass history= or continue_run=, not both: continue_run reads the history itself")
        history, conversation_id = await _continued(executor, request)

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
            conversation_id=conversation_id,
        )
        transcript = []
        if agent.instructions:
            transcript.append(Message(role="system", content=agent.instructions))
        if history is not None:
            earlier = _history(history)
            trimmer = executor.history_trimmer
            if trimmer is not None and earlier:
                timeout = agent.hard_timeout or settings.hard_timeout
                earlier = await _trimmed(trimmer, earlier, agent, timeout)
            transcript += _cut(earlier, settings.max_history_messages, warnings)
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


def _messages(value: Any, what: str) -> list[Message]:
    """``value`` as a list of `Message` (dicts are validated); raises `Refused` naming ``what``."""
    if not isinstance(value, list | tuple):
        raise Refused(f"{what} must be a list of Message, got {type(value).__name__}")
    messages: list[Message] = []
    for index, item in enumerate(value):
        try:
            messages.append(item if isinstance(item, Message) else Message.model_validate(item))
        except Exception as exc:
            raise Refused(f"{what}[{index}] is not a message: {exc}"[:500]) from None
    return messages


def _history(history: Any) -> list[Message]:
    """The earlier turns to continue from: messages (or their dicts), without system messages (the
    agent's instructions come first, once)."""
    return [m for m in _messages(history, "history") if m.role != "system"]


async def _trimmed(trimmer: Any, history: list[Message], agent: Agent, timeout: float) -> list[Message]:
    """What the host's ``history_trimmer`` keeps of ``history``; a trimmer that fails refuses the
    run (nothing is sent that the host meant to leave out)."""
    label = f"history_trimmer {getattr(trimmer, '__qualname__', None) or type(trimmer).__name__}"
    kept = await guarded(label, trimmer, list(history), agent, timeout=timeout)
    if isinstance(kept, Failure):
        raise Refused(f"{kept}; the run did not start (nothing was sent to the model)")
    return [m for m in _messages(kept, f"what {label} returned") if m.role != "system"]


def _cut(messages: list[Message], limit: int, warnings: list[str]) -> list[Message]:
    """The last ``limit`` messages of the history, cut where a user message starts so no tool result
    loses its call."""
    if len(messages) > limit:
        start = len(messages) - limit
        while start < len(messages) and messages[start].role != "user":
            start += 1
        warnings.append(
            f"history has {len(messages)} messages; the oldest {start} were left out (max_history_messages "
            f"is {limit}; an Executor(history_trimmer=...) chooses what stays)"
        )
        messages = messages[start:]
    return messages


_NOT_ENDED = {
    RunStatus.AWAITING_APPROVAL: (
        "is paused, waiting for approval of its tool calls: answer it first (Executor.resume, "
        "executus approve / deny), then continue from it"
    ),
    RunStatus.INTERRUPTED: (
        "was interrupted and waits to be resumed (Executor.recover / resume): continue from it once it has ended"
    ),
}


async def _continued(executor: Executor, request: RunRequest) -> tuple[list[Message], str]:
    """The history and conversation id of a run that continues ``request.continue_run``, read from
    the first audit that has its transcript; raises `Refused` saying why it cannot."""
    run_id = request.continue_run
    if not isinstance(run_id, str) or not run_id:
        raise Refused(f"continue_run must be a run id (a non-empty string), got {run_id!r}"[:300])
    if run_id in executor._runs:
        raise Refused(f"run {run_id} is still running in this executor: continue from it once it has ended")
    readers = [
        (name, read)
        for name, audit in executor.ports.audits
        if callable(read := getattr(audit, "transcript", None))
    ]
    if not readers:
        have = ", ".join(repr(name) for name, _ in executor.ports.audits)
        raise Refused(
            "continue_run reads the earlier run's transcript from the audit, and no audit here keeps "
            f"transcripts ({'installed: ' + have if have else 'no audit is installed'}); install "
            "executus-audit-sql, or pass history=previous.messages"
        )
    timeout = executor.settings.core.port_timeout
    failures: list[str] = []
    found: RunTranscript | None = None
    where = ""
    for name, read in readers:
        label = f"audit {name!r}: transcript"
        answer = await guarded(label, read, run_id, timeout=timeout)
        if isinstance(answer, Failure):
            failures.append(str(answer))
            continue
        if answer is None:
            continue
        try:
            found = answer if isinstance(answer, RunTranscript) else RunTranscript.model_validate(answer)
        except Exception:
            failures.append(f"{label} returned {type(answer).__name__}, not a RunTranscript")
            continue
        where = f"audit {name!r}"
        break
    if found is None:
        if failures:
            raise Refused(f"cannot read the transcript of run {run_id}: {'; '.join(failures)}")
        names = ", ".join(repr(name) for name, _ in readers)
        raise Refused(f"continue_run: no run {run_id!r} in the audit ({names})")
    if found.status is None:
        raise Refused(
            f"run {run_id} has not ended ({where} shows it running; a run whose process stopped stays so "
            "until it is recovered): continue from it once it has ended"
        )
    if found.status in _NOT_ENDED:
        raise Refused(f"run {run_id} {_NOT_ENDED[found.status]}")
    if found.status is not RunStatus.OK:
        raise Refused(
            f"run {run_id} ended {found.status.value}: only a run that ended ok can be continued; continue "
            "from the turn before it, or pass history= with the messages you choose"
        )
    if found.info.caller_id != request.caller_id:
        raise Refused(
            f"run {run_id} belongs to another caller: a conversation is continued by its own caller"
        )
    if not any(m.role != "system" for m in found.messages):
        raise Refused(
            f"{where} holds no messages for run {run_id} (recorded before it kept transcripts, or by "
            "an audit told not to keep them): pass history= instead"
        )
    conversation = found.info.conversation_id or found.info.run_id
    if request.conversation_id is not None and request.conversation_id != conversation:
        raise Refused(
            f"conversation_id {request.conversation_id!r} is not the conversation of run {run_id} "
            f"({conversation!r}): leave conversation_id out to continue it"
        )
    return list(found.messages), conversation


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
