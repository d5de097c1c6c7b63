"""Tools: typed Python functions the model can call.

``@tool`` reads the function's signature and docstring: the JSON schema of its arguments comes from
pydantic, and the model's arguments are validated against it before the function runs::

    @tool
    async def weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        "Current weather for a city."
        ...

A parameter annotated `ToolContext` is filled by the executor (run info, live tally, an idempotency
key for this call, artifacts) and is not shown to the model. Synchronous functions run in a worker
thread so they never block the event loop; pass ``@tool(inline=True)`` for quick pure functions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol, get_type_hints, overload, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from executus_core.hookspecs import hookimpl
from executus_core.types import Artifact, RunInfo, ToolSpec

__all__ = ["Tally", "Tool", "ToolContext", "ToolSet", "run_status", "tool"]


@dataclasses.dataclass(slots=True)
class Tally:
    """The live counters of a run, updated by the loop as it goes."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    deadline: float | None = None  # time.monotonic() at which the run is cut off
    steps: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0

    @property
    def elapsed_seconds(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    @property
    def seconds_left(self) -> float | None:
        """Seconds until the deadline in force (never below 0), or ``None`` before one is set."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


@dataclasses.dataclass(slots=True)
class ToolContext:
    """What a tool may know about the run that called it.

    ``idempotency_key`` is stable for this call across a crash and `Executor.recover`: pass it to
    anything with side effects. ``add_artifact`` attaches a file to the result.

    ``attempt`` is 1 the first time this call executes, and 2 or more when a recovered run executes
    it again because the earlier attempt was in flight at a crash (``resumed`` is then True): the
    earlier attempt may or may not have taken effect, so check by ``idempotency_key``.
    """

    info: RunInfo
    tally: Tally
    call_id: str
    idempotency_key: str
    artifacts: list[Artifact]
    max_steps: int = 0
    attempt: int = 1
    resumed: bool = False

    def add_artifact(
        self, name: str, content: bytes | str, media_type: str = "application/octet-stream"
    ) -> None:
        """Attach ``content`` (text is UTF-8 encoded) to the run's result as the file ``name``."""
        data = content.encode() if isinstance(content, str) else content
        self.artifacts.append(Artifact(name=name, content=data, media_type=media_type))


OnResume = Literal["rerun", "ask"]
"""What a recovered run does with a call of this tool that was in flight at the crash.

``"rerun"`` runs it again (``ToolContext.attempt`` > 1, ``resumed`` True, same idempotency key);
``"ask"`` does not run it, and tells the model that the earlier attempt may have taken effect.
"""


class ToolArgumentsError(ValueError):
    """The model's arguments do not fit the tool's schema; the message is sent back to the model."""


@dataclasses.dataclass(slots=True, eq=False)
class Tool:
    """A callable the model may call: a name, a description, an argument model and a function.

    Build one with `@tool`; construct it directly only to wrap something that is not a function.
    """

    name: str
    description: str
    fn: Callable[..., Any]
    args_model: (
        type[BaseModel] | None
    )  # None: fn takes the raw arguments dict (checked by ``parameters``' owner)
    context_param: str | None = None
    inline: bool = False
    parameters: dict[str, Any] | None = None  # a JSON schema to show instead of args_model's
    on_resume: OnResume = "rerun"
    requires_approval: bool | Callable[[dict[str, Any]], bool] = False
    spec: ToolSpec = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        schema = self.parameters
        if schema is None:
            if self.args_model is None:
                raise TypeError(f"tool {self.name!r} needs args_model or parameters")
            schema = self.args_model.model_json_schema()
            schema.pop("title", None)
        self.spec = ToolSpec(name=self.name, description=self.description, parameters=schema)

    @property
    def is_async(self) -> bool:
        """True when ``fn`` is a coroutine function (awaited on the loop, never sent to a thread)."""
        return inspect.iscoroutinefunction(self.fn)

    async def __call__(self, arguments: dict[str, Any], context: ToolContext | None = None) -> Any:
        """Validate ``arguments`` and run the function; raises `ToolArgumentsError` on bad arguments."""
        if self.args_model is None:
            if self.context_param is not None:
                return await self.fn(arguments, **{self.context_param: context})
            return await self.fn(arguments)
        try:
            parsed = self.args_model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from None
        kwargs = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        if self.context_param is not None:
            kwargs[self.context_param] = context
        if self.is_async:
            return await self.fn(**kwargs)
        if self.inline:
            return self.fn(**kwargs)
        return await asyncio.to_thread(self.fn, **kwargs)


def _first_paragraph(doc: str | None) -> str:
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ") if doc else ""


def _make_tool(
    fn: Callable[..., Any],
    name: str | None,
    description: str | None,
    inline: bool,
    on_resume: OnResume,
    requires_approval: bool | Callable[[dict[str, Any]], bool] = False,
) -> Tool:
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        annotation = hints.get(param.name, Any)
        if annotation is ToolContext:
            context_param = param.name
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"@tool cannot describe *args or **kwargs (in {fn.__qualname__})")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    tool_name = name or fn.__name__
    args_model = create_model(f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return Tool(
        name=tool_name,
        description=description if description is not None else _first_paragraph(fn.__doc__),
        fn=fn,
        args_model=args_model,
        context_param=context_param,
        inline=inline,
        on_resume=on_resume,
        requires_approval=requires_approval,
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    inline: bool = False,
    on_resume: OnResume = "rerun",
    requires_approval: bool | Callable[[dict[str, Any]], bool] = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    inline: bool = False,
    on_resume: OnResume = "rerun",
    requires_approval: bool | Callable[[dict[str, Any]], bool] = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function (sync or async) into a `Tool`.

    Args:
        name: the name the model sees (default: the function's name).
        description: what the model is told the tool does (default: the docstring's first paragraph).
        inline: run a synchronous function on the event loop instead of a worker thread; only for
            functions that return at once.
        on_resume: what a recovered run does with a call of this tool that was in flight when the
            run was interrupted: ``"rerun"`` (default) runs it again, flagged in `ToolContext`;
            ``"ask"`` sends the model an error saying the earlier attempt may have taken effect
            (for payments and other side effects that have no idempotency key downstream).
        requires_approval: ``True``, or a predicate on the call's arguments (``lambda a:
            a["amount"] > 100``): the run pauses before such a call, ``awaiting_approval``, until
            `Executor.resume` brings a decision (see the approval guide).

    Example::

        @tool
        def add(a: int, b: int) -> int:
            "Add two integers."
            return a + b
    """
    if on_resume not in ("rerun", "ask"):
        raise ValueError(f"on_resume must be 'rerun' or 'ask', got {on_resume!r}")
    if fn is not None:
        return _make_tool(fn, name, description, inline, on_resume, requires_approval)
    return lambda f: _make_tool(f, name, description, inline, on_resume, requires_approval)


def tool_result_text(value: Any) -> str:
    """What a tool's return value looks like to the model: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _run_status(context: ToolContext) -> dict[str, Any]:
    """Report this run's elapsed time, steps, tool calls, tokens and the time left."""
    tally = context.tally
    left = tally.seconds_left
    return {
        "elapsed_seconds": round(tally.elapsed_seconds, 3),
        "steps": tally.steps,
        "max_steps": context.max_steps,
        "tool_calls": tally.tool_calls,
        "input_tokens": tally.input_tokens,
        "output_tokens": tally.output_tokens,
        "thinking_tokens": tally.thinking_tokens,
        "seconds_left": None if left is None else round(left, 3),
    }


run_status: Tool = tool(name="run_status", inline=True)(_run_status)
"""The built-in ``run_status`` tool: name it in ``Agent.tools`` to let the model pace itself."""


@hookimpl
def executus_register_tools(register: Callable[[Tool], None]) -> None:
    register(run_status)


@runtime_checkable
class ToolSet(Protocol):
    """A family of tools resolved by name when a run starts (MCP servers, say).

    Register one from ``executus_register_tools(register)`` with ``register(toolset)``. An agent
    names its tools as ``"<prefix>:<name>"`` (``"mcp:github"``, ``"mcp:github/search_issues"``); the
    core calls ``await resolve(name)`` with the part after the prefix once per run, while preparing
    it (bounded by ``port_timeout``), and adds the tools it returns. Raising refuses the run with
    the exception's message. An object that also has ``aclose()`` is closed by `Executor.shutdown`.
    """

    prefix: str

    async def resolve(self, name: str) -> list[Tool]:
        """The tools ``name`` stands for (their names must differ from the agent's other tools)."""
        ...
