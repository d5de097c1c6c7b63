"""Real runs through an `Executor`, read back from the SDK's in-memory exporter: the span tree, names,
attributes and times of a run with parallel tools, a delegation and a failed tool; content capture
and masking; runs that end badly."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from executus_otel import OtelAudit, OtelSettings
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from otel_helpers import (
    SLOW,
    answer,
    attrs,
    by_name,
    calls,
    children,
    lookup,
    one,
    planner_and_helper,
    run_span,
    tree,
)

from executus_core import Agent, Executor, tool
from executus_core.testing import PortPlugin, ScriptedModel


@tool
def connect(dsn: str, api_key: str) -> str:
    """Echo a connection string back, as a careless tool would."""
    return f'connected to {dsn} with {{"api_key": "{api_key}"}}'


async def traced_run(
    audit: OtelAudit,
    agent: Agent,
    prompt: str,
    *,
    register: list[Agent] = (),
    **kwargs: Any,  # type: ignore[assignment]
) -> Any:
    async with Executor(plugins=[PortPlugin(audit=audit)], entry_points=False) as executor:
        for other in register:
            executor.register_agent(other)
        return await executor.run(agent, prompt, caller_id="tester", **kwargs)


def test_a_run_with_parallel_tools_a_failed_tool_and_a_delegation(memory: Any) -> None:
    provider, exporter = memory
    planner, helper = planner_and_helper()
    audit = OtelAudit(tracer_provider=provider)
    result = asyncio.run(traced_run(audit, planner, "plan it", register=[helper], channel_id="conv-7"))
    assert result.ok, result.error
    spans = exporter.get_finished_spans()
    shape = tree(spans)
    # Siblings that ran at once may start in either order: compare the lines, then the order below.
    assert sorted(shape) == sorted(
        [
            "invoke_agent planner",
            "  chat scripted",
            "  execute_tool lookup",
            "  execute_tool fetch",
            "  chat scripted",
            "  execute_tool explode",
            "  execute_tool agent__helper",
            "    invoke_agent helper",
            "      chat claude-test",
            "      execute_tool lookup",
            "      chat claude-test",
            "  chat scripted",
        ]
    ), "\n".join(shape)
    assert len({s.context.trace_id for s in spans}) == 1, "one run, one trace"

    root = run_span(spans, result.run_id)
    assert root is not None and root.parent is None and root.kind is SpanKind.INTERNAL
    a = attrs(root)
    assert a["gen_ai.operation.name"] == "invoke_agent"
    assert a["gen_ai.agent.name"] == "planner" and a["gen_ai.agent.id"] == "planner"
    assert a["gen_ai.provider.name"] == "executus.scripted" and a["gen_ai.request.model"] == "scripted"
    assert a["gen_ai.conversation.id"] == "conv-7"
    assert a["executus.run.status"] == "ok" and a["executus.run.steps"] == 3
    assert a["executus.run.tool_calls"] == 4
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (40, 9)
    assert root.status.status_code is StatusCode.UNSET
    assert not any(
        k.startswith(("gen_ai.output", "gen_ai.tool.call.arguments")) for s in spans for k in attrs(s)
    ), "content is captured only with capture_content = true"

    top = children(spans, root)
    chats = [s for s in top if s.name == "chat scripted"]
    assert [attrs(c)["executus.step"] for c in chats] == [1, 2, 3]
    first = attrs(chats[0])
    assert chats[0].kind is SpanKind.CLIENT
    assert first["gen_ai.operation.name"] == "chat"
    assert first["gen_ai.response.model"] == "scripted-2026-01"
    assert first["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert (first["gen_ai.usage.input_tokens"], first["gen_ai.usage.output_tokens"]) == (10, 2)
    assert attrs(chats[2])["gen_ai.response.finish_reasons"] == ("stop",)
    assert all(attrs(c)["gen_ai.conversation.id"] == "conv-7" for c in chats)

    # The two parallel calls overlap, each lasts as long as the tool did, and the next model call
    # starts after both ended.
    a_span, f_span = one(top, "execute_tool lookup"), one(top, "execute_tool fetch")
    assert attrs(a_span)["gen_ai.tool.call.id"] == "c1" and attrs(f_span)["gen_ai.tool.call.id"] == "c2"
    assert attrs(a_span)["gen_ai.tool.name"] == "lookup" and attrs(a_span)["gen_ai.tool.type"] == "function"
    for span in (a_span, f_span):
        assert (span.end_time or 0) - (span.start_time or 0) >= SLOW * 0.9e9, span.name
        assert (span.start_time or 0) >= (root.start_time or 0)
    assert (a_span.start_time or 0) < (f_span.end_time or 0) and (f_span.start_time or 0) < (
        a_span.end_time or 0
    )
    assert (chats[1].start_time or 0) >= max(a_span.end_time or 0, f_span.end_time or 0)
    assert (chats[0].end_time or 0) <= min(a_span.start_time or 0, f_span.start_time or 0) + 5_000_000

    failed = one(top, "execute_tool explode")
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(failed)["error.type"] == "ValueError"
    assert "boom: on purpose" in (failed.status.description or "")
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans if s is not failed)

    delegation = one(top, "execute_tool agent__helper")
    child = one(children(spans, delegation), "invoke_agent helper")
    ca = attrs(child)
    assert ca["executus.run.parent_id"] == result.run_id
    assert attrs(delegation)["executus.run.child_id"] == ca["executus.run.id"]
    assert ca["gen_ai.provider.name"] == "anthropic" and ca["gen_ai.request.model"] == "claude-test"
    assert ca["executus.run.status"] == "ok"
    assert (delegation.start_time or 0) <= (child.start_time or 0)
    assert (child.end_time or 0) <= (delegation.end_time or 0)
    inner = children(spans, child)
    assert [s.name for s in inner] == ["chat claude-test", "execute_tool lookup", "chat claude-test"]
    assert all((child.start_time or 0) <= (s.start_time or 0) for s in inner)


def test_content_is_captured_only_when_asked_and_secrets_are_masked(memory: Any) -> None:
    provider, exporter = memory
    agent = Agent(
        name="careless",
        model=ScriptedModel(
            [
                calls(
                    ("k1", "connect", {"dsn": "postgresql://app:hunter2@db/app", "api_key": "sk-live-123"})
                ),
                answer("password=swordfish and done"),
            ]
        ),
        tools=[connect],
    )
    audit = OtelAudit(OtelSettings(capture_content=True, mask_keys=["dsn"]), tracer_provider=provider)
    result = asyncio.run(traced_run(audit, agent, "connect"))
    assert result.ok, result.error
    spans = exporter.get_finished_spans()
    everything = json.dumps([attrs(s) for s in spans], default=str)
    for secret in ("hunter2", "sk-live-123", "swordfish"):
        assert secret not in everything, f"{secret!r} reached a span"
    tool_span = one(spans, "execute_tool connect")
    arguments = json.loads(attrs(tool_span)["gen_ai.tool.call.arguments"])
    assert arguments == {"dsn": "***", "api_key": "***"}
    assert (
        attrs(tool_span)["gen_ai.tool.call.result"]
        == 'connected to postgresql://app:***@db/app with {"api_key": "***"}'
    )
    first, last = by_name(spans, "chat scripted")
    messages = json.loads(attrs(first)["gen_ai.output.messages"])
    assert messages == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "k1",
                    "name": "connect",
                    "arguments": {"dsn": "***", "api_key": "***"},
                }
            ],
            "finish_reason": "tool_calls",
        }
    ]
    assert json.loads(attrs(last)["gen_ai.output.messages"])[0]["parts"] == [
        {"type": "text", "content": "password=*** and done"}
    ]
    root = one(spans, "invoke_agent careless")
    assert (
        json.loads(attrs(root)["gen_ai.output.messages"])[0]["parts"][0]["content"] == "password=*** and done"
    )


def test_a_failed_run_is_an_error_span_with_its_reason(memory: Any) -> None:
    provider, exporter = memory
    agent = Agent(name="broken", model=ScriptedModel([calls(("x1", "lookup", {"key": "k"}))]), tools=[lookup])
    result = asyncio.run(traced_run(OtelAudit(tracer_provider=provider), agent, "go"))
    assert result.status.value == "error"
    root = one(exporter.get_finished_spans(), "invoke_agent broken")
    assert root.status.status_code is StatusCode.ERROR
    assert "no response left" in (root.status.description or "")
    assert attrs(root)["error.type"] == "error"
    assert any(e.name == "executus.error" for e in root.events)


def test_a_tool_cut_by_the_deadline_still_gets_its_span(memory: Any) -> None:
    provider, exporter = memory

    @tool
    async def hang() -> str:
        """Never returns."""
        await asyncio.sleep(30)
        return "never"

    agent = Agent(
        name="stuck", model=ScriptedModel([calls(("z1", "hang", {}))]), tools=[hang], hard_timeout=0.3
    )
    result = asyncio.run(traced_run(OtelAudit(tracer_provider=provider), agent, "go"))
    assert result.status.value == "timeout"
    spans = exporter.get_finished_spans()
    root = one(spans, "invoke_agent stuck")
    assert attrs(root)["error.type"] == "timeout" and root.status.status_code is StatusCode.ERROR
    cut = one(children(spans, root), "execute_tool hang")
    assert attrs(cut)["error.type"] == "unfinished"
    assert cut.status.status_code is StatusCode.ERROR and "timeout" in (cut.status.description or "")
    assert (cut.end_time or 0) - (cut.start_time or 0) >= 0.2e9


def test_runs_nest_under_the_hosts_current_span(memory: Any) -> None:
    provider, exporter = memory
    agent = Agent(name="nested", model=ScriptedModel([answer("hi")]))
    host = provider.get_tracer("host")

    async def main() -> str:
        with host.start_as_current_span("POST /chat"):
            result = await traced_run(OtelAudit(tracer_provider=provider), agent, "hi")
        return result.run_id

    run_id = asyncio.run(main())
    spans = exporter.get_finished_spans()
    request = one(spans, "POST /chat")
    root = run_span(spans, run_id)
    assert root is not None and root.parent is not None
    assert root.parent.span_id == request.context.span_id


def test_many_concurrent_runs_each_get_their_own_tree(memory: Any) -> None:
    provider, exporter = memory
    audit = OtelAudit(tracer_provider=provider)

    async def main() -> list[str]:
        async with Executor(plugins=[PortPlugin(audit=audit)], entry_points=False) as executor:
            agents = [
                Agent(
                    name=f"worker-{i}",
                    model=ScriptedModel([calls((f"w{i}", "lookup", {"key": str(i)})), answer(f"done {i}")]),
                    tools=[lookup],
                )
                for i in range(40)
            ]
            results = await asyncio.gather(*(executor.run(a, "go", caller_id="c") for a in agents))
        assert all(r.ok for r in results)
        return [r.run_id for r in results]

    run_ids = asyncio.run(main())
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 40
    for index, run_id in enumerate(run_ids):
        root = run_span(spans, run_id)
        assert root is not None
        names = [s.name for s in children(spans, root)]
        assert names == ["chat scripted", "execute_tool lookup", "chat scripted"], (index, names)
        tool_span: ReadableSpan = children(spans, root)[1]
        assert attrs(tool_span)["gen_ai.tool.call.id"] == f"w{index}"


def test_a_recorder_never_raises(memory: Any, caplog: pytest.LogCaptureFixture) -> None:
    provider, exporter = memory

    async def main() -> None:
        from executus_core.testing.conformance._harness import make_info

        audit = OtelAudit(tracer_provider=provider)
        recorder = await audit.start_run(make_info())
        assert recorder is not None
        recorder.on_step(1, None)  # type: ignore[arg-type]
        recorder.on_tool(None, "x")  # type: ignore[arg-type]
        recorder.log_event("critic", None)  # type: ignore[arg-type]
        from executus_core.types import RunStats, RunStatus

        await recorder.close(RunStats(status=RunStatus.OK))

    with caplog.at_level("WARNING", logger="executus.otel"):
        asyncio.run(main())
    assert "the run is not affected" in caplog.text
    assert len(exporter.get_finished_spans()) == 1  # the run's own span still ended


def test_two_delegations_at_once_each_nest_under_their_own_tool_span(memory: Any) -> None:
    provider, exporter = memory
    helper = Agent(
        name="helper",
        model=ScriptedModel([calls(("h", "lookup", {"key": "k"})), answer("helped")], per_run=True),
        tools=[lookup],
    )
    boss = Agent(
        name="boss",
        model=ScriptedModel(
            [
                calls(("d1", "agent__helper", {"prompt": "one"}), ("d2", "agent__helper", {"prompt": "two"})),
                answer("both done"),
            ]
        ),
        subagent_palette=["helper"],
    )
    result = asyncio.run(traced_run(OtelAudit(tracer_provider=provider), boss, "go", register=[helper]))
    assert result.ok, result.error
    spans = exporter.get_finished_spans()
    root = run_span(spans, result.run_id)
    assert root is not None
    tools = by_name(children(spans, root), "execute_tool agent__helper")
    assert sorted(attrs(t)["gen_ai.tool.call.id"] for t in tools) == ["d1", "d2"]
    nested = [one(children(spans, t), "invoke_agent helper") for t in tools]
    assert len({attrs(c)["executus.run.id"] for c in nested}) == 2
    for tool_span, child in zip(tools, nested, strict=True):
        assert attrs(tool_span)["executus.run.child_id"] == attrs(child)["executus.run.id"]
        assert [s.name for s in children(spans, child)] == [
            "chat scripted",
            "execute_tool lookup",
            "chat scripted",
        ]


def test_a_skill_nests_under_its_tool_span_with_its_inputs(memory: Any) -> None:
    provider, exporter = memory
    summarizer = Agent(name="summarizer", model=ScriptedModel([answer("short")]))
    writer = Agent(
        name="writer",
        model=ScriptedModel(
            [calls(("s1", "skill__summarize", {"text": "long text", "token": "t-1"})), answer("ok")]
        ),
        skill_palette=["summarize"],
    )
    audit = OtelAudit(OtelSettings(capture_content=True), tracer_provider=provider)

    async def main() -> str:
        async with Executor(plugins=[PortPlugin(audit=audit)], entry_points=False) as executor:
            executor.register_skill("summarize", summarizer, prompt="Summarize: {text}")
            result = await executor.run(writer, "write", caller_id="tester")
        assert result.ok, result.error
        return result.run_id

    run_id = asyncio.run(main())
    spans = exporter.get_finished_spans()
    root = run_span(spans, run_id)
    assert root is not None
    tool_span = one(children(spans, root), "execute_tool skill__summarize")
    child = one(children(spans, tool_span), "invoke_agent summarizer")
    assert json.loads(attrs(child)["executus.run.inputs"]) == {"text": "long text", "token": "***"}
    assert attrs(tool_span)["gen_ai.tool.call.result"] == "short"


def test_a_model_call_that_fails_still_gets_its_chat_span(memory: Any) -> None:
    from executus_core.errors import ProviderStatusError

    provider, exporter = memory
    agent = Agent(
        name="unlucky",
        model=ScriptedModel(
            [
                calls(("u1", "lookup", {"key": "k"})),
                ProviderStatusError(
                    "the server answered 500 (api_key=sk-live-9)", provider="scripted", status_code=500
                ),
            ]
        ),
        tools=[lookup],
    )
    result = asyncio.run(traced_run(OtelAudit(tracer_provider=provider), agent, "go"))
    assert result.status.value == "error", result
    spans = exporter.get_finished_spans()
    root = one(spans, "invoke_agent unlucky")
    chats = by_name(children(spans, root), "chat scripted")
    assert [attrs(c)["executus.step"] for c in chats] == [1, 2]
    failed = chats[1]
    assert failed.status.status_code is StatusCode.ERROR and attrs(failed)["error.type"] == "_OTHER"
    assert "500" in (failed.status.description or "") and "sk-live-9" not in (failed.status.description or "")
    tool_span = one(children(spans, root), "execute_tool lookup")
    assert (failed.start_time or 0) >= (tool_span.end_time or 0)
