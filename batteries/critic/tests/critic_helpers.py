"""Helpers shared by the critic battery's tests (a uniquely named module: every battery's tests
share one pytest session, where a second ``conftest`` or ``helpers`` module would clash)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

from executus_core import ModelRequest, ModelResponse, ToolCall
from executus_core.testing import ScriptedModel

# Short enough that the suite stays fast; every bound the tests assert is many polls wide.
DEADLINE_POLL = 0.02


class FakeClock:
    """A monotonic clock the test moves by hand: ``clock.advance(2.5)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def other_plugins() -> list[str]:
    """Names of the installed ``executus`` entry points that are not the critic."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="executus")} - {"critic"})


def tool_call(name: str, call_id: str, **arguments: Any) -> ModelResponse:
    """A model response asking for one tool call."""
    return ModelResponse(tool_calls=[ToolCall(id=call_id, name=name, arguments=arguments)])


def scripted(
    decide: Callable[[int, ModelRequest], ModelResponse], *, delay: float = 0.0, calls: int = 500
) -> ScriptedModel:
    """A model that answers ``decide(call number from 1, request)`` after ``delay`` seconds."""
    counter = iter(range(1, calls + 1))
    return ScriptedModel([lambda request: decide(next(counter), request)] * calls, delay=delay)


def user_texts(messages: list[Any]) -> list[str]:
    """The contents of the user messages after the prompt: what the critic said."""
    users = [m.content or "" for m in messages if m.role == "user"]
    return users[1:]
