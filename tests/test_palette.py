"""Delegation: ``skill__`` / ``agent__`` tools, child runs, their events, the depth limit and palette plugins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from executus_core import (
    Agent,
    Executor,
    Message,
    ModelResponse,
    PaletteEntry,
    RunEvent,
    RunInfo,
    RunStatus,
    ToolCall,
    hookimpl,
)
from executus_core.palette import AGENT_SCHEMA
from executus_core.testing import ScriptedModel
from executus_core.testing.conformance.palette import PaletteConformance, PaletteSubject

from .conftest import answer, call


class SeenRuns:
    """An audit plugin that keeps the `RunInfo` of every run started (and records nothing else)."""

    executus_name = "seen-runs"

    def __init__(self) -> None:
        self.infos: list[RunInfo] = []

    @hookimpl
    def executus_audit(self, settings: Any) -> SeenRuns:
        return self

    async def start_run(self, info: RunInfo) -> None:
        self.infos.append(info)

    def by_parent(self, parent_run_id: str | None) -> list[RunInfo]:
        return [i for i in self.infos if i.parent_run_id == parent_run_id]


@pytest.fixture
def seen() -> SeenRuns:
    return SeenRuns()


@pytest.fixture
async def ex(seen: SeenRuns) -> AsyncIterator[Executor]:
    async with Executor(entry_points=False, plugins=[seen], settings={"port_timeout": 2.0}) as executor:
        yield executor


class Summary(BaseModel):
    text: str
    max_words: int = 50


def tool_messages(messages: list[Message]) -> dict[str, Message]:
    return {m.name or "": m for m in messages if m.role == "tool"}


# --- the tools the model sees ----------------------------------------------------------------


async def test_palette_entries_become_tools_with_their_schemas(ex: Executor) -> None:
    ex.register_skill("summarize", Agent(name="summarizer", model=ScriptedModel([])), inputs=Summary)
    ex.register_skill(
        "tag", Agent(name="tagger", model=ScriptedModel([])), inputs={"type": "object", "required": ["url"]}
    )
    ex.register_agent(Agent(name="researcher", description="Finds sources.", model=ScriptedModel([])))
    model = ScriptedModel([answer("nothing to do")])
    parent = Agent(
        name="lead",
        model=model,
        skill_palette=["summarize", "tag", "nope"],
        subagent_palette=["researcher", "ghost"],
    )
    result = await ex.run(parent, "hi", caller_id="u1")
    assert result.status is RunStatus.OK, result.error
    tools = {t.name: t for t in model.requests[0].tools}
    assert list(tools) == [
        "skill__summarize",
        "skill__tag",
        "skill__nope",
        "agent__researcher",
        "agent__ghost",
    ]
    assert tools["skill__summarize"].parameters == {
        "type": "object",
        "properties": {
            "text": {"title": "Text", "type": "string"},
            "max_words": {"default": 50, "title": "Max Words", "type": "integer"},
        },
        "required": ["text"],
    }
    assert tools["skill__tag"].parameters == {"type": "object", "required": ["url"]}
    assert tools["agent__researcher"].parameters == AGENT_SCHEMA
    assert tools["agent__researcher"].description == "Finds sources."
    assert "not configured" in tools["agent__ghost"].description
    assert "not configured" in tools["skill__nope"].description


async def test_unresolvable_names_answer_not_configured_when_called(ex: Executor) -> None:
    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[
                    ToolCall(id="a", name="agent__ghost", arguments={"prompt": "boo"}),
                    ToolCall(id="s", name="skill__nope", arguments={}),
                ]
            ),
            answer("carried on"),
        ]
    )
    parent = Agent(name="lead", model=model, skill_palette=["nope"], subagent_palette=["ghost"])
    result = await ex.run(parent, "hi", caller_id="u1")
    assert result.status is RunStatus.OK and result.output == "carried on"
    replies = tool_messages(result.messages)
    for name, kind in (("agent__ghost", "agent 'ghost'"), ("skill__nope", "skill 'nope'")):
        assert replies[name].is_error
        assert f"the {kind} is not configured: no palette source resolves it (asked: 'palette')" in (
            replies[name].content or ""
        )


# --- child runs through the in-process palette ------------------------------------------------


async def test_registered_agent_and_skill_run_as_child_runs(ex: Executor, seen: SeenRuns) -> None:
    researcher_model = ScriptedModel([answer("three sources")])
    summarizer_model = ScriptedModel([answer("short version")])
    ex.register_agent(Agent(name="researcher", model=researcher_model))
    ex.register_skill(
        "summarize",
        Agent(name="summarizer", model=summarizer_model),
        inputs=Summary,
        prompt="Summarize in {max_words} words: {text}",
    )
    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[
                    ToolCall(id="r", name="agent__researcher", arguments={"prompt": "find sources"}),
                    ToolCall(id="s", name="skill__summarize", arguments={"text": "a long text"}),
                ]
            ),
            answer("all done"),
        ]
    )
    parent = Agent(name="lead", model=model, skill_palette=["summarize"], subagent_palette=["researcher"])
    events: list[RunEvent] = []
    result = await ex.run(parent, "go", caller_id="u1", channel_id="ch1", on_event=events.append)

    assert result.status is RunStatus.OK and result.output == "all done"
    replies = tool_messages(result.messages)
    assert (
        replies["agent__researcher"].content == "three sources" and not replies["agent__researcher"].is_error
    )
    assert replies["skill__summarize"].content == "short version" and not replies["skill__summarize"].is_error

    [root] = seen.by_parent(None)
    assert root.run_id == result.run_id
    children = {i.name: i for i in seen.by_parent(result.run_id)}
    assert set(children) == {"researcher", "summarizer"}
    assert all(c.caller_id == "u1" and c.channel_id == "ch1" for c in children.values())
    assert children["summarizer"].inputs == {"text": "a long text", "max_words": 50}
    assert researcher_model.requests[0].messages[-1].content == "find sources"
    assert summarizer_model.requests[0].messages[-1].content == "Summarize in 50 words: a long text"

    child_events = [e for e in events if e.type == "child"]
    assert all(e.run_id == result.run_id for e in child_events)
    for tool_name, child in (("agent__researcher", "researcher"), ("skill__summarize", "summarizer")):
        mine = [e.data for e in child_events if e.data["tool"] == tool_name]
        assert {d["child_run_id"] for d in mine} == {children[child].run_id}
        assert [d["type"] for d in mine] == ["run.start", "step", "run.end"]
        assert mine[0]["data"]["agent"] == child and mine[-1]["data"]["status"] == "ok"
    # the child's events arrive while the tool runs: between the parent's tool.start and tool.end
    types = [(e.type, e.data.get("name") or e.data.get("tool")) for e in events]
    start = types.index(("tool.start", "agent__researcher"))
    end = types.index(("tool.end", "agent__researcher"))
    assert start < types.index(("child", "agent__researcher")) < end


async def test_child_failures_and_bad_arguments_are_tool_errors(ex: Executor, seen: SeenRuns) -> None:
    ex.register_agent(Agent(name="flaky", model=ScriptedModel([RuntimeError("model down")])))
    ex.register_skill("summarize", Agent(name="summarizer", model=ScriptedModel([])), inputs=Summary)
    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[
                    ToolCall(id="1", name="agent__flaky", arguments={"prompt": "try"}),
                    ToolCall(id="2", name="skill__summarize", arguments={"max_words": "many"}),
                ]
            ),
            call("agent__flaky", call_id="3", prompt=""),
            answer("gave up"),
        ]
    )
    parent = Agent(name="lead", model=model, skill_palette=["summarize"], subagent_palette=["flaky"])
    result = await ex.run(parent, "go", caller_id="u1")
    assert result.status is RunStatus.OK and result.output == "gave up"
    replies = {m.tool_call_id: m for m in result.messages if m.role == "tool"}
    assert all(m.is_error for m in replies.values())
    [flaky_run] = [i for i in seen.infos if i.name == "flaky"]
    assert (
        f"agent__flaky (run {flaky_run.run_id}) ended error: model scripted raised RuntimeError: model down"
        in (replies["1"].content or "")
    )
    assert (
        "invalid inputs for skill__summarize: text: Field required; max_words: Input should be a valid"
        in (replies["2"].content or "")
    )
    assert replies["3"].content == "error: agent__flaky needs a non-empty 'prompt' string"
    # the invalid skill call never started a run
    assert [i.name for i in seen.infos] == ["lead", "flaky"]


# --- the depth limit --------------------------------------------------------------------------


def self_delegating(ex: Executor) -> tuple[Agent, ScriptedModel]:
    """An agent that, in every run, delegates to itself first and answers once that returns."""
    model = ScriptedModel([call("agent__echo", prompt="again"), answer("done")], per_run=True)
    agent = ex.register_agent(Agent(name="echo", model=model, subagent_palette=["echo"]))
    return agent, model


def depth_refusals(model: ScriptedModel) -> list[str]:
    """The tool results that refused a delegation, as the model received them."""
    return [
        m.content or ""
        for request in model.requests
        for m in request.messages[-1:]
        if m.role == "tool" and "depth limit" in (m.content or "")
    ]


async def test_a_delegation_loop_stops_at_the_default_depth(ex: Executor, seen: SeenRuns) -> None:
    agent, model = self_delegating(ex)
    events: list[RunEvent] = []
    result = await ex.run(agent, "start", caller_id="u1", on_event=events.append)
    assert result.status is RunStatus.OK and result.output == "done"

    # the root and three nested children, each the parent of the next
    assert len(seen.infos) == 4
    chain = [seen.by_parent(None)[0]]
    while found := seen.by_parent(chain[-1].run_id):
        [child] = found
        chain.append(child)
    assert len(chain) == 4 and chain[0].run_id == result.run_id

    [refusal] = depth_refusals(model)
    assert refusal == (
        "error: tool agent__echo failed: DelegationError: agent__echo was not called: the delegation "
        "depth limit is reached (this run is 3 levels below the first, and max_delegation_depth is 3). "
        "Answer without delegating further."
    )
    # every other delegation returned the child's answer
    tool_results = [m for m in result.messages if m.role == "tool"]
    assert [(m.content, m.is_error) for m in tool_results] == [("done", False)]

    # a grandchild's events reach the root nested in its child's
    nested = [
        e.data
        for e in events
        if e.type == "child" and e.data["type"] == "child" and e.data["data"]["type"] == "step"
    ]
    assert nested and all(d["child_run_id"] == chain[1].run_id for d in nested)
    assert {d["data"]["child_run_id"] for d in nested} == {chain[2].run_id}


@pytest.mark.parametrize("depth", [0, 1, 5])
async def test_the_depth_limit_is_a_setting(seen: SeenRuns, depth: int) -> None:
    settings = {"port_timeout": 2.0, "max_delegation_depth": depth}
    async with Executor(entry_points=False, plugins=[seen], settings=settings) as ex:
        agent, model = self_delegating(ex)
        result = await ex.run(agent, "start", caller_id="u1")
    assert result.status is RunStatus.OK and result.output == "done"
    assert len(seen.infos) == depth + 1
    [refusal] = depth_refusals(model)
    assert f"(this run is {depth} levels below the first, and max_delegation_depth is {depth})" in refusal


# --- palette plugins --------------------------------------------------------------------------


class RemotePalette:
    """A third-party `PaletteSource`. Keyword-only parameters: the core must call with keywords."""

    executus_name = "remote"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    @hookimpl
    def executus_palette(self, settings: Any) -> RemotePalette:
        return self

    async def resolve_skill(self, *, caller_id: str, name: str) -> PaletteEntry | None:
        self.calls.append(("resolve_skill", {"caller_id": caller_id, "name": name}))
        if name != "translate":
            return None
        schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        return PaletteEntry(name=name, description="Translate to French.", input_schema=schema)

    async def resolve_agent(self, *, caller_id: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("resolve_agent", {"caller_id": caller_id, "name": name}))
        return {"description": "The remote helper."} if name == "helper" else None

    async def invoke_skill(
        self,
        *,
        caller_id: str,
        channel_id: str | None,
        name: str,
        inputs: dict[str, Any],
        parent_run_id: str | None,
    ) -> tuple[str, str, str]:
        self.calls.append(("invoke_skill", {"caller_id": caller_id, "channel_id": channel_id, "name": name,
                                            "inputs": inputs, "parent_run_id": parent_run_id}))  # fmt: skip
        return "bonjour", "remote-1", "ok"

    async def invoke_agent(
        self,
        *,
        caller_id: str,
        channel_id: str | None,
        name: str,
        prompt: str,
        parent_run_id: str | None,
        model_tier_override: str | None,
        prompt_prepend: str | None,
        tools_subset: list[str] | None,
        on_event: Any,
    ) -> tuple[str, str, str]:
        self.calls.append(
            (
                "invoke_agent",
                {
                    "name": name,
                    "prompt": prompt,
                    "parent_run_id": parent_run_id,
                    "model_tier_override": model_tier_override,
                    "prompt_prepend": prompt_prepend,
                    "tools_subset": tools_subset,
                    "on_event": on_event is not None,
                },
            )
        )
        if self.fail:
            raise ConnectionError("remote palette is down")
        await on_event("step", {"run_id": "remote-2", "iteration": 1})  # awaited
        on_event("step", {"run_id": "remote-2", "iteration": 2})  # or not: both work
        return "remote says hi", "remote-2", "ok"


async def test_a_plugin_palette_resolves_first_and_is_called_with_keywords() -> None:
    remote = RemotePalette()
    local_model = ScriptedModel([])  # would fail the run if the in-process palette served "helper"
    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[
                    ToolCall(id="1", name="agent__helper", arguments={"prompt": "hello?"}),
                    ToolCall(id="2", name="skill__translate", arguments={"text": "hello"}),
                ]
            ),
            answer("ok"),
        ]
    )
    parent = Agent(name="lead", model=model, skill_palette=["translate"], subagent_palette=["helper"])
    events: list[RunEvent] = []
    async with Executor(entry_points=False, plugins=[remote], settings={"port_timeout": 2.0}) as ex:
        ex.register_agent(Agent(name="helper", model=local_model))
        result = await ex.run(parent, "go", caller_id="u1", channel_id="c9", on_event=events.append)

    assert result.status is RunStatus.OK and result.warnings == []
    assert {m.name: m.content for m in result.messages if m.role == "tool"} == {
        "agent__helper": "remote says hi",
        "skill__translate": "bonjour",
    }
    assert local_model.requests == []
    tools = {t.name: t for t in model.requests[0].tools}
    assert tools["agent__helper"].description == "The remote helper."
    assert tools["skill__translate"].parameters["required"] == ["text"]
    calls = dict(remote.calls)
    assert calls["resolve_skill"] == {"caller_id": "u1", "name": "translate"}
    assert calls["invoke_skill"] == {
        "caller_id": "u1",
        "channel_id": "c9",
        "name": "translate",
        "inputs": {"text": "hello"},
        "parent_run_id": result.run_id,
    }
    assert calls["invoke_agent"] == {
        "name": "helper",
        "prompt": "hello?",
        "parent_run_id": result.run_id,
        "model_tier_override": None,
        "prompt_prepend": None,
        "tools_subset": None,
        "on_event": True,
    }
    assert [e.data for e in events if e.type == "child"] == [
        {
            "tool": "agent__helper",
            "call_id": "1",
            "child_run_id": "remote-2",
            "type": "step",
            "data": {"iteration": 1},
        },
        {
            "tool": "agent__helper",
            "call_id": "1",
            "child_run_id": "remote-2",
            "type": "step",
            "data": {"iteration": 2},
        },
    ]


async def test_a_palette_that_raises_in_invoke_is_a_tool_error() -> None:
    model = ScriptedModel([call("agent__helper", prompt="hello?"), answer("without help")])
    parent = Agent(name="lead", model=model, subagent_palette=["helper"])
    async with Executor(entry_points=False, plugins=[RemotePalette(fail=True)]) as ex:
        result = await ex.run(parent, "go", caller_id="u1")
    assert result.status is RunStatus.OK and result.output == "without help"
    [reply] = [m for m in result.messages if m.role == "tool"]
    assert reply.is_error
    assert reply.content == "error: tool agent__helper failed: ConnectionError: remote palette is down"


class OddPalette:
    """Resolves everything, answers nonsense from invoke, and raises in resolve_skill."""

    executus_name = "odd"

    @hookimpl
    def executus_palette(self, settings: Any) -> OddPalette:
        return self

    async def resolve_skill(self, caller_id: str, name: str) -> PaletteEntry:
        raise KeyError("skills table missing")

    async def resolve_agent(self, caller_id: str, name: str) -> Any:
        return "yes" if name == "weird" else PaletteEntry(name=name)

    async def invoke_skill(self, **kwargs: Any) -> tuple[str, str, str]:
        raise AssertionError("never resolved, never invoked")

    async def invoke_agent(self, **kwargs: Any) -> Any:
        return "just a string"


async def test_a_palette_that_misbehaves_never_breaks_the_run() -> None:
    model = ScriptedModel(
        [call("agent__helper", prompt="hi"), call("skill__summarize", "c2"), answer("fine")]
    )
    parent = Agent(
        name="lead", model=model, skill_palette=["summarize"], subagent_palette=["helper", "weird"]
    )
    async with Executor(entry_points=False, plugins=[OddPalette()], settings={"port_timeout": 2.0}) as ex:
        result = await ex.run(parent, "go", caller_id="u1")
    assert result.status is RunStatus.OK and result.output == "fine"
    assert result.warnings == [
        "palette 'odd': resolve_skill raised KeyError: 'skills table missing'",
        "palette 'odd': resolve_agent returned str, not a PaletteEntry",
        "palette 'odd': invoke_agent returned str, not (output, run_id, status)",
    ]
    replies = tool_messages(result.messages)
    assert replies["agent__helper"].content == (
        "error: tool agent__helper failed: TypeError: palette 'odd': invoke_agent returned str, "
        "not (output, run_id, status)"
    )
    # the source that raised was skipped; the next one (the in-process palette) does not know it either
    assert "skill 'summarize' is not configured" in (replies["skill__summarize"].content or "")
    # "weird" was not resolved by the odd palette, nor by the in-process one
    assert "not configured" in next(
        t.description for t in model.requests[0].tools if t.name == "agent__weird"
    )


def test_register_skill_rejects_bad_inputs() -> None:
    ex = Executor(entry_points=False)
    with pytest.raises(TypeError, match="must be a pydantic model class or a JSON schema dict"):
        ex.register_skill("s", Agent(name="a"), inputs=int)


# --- the PaletteSource contract every battery's palette honours --------------------------------


class TestInProcessPaletteConformance(PaletteConformance):
    """The built-in palette passes the same conformance suite as any third-party `PaletteSource`."""

    @pytest.fixture
    def make_palette(self) -> Any:
        def make() -> PaletteSubject:
            ex = Executor(entry_points=False)
            ex.register_agent(Agent(name="greeter", model=ScriptedModel([answer("hello")], per_run=True)))
            summarizer = Agent(name="summarizer", model=ScriptedModel([answer("short")], per_run=True))
            ex.register_skill("summarize", summarizer, inputs=Summary)
            return PaletteSubject(
                ex.palette, skill="summarize", skill_inputs={"text": "long"}, agent="greeter"
            )

        return make
