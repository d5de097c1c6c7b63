from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from executus_core import Executor, ModelResponse, ToolCall, tool


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    """An executor with only the core's built-in plugins (no installed batteries)."""
    async with Executor(entry_points=False, settings={"port_timeout": 1.0}) as ex:
        yield ex


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def call(name: str, call_id: str = "c1", **arguments: object) -> ModelResponse:
    """A model response that asks for one tool call."""
    return ModelResponse(tool_calls=[ToolCall(id=call_id, name=name, arguments=dict(arguments))])


def answer(text: str) -> ModelResponse:
    return ModelResponse(text=text)
