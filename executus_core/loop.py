"""The agent loop of one run: ask the model, run the tools it calls, repeat; always end in a `Result`.

Everything outside the loop's own code (ports, tools, the model, event consumers) is called through
a guard that contains exceptions and bounds waiting, so nothing a plugin or a tool does can escape to
the caller or hang the run past its deadline.

The per-step path does no pluggy dispatch and nothing that grows with the transcript: the model gets
the transcript list itself, tool specs are built once per run, a checkpoint holds only the messages
that are new, and events reach consumers through per-consumer queues drained by their own tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from executus_core.errors import BudgetExceeded, ProviderError
from executus_core.ports import Checkpointer, CriticHandle, Model, RunRecorder
from executus_core.tools import Tally, Tool, ToolArgumentsError, ToolContext, tool_result_text
from executus_core.types import (
    Agent,
    Artifact,
    CheckpointState,
    DeliveryTarget,
    Interrupted,
    Message,
    ModelRequest,
    ModelResponse,
    Result,
    RunEvent,
    RunInfo,
    RunStats,
    RunStatus,
    ToolCall,
    ToolSpec,
    Usage,
    utcnow,
)

if TYPE_CHECKING:
    from executus_core.executor import Executor

__all__ = ["AgentRun", "EventHandler"]

EventHandler = Callable[[RunEvent], Awaitable[None] | None]

_FAILED = object()  # what a guarded port call returns when the port raised or did not answer


class _Pump:
    """Feeds one consumer from its own task and bounded queue, so a slow one never stalls the run.

    Items are a method's name, the method and its arguments; a call may return an awaitable, which is
    awaited with the port timeout. A consumer that times out is dropped for the rest of the run.
    """

    __slots__ = ("dead", "dropped", "label", "queue", "returns_none", "run", "task", "timeout")

    def __init__(
        self, label: str, run: AgentRun, maxsize: int, timeout: float, *, returns_none: bool = False
    ) -> None:
        self.label = label
        self.run = run
        self.timeout = timeout
        self.returns_none = returns_none  # a port whose methods must return None (a recorder)
        # (method name, callable, arguments): the name is the port's, for warnings
        self.queue: asyncio.Queue[tuple[str, Callable[..., Any], tuple[Any, ...]] | None] = asyncio.Queue(
            maxsize
        )
        self.dropped = 0
        self.dead = False
        self.task = asyncio.get_running_loop().create_task(self._drain())

    def put(self, method: str, fn: Callable[..., Any], *args: Any) -> None:
        if self.dead:
            return
        try:
            self.queue.put_nowait((method, fn, args))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _drain(self) -> None:
        while (item := await self.queue.get()) is not None:
            method, fn, args = item
            try:
                value = fn(*args)
                if inspect.isawaitable(value):
                    async with asyncio.timeout(self.timeout):
                        value = await value
                if value is not None and self.returns_none:
                    self.run.warn(
                        f"{self.label}: {method} returned {type(value).__name__}, not None (ignored)"
                    )
            except TimeoutError:
                self.dead = True
                self.run.warn(
                    f"{self.label}: {method} did not answer within {self.timeout:g}s; dropped for the rest "
                    "of the run"
                )
                return
            except Exception as exc:
                # A failing log_error is not told about its own failure: that would loop.
                self.run.warn(
                    f"{self.label}: {method} raised {type(exc).__name__}: {exc}",
                    skip=self if method == "log_error" else None,
                )

    async def close(self) -> None:
        """Let the consumer finish what is queued (bounded by the port timeout), then stop it."""
        if not self.dead:
            try:
                self.queue.put_nowait(None)
            except asyncio.QueueFull:
                self.dropped += 1
                self.task.cancel()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(self.task)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()
            if not self.dead:
                self.run.warn(f"{self.label} did not finish within {self.timeout:g}s of the run's end")
        if self.dropped:
            self.run.warn(f"{self.label} fell behind: {self.dropped} events were dropped")


def _discard(value: Any) -> str:
    """Describe a wrong answer from a port, and make sure an awaitable in it is never left pending."""
    if inspect.iscoroutine(value):
        value.close()  # never awaited: close it so it does not warn at garbage collection
    elif isinstance(value, asyncio.Future):
        value.cancel()
    described = type(value).__name__
    return (
        f"{described} (an awaitable: the method must be synchronous)"
        if inspect.isawaitable(value)
        else described
    )


def _seconds(value: float) -> str:
    """A wait for a person: rounded up (never tell a caller to retry too early), 0.1 s below 10 s."""
    return f"{math.ceil(value)}" if value >= 10 else f"{math.ceil(value * 10) / 10:g}"


def _kinds(delivery: Any) -> frozenset[str]:
    """The target kinds a `Delivery` serves; a malformed ``kinds`` serves none (a lone str is one kind)."""
    kinds = getattr(delivery, "kinds", None)
    if isinstance(kinds, str):
        return frozenset({kinds})
    if isinstance(kinds, set | frozenset | list | tuple):
        return frozenset(k for k in kinds if isinstance(k, str))
    return frozenset()


@dataclasses.dataclass(slots=True)
class _RecorderLink:
    name: str
    recorder: RunRecorder
    pump: _Pump


class AgentRun:
    """One run, from its budget check to its delivery. Made and driven by `Executor.run`."""

    def __init__(
        self,
        executor: Executor,
        agent: Any,
        prompt: Any,
        *,
        caller_id: Any,
        channel_id: str | None = None,
        parent_run_id: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        delivery: Any = None,
        dry_run: bool = False,
        on_event: EventHandler | None = None,
        run_id: str | None = None,
        resume: Interrupted | None = None,
    ) -> None:
        self.ex = executor
        self.settings = executor.settings.core
        self.agent_arg = agent
        self.prompt = prompt
        self.caller_id = caller_id
        self.channel_id = channel_id
        self.parent_run_id = parent_run_id
        self.inputs = inputs
        self.delivery_arg = delivery
        self.dry_run = dry_run
        self.on_event = on_event
        self.resume = resume
        self.run_id = run_id or (resume.info.run_id if resume else uuid.uuid4().hex)
        self.started = time.monotonic()

        self.agent: Agent | None = None
        self.info: RunInfo | None = None
        self.model: Model | None = None
        self.transcript: list[Message] = []
        self.tools: dict[str, Tool] = {}
        self.tool_specs: list[ToolSpec] = []
        self.tally = Tally()
        self.artifacts: list[Artifact] = []
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self.max_steps = self.settings.max_steps
        self.depth = 0

        self.status = RunStatus.ERROR
        self.error: str | None = None
        self.output: str | None = None
        self.phase = "starting"

        self.recorders: list[_RecorderLink] = []
        self.pumps: list[_Pump] = []
        self.event_pump: _Pump | None = None
        self.critic: CriticHandle | None = None
        self.critic_name = ""
        self.checkpointer: Checkpointer | None = None
        self.checkpointer_name = ""
        self.saved_upto = 0
        self.running_tools: dict[str, str] = {}  # call id -> tool name, while the tool runs
        self.hard_deadline = 0.0
        self.critic_deadline = False  # the deadline in force is the critic's, not the hard timeout
        self.critic_reason: str | None = None
        self._timeout: asyncio.Timeout | None = None
        self.task: asyncio.Task[Any] | None = None
        self.stop_reason: RunStatus | None = None  # set by Executor.cancel / shutdown
        self.admitted = False
        self.done = asyncio.Event()

    @staticmethod
    def new_id() -> str:
        """A fresh run id (uuid4 hex), for a caller that must know the id before the run starts."""
        return uuid.uuid4().hex

    # -- helpers -----------------------------------------------------------------------------

    def warn(self, message: str, *, skip: _Pump | None = None) -> None:
        """Note a failure the run survives; it goes to ``Result.warnings`` (once) and the recorders."""
        if message in self._warned:
            return
        self._warned.add(message)
        self.warnings.append(message)
        for link in self.recorders:
            if link.pump is not skip:
                link.pump.put("log_error", link.recorder.log_error, message)

    def emit(self, type: str, data: dict[str, Any]) -> None:
        """Send a run event to every consumer; free when there are none."""
        if not self.pumps:
            return
        for link in self.recorders:
            link.pump.put("log_event", link.recorder.log_event, type, data)
        if self.event_pump is not None and self.on_event is not None:
            # only the on_event consumer takes a RunEvent: recorders get (type, data)
            self.event_pump.put("on_event", self.on_event, RunEvent(self.run_id, type, data, utcnow()))

    async def _port(
        self, label: str, fn: Callable[..., Any], *args: Any, _timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Call into a port: exceptions and hangs become a warning and `_FAILED`."""
        timeout = _timeout or self.settings.port_timeout
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                async with asyncio.timeout(timeout):
                    value = await value
            return value
        except TimeoutError:
            if self._timeout is not None and self._timeout.expired():
                raise
            self.warn(f"{label} did not answer within {timeout:g}s")
        except Exception as exc:
            self.warn(f"{label} raised {type(exc).__name__}: {exc}")
        return _FAILED

    async def _port_call(
        self, label: str, fn: Callable[..., Any], *args: Any, _timeout: float | None = None, **kwargs: Any
    ) -> bool:
        """`_port` for a method that returns nothing: True when it answered (a value back is flagged)."""
        value = await self._port(label, fn, *args, _timeout=_timeout, **kwargs)
        if value is _FAILED:
            return False
        if value is not None:
            self.warn(f"{label} returned {type(value).__name__}, not None (ignored)")
        return True

    def _end(self, status: RunStatus, error: str | None = None) -> None:
        self.status, self.error = status, error

    # -- the run -----------------------------------------------------------------------------

    async def execute(self) -> Result:
        """Run to the end and return the `Result`; raises only `CancelledError` for the caller's own."""
        caller_cancelled = False
        try:
            ready = await self._prepare()
            if ready and self.dry_run:
                await self._resolve_palette()
                return self._dry_run_result()
            if ready and self.resume is None:
                ready = await self._check_budgets()
            if not ready:
                # refused or invalid: nothing ran, but a host waiting on its delivery still hears of it
                return await self._deliver_early()
            if self.ex._closed:
                # shutdown() began while the budgets were asked: charge them, start nothing.
                self._end(RunStatus.ERROR, "the executor shut down before the run started; nothing ran")
                return await self._finish()
            self.admitted = True
            self.task = asyncio.current_task()
            self.ex._runs[self.run_id] = self
            try:
                await self._start_ports()
                await self._run_with_deadline()
            except asyncio.CancelledError:
                if self.stop_reason is None:
                    caller_cancelled = True
                    self._end(
                        RunStatus.INTERRUPTED, "the caller's task was cancelled; the checkpoint is kept"
                    )
                else:
                    if self.task is not None:
                        self.task.uncancel()
                    self._end(self.stop_reason, self._stop_message())
            except Exception as exc:
                self._end(RunStatus.ERROR, f"internal error in executus during {self.phase}: {exc!r}")
            return await self._finish()
        except Exception as exc:  # a bug of ours: still a Result
            self._end(RunStatus.ERROR, f"internal error in executus: {exc!r}")
            return self._result()
        finally:
            if self.admitted:
                self.ex._runs.pop(self.run_id, None)
            self.done.set()
            if caller_cancelled:
                raise asyncio.CancelledError

    def _stop_message(self) -> str:
        if self.stop_reason is RunStatus.CANCELLED:
            return "cancelled by Executor.cancel()"
        return "the executor shut down; the checkpoint is kept for Executor.recover()"

    async def _prepare(self) -> bool:
        """Validate the call and fill defaults; on a problem set the error and return False."""
        if not isinstance(self.caller_id, str) or not self.caller_id:
            self._end(RunStatus.ERROR, f"caller_id must be a non-empty string, got {self.caller_id!r}")
            return False
        if self.ex._closed:
            self._end(RunStatus.ERROR, "the executor is shut down; make a new Executor to start runs")
            return False
        if self.run_id in self.ex._runs:
            self._end(RunStatus.ERROR, f"a run with id {self.run_id!r} is already running")
            return False
        try:
            agent = (
                self.agent_arg if isinstance(self.agent_arg, Agent) else Agent.model_validate(self.agent_arg)
            )
        except Exception as exc:
            self._end(RunStatus.ERROR, f"not an agent: {exc}")
            return False
        self.agent = agent
        if self.resume is None and not isinstance(self.prompt, str):
            self._end(RunStatus.ERROR, f"prompt must be a string, got {type(self.prompt).__name__}")
            return False
        if self.inputs is not None and not isinstance(self.inputs, Mapping):
            self._end(RunStatus.ERROR, f"inputs must be a mapping, got {type(self.inputs).__name__}")
            return False

        parent = self.ex._runs.get(self.parent_run_id or "")
        self.depth = parent.depth + 1 if parent is not None else 0
        if self.depth > self.settings.max_delegation_depth:
            self._end(
                RunStatus.ERROR,
                f"delegation depth limit ({self.settings.max_delegation_depth}) reached: run "
                f"{self.parent_run_id} is already {parent.depth if parent else '?'} levels deep; raise "
                "max_delegation_depth if this nesting is intended",
            )
            return False

        self.max_steps = agent.max_steps or self.settings.max_steps
        self.hard_timeout = agent.hard_timeout or self.settings.hard_timeout
        self.soft_timeout = agent.soft_timeout or self.settings.soft_timeout
        try:
            self.model = self.ex.models.resolve(agent.model)
        except Exception as exc:
            self._end(RunStatus.ERROR, f"model {agent.model_id!r}: {exc}")
            return False
        for item in agent.tools:
            found = item if isinstance(item, Tool) else self.ex.tools.get(item)
            if found is None:
                self._end(
                    RunStatus.ERROR,
                    f"agent {agent.name!r} names unknown tool {item!r}; registered tools: "
                    f"{', '.join(sorted(self.ex.tools)) or 'none'}",
                )
                return False
            if found.name in self.tools:
                self._end(RunStatus.ERROR, f"agent {agent.name!r} has two tools named {found.name!r}")
                return False
            self.tools[found.name] = found

        resumed = self.resume
        if resumed is not None:
            self.info = resumed.info
            self.transcript = list(resumed.messages)
            self.saved_upto = len(self.transcript)
            self.tally.steps = resumed.iteration
            self.tally.tool_calls = resumed.tool_calls
            self.tally.input_tokens = resumed.usage.input_tokens
            self.tally.output_tokens = resumed.usage.output_tokens
            self.tally.thinking_tokens = resumed.usage.thinking_tokens
            if not self.transcript:
                self._end(
                    RunStatus.ERROR, f"the checkpoint of run {self.run_id} holds no messages to resume from"
                )
                return False
        else:
            self.info = RunInfo(
                run_id=self.run_id,
                subject_id=agent.id,
                name=agent.name,
                caller_id=self.caller_id,
                channel_id=self.channel_id,
                parent_run_id=self.parent_run_id,
                inputs=dict(self.inputs) if self.inputs is not None else None,
            )
            if agent.instructions:
                self.transcript.append(Message(role="system", content=agent.instructions))
            self.transcript.append(Message(role="user", content=self.prompt))
        return True

    async def _check_budgets(self) -> bool:
        """Ask every budget; a refusal, or a budget that cannot answer, refuses the run.

        The budgets that admitted it before the refusal are committed with nothing used, so one
        that holds a slot per admitted run (runs in flight) gets it back.
        """
        admitted: list[tuple[str, Any]] = []
        for name, budget in self.ex.ports.budgets:
            refusal = await self._ask_budget(name, budget)
            if refusal is not None:
                self._end(*refusal)
                for earlier, allowed in admitted:
                    await self._port(
                        f"budget {earlier!r}: commit", allowed.commit, self.caller_id, 0.0, Usage()
                    )
                return False
            admitted.append((name, budget))
        return True

    async def _ask_budget(self, name: str, budget: Any) -> tuple[RunStatus, str] | None:
        label = f"budget {name!r}"
        cannot = "the run is refused (a budget that cannot answer never lets a run through)"
        try:
            answer: Any = budget.check(self.caller_id)
            if inspect.isawaitable(answer):
                async with asyncio.timeout(self.settings.port_timeout):
                    answer = await answer
        except BudgetExceeded as exc:
            retry = f" (retry after {_seconds(exc.retry_after)}s)" if exc.retry_after is not None else ""
            return RunStatus.BUDGET_EXCEEDED, f"{label} refused the run: {exc.reason}{retry}"
        except TimeoutError:
            return (
                RunStatus.ERROR,
                f"{label}: check did not answer within {self.settings.port_timeout:g}s; {cannot}",
            )
        except Exception as exc:
            return RunStatus.ERROR, f"{label}: check raised {type(exc).__name__}: {exc}; {cannot}"
        if answer is not None:
            return (
                RunStatus.ERROR,
                f"{label}: check returned {answer!r}; a Budget allows by returning None and refuses by "
                "raising BudgetExceeded, so the run is refused",
            )
        return None

    async def _start_ports(self) -> None:
        info, agent = self.info, self.agent
        assert info is not None and agent is not None
        self.phase = "starting ports"
        timeout = self.settings.port_timeout
        for name, audit in self.ex.ports.audits:
            recorder = await self._port(f"audit {name!r}: start_run", audit.start_run, info)
            if recorder is _FAILED or recorder is None:
                continue
            if not isinstance(recorder, RunRecorder):
                self.warn(f"audit {name!r}: start_run returned {type(recorder).__name__}, not a RunRecorder")
                continue
            pump = _Pump(
                f"audit {name!r} recorder", self, self.settings.event_queue_size, timeout, returns_none=True
            )
            self.recorders.append(_RecorderLink(name, recorder, pump))
            self.pumps.append(pump)
        if self.on_event is not None:
            self.event_pump = _Pump("on_event consumer", self, self.settings.event_queue_size, timeout)
            self.pumps.append(self.event_pump)
        if self.ex.ports.critic is not None:
            self.critic_name, critic = self.ex.ports.critic
            handle = await self._port(
                f"critic {self.critic_name!r}: monitor", critic.monitor, info, self.soft_timeout
            )
            if handle is not _FAILED and handle is not None:
                if isinstance(handle, CriticHandle):
                    self.critic = handle
                else:
                    self.warn(
                        f"critic {self.critic_name!r}: monitor returned {type(handle).__name__}, not a CriticHandle"
                    )
        if self.ex.ports.checkpoints is not None:
            self.checkpointer_name, store = self.ex.ports.checkpoints
            cp = await self._port(
                f"checkpoint {self.checkpointer_name!r}: for_run", store.for_run, info, agent
            )
            if cp is not _FAILED and cp is not None:
                if isinstance(cp, Checkpointer):
                    self.checkpointer = cp
                else:
                    self.warn(
                        f"checkpoint {self.checkpointer_name!r}: for_run returned {type(cp).__name__}, not a Checkpointer"
                    )
        self.emit(
            "run.start",
            {
                "agent": agent.name,
                "model": agent.model_id,
                "caller_id": info.caller_id,
                "resumed": self.resume is not None,
            },
        )

    async def _run_with_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self.hard_deadline = loop.time() + self.hard_timeout
        self.tally.deadline = self.hard_deadline
        watcher = None
        try:
            async with asyncio.timeout_at(self.hard_deadline) as self._timeout:
                if self.critic is not None:
                    watcher = loop.create_task(self._watch_deadline())
                if self.resume is None:
                    await self._checkpoint()  # the prompt: a crash before the first step still resumes
                await self._resolve_palette()
                await self._steps()
        except TimeoutError:
            if self._timeout is None or not self._timeout.expired():
                raise
            where = self.phase
            if where.startswith("tool") and self.running_tools:
                where = f"tool {', '.join(self.running_tools.values())} (still running)"
            by = ""
            if self.critic_deadline:
                by = f" (the critic's deadline{': ' + self.critic_reason if self.critic_reason else ''})"
            self._end(RunStatus.TIMEOUT, f"the run passed its deadline{by} during {where}")
        finally:
            self._timeout = None
            if watcher is not None:
                watcher.cancel()

    async def _watch_deadline(self) -> None:
        """Follow the critic's deadline; survives a ``deadline()`` that raises or answers oddly."""
        assert self.critic is not None and self._timeout is not None
        loop = asyncio.get_running_loop()
        label = f"critic {self.critic_name!r}: deadline"
        current = self.hard_deadline
        while True:
            when = self.hard_deadline
            try:
                answer = self.critic.deadline()
                if isinstance(answer, datetime):
                    if answer.tzinfo is None:
                        self.warn(f"{label} returned a naive datetime; read as UTC")
                        answer = answer.replace(tzinfo=UTC)
                    when = loop.time() + (answer - datetime.now(UTC)).total_seconds()
                elif answer is not None:
                    self.warn(
                        f"{label} returned {_discard(answer)}, not a datetime; the hard timeout applies"
                    )
            except Exception as exc:
                self.warn(f"{label} raised {type(exc).__name__}: {exc}; the hard timeout applies")
            if abs(when - current) > 1e-3:
                current = when
                self._timeout.reschedule(when)
                self.tally.deadline = when
                self.critic_deadline = when != self.hard_deadline
                try:  # optional: why the critic moved the deadline
                    reason = getattr(self.critic, "reason", None)
                except Exception:
                    reason = None
                self.critic_reason = reason if isinstance(reason, str) else None
                self.emit(
                    "critic",
                    {"deadline_in_seconds": round(when - loop.time(), 3), "reason": self.critic_reason},
                )
            await asyncio.sleep(self.settings.deadline_poll)

    async def _resolve_palette(self) -> None:
        from executus_core.palette import palette_tools

        agent = self.agent
        assert agent is not None
        if agent.skill_palette or agent.subagent_palette:
            self.phase = "resolving the palette"
            for found in await palette_tools(self):
                if found.name not in self.tools:
                    self.tools[found.name] = found
        self.tool_specs = [t.spec for t in self.tools.values()]

    async def _steps(self) -> None:
        pending = self._calls_without_results()
        while True:
            if pending:
                await self._run_tools(pending)
                await self._checkpoint()
            if self.tally.steps >= self.max_steps:
                self.output = self._last_text()
                self._end(
                    RunStatus.ERROR,
                    f"step limit reached: {self.max_steps} model calls without a final answer "
                    "(raise Agent.max_steps or max_steps)",
                )
                return
            if self.critic is not None:
                self._steer()
            response = await self._call_model()
            if response is None:
                return
            self.transcript.append(response.to_message())
            if not response.tool_calls:
                self.output = response.text
                self._end(RunStatus.OK)
                return
            pending = response.tool_calls
            # Save the calls before they run: a run recovered after a crash mid-tool re-runs these
            # very calls, with the same ids and so the same idempotency keys.
            await self._checkpoint()

    def _calls_without_results(self) -> list[ToolCall]:
        """On resume: the last step's tool calls whose results were not saved (the others are not re-run)."""
        for index in range(len(self.transcript) - 1, -1, -1):
            message = self.transcript[index]
            if message.role == "assistant":
                answered = {m.tool_call_id for m in self.transcript[index + 1 :] if m.role == "tool"}
                return [c for c in message.tool_calls if c.id not in answered]
            if message.role == "user":
                return []
        return []

    def _last_text(self) -> str | None:
        for message in reversed(self.transcript):
            if message.role == "assistant" and message.content:
                return message.content
        return None

    def _steer(self) -> None:
        assert self.critic is not None
        label = f"critic {self.critic_name!r}: steer"
        try:
            messages = self.critic.steer()
        except Exception as exc:
            self.warn(f"{label} raised {type(exc).__name__}: {exc}")
            return
        if not messages:
            return
        if not isinstance(messages, Sequence) or not all(isinstance(m, Message) for m in messages):
            self.warn(f"{label} returned {_discard(messages)}, not a list of Message")
            return
        self.transcript.extend(messages)
        self.emit("steer", {"messages": [m.content for m in messages]})

    def _critic_call(self, method: str, *args: Any) -> None:
        assert self.critic is not None
        label = f"critic {self.critic_name!r}: {method}"
        try:
            value = getattr(self.critic, method)(*args)
        except Exception as exc:
            self.warn(f"{label} raised {type(exc).__name__}: {exc}")
            return
        if value is not None:
            self.warn(f"{label} returned {_discard(value)}, not None (ignored)")

    async def _call_model(self) -> ModelResponse | None:
        assert self.model is not None and self.agent is not None
        self.phase = f"model call {self.tally.steps + 1}"
        request = ModelRequest(
            messages=self.transcript,
            tools=self.tool_specs,
            settings=self.agent.model_settings,
            run_id=self.run_id,
            deadline=self._timeout.when() if self._timeout is not None else None,
            emit=self.emit if self.pumps else None,
        )
        model_id = self.agent.model_id
        try:
            response = await self.model.complete(request)
        except ProviderError as exc:
            self._end(RunStatus.ERROR, f"model {model_id} failed: {exc}")
            return None
        except TimeoutError:
            if self._timeout is not None and self._timeout.expired():
                raise
            self._end(RunStatus.ERROR, f"model {model_id} timed out")
            return None
        except Exception as exc:
            self._end(RunStatus.ERROR, f"model {model_id} raised {type(exc).__name__}: {exc}")
            return None
        if not isinstance(response, ModelResponse):
            self._end(
                RunStatus.ERROR, f"model {model_id} returned {type(response).__name__}, not a ModelResponse"
            )
            return None
        tally = self.tally
        tally.steps += 1
        usage = response.usage
        tally.input_tokens += usage.input_tokens
        tally.output_tokens += usage.output_tokens
        tally.thinking_tokens += usage.thinking_tokens
        if self.pumps:
            self.emit(
                "step",
                {
                    "iteration": tally.steps,
                    "text": response.text,
                    "tool_calls": [c.name for c in response.tool_calls],
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                },
            )
            for link in self.recorders:
                link.pump.put("on_step", link.recorder.on_step, tally.steps, response)
        if self.critic is not None:
            self._critic_call("record_step", tally.steps)
        return response

    async def _run_tools(self, calls: list[ToolCall]) -> None:
        self.phase = "tool " + ", ".join(c.name for c in calls)
        if len(calls) == 1:
            self.transcript.append(await self._run_tool(calls[0]))
        else:
            self.transcript.extend(await asyncio.gather(*(self._run_tool(c) for c in calls)))

    async def _run_tool(self, call: ToolCall) -> Message:
        self.tally.tool_calls += 1
        if self.critic is not None:
            self._critic_call("record_tool_start", call.name, call.arguments)
        if self.pumps:
            self.emit("tool.start", {"name": call.name, "call_id": call.id, "arguments": call.arguments})
        started = time.monotonic()
        is_error = True
        found = self.tools.get(call.name)
        if found is None:
            text = (
                f"error: there is no tool named {call.name!r}; the tools you can call are: "
                f"{', '.join(self.tools) or 'none'}"
            )
        elif call.arguments_error is not None:
            text = (
                f"error: the arguments for {call.name} were not valid JSON ({call.arguments_error}); "
                "call it again with a JSON object"
            )
        else:
            context = None
            if found.context_param is not None:
                assert self.info is not None
                context = ToolContext(
                    info=self.info,
                    tally=self.tally,
                    call_id=call.id,
                    idempotency_key=f"{self.run_id}:{call.id}",
                    artifacts=self.artifacts,
                    max_steps=self.max_steps,
                )
            # Left in place if the deadline cancels the call, so the timeout error names the tool.
            self.running_tools[call.id] = call.name
            try:
                text = tool_result_text(await found(call.arguments, context))
                is_error = False
            except ToolArgumentsError as exc:
                text = f"error: {exc}"
            except Exception as exc:
                text = f"error: tool {call.name} failed: {type(exc).__name__}: {exc}"
            del self.running_tools[call.id]
        if self.pumps:
            self.emit(
                "tool.end",
                {
                    "name": call.name,
                    "call_id": call.id,
                    "ok": not is_error,
                    "seconds": round(time.monotonic() - started, 6),
                    "result": text if len(text) <= 500 else text[:500] + "…",
                },
            )
            for link in self.recorders:
                link.pump.put("on_tool", link.recorder.on_tool, call, text)
        return Message(role="tool", content=text, tool_call_id=call.id, name=call.name, is_error=is_error)

    async def _checkpoint(self) -> None:
        """Save the messages that are new since the last save (a failed save is retried with the next)."""
        if self.checkpointer is None or self.saved_upto == len(self.transcript):
            return
        tally = self.tally
        state = CheckpointState.model_construct(
            run_id=self.run_id,
            iteration=tally.steps,
            offset=self.saved_upto,
            messages=self.transcript[self.saved_upto :],
            usage=Usage(
                input_tokens=tally.input_tokens,
                output_tokens=tally.output_tokens,
                thinking_tokens=tally.thinking_tokens,
            ),
            tool_calls=tally.tool_calls,
        )
        if await self._port_call(
            f"checkpoint {self.checkpointer_name!r}: save", self.checkpointer.save, state
        ):
            self.saved_upto += len(state.messages)

    # -- the end -----------------------------------------------------------------------------

    def _stats(self) -> RunStats:
        tally = self.tally
        return RunStats(
            status=self.status,
            output=self.output,
            error=self.error,
            steps=tally.steps,
            tool_calls=tally.tool_calls,
            runtime_seconds=round(time.monotonic() - self.started, 6),
            input_tokens=tally.input_tokens,
            output_tokens=tally.output_tokens,
            thinking_tokens=tally.thinking_tokens,
        )

    def _result(self, stats: RunStats | None = None) -> Result:
        return Result(
            run_id=self.run_id,
            status=self.status,
            output=self.output,
            error=self.error,
            stats=stats or self._stats(),
            messages=self.transcript,
            artifacts=self.artifacts,
            warnings=self.warnings,
        )

    async def _finish(self) -> Result:
        """Close, commit, complete or fail, stop, deliver: each step bounded, none can raise."""
        self.phase = "finishing"
        stats = self._stats()
        self.emit(
            "run.end",
            {
                "status": self.status.value,
                "error": self.error,
                "steps": stats.steps,
                "tool_calls": stats.tool_calls,
            },
        )
        if self.error and self.recorders:
            for link in self.recorders:
                link.pump.put("log_error", link.recorder.log_error, self.error)
        if self.pumps:
            await asyncio.gather(*(pump.close() for pump in self.pumps))
        for link in self.recorders:
            await self._port_call(f"audit {link.name!r}: close", link.recorder.close, stats)
        usage = stats.usage
        for name, budget in self.ex.ports.budgets:
            await self._port_call(
                f"budget {name!r}: commit", budget.commit, self.caller_id, stats.runtime_seconds, usage
            )
        if self.checkpointer is not None:
            label = f"checkpoint {self.checkpointer_name!r}"
            if self.status is RunStatus.OK:
                await self._port_call(f"{label}: complete", self.checkpointer.complete)
            elif self.status is not RunStatus.INTERRUPTED:
                await self._port_call(
                    f"{label}: fail", self.checkpointer.fail, self.error or self.status.value
                )
            elif callable(release := getattr(self.checkpointer, "release", None)):
                # kept for recovery, and let go now, so another worker need not wait for a lease
                await self._port_call(f"{label}: release", release)
        if self.critic is not None:
            self._critic_call("stop")
        result = self._result(stats)
        if self.delivery_arg is not None and self.status is not RunStatus.INTERRUPTED:
            await self._deliver(result)
            result.warnings = list(self.warnings)  # the Result copied them before delivery added any
        return result

    async def _deliver_early(self) -> Result:
        result = self._result()
        if self.delivery_arg is not None:
            await self._deliver(result)
            result.warnings = list(self.warnings)
        return result

    async def _deliver(self, result: Result) -> None:
        targets = self.delivery_arg if isinstance(self.delivery_arg, list | tuple) else [self.delivery_arg]
        for raw in targets:
            try:
                target = raw if isinstance(raw, DeliveryTarget) else DeliveryTarget.model_validate(raw)
            except ValidationError as exc:
                # never echo the target: it may hold a webhook secret
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'target'}: {e['msg']}" for e in exc.errors()
                )
                self.warn(f"a delivery target is not valid: {problems}")
                continue
            except Exception as exc:
                self.warn(f"a delivery target is not valid: {type(exc).__name__}")
                continue
            served = next(((n, d) for n, d in self.ex.ports.deliveries if target.kind in _kinds(d)), None)
            if served is None:
                kinds = sorted({k for _, d in self.ex.ports.deliveries for k in _kinds(d)})
                self.warn(
                    f"no delivery serves targets of kind {target.kind!r}; installed kinds: {', '.join(kinds)}"
                )
                continue
            name, delivery = served
            method = "deliver" if result.status is RunStatus.OK else "deliver_error"
            await self._port_call(
                f"delivery {name!r}: {method} to {target.kind}",
                getattr(delivery, method),
                target,
                result,
                _timeout=self.settings.delivery_timeout,
            )

    def _dry_run_result(self) -> Result:
        assert self.agent is not None and self.model is not None
        request = ModelRequest(
            messages=self.transcript,
            tools=self.tool_specs,
            settings=self.agent.model_settings,
            run_id=self.run_id,
        )
        preview = getattr(self.model, "preview", None)
        body: dict[str, Any]
        try:
            body = preview(request) if callable(preview) else {}
        except Exception as exc:
            self.warn(f"model {self.agent.model_id}: preview raised {type(exc).__name__}: {exc}")
            body = {}
        if not body:
            body = {
                "model": self.agent.model_id,
                "messages": [m.model_dump(exclude_defaults=True) for m in self.transcript],
                "tools": [t.model_dump() for t in self.tool_specs],
                "settings": self.agent.model_settings.model_dump(exclude_defaults=True),
            }
        self._end(RunStatus.DRY_RUN)
        result = self._result()
        result.request = body
        return result
