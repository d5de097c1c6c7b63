"""Delegation: palette entries become tools, and the in-process palette runs them as child runs.

An agent with ``skill_palette=["summarize"]`` and ``subagent_palette=["researcher"]`` gets the tools
``skill__summarize`` (its arguments are the skill's inputs) and ``agent__researcher`` (one argument,
``prompt``). At the start of each run, every `PaletteSource` is asked in order; the first that
resolves a name serves it. A name nobody resolves still becomes a tool, which answers that it is not
configured, so the model learns it instead of the run failing.

The built-in `InProcessPalette` serves agents registered with `Executor.register_agent` and skills
registered with `Executor.register_skill`, running them through the same executor as child runs
(``parent_run_id`` set, their progress forwarded as ``child`` events). A chain of delegations
deeper than ``max_delegation_depth`` (default 3) is stopped with a clear tool error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from executus_core.config import Settings
from executus_core.hookspecs import hookimpl
from executus_core.ports import EventCallback, PaletteSource
from executus_core.tools import Tool
from executus_core.types import Agent, PaletteEntry, RunEvent, RunStatus

if TYPE_CHECKING:
    from executus_core.executor import Executor
    from executus_core.loop import AgentRun

__all__ = ["InProcessPalette", "palette_tools"]

AGENT_SCHEMA = {
    "type": "object",
    "properties": {"prompt": {"type": "string", "description": "What to ask the agent."}},
    "required": ["prompt"],
}


class _Skill:
    def __init__(self, name: str, agent: Agent, schema: dict[str, Any], prompt: str | None, description: str):
        self.name, self.agent, self.schema, self.prompt = name, agent, schema, prompt
        self.description = description or agent.description or f"Run the {name} skill."

    def render(self, inputs: Mapping[str, Any]) -> str:
        if self.prompt is None:
            return json.dumps(dict(inputs), ensure_ascii=False, default=str)
        return self.prompt.format(**inputs)


class InProcessPalette:
    """The built-in `PaletteSource`: the agents and skills registered on this executor."""

    executus_name = "palette"

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.skills: dict[str, _Skill] = {}

    @hookimpl
    def executus_palette(self, settings: Settings) -> PaletteSource:
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
        if isinstance(inputs, type) and issubclass(inputs, BaseModel):
            schema = inputs.model_json_schema()
            schema.pop("title", None)
        elif isinstance(inputs, dict):
            schema = inputs
        else:
            schema = {"type": "object", "properties": {}, "additionalProperties": True}
        self.skills[name] = _Skill(name, agent, schema, prompt, description)

    async def resolve_skill(self, caller_id: str, name: str) -> PaletteEntry | None:
        skill = self.skills.get(name)
        if skill is None:
            return None
        return PaletteEntry(
            name=name, id=skill.agent.id, description=skill.description, input_schema=skill.schema
        )

    async def resolve_agent(self, caller_id: str, name: str) -> PaletteEntry | None:
        agent = self.executor._agents.get(name)
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
        skill = self.skills[name]
        result = await self.executor.run(
            skill.agent,
            skill.render(inputs),
            caller_id=caller_id,
            channel_id=channel_id,
            parent_run_id=parent_run_id,
            inputs=inputs,
        )
        return _outcome(result.output, result.error, result.run_id, result.status)

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
        agent = self.executor._agents[name]
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

        async def forward(event: RunEvent) -> None:
            if on_event is not None:
                value = on_event(event.type, event.data)
                if value is not None:
                    await value

        result = await self.executor.run(
            agent,
            prompt,
            caller_id=caller_id,
            channel_id=channel_id,
            parent_run_id=parent_run_id,
            on_event=forward if on_event is not None else None,
        )
        return _outcome(result.output, result.error, result.run_id, result.status)


def _outcome(output: str | None, error: str | None, run_id: str, status: RunStatus) -> tuple[str, str, str]:
    text = (output or "") if status is RunStatus.OK else (error or output or "")
    return text, run_id, status.value


async def _resolve(run: AgentRun, kind: str, name: str) -> tuple[PaletteEntry, str, PaletteSource] | None:
    from executus_core.loop import _FAILED

    for source_name, source in run.ex.ports.palettes:
        method = getattr(source, f"resolve_{kind}")
        found = await run._port(
            f"palette {source_name!r}: resolve_{kind}", method, caller_id=run.caller_id, name=name
        )
        if found is _FAILED or found is None:
            continue
        if isinstance(found, Mapping):
            found = PaletteEntry.model_validate({"name": name, **found})
        if not isinstance(found, PaletteEntry):
            run.warn(
                f"palette {source_name!r}: resolve_{kind} returned {type(found).__name__}, not a PaletteEntry"
            )
            continue
        return found, source_name, source
    return None


def _not_configured(kind: str, name: str) -> Tool:
    async def answer(arguments: dict[str, Any]) -> str:
        return (
            f"error: the {kind} {name!r} is not configured: no palette source resolves it. "
            "Carry on without it."
        )

    return Tool(
        name=f"{kind}__{name}",
        description=f"The {kind} {name} (not configured).",
        fn=answer,
        args_model=None,
        parameters={"type": "object", "properties": {}},
    )


def _delegation_tool(
    run: AgentRun, kind: str, entry: PaletteEntry, source_name: str, source: PaletteSource
) -> Tool:
    label = f"palette {source_name!r}: invoke_{kind}"

    async def forward_child(type: str, data: Mapping[str, Any]) -> None:
        run.emit("child", {"tool": f"{kind}__{entry.name}", "type": type, "data": dict(data)})

    async def invoke(arguments: dict[str, Any]) -> str:
        common = {
            "caller_id": run.caller_id,
            "channel_id": run.channel_id,
            "name": entry.name,
            "parent_run_id": run.run_id,
        }
        if kind == "skill":
            outcome = await source.invoke_skill(inputs=arguments, **common)
        else:
            prompt = arguments.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                return f"error: agent__{entry.name} needs a non-empty 'prompt' string"
            outcome = await source.invoke_agent(
                prompt=prompt,
                model_tier_override=None,
                prompt_prepend=None,
                tools_subset=None,
                on_event=forward_child if run.pumps else None,
                **common,
            )
        if not (isinstance(outcome, tuple | list) and len(outcome) == 3):
            raise TypeError(f"{label} returned {outcome!r}, not (output, run_id, status)")
        output, child_id, status = outcome
        if status == RunStatus.OK.value:
            return str(output)
        return f"error: {kind} {entry.name} (run {child_id}) ended {status}: {output}"

    return Tool(
        name=f"{kind}__{entry.name}",
        description=entry.description or f"Delegate to the {kind} {entry.name}.",
        fn=invoke,
        args_model=None,
        parameters=entry.input_schema if kind == "skill" else AGENT_SCHEMA,
    )


async def palette_tools(run: AgentRun) -> list[Tool]:
    """The delegation tools of ``run``'s agent, resolved against every palette source."""
    assert run.agent is not None
    made = []
    for kind, names in (("skill", run.agent.skill_palette), ("agent", run.agent.subagent_palette)):
        for name in names:
            resolved = await _resolve(run, kind, name)
            if resolved is None:
                made.append(_not_configured(kind, name))
            else:
                made.append(_delegation_tool(run, kind, *resolved))
    return made
