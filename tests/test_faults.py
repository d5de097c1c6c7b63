"""The fault matrix: every port method x {raises, hangs, returns the wrong type}.

Whatever a port does, the run returns a `Result` with the right status within a bounded time, no
exception escapes (not to the caller, not as an un-retrieved task error), and the Result names the
port and the method. "Right status", following the loop:

- ``budget.check`` failing in any way refuses the run: status ``error`` (a broken budget never lets
  a run through unmetered), and the model is never called;
- a palette ``invoke_*`` that hangs holds its tool call until the run's hard deadline: ``timeout``,
  the error naming the tool still running (a delegation may legitimately take long, so only the
  deadline bounds it); one that raises or answers garbage becomes a tool error the model sees;
- ``store.interrupted`` is only called by `Executor.recover`, which returns an ``error`` Result
  naming it instead of resuming anything;
- everything else is survived: the run ends as it would have (``ok``; ``error`` for the methods
  only called on failed runs, ``checkpointer.fail`` and ``delivery.deliver_error``, whose runs fail
  on purpose), with a warning naming the port and the method.

"Hangs" is an ``async`` method that never returns, or, for a synchronous method, a returned
awaitable that never completes (a synchronous method that blocks would block the event loop: no
library can bound that).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from executus_core import (
    Agent,
    DeliveryTarget,
    Executor,
    ModelRequest,
    ModelResponse,
    Result,
    RunInfo,
    RunStatus,
    ToolCall,
    tool,
)
from executus_core.errors import ProviderResponseError
from executus_core.testing import (
    MemoryAudit,
    MemoryBudget,
    MemoryCheckpointStore,
    MemoryCritic,
    MemoryCriticHandle,
    MemoryDelivery,
    MemoryPalette,
    PortPlugin,
    ScriptedModel,
)

from .conftest import add, answer

PORT_TIMEOUT = 0.2
HARD_TIMEOUT = 1.0
BOUND = 10.0  # no run may take longer than this, whatever its ports do

SETTINGS = {
    "port_timeout": PORT_TIMEOUT,
    "delivery_timeout": PORT_TIMEOUT,
    "hard_timeout": HARD_TIMEOUT,
    "deadline_poll": 0.02,
}

SHORT_TIMEOUT = 0.5
SHORT = {**SETTINGS, "hard_timeout": SHORT_TIMEOUT}  # for runs that are meant to hang

OK, ERROR, TIMEOUT = RunStatus.OK, RunStatus.ERROR, RunStatus.TIMEOUT


@pytest.fixture(autouse=True)
async def no_task_errors() -> AsyncIterator[None]:
    """Fail the test if any task died with an exception nobody retrieved (something escaped)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    yield
    await asyncio.sleep(0)
    loop.set_exception_handler(previous)
    assert not seen, (
        f"an error escaped into the event loop: {seen[0].get('message')}: {seen[0].get('exception')!r}"
    )


# --- the ports, and how to break one of their methods -------------------------------------------


@dataclasses.dataclass
class Ports:
    audit: MemoryAudit
    budget: MemoryBudget
    critic: MemoryCritic
    store: MemoryCheckpointStore
    palette: MemoryPalette
    delivery: MemoryDelivery

    @classmethod
    def build(cls) -> Ports:
        palette = MemoryPalette()
        palette.add_skill("echo", lambda inputs: f"echo {inputs.get('text')}")
        palette.add_agent("helper", lambda prompt: "helped")
        return cls(
            MemoryAudit(),
            MemoryBudget(),
            MemoryCritic(hard_timeout=HARD_TIMEOUT),  # its deadline replaces the executor's
            MemoryCheckpointStore(),
            palette,
            MemoryDelivery(),
        )

    def plugins(self) -> list[object]:
        return [self.audit, self.budget, self.critic, self.store, self.palette, self.delivery]


# Which object holds each method; recorders, critic handles and checkpointers are made per run.
OWNERS = {
    "audit": "audit",
    "recorder": "audit",
    "budget": "budget",
    "critic": "critic",
    "handle": "critic",
    "store": "store",
    "checkpointer": "store",
    "palette": "palette",
    "delivery": "delivery",
}
MAKER = {"recorder": "start_run", "handle": "monitor", "checkpointer": "for_run"}
LABELS = {
    "audit": "audit 'memory_audit'",
    "budget": "budget 'memory_budget'",
    "critic": "critic 'memory_critic'",
    "store": "checkpoint 'memory_checkpoints'",
    "palette": "palette 'memory_palette'",
    "delivery": "delivery 'memory_delivery'",
}
WRONG: dict[str, Any] = {
    "start_run": "not a recorder",
    "monitor": 42,
    "for_run": ["not", "a", "checkpointer"],
    "interrupted": "not a list",
    "check": False,
    "steer": "wrap up now",  # a str is a Sequence, but not of Message
    "deadline": "tomorrow",
    "resolve_skill": 42,
    "resolve_agent": 42,
    "invoke_skill": "just the output",
    "invoke_agent": {"output": "x"},
}  # every other method should return None: it returns 42


class Calls:
    count = 0


class Injected(BaseException):
    """A BaseException that is not an Exception: what a careless library may raise."""


DEAF_SECONDS = 1.2  # a deaf callee ignores cancellation this long, then returns
deaf_tasks: list[asyncio.Task[Any]] = []


async def _deaf(value: Any) -> Any:
    deaf_tasks.append(asyncio.current_task())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    end = loop.time() + DEAF_SECONDS
    while loop.time() < end:
        try:
            await asyncio.sleep(end - loop.time())
        except asyncio.CancelledError:
            continue  # deaf: swallows every cancellation
    return value


def _raise(mode: str) -> None:
    if mode == "raises":
        raise RuntimeError("injected fault")
    if mode == "base":
        raise Injected("injected base fault")
    if mode == "cancel":
        raise asyncio.CancelledError()


def break_method(obj: Any, method: str, mode: str, calls: type[Calls] | Calls) -> None:
    """Replace ``obj.method`` with one that raises, hangs or answers the wrong type."""
    original = getattr(obj, method)
    wrong = WRONG.get(method, 42)

    if inspect.iscoroutinefunction(original):

        async def broken_async(*args: Any, **kwargs: Any) -> Any:
            calls.count += 1
            _raise(mode)
            if mode == "hangs":
                await asyncio.get_running_loop().create_future()  # never completes
            if mode == "deaf":
                return await _deaf(wrong)
            return wrong

        setattr(obj, method, broken_async)
    else:

        def broken_sync(*args: Any, **kwargs: Any) -> Any:
            calls.count += 1
            _raise(mode)
            if mode == "hangs":
                return asyncio.get_running_loop().create_future()  # an awaitable that never completes
            if mode == "deaf":
                return _deaf(wrong)  # an awaitable deaf to cancellation
            return wrong

        setattr(obj, method, broken_sync)


def inject(ports: Ports, where: str, mode: str) -> Calls:
    """Break ``where`` (``"recorder.on_step"``) in ``ports``; the returned object counts the calls."""
    owner_key, method = where.split(".")
    owner = getattr(ports, OWNERS[owner_key])
    calls = Calls()
    if owner_key not in MAKER:
        break_method(owner, method, mode, calls)
        return calls
    maker_name = MAKER[owner_key]
    make = getattr(owner, maker_name)

    async def make_broken(*args: Any) -> Any:
        made = await make(*args)
        break_method(made, method, mode, calls)
        return made

    setattr(owner, maker_name, make_broken)
    return calls


# --- the run every case makes -------------------------------------------------------------------


def agent(fails: bool = False) -> Agent:
    """Calls a tool, a skill and an agent at once, then answers (or, with ``fails``, the model breaks)."""
    step = ModelResponse(
        tool_calls=[
            ToolCall(id="t1", name="add", arguments={"a": 1, "b": 2}),
            ToolCall(id="t2", name="skill__echo", arguments={"text": "hi"}),
            ToolCall(id="t3", name="agent__helper", arguments={"prompt": "help"}),
        ]
    )
    last: Any = ProviderResponseError("the model broke", provider="scripted") if fails else answer("done")
    return Agent(
        name="faulty",
        model=ScriptedModel([step, last], delay=0.03),
        tools=[add],
        skill_palette=["echo"],
        subagent_palette=["helper"],
    )


async def run_once(ports: Ports, *, fails: bool = False) -> tuple[Result, float]:
    started = time.monotonic()
    async with Executor(plugins=ports.plugins(), entry_points=False, settings=SETTINGS) as executor:
        result = await asyncio.wait_for(
            executor.run(agent(fails), "go", caller_id="u1", delivery=DeliveryTarget(kind="memory")), BOUND
        )
    return result, time.monotonic() - started


def names(result: Result, label: str, method: str) -> bool:
    """Does the Result's error, a warning or a tool message name the port and the method?"""
    lines = [result.error or "", *result.warnings]
    lines += [m.content or "" for m in result.messages if m.role == "tool"]
    return any(label in line and method in line for line in lines)


# --- the table ----------------------------------------------------------------------------------

# port.method                      run fails  raises  hangs    wrong type
MATRIX: list[tuple[str, bool, RunStatus, RunStatus, RunStatus]] = [
    ("audit.start_run",             False,    OK,     OK,      OK),
    ("recorder.on_step",            False,    OK,     OK,      OK),
    ("recorder.on_tool",            False,    OK,     OK,      OK),
    ("recorder.log_event",          False,    OK,     OK,      OK),
    ("recorder.log_error",          True,     ERROR,  ERROR,   ERROR),
    ("recorder.close",              False,    OK,     OK,      OK),
    ("budget.check",                False,    ERROR,  ERROR,   ERROR),
    ("budget.commit",               False,    OK,     OK,      OK),
    ("critic.monitor",              False,    OK,     OK,      OK),
    ("handle.record_step",          False,    OK,     OK,      OK),
    ("handle.record_tool_start",    False,    OK,     OK,      OK),
    ("handle.steer",                False,    OK,     OK,      OK),
    ("handle.deadline",             False,    OK,     OK,      OK),
    ("handle.stop",                 False,    OK,     OK,      OK),
    ("store.for_run",               False,    OK,     OK,      OK),
    ("checkpointer.save",           False,    OK,     OK,      OK),
    ("checkpointer.complete",       False,    OK,     OK,      OK),
    ("checkpointer.fail",           True,     ERROR,  ERROR,   ERROR),
    ("palette.resolve_skill",       False,    OK,     OK,      OK),
    ("palette.resolve_agent",       False,    OK,     OK,      OK),
    ("palette.invoke_skill",        False,    OK,     TIMEOUT, OK),
    ("palette.invoke_agent",        False,    OK,     TIMEOUT, OK),
    ("delivery.deliver",            False,    OK,     OK,      OK),
    ("delivery.deliver_error",      True,     ERROR,  ERROR,   ERROR),
]  # fmt: skip

# A BaseException subclass and a CancelledError the method raises itself end like an exception;
# a hang deaf to cancellation ends like a hang: the callee is abandoned, not waited for.
LIKE = {"raises": 0, "base": 0, "cancel": 0, "hangs": 1, "deaf": 1, "wrong": 2}

CASES = [
    pytest.param(where, mode, fails, statuses[LIKE[mode]], id=f"{where}-{mode}")
    for where, fails, *statuses in MATRIX
    for mode in LIKE
]

TOOL_OF = {"invoke_skill": "skill__echo", "invoke_agent": "agent__helper"}


@pytest.mark.parametrize(("where", "mode", "fails", "status"), CASES)
async def test_fault_matrix(where: str, mode: str, fails: bool, status: RunStatus) -> None:
    ports = Ports.build()
    calls = inject(ports, where, mode)
    deaf_tasks.clear()
    result, seconds = await run_once(ports, fails=fails)

    assert calls.count > 0, f"{where} was never called: the case proves nothing"
    assert result.status is status, (result.status, result.error, result.warnings)
    assert "internal error in executus" not in (result.error or ""), result.error
    assert seconds < BOUND
    # within the deadline + 1 s, however deaf the callee: it was abandoned, not waited for
    assert seconds < HARD_TIMEOUT + 1.0, seconds
    owner_key = where.split(".")[0]
    if (
        OWNERS[owner_key] != "budget" and result.status is not RunStatus.ERROR
    ) or where == "recorder.log_error":
        assert len(ports.budget.commits) == 1, "the budget was not committed exactly once"
    if OWNERS[owner_key] != "audit" and ports.audit.recorders:
        assert all(r.closed for r in ports.audit.recorders.values()), "a recorder was left open"
    if deaf_tasks:  # nothing left behind: the abandoned callees end by themselves
        await asyncio.wait(deaf_tasks, timeout=DEAF_SECONDS + 1)
        assert all(t.done() for t in deaf_tasks)
    if mode in ("base", "cancel") and where != "recorder.log_error" and status is not RunStatus.TIMEOUT:
        raised = "Injected" if mode == "base" else "CancelledError"
        lines = [result.error or "", *result.warnings, *(m.content or "" for m in result.messages)]
        assert any(raised in line for line in lines), (result.error, result.warnings)
    owner, method = where.split(".")
    label = LABELS[OWNERS[owner]]
    if method in TOOL_OF and mode in ("hangs", "deaf"):
        # Bounded by the run's deadline; the error names the delegation still running.
        assert f"tool {TOOL_OF[method]} (still running)" in (result.error or ""), result.error
    elif method in TOOL_OF and mode in ("base", "cancel"):
        assert names(result, f"tool {TOOL_OF[method]} failed", "Injected" if mode == "base" else "Cancelled")
    elif method in TOOL_OF and mode == "raises":
        # The model is told; see test_a_raising_palette_invoke_is_named_in_warnings for the Result.
        assert names(result, f"tool {TOOL_OF[method]} failed", "RuntimeError: injected fault"), (
            result.messages
        )
    else:
        assert names(result, label, method), (
            f"neither the error nor the warnings name {label} and {method}: {result.error!r} {result.warnings}"
        )
    if where == "budget.check":
        assert result.stats.steps == 0, "a budget that cannot answer must not let the run reach the model"
    if status is OK:
        assert result.output == "done"


async def test_a_raising_palette_invoke_is_named_in_warnings() -> None:
    ports = Ports.build()
    inject(ports, "palette.invoke_skill", "raises")
    result, _ = await run_once(ports)
    assert any("palette 'memory_palette'" in w and "invoke_skill" in w for w in result.warnings), (
        result.warnings
    )


@pytest.mark.parametrize("mode", ["raises", "hangs", "wrong"])
async def test_store_interrupted_faults_make_recover_return_an_error(mode: str) -> None:
    ports = Ports.build()
    calls = inject(ports, "store.interrupted", mode)
    async with Executor(plugins=ports.plugins(), entry_points=False, settings=SETTINGS) as executor:
        results = await asyncio.wait_for(executor.recover(), BOUND)
    assert calls.count == 1
    assert len(results) == 1 and results[0].status is ERROR
    assert "checkpoint 'memory_checkpoints': interrupted" in (results[0].error or ""), results[0].error


async def test_interrupted_listing_garbage_keeps_the_good_runs() -> None:
    store = MemoryCheckpointStore()
    original = store.interrupted

    async def mixed() -> list[Any]:
        return [42, *await original()]

    store.interrupted = mixed  # type: ignore[method-assign]
    async with Executor(plugins=[store], entry_points=False, settings=SETTINGS) as executor:
        results = await executor.recover()
    assert [r.status for r in results] == [ERROR]
    assert "listed int, not an Interrupted run" in (results[0].error or "")


async def test_the_baseline_run_has_no_warnings_and_uses_every_port() -> None:
    """The control for the matrix: without a fault, the same run is clean and reaches every port."""
    ports = Ports.build()
    result, _ = await run_once(ports)
    assert result.status is OK and result.output == "done", result.error
    assert result.warnings == []
    trail = ports.audit.run(result.run_id)
    assert trail.steps == [1, 2] and len(trail.tool_calls) == 3 and trail.stats is not None
    assert ports.budget.commits and ports.budget.commits[0][0] == "u1"
    handle = ports.critic.handles[result.run_id]
    assert handle.steps == [1, 2] and handle.stopped and len(handle.tools) == 3
    assert ports.store.runs[result.run_id].state == "completed"
    assert sorted(call.kind for call in ports.palette.calls) == ["agent", "skill"]
    assert [d.method for d in ports.delivery.delivered] == ["deliver"]


async def test_a_failed_run_is_delivered_as_an_error_and_its_checkpoint_failed() -> None:
    ports = Ports.build()
    result, _ = await run_once(ports, fails=True)
    assert result.status is ERROR and "the model broke" in (result.error or "")
    assert result.warnings == []
    assert [d.method for d in ports.delivery.delivered] == ["deliver_error"]
    assert ports.store.runs[result.run_id].state == "failed"
    assert ports.audit.run(result.run_id).errors == [result.error]


# --- budgets ------------------------------------------------------------------------------------


async def test_a_budget_refusal_ends_the_run_before_the_model_with_retry_after() -> None:
    budget = MemoryBudget(max_runs=1, window_seconds=60)
    model = ScriptedModel([answer("one"), answer("two")], per_run=True)
    async with Executor(plugins=[budget], entry_points=False, settings=SETTINGS) as executor:
        first = await executor.run(Agent(name="b", model=model), "hi", caller_id="u1")
        second = await executor.run(Agent(name="b", model=model), "hi", caller_id="u1")
        other = await executor.run(Agent(name="b", model=model), "hi", caller_id="u2")
    assert first.status is OK and other.status is OK
    assert second.status is RunStatus.BUDGET_EXCEEDED
    assert "budget 'memory_budget' refused the run: caller 'u1' used 1 runs" in (second.error or "")
    assert "(retry after 60s)" in (second.error or "")
    assert len(model.requests) == 2 and second.stats.steps == 0


async def test_every_budget_is_asked_and_one_refusal_is_enough() -> None:
    generous, strict = MemoryBudget(name="generous"), MemoryBudget(max_runs=0, name="strict")
    model = ScriptedModel([answer("x")])
    async with Executor(plugins=[generous, strict], entry_points=False, settings=SETTINGS) as executor:
        result = await executor.run(Agent(name="b", model=model), "hi", caller_id="u1")
    assert result.status is RunStatus.BUDGET_EXCEEDED and "budget 'strict'" in (result.error or "")
    assert model.requests == []


# --- hangs outside the ports: tools and models ----------------------------------------------------


async def test_a_hanging_async_tool_ends_as_timeout_at_hard_timeout() -> None:
    @tool
    async def stuck() -> str:
        """Never answers."""
        await asyncio.Event().wait()
        return "never"

    model = ScriptedModel([ModelResponse(tool_calls=[ToolCall(id="s", name="stuck")]), answer("x")])
    started = time.monotonic()
    async with Executor(entry_points=False, settings=SHORT) as executor:
        result = await asyncio.wait_for(
            executor.run(Agent(name="h", model=model, tools=[stuck, add]), "go", caller_id="u1"), BOUND
        )
    assert result.status is TIMEOUT
    assert result.error == "the run passed its deadline during tool stuck (still running)"
    assert SHORT_TIMEOUT <= time.monotonic() - started < BOUND


async def test_a_hanging_sync_tool_in_its_thread_ends_as_timeout() -> None:
    release = threading.Event()

    @tool
    def blocking() -> str:
        """Blocks its worker thread."""
        release.wait(30)
        return "late"

    calls = [ToolCall(id="q", name="add", arguments={"a": 1, "b": 1}), ToolCall(id="b", name="blocking")]
    model = ScriptedModel([ModelResponse(tool_calls=calls), answer("x")])
    try:
        async with Executor(entry_points=False, settings=SHORT) as executor:
            result = await asyncio.wait_for(
                executor.run(Agent(name="h", model=model, tools=[blocking, add]), "go", caller_id="u1"), BOUND
            )
    finally:
        release.set()  # let the worker thread finish, so the loop can close its executor
    assert result.status is TIMEOUT
    # only the tool still running is named, not the one that finished
    assert result.error == "the run passed its deadline during tool blocking (still running)"


class HangingModel:
    id = "hanging"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_hanging_model_ends_as_timeout_at_hard_timeout() -> None:
    audit = MemoryAudit()
    async with Executor(plugins=[audit], entry_points=False, settings=SHORT) as executor:
        result = await asyncio.wait_for(
            executor.run(Agent(name="m", model=HangingModel()), "hi", caller_id="u1"), BOUND
        )
    assert result.status is TIMEOUT
    assert result.error == "the run passed its deadline during model call 1"
    stats = audit.run(result.run_id).stats
    assert stats is not None and stats.status is TIMEOUT


# --- the deadline watcher and the critic ----------------------------------------------------------


class ScriptedHandle(MemoryCriticHandle):
    """A handle whose ``deadline()`` answers come from a function of the call number."""

    answer: Callable[[int], Any] = staticmethod(lambda n: None)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.deadline_calls = 0

    def deadline(self) -> Any:
        self.deadline_calls += 1
        return type(self).answer(self.deadline_calls)


def critic_answering(answer: Callable[[int], Any]) -> tuple[MemoryCritic, list[ScriptedHandle]]:
    made: list[ScriptedHandle] = []

    class Handle(ScriptedHandle):
        pass

    Handle.answer = staticmethod(answer)  # type: ignore[assignment]

    class Critic(MemoryCritic):
        async def monitor(self, info: RunInfo, soft_timeout: float) -> MemoryCriticHandle:
            handle = Handle(self, info, soft_timeout)
            made.append(handle)
            return handle

    return Critic(), made


@tool
async def stuck() -> str:
    """Never answers."""
    await asyncio.Event().wait()
    return "never"


def stuck_agent() -> Agent:
    return Agent(
        name="s",
        model=ScriptedModel([ModelResponse(tool_calls=[ToolCall(id="s", name="stuck")])]),
        tools=[stuck],
    )


async def test_the_deadline_watcher_survives_a_deadline_that_raises() -> None:
    """deadline() raises three times, then sets a deadline 0.3 s away: the watcher kept asking, and
    the run ends at the critic's deadline, long before the executor's hard timeout."""
    soon: list[datetime] = []

    def answer(n: int) -> datetime:
        if n <= 3:
            raise RuntimeError(f"critic store unavailable ({n})")
        if not soon:
            soon.append(datetime.now(UTC) + timedelta(seconds=0.3))
        return soon[0]

    critic, handles = critic_answering(answer)
    started = time.monotonic()
    settings = {**SETTINGS, "hard_timeout": 30}
    async with Executor(plugins=[critic], entry_points=False, settings=settings) as executor:
        result = await asyncio.wait_for(executor.run(stuck_agent(), "go", caller_id="u1"), BOUND)
    assert result.status is TIMEOUT, result.error
    assert time.monotonic() - started < 5  # the critic's deadline, not the 30 s hard timeout
    assert handles[0].deadline_calls > 3
    raised = [w for w in result.warnings if "critic 'memory_critic': deadline raised RuntimeError" in w]
    assert len(raised) == 3 and "the hard timeout applies" in raised[0]


async def test_a_deadline_that_always_raises_leaves_the_hard_timeout() -> None:
    def answer(n: int) -> datetime:
        raise RuntimeError("broken critic")

    critic, handles = critic_answering(answer)
    started = time.monotonic()
    async with Executor(plugins=[critic], entry_points=False, settings=SHORT) as executor:
        result = await asyncio.wait_for(executor.run(stuck_agent(), "go", caller_id="u1"), BOUND)
    assert result.status is TIMEOUT
    assert time.monotonic() - started >= SHORT_TIMEOUT
    assert handles[0].deadline_calls > 1
    assert result.warnings == [
        "critic 'memory_critic': deadline raised RuntimeError: broken critic; the hard timeout applies"
    ]


async def test_a_naive_deadline_is_read_as_utc_and_warned_about() -> None:
    naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=0.2)
    critic, _ = critic_answering(lambda n: naive)
    settings = {**SETTINGS, "hard_timeout": 30}
    async with Executor(plugins=[critic], entry_points=False, settings=settings) as executor:
        result = await asyncio.wait_for(executor.run(stuck_agent(), "go", caller_id="u1"), BOUND)
    assert result.status is TIMEOUT
    assert "critic 'memory_critic': deadline returned a naive datetime; read as UTC" in result.warnings


async def test_a_critic_deadline_earlier_than_the_hard_timeout_ends_the_run() -> None:
    critic = MemoryCritic(hard_timeout=0.2)
    started = time.monotonic()
    settings = {**SETTINGS, "hard_timeout": 30}
    async with Executor(plugins=[critic], entry_points=False, settings=settings) as executor:
        result = await asyncio.wait_for(executor.run(stuck_agent(), "go", caller_id="u1"), BOUND)
    assert result.status is TIMEOUT and result.warnings == []
    assert time.monotonic() - started < 5


async def test_a_critic_extending_its_deadline_keeps_a_slow_but_alive_run_past_hard_timeout() -> None:
    """hard_timeout is 0.4 s; each step takes 0.1 s and there are 8 of them, so the run needs about
    0.8 s: the critic moves its deadline with every step and the run ends ok."""
    critic = MemoryCritic(hard_timeout=0.4, idle_timeout=0.4, max_runtime=20)
    steps = [
        ModelResponse(tool_calls=[ToolCall(id=f"c{i}", name="add", arguments={"a": i, "b": 1})])
        for i in range(7)
    ]
    model = ScriptedModel([*steps, answer("made it")], delay=0.1)
    settings = {**SETTINGS, "hard_timeout": 0.4}
    started = time.monotonic()
    async with Executor(plugins=[critic], entry_points=False, settings=settings) as executor:
        result = await asyncio.wait_for(
            executor.run(Agent(name="slow", model=model, tools=[add]), "go", caller_id="u1"), BOUND
        )
    elapsed = time.monotonic() - started
    assert result.status is OK and result.output == "made it", result.error
    assert elapsed > 0.4, "the run did not outlive hard_timeout, so the extension was not exercised"

    # The same critic still cuts off a run that stops making progress.
    started = time.monotonic()
    async with Executor(plugins=[critic], entry_points=False, settings=settings) as executor:
        hung = await asyncio.wait_for(executor.run(stuck_agent(), "go", caller_id="u1"), BOUND)
    assert hung.status is TIMEOUT and time.monotonic() - started < 5


# --- odd shapes of failure ----------------------------------------------------------------------


async def test_a_log_error_that_fails_differently_each_time_does_not_loop() -> None:
    audit = MemoryAudit()
    made = audit.start_run
    count = [0]

    async def start_run(info: RunInfo) -> Any:
        recorder = await made(info)

        def log_error(message: str) -> None:
            count[0] += 1
            raise RuntimeError(f"failure number {count[0]}")

        recorder.log_error = log_error  # type: ignore[method-assign]
        return recorder

    audit.start_run = start_run  # type: ignore[method-assign]
    model = ScriptedModel([ProviderResponseError("broken", provider="scripted")])
    async with Executor(plugins=[audit], entry_points=False, settings=SETTINGS) as executor:
        result = await asyncio.wait_for(
            executor.run(Agent(name="l", model=model), "hi", caller_id="u1"), BOUND
        )
    assert result.status is ERROR
    assert count[0] == 1, "log_error was fed its own failure"
    assert result.warnings == [
        "audit 'memory_audit' recorder: log_error raised RuntimeError: failure number 1"
    ]


async def test_a_delivery_with_malformed_kinds_is_skipped_not_a_crash() -> None:
    class NoKinds(MemoryDelivery):
        pass

    broken = NoKinds(name="broken")
    broken.kinds = None  # type: ignore[assignment]
    good = MemoryDelivery()
    async with Executor(
        plugins=[PortPlugin("p1", delivery=broken), good], entry_points=False, settings=SETTINGS
    ) as ex:
        result = await ex.run(
            Agent(name="d", model=ScriptedModel([answer("x")])),
            "hi",
            caller_id="u1",
            delivery={"kind": "memory"},
        )
    assert result.status is OK and result.warnings == []
    assert [d.result.output for d in good.delivered] == ["x"]


async def test_a_run_whose_ports_all_hang_is_still_bounded() -> None:
    """Every async port method hangs at once: the run ends, late but bounded, with a warning each."""
    ports = Ports.build()
    for where in ("audit.start_run", "budget.commit", "critic.monitor", "store.for_run", "delivery.deliver"):
        inject(ports, where, "hangs")
    result, seconds = await run_once(ports)
    assert result.status is OK and seconds < BOUND
    assert len(result.warnings) == 5 and all("did not answer within 0.2s" in w for w in result.warnings)
