"""Agent files: the TOML format ``executus run`` reads, and ``module:attribute`` references.

`load_agent` turns either into an `Agent` and records where it came from in `Agent.source`, so a
checkpointed run can be rebuilt by ``executus recover`` with no flags.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from executus_core.errors import ExecutusError
from executus_core.tools import Tool, tool
from executus_core.types import Agent, ModelSettings

__all__ = ["AgentFile", "AgentFileError", "load_agent"]


class AgentFileError(ExecutusError):
    """An agent file (or ``module:attribute``) that cannot be loaded; the message says where and why."""


class AgentFile(BaseModel):
    """The TOML agent file ``executus run`` reads; every key is optional (``name`` defaults to the file's stem).

    Example (``examples/assistant.toml``)::

        name = "assistant"
        instructions = "You are a careful assistant. Use the tools for arithmetic and units."
        model = "default"                  # a tier or a model id: "openai:gpt-4o-mini"
        tools = ["run_status", "tools:calculate", "tools:convert_units"]
        max_steps = 8
        soft_timeout = 60                  # seconds
        hard_timeout = 120                 # seconds
        skill_palette = []
        subagent_palette = []

        [model_settings]
        temperature = 0

    ``tools`` entries are names of registered tools (``run_status``) or ``module:attribute``: the
    module is imported with the agent file's folder first on ``sys.path``, and the attribute is a
    `Tool` or a plain typed function (wrapped with `tool`).
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="The agent's name (default: the file's stem).")
    id: str = Field("", description="A stable id for audit and recovery (default: the name).")
    description: str = ""
    instructions: str = ""
    model: str = Field("default", description="A model id or a tier name.")
    tools: list[str] = Field(default_factory=list)
    skill_palette: list[str] = Field(default_factory=list)
    subagent_palette: list[str] = Field(default_factory=list)
    max_steps: int | None = Field(None, ge=1)
    soft_timeout: float | None = Field(None, gt=0)
    hard_timeout: float | None = Field(None, gt=0)
    model_settings: ModelSettings = Field(default_factory=ModelSettings)


def _import_attribute(reference: str, *, base: Path | None, what: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise AgentFileError(f"{what} {reference!r} is not module:attribute")
    if base is not None and str(base) not in sys.path:
        # Tool modules sit beside their agent file, the way pytest finds conftest.py.
        sys.path.insert(0, str(base))
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        where = f" (looked in {base} first)" if base is not None else ""
        raise AgentFileError(
            f"{what} {reference!r}: cannot import module {module_name!r}{where}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AgentFileError(
                f"{what} {reference!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return obj


def _load_tool(reference: str, base: Path) -> Tool | str:
    if ":" not in reference:
        return reference  # a registered tool's name: the run checks it against the registry
    obj = _import_attribute(reference, base=base, what="tool")
    if isinstance(obj, Tool):
        return obj
    if callable(obj):
        try:
            return tool(obj)
        except Exception as exc:
            raise AgentFileError(f"tool {reference!r}: cannot make a tool of it: {exc}") from exc
    raise AgentFileError(f"tool {reference!r} is {type(obj).__name__}, not a Tool or a function")


def load_agent(reference: str) -> Agent:
    """The `Agent` named by ``reference``: a TOML agent file (see `AgentFile`) or ``module:attribute``.

    A ``module:attribute`` reference is imported with the current directory first on ``sys.path``.
    The agent's `Agent.source` says where it came from — the agent file's absolute path, or the
    ``module:attribute`` reference — so ``executus recover`` can rebuild a checkpointed run of it.
    Raises `AgentFileError` saying what is wrong and where.
    """
    path = Path(reference).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise AgentFileError(f"agent file {reference!r} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AgentFileError(f"cannot read agent file {reference!r}: {exc}") from exc
        try:
            spec = AgentFile.model_validate(data)
        except ValidationError as exc:
            problems = "\n  ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()
            )
            known = ", ".join(AgentFile.model_fields)
            raise AgentFileError(f"agent file {reference!r}:\n  {problems}\n  (keys: {known})") from None
        base = path.resolve().parent
        fields = spec.model_dump(exclude={"tools", "model_settings"})
        fields["name"] = spec.name or path.stem
        return Agent(
            **fields,
            tools=[_load_tool(ref, base) for ref in spec.tools],
            model_settings=spec.model_settings,
            source=str(path.resolve()),
        )
    if ":" in reference:
        obj = _import_attribute(reference, base=Path.cwd(), what="agent")
        if not isinstance(obj, Agent):
            raise AgentFileError(f"agent {reference!r} is {type(obj).__name__}, not an executus Agent")
        # A copy: the module's own Agent object is left as its author made it.
        return obj if obj.source else obj.model_copy(update={"source": reference})
    raise AgentFileError(
        f"agent {reference!r} is neither a file nor module:attribute; pass a TOML agent file "
        "(examples/assistant.toml) or an importable Agent (my_app.agents:helper)"
    )
