"""`MemoryPalette`: skills and agents that are Python functions."""

from __future__ import annotations

import dataclasses
import inspect
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from executus_core.config import Settings
from executus_core.hookspecs import hookimpl
from executus_core.ports import EventCallback, PaletteSource
from executus_core.types import PaletteEntry, RunStatus

__all__ = ["MemoryPalette", "PaletteCall"]


@dataclasses.dataclass
class PaletteCall:
    """One ``invoke_skill`` / ``invoke_agent`` call `MemoryPalette` received, with every argument."""

    kind: str
    name: str
    caller_id: str
    channel_id: str | None
    parent_run_id: str | None
    run_id: str
    inputs: dict[str, Any] | None = None
    prompt: str | None = None
    model_tier_override: str | None = None
    prompt_prepend: str | None = None
    tools_subset: list[str] | None = None


Handler = Callable[[Any], Any]


@dataclasses.dataclass
class _Served:
    entry: PaletteEntry
    handler: Handler


class MemoryPalette:
    """A `PaletteSource` whose skills and agents are Python functions.

    A skill's handler takes the inputs dict, an agent's takes the prompt; either returns the output
    text (or an awaitable of it). A handler that raises makes the invoke return status ``error``
    with the exception as output. ``palette.calls`` lists every invoke with its arguments.

    Example::

        palette = MemoryPalette()
        palette.add_skill("shout", lambda inputs: inputs["text"].upper(),
                          input_schema={"type": "object", "properties": {"text": {"type": "string"}}})
        palette.add_agent("echo", lambda prompt: prompt)
    """

    def __init__(self, *, name: str = "memory_palette") -> None:
        self.executus_name = name
        self.skills: dict[str, _Served] = {}
        self.agents: dict[str, _Served] = {}
        self.calls: list[PaletteCall] = []
        self._lock = threading.Lock()

    @hookimpl
    def executus_palette(self, settings: Settings) -> PaletteSource:
        return self

    def add_skill(
        self,
        name: str,
        handler: Handler,
        *,
        description: str = "",
        input_schema: dict[str, Any] | None = None,
    ) -> None:
        """Serve ``skill__<name>``: ``handler(inputs)`` gives the output."""
        schema = input_schema or {"type": "object", "properties": {}, "additionalProperties": True}
        entry = PaletteEntry(
            name=name, id=name, description=description or f"The {name} skill.", input_schema=schema
        )
        self.skills[name] = _Served(entry, handler)

    def add_agent(self, name: str, handler: Handler, *, description: str = "") -> None:
        """Serve ``agent__<name>``: ``handler(prompt)`` gives the output."""
        entry = PaletteEntry(
            name=name,
            id=name,
            description=description or f"The {name} agent.",
            input_schema={
                "type": "object",
                "properties": {"prompt": {"type": "string"}},
                "required": ["prompt"],
            },
        )
        self.agents[name] = _Served(entry, handler)

    async def resolve_skill(self, caller_id: str, name: str) -> PaletteEntry | None:
        """The skill's entry, or ``None`` when this palette does not serve it."""
        served = self.skills.get(name)
        return None if served is None else served.entry.model_copy()

    async def resolve_agent(self, caller_id: str, name: str) -> PaletteEntry | None:
        """The agent's entry, or ``None`` when this palette does not serve it."""
        served = self.agents.get(name)
        return None if served is None else served.entry.model_copy()

    async def invoke_skill(
        self,
        caller_id: str,
        channel_id: str | None,
        name: str,
        inputs: dict[str, Any],
        parent_run_id: str | None,
    ) -> tuple[str, str, str]:
        """Run the skill's handler on ``inputs``: ``(output, run_id, status)``."""
        run_id = uuid.uuid4().hex
        with self._lock:
            self.calls.append(
                PaletteCall("skill", name, caller_id, channel_id, parent_run_id, run_id, inputs=dict(inputs))
            )
        served = self.skills.get(name)
        if served is None:
            return f"the skill {name!r} is not served by this palette", run_id, RunStatus.ERROR.value
        return await _serve(served.handler, dict(inputs), run_id)

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
        """Run the agent's handler on the prompt (``prompt_prepend`` first); reports ``run.start``
        and ``run.end`` to ``on_event``: ``(output, run_id, status)``."""
        run_id = uuid.uuid4().hex
        with self._lock:
            self.calls.append(
                PaletteCall(
                    "agent",
                    name,
                    caller_id,
                    channel_id,
                    parent_run_id,
                    run_id,
                    prompt=prompt,
                    model_tier_override=model_tier_override,
                    prompt_prepend=prompt_prepend,
                    tools_subset=list(tools_subset) if tools_subset is not None else None,
                )
            )
        served = self.agents.get(name)
        if served is None:
            return f"the agent {name!r} is not served by this palette", run_id, RunStatus.ERROR.value
        if prompt_prepend:
            prompt = f"{prompt_prepend}\n\n{prompt}"
        await _notify(on_event, "run.start", {"run_id": run_id, "agent": name})
        outcome = await _serve(served.handler, prompt, run_id)
        await _notify(on_event, "run.end", {"run_id": run_id, "status": outcome[2]})
        return outcome


async def _serve(handler: Handler, argument: Any, run_id: str) -> tuple[str, str, str]:
    try:
        value = handler(argument)
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}", run_id, RunStatus.ERROR.value
    return str(value), run_id, RunStatus.OK.value


async def _notify(on_event: EventCallback | None, type: str, data: dict[str, Any]) -> None:
    if on_event is None:
        return
    value = on_event(type, data)
    if isinstance(value, Awaitable):
        await value
