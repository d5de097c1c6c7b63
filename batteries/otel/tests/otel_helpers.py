"""Reading spans back: the span tree of a run, and a run's spans as the conformance suite's `RecordedRun`."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from executus_core import Agent, ModelResponse, ToolCall, Usage, tool
from executus_core.testing import RecordedRun, ScriptedModel
from executus_core.types import RunStats, RunStatus

RUN_ID = "executus.run.id"

SLOW = 0.05


@tool
async def lookup(key: str) -> str:
    """Look a key up (slowly, so parallel calls overlap)."""
    await asyncio.sleep(SLOW)
    return f"value of {key}"


@tool
async def fetch(url: str) -> str:
    """Fetch a URL (slowly)."""
    await asyncio.sleep(SLOW)
    return f"fetched {url}"


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"boom: {reason}")


def calls(*items: tuple[str, str, dict[str, Any]], tokens: tuple[int, int] = (10, 2)) -> ModelResponse:
    return ModelResponse(
        tool_calls=[ToolCall(id=i, name=n, arguments=a) for i, n, a in items],
        usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1]),
        finish_reason="tool_calls",
        model="scripted-2026-01",
    )


def answer(text: str, tokens: tuple[int, int] = (20, 5)) -> ModelResponse:
    return ModelResponse(
        text=text, usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1]), finish_reason="stop"
    )


def planner_and_helper() -> tuple[Agent, Agent]:
    """A planner that calls two tools at once, then a failing tool beside a delegation to ``helper``,
    then answers; ``helper`` looks one key up and answers."""
    helper = Agent(
        name="helper",
        model=ScriptedModel(
            [calls(("h1", "lookup", {"key": "inner"})), answer("helped")], id="anthropic:claude-test"
        ),
        tools=[lookup],
    )
    planner = Agent(
        name="planner",
        model=ScriptedModel(
            [
                calls(("c1", "lookup", {"key": "a"}), ("c2", "fetch", {"url": "http://example.test/x"})),
                calls(
                    ("c3", "explode", {"reason": "on purpose"}), ("c4", "agent__helper", {"prompt": "help"})
                ),
                answer("all done"),
            ]
        ),
        tools=[lookup, fetch, explode],
        subagent_palette=["helper"],
    )
    return planner, helper


def other_plugins() -> list[str]:
    """Every installed executus entry point but ours (the other batteries stay out of these tests)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="executus")} - {"otel"})


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def run_span(spans: Sequence[ReadableSpan], run_id: str) -> ReadableSpan | None:
    for span in spans:
        a = attrs(span)
        if a.get(RUN_ID) == run_id and a.get("gen_ai.operation.name") == "invoke_agent":
            return span
    return None


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """The spans whose parent is ``parent``, in the order they ended."""
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, f"expected one span {name!r}, got {len(found)}: {[s.name for s in spans]}"
    return found[0]


def tree(spans: Sequence[ReadableSpan]) -> list[str]:
    """Every span as an indented line under its parent, children in start order (for messages)."""
    ids = {s.context.span_id for s in spans if s.context is not None}
    lines: list[str] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        lines.append("  " * depth + span.name)
        for child in sorted(children(spans, span), key=lambda s: s.start_time or 0):
            walk(child, depth + 1)

    for root in spans:
        if root.parent is None or root.parent.span_id not in ids:
            walk(root, 0)
    return lines


def recorded(spans: Sequence[ReadableSpan], run_id: str) -> RecordedRun:
    """What the spans say about ``run_id``, in the conformance suite's shape (content captured)."""
    found = RecordedRun(run_id=run_id)
    run = run_span(spans, run_id)
    if run is None:
        return found
    for child in children(spans, run):
        a = attrs(child)
        if a.get("gen_ai.operation.name") == "chat":
            found.steps.append(a["executus.step"])
        elif a.get("gen_ai.operation.name") == "execute_tool":
            result = a.get("gen_ai.tool.call.result", child.status.description)
            found.tool_calls.append((a["gen_ai.tool.call.id"], a["gen_ai.tool.name"], result))
    for event in run.events:
        ea = dict(event.attributes or {})
        if event.name == "executus.error":
            found.errors.append(ea["executus.error.message"])
        else:
            found.events.append(
                (event.name.removeprefix("executus."), json.loads(ea["executus.event.payload"]))
            )
    a = attrs(run)
    output = None
    if "gen_ai.output.messages" in a:
        output = json.loads(a["gen_ai.output.messages"])[0]["parts"][0]["content"]
    found.stats = RunStats(
        status=RunStatus(a["executus.run.status"]),
        output=output,
        error=a.get("executus.run.error"),
        steps=a["executus.run.steps"],
        tool_calls=a["executus.run.tool_calls"],
        runtime_seconds=a["executus.run.runtime_seconds"],
        input_tokens=a["gen_ai.usage.input_tokens"],
        output_tokens=a["gen_ai.usage.output_tokens"],
        thinking_tokens=a.get("gen_ai.usage.reasoning.output_tokens", 0),
    )
    return found
