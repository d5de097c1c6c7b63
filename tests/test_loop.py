"""The agent loop: steps, tools, errors fed back to the model, step limits and dry runs."""

from __future__ import annotations

import asyncio

from executus_core import Agent, Executor, ModelResponse, RunStatus, ToolCall, ToolContext, Usage, tool
from executus_core.testing import ScriptedModel

from .conftest import add, answer, call


async def test_tool_call_then_answer(executor: Executor) -> None:
    model = ScriptedModel([call("add", a=2, b=40), answer("42")])
    result = await executor.run(Agent(name="calc", model=model, tools=[add]), "2+40?", caller_id="u1")
    assert result.status is RunStatus.OK, result.error
    assert result.output == "42"
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    tool_message = result.messages[2]
    assert tool_message.content == "42" and tool_message.tool_call_id == "c1" and not tool_message.is_error
    assert result.stats.steps == 2 and result.stats.tool_calls == 1
    # the second request carries the tool result
    assert model.requests[1].messages[-1].tool_call_id == "c1"


async def test_instructions_become_the_system_message(executor: Executor) -> None:
    model = ScriptedModel([answer("hi")])
    await executor.run(Agent(name="a", instructions="Be brief.", model=model), "hello", caller_id="u1")
    assert [(m.role, m.content) for m in model.requests[0].messages] == [
        ("system", "Be brief."),
        ("user", "hello"),
    ]


async def test_parallel_tool_calls_run_concurrently(executor: Executor) -> None:
    started: list[str] = []
    release = asyncio.Event()

    @tool
    async def wait(name: str) -> str:
        """Wait for the others."""
        started.append(name)
        if len(started) == 3:
            release.set()
        await asyncio.wait_for(release.wait(), 2)
        return name

    calls = [ToolCall(id=f"c{i}", name="wait", arguments={"name": f"n{i}"}) for i in range(3)]
    model = ScriptedModel([ModelResponse(tool_calls=calls), answer("done")])
    result = await executor.run(Agent(name="p", model=model, tools=[wait]), "go", caller_id="u1")
    assert result.status is RunStatus.OK, result.error
    # results come back in the order the model asked for them
    assert [m.content for m in result.messages if m.role == "tool"] == ["n0", "n1", "n2"]


async def test_unknown_tool_bad_arguments_and_raising_tool_go_back_to_the_model(executor: Executor) -> None:
    @tool
    def boom() -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    calls = [
        ToolCall(id="a", name="missing", arguments={}),
        ToolCall(id="b", name="add", arguments={"a": "x", "b": 1}),
        ToolCall(id="c", name="boom", arguments={}),
        ToolCall(id="d", name="add", arguments={}, arguments_error="Expecting value: line 1 column 1"),
    ]
    model = ScriptedModel([ModelResponse(tool_calls=calls), answer("sorry")])
    result = await executor.run(Agent(name="e", model=model, tools=[add, boom]), "go", caller_id="u1")
    assert result.status is RunStatus.OK
    tool_messages = {m.tool_call_id: m for m in result.messages if m.role == "tool"}
    assert all(m.is_error for m in tool_messages.values())
    assert "no tool named 'missing'" in (tool_messages["a"].content or "")
    assert "invalid arguments for add" in (tool_messages["b"].content or "")
    assert "a: Input should be a valid integer" in (tool_messages["b"].content or "")
    assert "RuntimeError: disk on fire" in (tool_messages["c"].content or "")
    assert "not valid JSON" in (tool_messages["d"].content or "")


async def test_step_limit_keeps_transcript_and_last_text(executor: Executor) -> None:
    looping = ModelResponse(
        text="still thinking", tool_calls=[ToolCall(id="x", name="add", arguments={"a": 1, "b": 1})]
    )
    model = ScriptedModel([looping] * 5)
    result = await executor.run(Agent(name="l", model=model, tools=[add], max_steps=3), "go", caller_id="u1")
    assert result.status is RunStatus.ERROR
    assert "step limit reached: 3" in (result.error or "")
    assert result.output == "still thinking"
    assert len(result.messages) == 1 + 3 * 2
    assert len(model.requests) == 3


async def test_dry_run_returns_first_request_without_calling_the_model(executor: Executor) -> None:
    model = ScriptedModel([])
    result = await executor.run(
        Agent(name="d", instructions="sys", model=model, tools=[add]), "hi", caller_id="u1", dry_run=True
    )
    assert result.status is RunStatus.DRY_RUN
    assert model.requests == []
    assert result.request is not None
    assert result.request["messages"][-1] == {"role": "user", "content": "hi"}
    assert result.request["tools"][0]["name"] == "add"


async def test_usage_is_totalled(executor: Executor) -> None:
    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[ToolCall(id="1", name="add", arguments={"a": 1, "b": 2})],
                usage=Usage(input_tokens=10, output_tokens=2),
            ),
            ModelResponse(text="3", usage=Usage(input_tokens=15, output_tokens=1, thinking_tokens=4)),
        ]
    )
    result = await executor.run(Agent(name="u", model=model, tools=[add]), "go", caller_id="u1")
    assert (result.stats.input_tokens, result.stats.output_tokens, result.stats.thinking_tokens) == (25, 3, 4)


async def test_tool_context_and_run_status(executor: Executor) -> None:
    seen: list[ToolContext] = []

    @tool
    def remember(note: str, ctx: ToolContext) -> str:
        """Keep a note as an artifact."""
        seen.append(ctx)
        ctx.add_artifact("note.txt", note, "text/plain")
        return "kept"

    model = ScriptedModel([call("remember", note="hello"), call("run_status", call_id="s"), answer("ok")])
    result = await executor.run(
        Agent(name="c", model=model, tools=[remember, "run_status"]), "go", caller_id="u1"
    )
    assert result.status is RunStatus.OK, result.error
    assert "note" not in [p for p in remember.spec.parameters.get("ctx", {})]
    assert "ctx" not in remember.spec.parameters["properties"]
    assert seen[0].idempotency_key == f"{result.run_id}:c1"
    assert seen[0].info.caller_id == "u1"
    assert result.artifacts[0].content == b"hello"
    status = next(m for m in result.messages if m.tool_call_id == "s")
    assert '"steps": 2' in (status.content or "") and '"tool_calls": 2' in (status.content or "")
    assert '"seconds_left"' in (status.content or "")


async def test_bad_input_is_a_result_not_an_exception(executor: Executor) -> None:
    model = ScriptedModel([answer("x")])
    agent = Agent(name="b", model=model)
    assert "caller_id" in ((await executor.run(agent, "hi", caller_id="")).error or "")
    assert "prompt must be a string" in ((await executor.run(agent, 42, caller_id="u")).error or "")  # type: ignore[arg-type]
    assert "not an agent" in ((await executor.run("agent", "hi", caller_id="u")).error or "")  # type: ignore[arg-type]
    unknown = await executor.run(Agent(name="t", model=model, tools=["nope"]), "hi", caller_id="u")
    assert "unknown tool 'nope'" in (unknown.error or "") and "run_status" in (unknown.error or "")
    no_model = await executor.run(Agent(name="m", model="nosuch:model"), "hi", caller_id="u")
    assert no_model.status is RunStatus.ERROR and "no provider for 'nosuch:model'" in (no_model.error or "")


async def test_model_failures_end_the_run_with_a_clear_error(executor: Executor) -> None:
    model = ScriptedModel([ValueError("garbage in the answer")])
    result = await executor.run(Agent(name="f", model=model), "hi", caller_id="u1")
    assert result.status is RunStatus.ERROR
    assert "model scripted raised ValueError: garbage in the answer" in (result.error or "")

    wrong = ScriptedModel([lambda request: "not a response"])  # type: ignore[list-item]
    result = await executor.run(Agent(name="f", model=wrong), "hi", caller_id="u1")
    assert "returned str, not a ModelResponse" in (result.error or "")


def test_run_sync() -> None:
    with Executor(entry_points=False) as ex:
        result = ex.run_sync(
            Agent(name="s", model=ScriptedModel([call("add", a=1, b=2), answer("3")]), tools=[add]),
            "1+2",
            caller_id="u1",
        )
        assert result.raise_for_status().output == "3"


async def test_an_empty_answer_ends_ok_with_one_warning() -> None:
    from executus_core import Agent, Executor, ModelResponse, RunStatus
    from executus_core.testing import ScriptedModel

    async with Executor(entry_points=False) as ex:
        silent = await ex.run(
            Agent(name="a", model=ScriptedModel([ModelResponse(text="")])), "go", caller_id="u1"
        )
        said = await ex.run(
            Agent(
                name="a",
                model=ScriptedModel([ModelResponse(text=None, warnings=["the server sent nothing"])]),
            ),
            "go",
            caller_id="u1",
        )
    assert silent.status is RunStatus.OK and silent.warnings == [
        "model scripted ended the run with an empty answer"
    ]
    assert said.warnings == ["the server sent nothing"]


async def test_a_raw_argument_tool_gets_its_context_when_it_asks() -> None:
    from executus_core import Agent, Executor, RunStatus, Tool, ToolContext
    from executus_core.testing import ScriptedModel

    seen: list[object] = []

    async def echo(arguments: dict, context: ToolContext | None = None) -> str:
        seen.append(context)
        return str(arguments)

    raw = Tool(name="echo", description="", fn=echo, args_model=None, context_param="context", parameters={})
    async with Executor(entry_points=False) as ex:
        result = await ex.run(
            Agent(name="a", model=ScriptedModel([call("echo", x=1), answer("ok")]), tools=[raw]),
            "go",
            caller_id="u1",
        )
    assert result.status is RunStatus.OK
    assert isinstance(seen[0], ToolContext) and seen[0].call_id == "c1"


def test_register_tools_hands_plugins_the_settings() -> None:
    from executus_core import Executor, hookimpl

    got: list[object] = []

    class Reads:
        @hookimpl
        def executus_register_tools(self, register: object, settings: object) -> None:
            got.append(settings)

    ex = Executor(entry_points=False, plugins=[Reads()], settings={"max_steps": 3})
    assert got and got[0] is ex.settings


REPLAY = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "assistant.replay.json")


async def test_run_start_names_the_prompt_the_resolved_model_and_the_tier() -> None:
    from executus_core import Agent, Executor, RunEvent

    replay = REPLAY
    events: list[RunEvent] = []
    async with Executor(entry_points=False, settings={"models": {"fast": f"scripted:{replay}"}}) as ex:
        await ex.run(Agent(name="a", model="fast"), "What is 2 + 40?", caller_id="u1", on_event=events.append)
    start = next(e for e in events if e.type == "run.start")
    assert start.data["prompt"] == "What is 2 + 40?"
    assert start.data["model"] == f"scripted:{replay}" and start.data["tier"] == "fast"
