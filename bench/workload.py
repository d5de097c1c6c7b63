"""The workload every client runs: the same prompt, tool and model names, checked the same way.

A run of ``n`` steps: the model asks for the ``lookup`` tool ``n`` times, one call per response, then
answers. That is ``n + 1`` model calls (HTTP requests); per-step figures divide by those. The server
reads ``n`` from the model name (``bench-<n>``) and how far the run is from the number of tool
results in the request, so it keeps no state per run.
"""

from __future__ import annotations

from typing import Any

INSTRUCTIONS = "You are a benchmark agent. Call the lookup tool when asked, then answer briefly."
PROMPT = "Look up the keys the server asks for, then say you are done."
TOOL_NAME = "lookup"
TOOL_DESCRIPTION = "Look up the value stored under a key."

# The tool as every client declares it (the hand-written clients send exactly this).
TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": TOOL_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {"key": {"type": "string"}},
            "required": ["key"],
            "additionalProperties": False,
        },
    },
}


def model_name(n: int) -> str:
    """The model name that makes the server script a run of ``n`` tool calls."""
    return f"bench-{n}"


def final_answer(n: int) -> str:
    """The text the server answers with after ``n`` tool calls."""
    return f"done after {n} lookups"


def tool_result(key: str) -> str:
    """What the ``lookup`` tool returns for ``key`` (the same in every client)."""
    return f"value-of-{key}"


def check_answer(client: str, n: int, text: object, tool_calls: int) -> None:
    """Raise if a run did not do the scripted work: the figures must never measure a failure."""
    if tool_calls != n:
        raise RuntimeError(f"{client}: a run of {n} steps executed {tool_calls} tool calls")
    if text != final_answer(n):
        raise RuntimeError(f"{client}: a run of {n} steps answered {text!r}, expected {final_answer(n)!r}")
