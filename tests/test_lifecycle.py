"""A run's life around the loop: cancel, shutdown, recover, the caller's own cancellation, deadlines,
and the event stream with consumers that are slow or broken."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest

from executus_core import (
    Agent,
    Executor,
    ModelRequest,
    ModelResponse,
    RunEvent,
    RunStatus,
    ToolCall,
    ToolContext,
    Usage,
    tool,
)
from executus_core.testing import (
    MemoryAudit,
    MemoryBudget,
    MemoryCheckpointStore,
    MemoryCritic,
    ScriptedModel,
)

from .conftest import add, answer, call

SETTINGS = {"port_timeout": 0.3, "hard_timeout": 10.0}
BOUND = 10.0


class GateModel:
    """Asks for ``note`` once, then waits at its second call until ``release`` is set (or forever).

    ``second_call`` is set when the run has reached that wait: the tool result is saved by then."""

    id = "gate"

    def __init__(self) -> None:
        self.second_call = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if not any(m.role == "tool" for m in request.messages):
            return ModelResponse(
                tool_calls=[ToolCall(id="n1", name="note", arguments={"text": "a"})],
                usage=Usage(input_tokens=7, output_tokens=2),
            )
        self.second_call.set()
        await self.release.wait()
        return ModelResponse(text="released")


class Notes:
    """A tool with a side effect we can count, and the idempotency keys it was given."""

    def __init__(self, *, hang_first: bool = False) -> None:
        self.executed = 0
        self.keys: list[str] = []
        self.started = asyncio.Event()
        self.hang_first = hang_first

        @tool
        async def note(text: str, ctx: ToolContext) -> str:
            """Write a note somewhere durable."""
            self.executed += 1
            self.keys.append(ctx.idempotency_key)
            self.started.set()
            if self.hang_first and self.executed == 1:
                await asyncio.Event().wait()  # the host shuts down while this runs
            return f"noted {text}"

        self.tool = note


async def wait_for(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), BOUND)


# --- cancel -------------------------------------------------------------------------------------


async def test_cancel_ends_the_run_cancelled_and_clears_its_checkpoint() -> None:
    store, audit = MemoryCheckpointStore(), MemoryAudit()
    model, notes = GateModel(), Notes()
    async with Executor(plugins=[store, audit], entry_points=False, settings=SETTINGS) as executor:
        task = asyncio.ensure_future(
            executor.run(Agent(name="c", model=model, tools=[notes.tool]), "go", caller_id="u1", run_id="r1")
        )
        await wait_for(model.second_call)
        assert executor.running == ["r1"]
        assert executor.cancel("r1") is True
        assert executor.cancel("r1") is False  # already stopping
        result = await asyncio.wait_for(task, BOUND)
        assert executor.cancel("r1") is False and executor.cancel("nope") is False
        assert executor.running == []
    assert result.status is RunStatus.CANCELLED
    assert result.error == "cancelled by Executor.cancel()"
    assert [m.role for m in result.messages] == ["user", "assistant", "tool"]
    assert store.runs["r1"].state == "failed" and await store.interrupted() == []
    stats = audit.run("r1").stats
    assert stats is not None and stats.status is RunStatus.CANCELLED


# --- shutdown and recover -----------------------------------------------------------------------


async def test_shutdown_interrupts_running_runs_and_keeps_their_checkpoints() -> None:
    store, audit = MemoryCheckpointStore(), MemoryAudit()
    models = [GateModel() for _ in range(3)]
    notes = Notes()
    executor = Executor(plugins=[store, audit], entry_points=False, settings=SETTINGS)
    tasks = [
        asyncio.ensure_future(
            executor.run(
                Agent(name="s", model=m, tools=[notes.tool]), f"go {i}", caller_id="u1", run_id=f"s{i}"
            )
        )
        for i, m in enumerate(models)
    ]
    for model in models:
        await wait_for(model.second_call)
    await asyncio.wait_for(executor.shutdown(), BOUND)
    results = await asyncio.wait_for(asyncio.gather(*tasks), BOUND)

    for i, result in enumerate(results):
        assert result.status is RunStatus.INTERRUPTED
        assert result.error == "the executor shut down; the checkpoint is kept for Executor.recover()"
        assert store.runs[f"s{i}"].state == "open"
        assert [m.role for m in store.messages(f"s{i}")] == ["user", "assistant", "tool"]
        stats = audit.run(f"s{i}").stats
        assert stats is not None and stats.status is RunStatus.INTERRUPTED

    # shut down: new runs are refused, and a second shutdown is harmless
    late = await executor.run(Agent(name="s", model=ScriptedModel([answer("x")])), "hi", caller_id="u1")
    assert late.status is RunStatus.ERROR and "shut down" in (late.error or "")
    await executor.shutdown()


async def test_recover_resumes_without_running_a_saved_tool_call_again() -> None:
    store, audit = MemoryCheckpointStore(), MemoryAudit()
    notes = Notes()
    first_model = GateModel()
    first = Executor(plugins=[store, audit], entry_points=False, settings=SETTINGS)
    task = asyncio.ensure_future(
        first.run(
            Agent(name="writer", model=first_model, tools=[notes.tool]),
            "write it",
            caller_id="u1",
            run_id="w1",
        )
    )
    await wait_for(first_model.second_call)  # the note's result is saved; the model is thinking
    await first.shutdown()
    interrupted = await task
    assert interrupted.status is RunStatus.INTERRUPTED and notes.executed == 1

    # A new process: a new executor over the same store, the same agent with a model that answers.
    second_model = ScriptedModel([answer("all written")])
    resumed_agent = Agent(name="writer", model=second_model, tools=[notes.tool])
    async with Executor(plugins=[store, audit], entry_points=False, settings=SETTINGS) as second:
        results = await asyncio.wait_for(second.recover(agents={"writer": resumed_agent}), BOUND)
        assert await second.recover() == []  # nothing left to resume

    (result,) = results
    assert result.run_id == "w1" and result.status is RunStatus.OK and result.output == "all written"
    assert notes.executed == 1, "the saved tool call ran again on recovery"
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    # the model picked up with the saved transcript, tool result included
    assert [m.content for m in second_model.requests[0].messages] == ["write it", None, "noted a"]
    # the tally carried over from the checkpoint
    assert (result.stats.steps, result.stats.tool_calls, result.stats.input_tokens) == (2, 1, 7)
    assert store.runs["w1"].state == "completed"
    stats = audit.run("w1").stats
    assert stats is not None and stats.status is RunStatus.OK


async def test_recover_runs_a_tool_call_whose_result_was_not_saved_with_the_same_idempotency_key() -> None:
    store = MemoryCheckpointStore()
    notes = Notes(hang_first=True)
    first = Executor(plugins=[store], entry_points=False, settings=SETTINGS)
    agent = Agent(name="writer", model=GateModel(), tools=[notes.tool])
    task = asyncio.ensure_future(first.run(agent, "write it", caller_id="u1", run_id="w2"))
    await wait_for(notes.started)  # shut down while the tool runs: its result is not saved
    await first.shutdown()
    assert (await task).status is RunStatus.INTERRUPTED
    assert [m.role for m in store.messages("w2")] == ["user", "assistant"]

    resumed = Agent(name="writer", model=ScriptedModel([answer("done")]), tools=[notes.tool])
    async with Executor(plugins=[store], entry_points=False, settings=SETTINGS) as second:
        (result,) = await asyncio.wait_for(second.recover(agents={"writer": resumed}), BOUND)
    assert result.status is RunStatus.OK, result.error
    assert notes.executed == 2
    assert notes.keys == ["w2:n1", "w2:n1"], "a re-run tool call must get the same idempotency key"


async def test_a_resumed_run_interrupted_again_is_recovered_again() -> None:
    store = MemoryCheckpointStore()
    notes = Notes()
    first_model = GateModel()
    first = Executor(plugins=[store], entry_points=False, settings=SETTINGS)
    task = asyncio.ensure_future(
        first.run(Agent(name="w", model=first_model, tools=[notes.tool]), "go", caller_id="u1", run_id="w3")
    )
    await wait_for(first_model.second_call)
    await first.shutdown()
    await task

    second_model = GateModel()  # resumes straight into its waiting second call
    second = Executor(plugins=[store], entry_points=False, settings=SETTINGS)
    recovering = asyncio.ensure_future(
        second.recover(agents={"w": Agent(name="w", model=second_model, tools=[notes.tool])})
    )
    await wait_for(second_model.second_call)
    await second.shutdown()
    assert [r.status for r in await recovering] == [RunStatus.INTERRUPTED]

    third_model = ScriptedModel([answer("finally")])
    async with Executor(plugins=[store], entry_points=False, settings=SETTINGS) as third:
        (result,) = await third.recover(agents={"w": Agent(name="w", model=third_model, tools=[notes.tool])})
    assert result.status is RunStatus.OK and result.output == "finally"
    assert notes.executed == 1


async def test_recover_without_a_checkpoint_store_finds_nothing(executor: Executor) -> None:
    assert await executor.recover() == []


async def test_a_run_admitted_while_the_executor_shuts_down_does_not_start() -> None:
    class SlowBudget(MemoryBudget):
        async def check(self, caller_id: str) -> None:
            entered.set()
            await release.wait()
            await super().check(caller_id)

    entered, release = asyncio.Event(), asyncio.Event()
    budget = SlowBudget()
    model = ScriptedModel([answer("x")])
    executor = Executor(plugins=[budget], entry_points=False, settings=SETTINGS)
    task = asyncio.ensure_future(executor.run(Agent(name="b", model=model), "hi", caller_id="u1"))
    await wait_for(entered)
    await executor.shutdown()
    release.set()
    result = await asyncio.wait_for(task, BOUND)
    assert result.status is RunStatus.ERROR
    assert result.error == "the executor shut down before the run started; nothing ran"
    assert model.requests == []
    assert [caller for caller, _, _ in budget.commits] == ["u1"]  # it passed check, so it is charged


# --- the caller's own cancellation ------------------------------------------------------------------


async def test_cancelling_the_callers_task_propagates_and_records_the_run_interrupted() -> None:
    store, audit = MemoryCheckpointStore(), MemoryAudit()
    model, notes = GateModel(), Notes()
    async with Executor(plugins=[store, audit], entry_points=False, settings=SETTINGS) as executor:
        task = asyncio.ensure_future(
            executor.run(Agent(name="k", model=model, tools=[notes.tool]), "go", caller_id="u1", run_id="k1")
        )
        await wait_for(model.second_call)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert executor.running == []
    stats = audit.run("k1").stats
    assert stats is not None and stats.status is RunStatus.INTERRUPTED
    assert stats.error == "the caller's task was cancelled; the checkpoint is kept"
    assert store.runs["k1"].state == "open"  # kept for recover()


async def test_a_caller_timeout_around_run_propagates_as_timeout_error() -> None:
    model = GateModel()
    async with Executor(entry_points=False, settings=SETTINGS) as executor:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await executor.run(Agent(name="t", model=model, tools=[Notes().tool]), "go", caller_id="u1")


# --- deadlines ----------------------------------------------------------------------------------


async def test_the_agents_hard_timeout_overrides_the_executors() -> None:
    model = GateModel()
    started = time.monotonic()
    async with Executor(entry_points=False, settings=SETTINGS) as executor:
        agent = Agent(name="d", model=model, tools=[Notes().tool], hard_timeout=0.3)
        result = await asyncio.wait_for(executor.run(agent, "go", caller_id="u1"), BOUND)
    assert result.status is RunStatus.TIMEOUT
    assert result.error == "the run passed its deadline during model call 2"
    assert time.monotonic() - started < SETTINGS["hard_timeout"]


async def test_run_status_reports_the_time_left_before_the_deadline(executor: Executor) -> None:
    model = ScriptedModel([call("run_status"), answer("ok")])
    agent = Agent(name="r", model=model, tools=["run_status"], hard_timeout=120)
    result = await executor.run(agent, "go", caller_id="u1")
    status = next(m for m in result.messages if m.role == "tool")
    left = json.loads(status.content or "{}")["seconds_left"]
    assert 100 < left <= 120


# --- events: stream and on_event ----------------------------------------------------------------


async def test_stream_yields_the_runs_events_and_ends_with_the_result() -> None:
    model = ScriptedModel([call("add", a=1, b=2), answer("3")])
    events: list[RunEvent] = []
    async with Executor(entry_points=False, settings=SETTINGS) as executor:
        async for event in executor.stream(Agent(name="s", model=model, tools=[add]), "1+2", caller_id="u1"):
            events.append(event)
    types = [e.type for e in events]
    assert types == ["run.start", "step", "tool.start", "tool.end", "step", "run.end", "result"]
    result = events[-1].data["result"]
    assert result.status is RunStatus.OK and result.output == "3"
    assert {e.run_id for e in events} == {result.run_id}
    assert events[3].data["result"] == "3" and events[3].data["ok"] is True
    assert all(e.at.tzinfo is not None for e in events)


async def test_leaving_a_stream_early_cancels_the_run() -> None:
    store, audit = MemoryCheckpointStore(), MemoryAudit()
    model, notes = GateModel(), Notes()
    async with Executor(plugins=[store, audit], entry_points=False, settings=SETTINGS) as executor:
        stream = executor.stream(Agent(name="e", model=model, tools=[notes.tool]), "go", caller_id="u1")
        async with contextlib.aclosing(stream):
            async for event in stream:
                if event.type == "tool.end":
                    run_id = event.run_id
                    break
        assert executor.running == []
    stats = audit.run(run_id).stats
    assert stats is not None and stats.status is RunStatus.CANCELLED
    assert store.runs[run_id].state == "failed"


async def test_a_stream_of_a_refused_run_still_ends_with_its_result() -> None:
    budget = MemoryBudget(max_runs=0)
    async with Executor(plugins=[budget], entry_points=False, settings=SETTINGS) as executor:
        events = [
            e async for e in executor.stream(Agent(name="x", model=ScriptedModel([])), "hi", caller_id="u1")
        ]
    assert [e.type for e in events] == ["result"]
    assert events[0].data["result"].status is RunStatus.BUDGET_EXCEEDED


async def test_a_consumer_that_hangs_is_dropped_and_never_stalls_the_run() -> None:
    seen: list[str] = []

    async def consumer(event: RunEvent) -> None:
        seen.append(event.type)
        await asyncio.sleep(3600)

    model = ScriptedModel([call("add", a=1, b=2), call("add", call_id="c2", a=3, b=4), answer("7")])
    started = time.monotonic()
    async with Executor(entry_points=False, settings=SETTINGS) as executor:
        result = await asyncio.wait_for(
            executor.run(Agent(name="h", model=model, tools=[add]), "go", caller_id="u1", on_event=consumer),
            BOUND,
        )
    assert result.status is RunStatus.OK and result.output == "7"
    assert seen == ["run.start"]  # dropped after its first event timed out
    assert result.warnings == [
        "on_event consumer: on_event did not answer within 0.3s; dropped for the rest of the run"
    ]
    assert time.monotonic() - started < BOUND


async def test_a_slow_consumer_falls_behind_without_slowing_the_run() -> None:
    """The consumer takes 0.1 s per event; the run does not wait for it between steps (only, bounded
    by the port timeout, at its end)."""
    seen: list[str] = []
    step_times: list[float] = []

    async def consumer(event: RunEvent) -> None:
        await asyncio.sleep(0.1)
        seen.append(event.type)

    def timed(request: ModelRequest) -> ModelResponse:
        step_times.append(time.monotonic())
        n = len(step_times)
        return ModelResponse(tool_calls=[ToolCall(id=f"c{n}", name="add", arguments={"a": n, "b": 1})])

    model = ScriptedModel([timed] * 9 + [answer("done")])
    async with Executor(entry_points=False, settings=SETTINGS) as executor:
        result = await executor.run(
            Agent(name="slow", model=model, tools=[add]), "go", caller_id="u1", on_event=consumer
        )
    assert result.status is RunStatus.OK
    # 9 steps and 9 tool calls make ~30 events: 3 s of consumer time; the steps did not wait for it
    assert step_times[-1] - step_times[0] < 1.0
    assert 0 < len(seen) < 30
    assert result.warnings == ["on_event consumer did not finish within 0.3s of the run's end"]


async def test_a_consumer_that_raises_never_breaks_the_run() -> None:
    seen: list[str] = []

    def consumer(event: RunEvent) -> None:
        seen.append(event.type)
        if event.type == "step":
            raise ValueError("consumer bug")

    model = ScriptedModel([call("add", a=1, b=2), answer("3")])
    async with Executor(entry_points=False, settings=SETTINGS) as executor:
        result = await executor.run(
            Agent(name="r", model=model, tools=[add]), "go", caller_id="u1", on_event=consumer
        )
    assert result.status is RunStatus.OK and result.output == "3"
    assert seen == [
        "run.start",
        "step",
        "tool.start",
        "tool.end",
        "step",
        "run.end",
    ]  # it kept getting events
    assert result.warnings == ["on_event consumer: on_event raised ValueError: consumer bug"]


async def test_a_stream_with_a_raising_user_handler_still_delivers_every_event() -> None:
    def handler(event: RunEvent) -> Any:
        raise RuntimeError("handler bug")

    model = ScriptedModel([answer("hi")])
    async with Executor(entry_points=False, settings=SETTINGS) as executor:
        stream = executor.stream(Agent(name="x", model=model), "hi", caller_id="u1", on_event=handler)
        types = [e.type async for e in stream]
    assert types == ["run.start", "step", "run.end", "result"]


async def test_the_critics_soft_timeout_steers_the_model() -> None:
    critic, audit = MemoryCritic(), MemoryAudit()
    steps = [call("add", call_id=f"c{i}", a=i, b=1) for i in range(3)]
    model = ScriptedModel([*steps, answer("wrapped up")], delay=0.06)
    agent = Agent(name="long", model=model, tools=[add], soft_timeout=0.1)
    async with Executor(plugins=[critic, audit], entry_points=False, settings=SETTINGS) as executor:
        result = await executor.run(agent, "go", caller_id="u1")
    assert result.status is RunStatus.OK
    steered = critic.handles[result.run_id].steered
    assert steered, "the run outlived its soft timeout but was never steered"
    # each steer message went into the transcript once, before a model call, and was recorded
    assert [m for m in result.messages if m in steered] == steered
    assert steered[0] in model.requests[-1].messages
    assert "steer" in audit.run(result.run_id).event_types()


async def test_shutdown_is_bounded_when_a_model_or_a_port_hangs_on_close() -> None:
    class HangsOnClose(ScriptedModel):
        async def aclose(self) -> None:
            await asyncio.Event().wait()

    class StoreHangsOnClose(MemoryCheckpointStore):
        async def aclose(self) -> None:
            await asyncio.Event().wait()

    executor = Executor(
        plugins=[StoreHangsOnClose()], entry_points=False, settings={"port_timeout": 0.2, "models": {}}
    )
    executor.models._models["scripted:x"] = HangsOnClose([])
    await asyncio.wait_for(executor.shutdown(), BOUND)
