"""What the recorders and the writer share about a run, with nothing heavy to import: the recorder's
buffered rows, a run's registration and tally, the kinds of trail rows and the ``running`` status.

Kept apart from SQLAlchemy's modules so that building an audit, and loading the plugin, import none
of them (issue 17: a cold command paid for the batteries' dependencies).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from executus_core.types import RunInfo

__all__ = ["RUNNING", "EventKind", "Registration", "Row", "RunState"]

RUNNING = "running"
"""The status filter (and the status shown) for runs whose recorder is not closed yet."""


class EventKind:
    """The ``kind`` of a trail row."""

    STEP = "step"  # a model call finished: text, tool calls, usage
    TOOL = "tool"  # a tool call finished: name, call id, arguments, result
    EVENT = "event"  # a run event (run.start, tool.start, critic, ...): type and payload
    ERROR = "error"  # an error the run survived, or the one that ended it

    ALL = (STEP, TOOL, EVENT, ERROR)


Row = tuple[int, str, str | None, int | None, str | None, str | None, Any, datetime]
"""A buffered trail row: (local seq, kind, name, iteration, call id, text, data, at)."""


@dataclasses.dataclass(slots=True)
class RunState:
    """What a writer needs to know about one run: its info, whether it is registered, and its tally.

    The tally counts what this recorder saw; ``prior_*`` hold the counts an earlier attempt of the
    same run had stored, so the live tally of a resumed run goes on from them. ``transcript`` holds
    the messages the run ended with (as JSON, masked), once ``on_transcript`` gave them.
    """

    info: RunInfo
    registered: bool = False
    base: int = 0
    steps: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    prior_steps: int = 0
    prior_tool_calls: int = 0
    prior_input_tokens: int = 0
    prior_output_tokens: int = 0
    prior_thinking_tokens: int = 0
    transcript: list[Any] | None = None

    def live(self) -> dict[str, int]:
        """The tally to show while the run goes on."""
        return {
            "steps": max(self.steps, self.prior_steps),
            "tool_calls": self.prior_tool_calls + self.tool_calls,
            "input_tokens": self.prior_input_tokens + self.input_tokens,
            "output_tokens": self.prior_output_tokens + self.output_tokens,
            "thinking_tokens": self.prior_thinking_tokens + self.thinking_tokens,
        }


@dataclasses.dataclass(slots=True, frozen=True)
class Registration:
    """What registering a run found: the base ``seq`` and the tally an earlier attempt stored."""

    base: int
    steps: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    thinking_tokens: int

    def apply(self, state: RunState) -> None:
        """Record on ``state`` that it is registered (call once the transaction committed)."""
        state.registered = True
        state.base = self.base
        state.prior_steps = self.steps
        state.prior_tool_calls = self.tool_calls
        state.prior_input_tokens = self.input_tokens
        state.prior_output_tokens = self.output_tokens
        state.prior_thinking_tokens = self.thinking_tokens
