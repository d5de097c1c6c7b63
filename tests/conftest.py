from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from executus_core import Executor, ModelResponse, ToolCall, tool


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Installed batteries keep their embedded defaults (SQLite files) here, not in the user's home."""
    previous = os.environ.get("EXECUTUS_DATA_DIR")
    os.environ["EXECUTUS_DATA_DIR"] = str(tmp_path_factory.mktemp("executus-data"))
    yield
    if previous is None:
        os.environ.pop("EXECUTUS_DATA_DIR", None)
    else:
        os.environ["EXECUTUS_DATA_DIR"] = previous


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
