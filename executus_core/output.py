"""Typed output: an agent's ``output_type`` turned into a JSON schema for the model and a validator
for its answer.

The answer comes one of two ways. A model that declares ``supports_output_schema = True`` (the
``openai:`` provider: ``response_format`` with a JSON schema) gets the schema in
`ModelRequest.output_schema` and answers with JSON text. Any other model gets one more tool,
``final_result``, whose arguments are the answer. Either way the answer is validated with pydantic;
one that does not validate goes back to the model with the errors, at most ``Agent.output_retries``
times, and then the run ends ``error`` with the validation message.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from executus_core.types import ToolSpec

__all__ = ["FINAL_RESULT", "OutputPlan", "import_type", "type_path"]

FINAL_RESULT = "final_result"
"""The name of the tool through which a model without native structured output gives its answer."""


def import_type(path: str) -> Any:
    """The type named ``module:attribute`` (or ``module.attribute``), for TOML agent files."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"output_type {path!r} must name a type as 'module:Class'")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"output_type {path!r} cannot be imported: {exc}") from None
    return found


def type_path(output_type: Any) -> str:
    """``module:qualname`` of a type (what `Agent.spec` saves), or its repr for a generic alias."""
    module, name = getattr(output_type, "__module__", None), getattr(output_type, "__qualname__", None)
    if isinstance(output_type, type) and module and name and "<locals>" not in name:
        return f"{module}:{name}"
    return repr(output_type)


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in error.errors()[:10])


@dataclasses.dataclass(slots=True)
class OutputPlan:
    """How one run reads its typed answer; built once per run from ``Agent.output_type``."""

    output_type: Any
    adapter: TypeAdapter[Any]
    schema: dict[str, Any]
    wrapped: bool  # not an object schema: the final_result tool takes {"result": <value>}
    tries_left: int

    @classmethod
    def build(cls, output_type: Any, retries: int) -> OutputPlan:
        """Raises ``TypeError`` (with what to do) for a type pydantic cannot validate."""
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(output_type)
            schema = adapter.json_schema()
        except Exception as exc:
            raise TypeError(
                f"output_type {output_type!r} is not a type pydantic can validate ({exc}); use a "
                "pydantic model, a dataclass, a TypedDict or a simple type"
            ) from None
        wrapped = schema.get("type") != "object"
        return cls(output_type, adapter, schema, wrapped, retries)

    def tool_spec(self) -> ToolSpec:
        """The ``final_result`` tool for a model without native structured output."""
        parameters = (
            {"type": "object", "properties": {"result": self.schema}, "required": ["result"]}
            if self.wrapped
            else self.schema
        )
        if "$defs" in self.schema and self.wrapped:
            parameters["$defs"] = self.schema["$defs"]
        return ToolSpec(
            name=FINAL_RESULT,
            description="Give your final answer with this tool, once you have it; its arguments are the answer.",
            parameters=parameters,
        )

    def from_text(self, text: str | None) -> tuple[Any, str | None]:
        """``(value, None)`` for an answer that validates, else ``(None, what is wrong)``."""
        if not text:
            return None, "the answer was empty; answer with JSON that matches the schema"
        try:
            return self.adapter.validate_json(_strip_fence(text)), None
        except ValidationError as exc:
            return None, _describe(exc)

    def from_arguments(self, arguments: dict[str, Any]) -> tuple[Any, str | None]:
        """The ``final_result`` tool's arguments, validated."""
        try:
            if self.wrapped:
                if "result" not in arguments:
                    return None, "result: Field required"
                return self.adapter.validate_python(arguments["result"]), None
            return self.adapter.validate_python(arguments), None
        except ValidationError as exc:
            return None, _describe(exc)

    def to_text(self, value: Any) -> str:
        """The validated answer as JSON text (``Result.text`` of a final_result answer)."""
        if isinstance(value, BaseModel):
            return value.model_dump_json()
        return orjson.dumps(self.adapter.dump_python(value, mode="json")).decode()


def _strip_fence(text: str) -> str:
    # Models asked for JSON often wrap it in a Markdown code fence.
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped[3:-3]
        if "\n" in stripped:
            first, rest = stripped.split("\n", 1)
            if first.strip().isalpha() or not first.strip():
                stripped = rest
    return stripped.strip()
