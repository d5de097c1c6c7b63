"""Delegation: palette entries become tools, and the in-process palette runs them as child runs.

An agent with ``skill_palette=["summarize"]`` and ``subagent_palette=["researcher"]`` gets the tools
``skill__summarize`` (its arguments are the skill's inputs, its schema the skill's input schema) and
``agent__researcher`` (one argument, ``prompt``). At the start of each run, every `PaletteSource`
is asked in order (a host's ``Executor(plugins=[...])`` first, then installed batteries, then the
built-in palette); the first that resolves a name serves it. A name nobody resolves still becomes a
tool, which answers that it is not configured, so the model learns it instead of the run failing.

The built-in `InProcessPalette` serves agents registered with `Executor.register_agent` and skills
registered with `Executor.register_skill`, running them through the same executor as child runs:
``parent_run_id`` is the delegating run, and their events reach the parent's consumers as ``child``
events (``{"tool", "child_run_id", "type", "data"}``, nested for grandchildren).

Delegation nests at most ``max_delegation_depth`` levels (default 3: a run, its child, grandchild and
great-grandchild). A delegation call past that is not made: the model gets a tool error saying so,
which is what stops an agent that keeps delegating to itself. A palette source that raises, hangs
past the run's deadline or answers oddly becomes a tool error too; the parent run goes on.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from executus_core.agent import Agent
from executus_core.config import Settings
from executus_core.guard import Failure, await_me_maybe, guarded
from executus_core.hookspecs import hookimpl
from executus_core.ports import EventCallback, PaletteSource
from executus_core.tools import Tool, ToolArgumentsError
from executus_core.types import PaletteEntry, Result, RunEvent, RunStatus

if TYPE_CHECKING:
    from executus_core.executor import Executor

__all__ = ["AGENT_SCHEMA", "DelegationError", "Delegator", "InProcessPalette", "palette_tools"]

child_events: contextvars.ContextVar[Callable[[str, Mapping[str, Any]], Any] | None] = contextvars.ContextVar(
    "executus_child_events", default=None
)
"""While a delegation tool runs: where the child run's events go (set by the loop, read here)."""

AGENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"prompt": {"type": "string", "description": "What to ask the agent."}},
    "required": ["prompt"],
}
"""The arguments of every ``agent__<name>`` tool: one ``prompt`` string."""


class DelegationError(Exception):
    """A delegation tool could not do its job; the loop sends the message to the model as a tool error.

    Raised for a name no palette source resolves, a call past ``max_delegation_depth``, and a child
    run that did not end ``ok``.
    """


class _Skill:
    """A registered skill: the agent that does it, its input schema and how inputs become a prompt."""

    def __init__(
        self,
        name: str,
        agent: Agent,
        schema: dict[str, Any],
        model: type[BaseModel] | None,
        prompt: str | None,
        description: str,
    ) -> None:
        self.name, self.agent, self.schema, self.model, self.prompt = name, agent, schema, model, prompt
        self.description = description or agent.description or f"Run the {name} skill."

    def check(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The inputs, validated by the skill's model (or its schema's ``required`` list)."""
        if self.model is not None:
            try:
                return self.model.model_validate(dict(inputs)).model_dump(mode="json")
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'inputs'}: {e['msg']}" for e in exc.errors()
                )
                raise ToolArgumentsError(f"invalid inputs for skill__{self.name}: {problems}") from None
        missing = [k for k in self.schema.get("required", []) if k not in inputs]
        if missing:
            raise ToolArgumentsError(f"skill__{self.name} needs the inputs {', '.join(missing)}")
        return dict(inputs)

    def render(self, inputs: Mapping[str, Any]) -> str:
        """The child run's prompt: the template filled from the inputs, or the inputs as JSON."""
        if self.prompt is None:
            return json.dumps(dict(inputs), ensure_ascii=False, default=str)
        try:
            return self.prompt.format(**inputs)
        except (KeyError, IndexError) as exc:
            raise ToolArgumentsError(f"skill__{self.name}'s prompt template needs the input {exc}") from None


class InProcessPalette:
    """The built-in `PaletteSource`: the agents and skills registered on one executor.

    It runs them with `Executor.run` on the same executor, so a child run gets the same ports
    (audit, budget, critic, checkpoints) as any run, with ``parent_run_id`` set to the delegating run.
    """

    executus_name = "palette"

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.skills: dict[str, _Skill] = {}

    @hookimpl
    def executus_palette(self, settings: Settings) -> PaletteSource:
        """This executor's in-process palette (always present; it resolves nothing until registered)."""
        return self

    def add_skill(
        self,
        name: str,
        agent: Agent,
        *,
        inputs: type | dict[str, Any] | None = None,
        prompt: str | None = None,
        description: str = "",
    ) -> None:
        """Register ``agent`` as the skill ``name`` (see `Executor.register_skill`)."""
        model: type[BaseModel] | None = None
        if isinstance(inputs, type) and issubclass(inputs, BaseModel):
            model = inputs
            schema = inputs.model_json_schema()
            schema.pop("title", None)
        elif isinstance(inputs, dict):
            schema = inputs
        elif inputs is None:
            schema = {"type": "object", "properties": {}, "additionalProperties": True}
        else:
            raise TypeError(
                f"inputs of skill {name!r} must be a pydantic model class or a JSON schema dict, got {inputs!r}"
            )
        self.skills[name] = _Skill(name, agent, schema, model, prompt, description)

    async def resolve_skill(self, caller_id: str, name: str) -> PaletteEntry | None:
        """The registered skill ``name``, or ``None``."""
        skill = self.skills.get(name)
        if skill is None:
            return None
        return PaletteEntry(
            name=name, id=skill.agent.id, description=skill.description, input_schema=skill.schema
        )

    async def resolve_agent(self, caller_id: str, name: str) -> PaletteEntry | None:
        """The registered agent ``name``, or ``None``."""
        agent = self.executor.agents.get(name)
        if agent is None:
            return None
        return PaletteEntry(
            name=name,
            id=agent.id,
            description=agent.description or f"Ask the {name} agent.",
            input_schema=AGENT_SCHEMA,
        )

    async def invoke_skill(
        self,
        caller_id: str,
        channel_id: str | None,
        name: str,
        inputs: dict[str, Any],
        parent_run_id: str | None,
    ) -> tuple[str, str, str]:
        """Run the skill's agent as a child run on its rendered prompt; ``inputs`` go to its `RunInfo`."""
        skill = self.skills.get(name)
        if skill is None:
            raise DelegationError(
                f"no skill named {name!r} is registered (registered: {', '.join(sorted(self.skills)) or 'none'})"
            )
        checked = skill.check(inputs)
        # PaletteSource.invoke_skill has no on_event; in process, the delegating tool's is at hand.
        forward = child_events.get()
        result = await self.executor.run(
            skill.agent,
            skill.render(checked),
            caller_id=caller_id,
            channel_id=channel_id,
            parent_run_id=parent_run_id,
            inputs=checked,
            on_event=_event_handler(forward),
        )
        return _outcome(result)

    async def invoke_agent(
        self,
        caller_id: str,
        channel_id: str | None,
        name: str,
        prompt: str,
        parent_run_id: str | None,
        model_tier_override: str | None,
        prompt_prepend: str | None,
        tools_subset: list[str] | None,
        on_event: EventCallback | None,
    ) -> tuple[str, str, str]:
        """Run the registered agent as a child run; its events go to ``on_event`` with ``data["run_id"]``."""
        agent = self.executor.agents.get(name)
        if agent is None:
            raise DelegationError(
                f"no agent named {name!r} is registered "
                f"(registered: {', '.join(sorted(self.executor.agents)) or 'none'})"
            )
        changes: dict[str, Any] = {}
        if model_tier_override:
            changes["model"] = model_tier_override
        if tools_subset is not None:
            keep = set(tools_subset)
            changes["tools"] = [t for t in agent.tools if (t if isinstance(t, str) else t.name) in keep]
        if changes:
            agent = agent.model_copy(update=changes)
        if prompt_prepend:
            prompt = f"{prompt_prepend}\n\n{prompt}"
        result = await self.executor.run(
            agent,
            prompt,
            caller_id=caller_id,
            channel_id=channel_id,
            parent_run_id=parent_run_id,
            on_event=_event_handler(on_event),
        )
        return _outcome(result)


def _event_handler(on_event: EventCallback | None) -> Callable[[RunEvent], Any] | None:
    """Adapt a ``(type, data)`` callback to the `RunEvent` handler `Executor.run` takes."""
    if on_event is None:
        return None

    async def handle(event: RunEvent) -> None:
        await await_me_maybe(on_event(event.type, {**event.data, "run_id": event.run_id}))

    return handle


def _outcome(result: Result) -> tuple[str, str, str]:
    """A child run's ``(text, run_id, status)``: its output if ``ok``, else what went wrong."""
    ok = result.status is RunStatus.OK
    # a typed child's answer reaches the parent as its JSON text
    answer = result.text if result.text is not None else result.output
    text = (answer or "") if ok else (result.error or answer or "")
    return text, result.run_id, result.status.value


@dataclasses.dataclass(slots=True, kw_only=True)
class Delegator:
    """What the delegation tools need from the run that delegates (given by the loop)."""

    run_id: str
    caller_id: str
    channel_id: str | None
    depth: int
    max_depth: int
    palettes: Sequence[tuple[str, PaletteSource]]
    timeout: float
    warn: Callable[[str], None]


async def _resolve(run: Delegator, kind: str, name: str) -> tuple[PaletteEntry, str, PaletteSource] | None:
    for source_name, source in run.palettes:
        label = f"palette {source_name!r}: resolve_{kind}"
        found = await guarded(
            label, getattr(source, f"resolve_{kind}"), caller_id=run.caller_id, name=name, timeout=run.timeout
        )
        if isinstance(found, Failure):
            run.warn(str(found))
            continue
        if found is None:
            continue
        if isinstance(found, Mapping):
            try:
                found = PaletteEntry.model_validate({"name": name, **found})
            except ValidationError as exc:
                run.warn(f"{label}({name!r}) returned a bad entry: {exc}")
                continue
        if not isinstance(found, PaletteEntry):
            run.warn(f"{label} returned {type(found).__name__}, not a PaletteEntry")
            continue
        return found, source_name, source
    return None


def _not_configured(run: Delegator, kind: str, name: str) -> Tool:
    asked = ", ".join(repr(n) for n, _ in run.palettes) or "none"

    async def answer(arguments: dict[str, Any]) -> str:
        raise DelegationError(
            f"the {kind} {name!r} is not configured: no palette source resolves it (asked: {asked}). "
            "Carry on without it."
        )

    return Tool(
        name=f"{kind}__{name}",
        description=f"The {kind} {name} (not configured: calling it only returns an error).",
        fn=answer,
        args_model=None,
        parameters={"type": "object", "properties": {}},
    )


def _delegation_tool(
    run: Delegator, kind: str, entry: PaletteEntry, source_name: str, source: PaletteSource
) -> Tool:
    tool_name = f"{kind}__{entry.name}"
    label = f"palette {source_name!r}: invoke_{kind}"

    async def invoke(arguments: dict[str, Any]) -> str:
        if run.depth >= run.max_depth:
            raise DelegationError(
                f"{tool_name} was not called: the delegation depth limit is reached (this run is "
                f"{run.depth} levels below the first, and max_delegation_depth is {run.max_depth}). Answer "
                "without delegating further."
            )
        common: dict[str, Any] = {
            "caller_id": run.caller_id,
            "channel_id": run.channel_id,
            "name": entry.name,
            "parent_run_id": run.run_id,
        }
        prompt = arguments.get("prompt")
        if kind == "agent" and (not isinstance(prompt, str) or not prompt.strip()):
            raise ToolArgumentsError(f"{tool_name} needs a non-empty 'prompt' string")
        if kind == "skill":
            outcome = await guarded(label, source.invoke_skill, inputs=dict(arguments), **common)
        else:
            outcome = await guarded(
                label,
                source.invoke_agent,
                prompt=str(prompt),
                model_tier_override=None,
                prompt_prepend=None,
                tools_subset=None,
                on_event=child_events.get(),
                **common,
            )
        if isinstance(outcome, Failure):
            assert outcome.error is not None  # no timeout given: the run's deadline bounds it
            if not isinstance(outcome.error, DelegationError | ToolArgumentsError):
                # the model reads the tool error; the host reads which port failed in Result.warnings
                run.warn(str(outcome))
            raise outcome.error
        if not (isinstance(outcome, tuple | list) and len(outcome) == 3):
            message = f"{label} returned {type(outcome).__name__}, not (output, run_id, status)"
            run.warn(message)
            raise TypeError(message)
        output, child_id, status = outcome
        if status == RunStatus.OK.value:
            return str(output)
        raise DelegationError(f"{tool_name} (run {child_id}) ended {status}: {output}")

    return Tool(
        name=tool_name,
        description=entry.description or f"Delegate to the {kind} {entry.name}.",
        fn=invoke,
        args_model=None,
        parameters=entry.input_schema if kind == "skill" else AGENT_SCHEMA,
    )


async def palette_tools(run: Delegator, agent: Agent) -> list[Tool]:
    """The delegation tools of ``agent``, resolved against every palette source, in order."""
    made = []
    for kind, names in (("skill", agent.skill_palette), ("agent", agent.subagent_palette)):
        for name in names:
            resolved = await _resolve(run, kind, name)
            if resolved is None:
                made.append(_not_configured(run, kind, name))
            else:
                made.append(_delegation_tool(run, kind, *resolved))
    return made
