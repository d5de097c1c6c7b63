"""`Agent`: what to run — instructions, a model, the tools it may call and its limits."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from executus_core.tools import Tool
from executus_core.types import ModelSettings

__all__ = ["Agent"]


class Agent(BaseModel):
    """What to run: instructions, a model and the tools it may call.

    ``model`` is a model id (``"openai:gpt-4o-mini"``), a tier name mapped under
    ``[tool.executus.models]``, or any object with ``async complete(request)``. ``tools`` holds
    `Tool` objects or names of registered tools. Unset limits take the executor's settings.
    ``output_type`` (a pydantic model, a dataclass, a TypedDict or a simple type such as ``int``
    or ``list[str]``; in a TOML agent file, ``"module:Class"``) makes the run end with
    ``Result.output`` validated as that type; an answer that does not validate goes back to the
    model, at most ``output_retries`` times. ``source`` says where the agent was loaded from (a TOML file's path or ``module:attribute``),
    so a checkpointed run can be rebuilt by `executus recover` with no flags.

    Example::

        agent = Agent(name="helper", instructions="Be brief.", model="openai:gpt-4o-mini", tools=[add])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    id: str = ""
    description: str = ""
    instructions: str = ""
    model: Any = "default"
    tools: list[Any] = Field(default_factory=list)
    skill_palette: list[str] = Field(default_factory=list)
    subagent_palette: list[str] = Field(default_factory=list)
    max_steps: int | None = Field(default=None, ge=1)
    soft_timeout: float | None = Field(default=None, gt=0)
    hard_timeout: float | None = Field(default=None, gt=0)
    model_settings: ModelSettings = Field(default_factory=ModelSettings)
    source: str | None = None
    output_type: Any = None
    output_retries: int = Field(default=2, ge=0)

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            self.id = self.name

    @field_validator("tools")
    @classmethod
    def _tools_are_tools_or_names(cls, value: list[Any]) -> list[Any]:
        for item in value:
            if not isinstance(item, Tool | str):
                raise ValueError(
                    f"{item!r} is not a tool: pass a Tool (decorate the function with @tool) or the name "
                    "of a registered tool"
                )
        return value

    @field_validator("output_type", mode="before")
    @classmethod
    def _output_type_importable(cls, value: Any) -> Any:
        if isinstance(value, str):
            from executus_core.output import import_type

            return import_type(value)
        return value

    @property
    def model_id(self) -> str:
        """The model as a string: the id or tier, or the model object's ``id`` attribute."""
        if isinstance(self.model, str):
            return self.model
        return str(getattr(self.model, "id", type(self.model).__name__))

    def spec(self) -> dict[str, Any]:
        """This agent as JSON-able data (tools by name), for checkpoints and recovery."""
        data = self.model_dump(exclude={"model", "tools", "output_type"})
        data["model"] = self.model_id
        if self.output_type is not None:
            from executus_core.output import type_path

            data["output_type"] = type_path(self.output_type)
        data["tools"] = [t if isinstance(t, str) else t.name for t in self.tools]
        return data

    def tool_objects(self) -> list[Tool]:
        """The `Tool` objects in ``tools`` (names of registered tools left out)."""
        return [t for t in self.tools if isinstance(t, Tool)]
