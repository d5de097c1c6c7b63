"""The agent loop of one run: ask the model, run the tools it calls, repeat; always end in a `Result`.

A run passes through four rooms, each a module: `executus_core.prepare` checks the request and
fills its defaults; `executus_core.lifecycle` admits it through the budgets and starts and ends
its ports; this module runs the steps under the run's deadline; `executus_core.routing` delivers
the result. Everything the core did not write is called through `executus_core.guard`, so nothing
a port, a tool, the model or a consumer does can escape to the caller or hold the run past its
deadline.

The per-step path does no pluggy dispatch and nothing that grows with the transcript: the model gets
the transcript list itself, tool specs are built once per run, a checkpoint holds only the messages
that are new, and events reach consumers through bounded buffers drained by their own tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from executus_core.agent import Agent
from executus_core.approval import Deny, Edit
from executus_core.errors import ProviderError, RunTakenOver
from executus_core.guard import Failure, describe, guarded, guarded_sync
from executus_core.lifecycle import RunPorts, Warnings
from executus_core.output import FINAL_RESULT, OutputPlan, type_path
from executus_core.palette import Delegator, child_events, palette_tools
from executus_core.ports import Model
from executus_core.prepare import Refused, RunPlan, RunRequest, prepare
from executus_core.routing import deliver
from executus_core.tools import Tally, Tool, ToolArgumentsError, ToolContext, tool_result_text
from executus_core.types import (
    Artifact,
    CheckpointState,
    Interrupted,
    Message,
    ModelRequest,
    ModelResponse,
    PendingCall,
    Result,
    RunStats,
    RunStatus,
    ToolCall,
    ToolSpec,
    Usage,
    utcnow,
)

if TYPE_CHECKING:
    from executus_core.executor import Executor

__all__ = ["AgentRun", "last_resort_result"]


class _Done:
    """An awaitable that is already complete: what the child-event forwarder returns, so a palette
    source may call it plainly or ``await`` it."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()


_NOT_DELIVERED = frozenset({RunStatus.INTERRUPTED, RunStatus.AWAITING_APPROVAL})  # not over yet


def last_resort_result(run_id: Any, error: str, warnings: Sequence[str] = ()) -> Result:
    """A `Result` that cannot fail to build, for when building the real one failed."""
    return Result.model_construct(
        run_id=run_id if isinstance(run_id, str) else "",
        status=RunStatus.ERROR,
        output=None,
        error=error,
        stats=RunStats.model_construct(status=RunStatus.ERROR, error=error),
        messages=[],
        artifacts=[],
        warnings=[w for w in warnings if isinstance(w, str)],
        request=None,
        retry_after=None,
    )


class AgentRun:
    """One run, from its budget check to its delivery. Made and driven by `Executor`."""

    def __init__(self, executor: Executor, request: RunRequest) -> None:
        self.ex = executor
        self.request = request
        self.settings = executor.settings.core
        self.run_id: str = request.run_id if isinstance(request.run_id, str) else ""  # prepare says why
        self.started = time.monotonic()
        self.warn = Warnings()
        self.ports = RunPorts(executor, self.run_id, request.caller_id, self.warn)
        self.plan: RunPlan | None = None
        self.agent: Agent | None = None
        self.model: Model | None = None
        self.transcript: list[Message] = []
        self.tools: dict[str, Tool] = {}
        self.tool_specs: list[ToolSpec] = []
        self.tally = Tally()
        self.artifacts: list[Artifact] = []
        self.max_steps = self.settings.max_steps
        self.depth = 0

        self.status = RunStatus.ERROR
        self.error: str | None = None
        self.output: Any = None
        self.text: str | None = None
        self.retry_after: float | None = None
        self.pending: list[PendingCall] = []
        self.phase = "starting"

        self.saved_upto = 0
        self.attempts: dict[str, int] = {}  # call id -> starts, for calls a recovered run runs again
        self._attempts_unsaved: dict[str, int] = {}  # the part of attempts the store has not got yet
        self.output_schema: dict[str, Any] | None = None  # for a model with native structured output
        self._save_lock: asyncio.Lock | None = None
        # Trail rows (recorder calls) waiting for the checkpoint to hold what they record:
        # (transcript length that saves it, method, args)
        self._held: list[tuple[int, str, tuple[Any, ...]]] = []
        self._store_ok = True  # the last save got through
        self._tool_slots: asyncio.Semaphore | None = None
        self.running_tools: dict[str, str] = {}  # call id -> tool name, while the tool runs
        self.hard_deadline = 0.0
        self.critic_deadline = False  # the deadline in force is the critic's, not the hard timeout
        self.critic_reason: str | None = None
        self._timeout: asyncio.Timeout | None = None
        self.task: asyncio.Task[Any] | None = None
        self.stop_reason: RunStatus | None = None  # set by Executor.cancel / shutdown
        self.admitted = False
        self.done = asyncio.Event()

    def _end(self, status: RunStatus, error: str | None = None) -> None:
        limit = self.settings.max_error_chars
        if error is not None and len(error) > limit:
            error = f"{error[:limit]}… ({len(error):,} characters, cut to {limit:,}: max_error_chars)"
        self.status, self.error = status, error

    # -- the run -----------------------------------------------------------------------------

    async def execute(self) -> Result:
        """Run to the end and return the `Result`; raises only `CancelledError` for the caller's own."""
        try:
            return await self._execute()
        except asyncio.CancelledError:
            raise  # the caller's own cancellation: the run has ended interrupted
        except BaseException as exc:  # a bug of ours: still a Result
            try:
                self._end(RunStatus.ERROR, f"internal error in executus during {self.phase}: {describe(exc)}")
                return self._result()
            except BaseException as again:  # building the Result failed too: one that cannot fail
                return last_resort_result(
                    self.run_id,
                    f"internal error in executus while ending the run: {describe(again)}",
                    self.warn.items,
                )
        finally:
            if self.admitted:
                self.ex._runs.pop(self.run_id, None)
            self.done.set()

    async def _execute(self) -> Result:
        ex, request = self.ex, self.request
        if ex._closed:
            self._end(RunStatus.ERROR, "the executor is shut down; make a new Executor to start runs")
            return await self._deliver_early()
        if isinstance(self.run_id, str) and self.run_id in ex._runs:
            self._end(RunStatus.ERROR, f"a run with id {self.run_id!r} is already running")
            return await self._deliver_early()
        parent = ex._runs.get(request.parent_run_id) if isinstance(request.parent_run_id, str) else None
        notes: list[str] = []
        try:
            plan = await prepare(ex, request, parent.depth if parent is not None else None, notes)
        except Refused as refused:
            self._end(RunStatus.ERROR, str(refused))
            if request.resume is not None:
                await self._give_back(str(refused))
            return await self._deliver_early()
        self._adopt(plan)
        for note in notes:
            self.warn(note)
        if request.dry_run:
            await self._resolve_palette()
            return self._dry_run_result()
        if request.resume is not None:
            # a resumed run holds its claim through its checkpointer: get it first, to give it back
            try:
                await self.ports.open_checkpointer(plan.info, plan.agent)
            except RunTakenOver as taken:
                self._end(RunStatus.INTERRUPTED, _taken_message(taken, "before it resumed"))
                return self._result()
        refusal = await self.ports.admit()
        if refusal is not None:
            self._end(refusal.status, refusal.error)
            self.retry_after = refusal.retry_after
            if request.resume is not None:
                # kept for later, not before the budget may allow it: a refusal is not a failure
                await self._release(refusal.error, retry_after=refusal.retry_after)
            return await self._deliver_early()
        if ex._closed:
            # shutdown() began while the budgets were asked: charge them, start nothing.
            self._end(RunStatus.ERROR, "the executor shut down before the run started; nothing ran")
            return await self._finish()
        self.admitted = True
        self.task = asyncio.current_task()
        ex._runs[self.run_id] = self
        caller_cancelled = False
        try:
            await self.ports.start(plan.info, plan.agent, plan.soft_timeout, request.on_event)
            self.emit(
                "run.start",
                {
                    "agent": plan.agent.name,
                    "model": self._resolved_model_id(),
                    "tier": plan.agent.model_id if plan.agent.model_id in self.settings.models else None,
                    "caller_id": plan.info.caller_id,
                    "resumed": request.resume is not None,
                    "prompt": request.prompt if request.resume is None else None,
                },
            )
            if request.resume is not None:
                self._replay_to_recorders()
            await self._run_with_deadline()
        except asyncio.CancelledError:
            if self.stop_reason is None:
                caller_cancelled = True
                self._end(RunStatus.INTERRUPTED, "the caller's task was cancelled; the checkpoint is kept")
            else:
                if self.task is not None:
                    self.task.uncancel()
                self._end(self.stop_reason, self._stop_message())
        except RunTakenOver as taken:
            self._end(
                RunStatus.INTERRUPTED,
                _taken_message(taken, "before any further model call, tool or delivery"),
            )
        except Exception as exc:
            self._end(RunStatus.ERROR, f"internal error in executus during {self.phase}: {describe(exc)}")
        result = await self._finish()
        if caller_cancelled:
            raise asyncio.CancelledError
        return result

    def _adopt(self, plan: RunPlan) -> None:
        self.plan = plan
        self.agent, self.model, self.tools = plan.agent, plan.model, plan.tools
        self.transcript = plan.transcript
        self.max_steps, self.depth = plan.max_steps, plan.depth
        resumed = self.request.resume
        if resumed is not None:
            self.saved_upto = len(self.transcript)
            self.attempts = dict(resumed.attempts)
            tally = self.tally
            tally.steps = resumed.iteration
            tally.tool_calls = resumed.tool_calls
            tally.input_tokens = resumed.usage.input_tokens
            tally.output_tokens = resumed.usage.output_tokens
            tally.thinking_tokens = resumed.usage.thinking_tokens

    def _stop_message(self) -> str:
        if self.stop_reason is RunStatus.CANCELLED:
            return "cancelled by Executor.cancel()"
        return "the executor shut down; the checkpoint is kept for Executor.recover()"

    async def _release(self, error: str | None = None, *, retry_after: float | None = None) -> None:
        """Give a resumed run's claim back, keeping its checkpoint (with why, where the store can).

        With ``retry_after`` (a budget's refusal) the store holds the run back that long without
        counting a failed resume, where its ``release`` takes ``retry_after``.
        """
        cp = self.ports.checkpointer
        release = getattr(cp, "release", None)
        if not callable(release):
            return
        accepted = _parameters(release)
        args = (error,) if error is not None and accepted else ()
        kwargs = {"retry_after": retry_after} if retry_after is not None and "retry_after" in accepted else {}
        with contextlib.suppress(RunTakenOver):
            await self.ports.checkpoint("release", *args, **kwargs)

    async def _give_back(self, error: str) -> None:
        """A resumed run that could not even be prepared: release its claim, saying why."""
        resume = self.request.resume
        assert resume is not None
        try:
            agent = Agent.model_validate(resume.agent)
        except Exception:
            agent = Agent(name=resume.info.name, id=resume.info.subject_id)
        with contextlib.suppress(RunTakenOver):  # another worker has it: nothing to give back
            await self.ports.open_checkpointer(resume.info, agent)
            await self._release(f"the resume failed: {error}")

    # -- events --------------------------------------------------------------------------------

    def emit(self, type: str, data: dict[str, Any]) -> None:
        """Send a run event to every consumer; free when there are none."""
        if self.ports.pumps:
            self.ports.emit(type, data)

    # -- the steps under the deadline ----------------------------------------------------------

    async def _run_with_deadline(self) -> None:
        plan = self.plan
        assert plan is not None
        loop = asyncio.get_running_loop()
        self.hard_deadline = loop.time() + plan.hard_timeout
        self.tally.deadline = self.hard_deadline
        watcher = None
        try:
            async with asyncio.timeout_at(self.hard_deadline) as self._timeout:
                if self.ports.critic is not None:
                    watcher = loop.create_task(self._watch_deadline())
                if self.request.resume is None:
                    await self._save()  # the prompt: a crash before the first step still resumes
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
            if watcher is not None:
                watcher.cancel()
            self._timeout = None

    def _follow_critic(self) -> float:
        """Ask the critic for its deadline and put it in force; returns the deadline (loop time)."""
        assert self.ports.critic is not None and self._timeout is not None
        loop = asyncio.get_running_loop()
        label = f"critic {self.ports.critic_name!r}: deadline"
        when = self.hard_deadline
        answer = guarded_sync(label, self.ports.critic.deadline)
        if isinstance(answer, Failure):
            self.warn(f"{answer}; the hard timeout applies")
        elif isinstance(answer, datetime):
            if answer.tzinfo is None:
                self.warn(f"{label} returned a naive datetime; read as UTC")
                answer = answer.replace(tzinfo=UTC)
            when = loop.time() + (answer - datetime.now(UTC)).total_seconds()
        elif answer is not None:
            self.warn(f"{label} returned {type(answer).__name__}, not a datetime; the hard timeout applies")
        current = self._timeout.when()
        if current is None or abs(when - current) > 1e-3:
            self._timeout.reschedule(when)
            self.tally.deadline = when
            self.critic_deadline = when != self.hard_deadline
            reason = guarded_sync(
                f"critic {self.ports.critic_name!r}: reason", getattr, self.ports.critic, "reason", None
            )
            self.critic_reason = reason if isinstance(reason, str) else None
            self.emit(
                "critic", {"deadline_in_seconds": round(when - loop.time(), 3), "reason": self.critic_reason}
            )
        return when

    async def _watch_deadline(self) -> None:
        """Follow the critic's deadline while a model call or a tool runs."""
        while True:
            self._follow_critic()
            await asyncio.sleep(self.settings.deadline_poll)

    async def _cut_if_due(self) -> None:
        """Before a model call or a tool starts: a deadline the critic has cut to takes effect now."""
        if self.ports.critic is None or self._timeout is None:
            return
        if self._follow_critic() <= asyncio.get_running_loop().time():
            await asyncio.sleep(0)  # the rescheduled timeout fires here and cancels the run

    async def _resolve_palette(self) -> None:
        agent = self.agent
        assert agent is not None
        if agent.skill_palette or agent.subagent_palette:
            self.phase = "resolving the palette"
            delegator = Delegator(
                run_id=self.run_id,
                caller_id=self.request.caller_id,
                channel_id=self.request.channel_id,
                depth=self.depth,
                max_depth=self.settings.max_delegation_depth,
                palettes=self.ex.ports.palettes,
                timeout=self.settings.port_timeout,
                warn=self.warn,
            )
            for found in await palette_tools(delegator, agent):
                if found.name not in self.tools:
                    self.tools[found.name] = found
        self.tool_specs = [t.spec for t in self.tools.values()]
        output = self.plan.output if self.plan is not None else None
        self.output_schema = None
        if output is not None:
            if getattr(self.model, "supports_output_schema", False) is True:
                self.output_schema = output.schema
            else:
                self.tool_specs.append(output.tool_spec())

    async def _steps(self) -> None:
        if self.request.resume is not None and self._answered():
            return
        paused_at = self.request.resume.paused_at if self.request.resume is not None else None
        if paused_at is not None and (utcnow() - paused_at).total_seconds() > self.settings.approval_timeout:
            self._end(
                RunStatus.ERROR,
                f"the run waited for approval since {paused_at:%Y-%m-%d %H:%M:%S} UTC, longer than "
                f"approval_timeout ({self.settings.approval_timeout:g}s); its pending calls were not run",
            )
            return
        pending = self._calls_without_results()
        if pending:
            for call in pending:
                self._count_attempt(call.id, self.attempts.get(call.id, 1) + 1)
            await self._save()  # the new attempt numbers, before the calls start again
        while True:
            if pending:
                waiting = await self._run_tools(pending)
                if waiting:
                    await self._pause(waiting)
                    return
                if not self._store_ok:
                    await self._save()  # the results a failing store missed, before the next model call
            if self.tally.steps >= self.max_steps:
                self.output = self.text = self._last_text()
                self._end(
                    RunStatus.ERROR,
                    f"step limit reached: {self.max_steps} model calls without a final answer "
                    "(raise Agent.max_steps or max_steps)",
                )
                return
            if self.ports.critic is not None:
                self._steer()
                await self._cut_if_due()
            response = await self._call_model()
            if response is None:
                return
            self.transcript.append(response.to_message())
            if self.ports.recorders:
                self._record("on_step", self.tally.steps, response)
            if self.plan is not None and self.plan.output is not None:
                typed = await self._typed_answer(response, self.plan.output)
                if typed is None:
                    return
                pending = typed
            elif not response.tool_calls:
                self.output = self.text = response.text
                if not response.text and not getattr(response, "warnings", None):
                    # (an HTTP provider says so itself, in response.warnings)
                    self.warn(f"model {self._model_id()} ended the run with an empty answer")
                self._end(RunStatus.OK)
                return
            else:
                pending = response.tool_calls
            # Save the calls before they run: a run recovered after a crash mid-tool re-runs these
            # very calls, with the same ids and so the same idempotency keys. This save also
            # confirms that this worker still owns the run before any tool starts.
            await self._save()

    async def _typed_answer(self, response: ModelResponse, output: OutputPlan) -> list[ToolCall] | None:
        """Read a typed agent's answer: None when the run ended, else the calls to run (maybe none,
        when the answer went back to the model to be corrected)."""
        finals = [c for c in response.tool_calls if c.name == FINAL_RESULT]
        others = [c for c in response.tool_calls if c.name != FINAL_RESULT]
        if finals:
            call = finals[0]
            value, problem = (
                output.from_arguments(call.arguments)
                if call.arguments_error is None
                else (None, call.arguments_error)
            )
            if problem is None:
                for answered in response.tool_calls:  # every call gets its answer: the transcript stays whole
                    note = (
                        "final answer received" if answered is call else "not run: the final answer was given"
                    )
                    await self._answer(answered, note, is_error=answered is not call)
                self.output, self.text = value, output.to_text(value)
                self._end(RunStatus.OK)
                return None
            for final in finals:
                await self._answer(
                    final,
                    f"error: the answer does not match the schema: {problem}; call {FINAL_RESULT} again",
                )
            return others if self._retry_output(output, problem, response) else None
        if others:
            return others
        value, problem = output.from_text(response.text)
        if problem is None:
            self.output, self.text = value, response.text
            self._end(RunStatus.OK)
            return None
        if not self._retry_output(output, problem, response):
            return None
        how = (
            "Answer again with only JSON that matches the schema."
            if self.output_schema is not None
            else f"Give your answer by calling the {FINAL_RESULT} tool."
        )
        self.transcript.append(
            Message(role="user", content=f"Your answer does not match the required schema: {problem}. {how}")
        )
        return []

    def _retry_output(self, output: OutputPlan, problem: str, response: ModelResponse) -> bool:
        """Count one answer that did not validate; False (and the run ended) when none are left."""
        output.tries_left -= 1
        if output.tries_left < 0:
            self.text = response.text
            self._end(
                RunStatus.ERROR,
                f"the model's answer did not match output_type {type_path(output.output_type)} after "
                f"{self.plan.agent.output_retries + 1 if self.plan else '?'} tries: {problem}",
            )
            return False
        self.emit("output.retry", {"problem": problem, "tries_left": output.tries_left})
        return True

    def _answered(self) -> bool:
        """A resumed run whose answer was saved (a crash came between the save and the checkpoint's
        completion) ends with that answer, asking the model nothing. True when it ended here."""
        last = self.transcript[-1] if self.transcript else None
        if last is None or last.role != "assistant" or last.tool_calls or self.tally.steps == 0:
            return False
        output = self.plan.output if self.plan is not None else None
        value, problem = (last.content, None) if output is None else output.from_text(last.content or "")
        if problem is not None:
            return False
        self.output, self.text = value, last.content
        self._end(RunStatus.OK)
        return True

    def _count_attempt(self, call_id: str, attempt: int) -> None:
        self.attempts[call_id] = self._attempts_unsaved[call_id] = attempt

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

    def _resolved_model_id(self) -> str:
        """The model id a tier stands for (``openai:gpt-4o-mini`` for ``default``), else the id."""
        model_id = self._model_id()
        try:
            return (
                self.ex.models.resolve_id(model_id)
                if isinstance(self.agent and self.agent.model, str)
                else model_id
            )
        except Exception:
            return model_id

    def _model_id(self) -> str:
        return self.agent.model_id if self.agent is not None else "?"

    def _steer(self) -> None:
        messages = self.ports.critic_call("steer")
        if not messages:
            return
        if not isinstance(messages, Sequence) or not all(isinstance(m, Message) for m in messages):
            self.warn(
                f"critic {self.ports.critic_name!r}: steer returned {type(messages).__name__}, not a list of Message"
            )
            return
        self.transcript.extend(messages)
        self.emit("steer", {"messages": [m.content for m in messages]})

    async def _call_model(self) -> ModelResponse | None:
        assert self.model is not None and self.agent is not None
        self.phase = f"model call {self.tally.steps + 1}"
        request = ModelRequest(
            messages=self.transcript,
            tools=self.tool_specs,
            settings=self.agent.model_settings,
            run_id=self.run_id,
            deadline=self._timeout.when() if self._timeout is not None else None,
            emit=self.emit if self.ports.pumps else None,
            output_schema=self.output_schema,
        )
        model_id = self._model_id()
        started = time.monotonic()
        # In the run's own task (inline): a provider honours cancellation, and this is the hot path.
        response = await guarded(f"model {model_id}", self.model.complete, request, inline=True)
        if isinstance(response, Failure):
            error = response.error
            self.emit(
                "model.error", {"error": str(response), "seconds": round(time.monotonic() - started, 6)}
            )
            if isinstance(error, ProviderError):
                self._end(RunStatus.ERROR, f"model {model_id} failed: {error}")
                retry = getattr(error, "retry_after", None)
                self.retry_after = retry if isinstance(retry, int | float) else None
            elif isinstance(error, TimeoutError):
                self._end(RunStatus.ERROR, f"model {model_id} timed out")
            else:
                self._end(RunStatus.ERROR, str(response))
            return None
        if not isinstance(response, ModelResponse):
            self._end(
                RunStatus.ERROR, f"model {model_id} returned {type(response).__name__}, not a ModelResponse"
            )
            return None
        for note in getattr(response, "warnings", None) or ():
            self.warn(str(note))
        tally = self.tally
        tally.steps += 1
        usage = response.usage
        tally.input_tokens += usage.input_tokens
        tally.output_tokens += usage.output_tokens
        tally.thinking_tokens += usage.thinking_tokens
        if self.ports.pumps:
            self.emit(
                "step",
                {
                    "iteration": tally.steps,
                    "text": response.text,
                    "tool_calls": [c.name for c in response.tool_calls],
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "model": response.model,
                    "seconds": round(time.monotonic() - started, 6),
                },
            )
        if self.ports.critic is not None:
            self.ports.critic_call("record_step", tally.steps)
        return response

    def _needs_approval(self, call: ToolCall) -> bool:
        found = self.tools.get(call.name)
        rule = found.requires_approval if found is not None else False
        if rule is True or rule is False:
            return rule
        verdict = guarded_sync(f"tool {call.name}: requires_approval", rule, call.arguments)
        if isinstance(verdict, Failure):  # a predicate that fails asks a person: fail closed
            self.warn(f"{verdict}; the call waits for approval")
            return True
        return bool(verdict)

    async def _decide(self, calls: list[ToolCall]) -> tuple[list[ToolCall], list[ToolCall]]:
        """Split calls into those to run (approved, edited, or needing no approval) and those still
        waiting for a decision; denied calls are answered here."""
        decisions = self.request.decisions or {}
        runnable: list[ToolCall] = []
        waiting: list[ToolCall] = []
        for call in calls:
            if not self._needs_approval(call):
                runnable.append(call)
                continue
            decision = decisions.get(call.id)
            if decision is None:
                waiting.append(call)
                continue
            self.emit(
                "approval.decided",
                {"call_id": call.id, "tool": call.name, **decision.model_dump(exclude_none=True)},
            )
            if isinstance(decision, Deny):
                by = f" by {decision.by}" if decision.by else ""
                await self._answer(call, f"error: {call.name} was not run: denied{by}: {decision.reason}")
            elif isinstance(decision, Edit):
                runnable.append(
                    call.model_copy(update={"arguments": decision.arguments, "arguments_error": None})
                )
            else:
                runnable.append(call)
        return runnable, waiting

    async def _pause(self, waiting: list[ToolCall]) -> None:
        """End the run ``awaiting_approval``: the calls wait, saved as never started."""
        self.pending = [PendingCall(call_id=c.id, tool=c.name, arguments=c.arguments) for c in waiting]
        for call in waiting:
            self._count_attempt(call.id, 0)  # not started: a resume runs it as attempt 1
        await self._save()
        self.emit("approval.requested", {"calls": [p.model_dump() for p in self.pending]})
        names = ", ".join(f"{p.tool} ({p.call_id})" for p in self.pending)
        self._end(
            RunStatus.AWAITING_APPROVAL,
            f"paused: {len(self.pending)} tool call(s) wait for approval: {names}; continue with "
            f"Executor.resume({self.run_id!r}, decisions=...) or `executus approve {self.run_id}` / "
            f"`executus deny {self.run_id} CALL_ID --reason ...`",
        )

    async def _run_tools(self, calls: list[ToolCall]) -> list[ToolCall]:
        """Run a step's calls; returns the calls that wait for approval (not run)."""
        calls, waiting = await self._decide(calls)
        if waiting and self.settings.approval_pauses_step:
            return waiting + calls  # the host wants the whole step to wait
        if not calls:
            return waiting
        limit = self.settings.max_tool_calls_per_step
        if len(calls) > limit:
            for call in calls[limit:]:
                await self._answer(
                    call,
                    f"error: not run: at most {limit} tool calls are run per step (max_tool_calls_per_step); "
                    "call it again in the next step if it is still needed",
                )
            calls = calls[:limit]
        self.phase = "tool " + ", ".join(c.name for c in calls)
        if len(calls) == 1:
            await self._run_call(calls[0])
            return waiting
        if self._tool_slots is None:
            self._tool_slots = asyncio.Semaphore(self.settings.max_concurrent_tools)
        try:
            async with asyncio.TaskGroup() as group:
                for call in calls:
                    group.create_task(self._run_call(call, self._tool_slots))
        except BaseExceptionGroup as failed:
            taken = failed.subgroup(RunTakenOver)
            if taken is not None and self.ports.taken_over is not None:
                raise self.ports.taken_over from None
            raise failed.exceptions[0] from None
        return waiting

    async def _run_call(self, call: ToolCall, slots: asyncio.Semaphore | None = None) -> None:
        if slots is None:
            text, is_error = await self._execute_call(call)
        else:
            async with slots:
                text, is_error = await self._execute_call(call)
        await self._answer(call, text, is_error)

    async def _answer(self, call: ToolCall, text: str, is_error: bool = True) -> None:
        """Add a call's result to the transcript and save it at once (a crash after it never re-runs it).

        While the store is failing, results wait for the save before the next model call instead,
        so a stalled store costs one port timeout per step, not one per tool call.
        """
        self.transcript.append(
            Message(role="tool", content=text, tool_call_id=call.id, name=call.name, is_error=is_error)
        )
        if self.ports.recorders:
            self._record("on_tool", call, text)
        if self._store_ok:
            await self._save()

    async def _execute_call(self, call: ToolCall) -> tuple[str, bool]:
        """Run one tool call; returns the text for the model and whether it is an error."""
        await self._cut_if_due()
        self.tally.tool_calls += 1
        if self.ports.critic is not None:
            self.ports.critic_call("record_tool_start", call.name, call.arguments)
        attempt = self.attempts.get(call.id, 1)
        if self.ports.pumps:
            data: dict[str, Any] = {"name": call.name, "call_id": call.id, "arguments": call.arguments}
            raw = getattr(call, "raw_arguments", None)
            if raw is not None:
                data["raw_arguments"] = raw
            if attempt > 1:
                data["attempt"], data["resumed"] = attempt, True
            self.emit("tool.start", data)
        started = time.monotonic()
        text, is_error = await self._tool_outcome(call, attempt)
        if self.ports.pumps:
            self.emit(
                "tool.end",
                {
                    "name": call.name,
                    "call_id": call.id,
                    "ok": not is_error,
                    "seconds": round(time.monotonic() - started, 6),
                    "result": text if len(text) <= 500 else text[:500] + "…",
                    "attempt": attempt,
                },
            )
        return text, is_error

    async def _tool_outcome(self, call: ToolCall, attempt: int) -> tuple[str, bool]:
        found = self.tools.get(call.name)
        if found is None:
            return (
                f"error: there is no tool named {call.name!r}; the tools you can call are: "
                f"{', '.join(self.tools) or 'none'}",
                True,
            )
        if call.arguments_error is not None:
            return (
                f"error: the arguments for {call.name} were not valid JSON ({call.arguments_error}); "
                "call it again with a JSON object",
                True,
            )
        if attempt > 1 and found.on_resume == "ask":
            return (
                f"error: {call.name} was not run again: its earlier attempt was in flight when the run was "
                "interrupted, so it may already have taken effect. Check whether it did before calling it "
                "again.",
                True,
            )
        context = None
        if found.context_param is not None:
            assert self.plan is not None
            context = ToolContext(
                info=self.plan.info,
                tally=self.tally,
                call_id=call.id,
                idempotency_key=f"{self.run_id}:{call.id}",
                artifacts=self.artifacts,
                max_steps=self.max_steps,
                attempt=attempt,
                resumed=attempt > 1,
            )
        # Left in place if the deadline cancels the call, so the timeout error names the tool.
        self.running_tools[call.id] = call.name
        token = None
        if call.name.startswith(("agent__", "skill__")):
            token = child_events.set(self._child_forwarder(call) if self.ports.pumps else None)
        try:
            value = await guarded(f"tool {call.name}", found, call.arguments, context)
        finally:
            if token is not None:
                child_events.reset(token)
        del self.running_tools[call.id]
        if isinstance(value, Failure):
            error = value.error
            if isinstance(error, ToolArgumentsError):
                return f"error: {error}", True
            return f"error: tool {call.name} failed: {describe(error) if error else 'no answer'}", True
        try:
            return tool_result_text(value), False
        except Exception as exc:
            return f"error: the result of {call.name} could not be turned into text: {describe(exc)}", True

    def _child_forwarder(self, call: ToolCall) -> Callable[[str, Mapping[str, Any]], _Done]:
        """Re-emit a child run's events in this run as ``child`` events (``data["run_id"]`` names it)."""

        def forward(type: str, data: Mapping[str, Any]) -> _Done:
            payload = dict(data)
            child_run_id = payload.pop("run_id", None)
            self.emit(
                "child",
                {
                    "tool": call.name,
                    "call_id": call.id,
                    "child_run_id": child_run_id,
                    "type": type,
                    "data": payload,
                },
            )
            return _DONE

        return forward

    async def _save(self, *, confirm: bool = False) -> None:
        """Save what is new since the last save (a failed save is retried with the next).

        Saves are serialized, so results of parallel calls that return together are written in turn.
        Raises `RunTakenOver` when the store says this worker no longer owns the run; ``confirm``
        asks the store even with nothing new (its answer confirms ownership).
        """
        if self.ports.checkpointer is None:
            return
        if self._save_lock is None:
            self._save_lock = asyncio.Lock()
        async with self._save_lock:
            if self.saved_upto == len(self.transcript) and not self._attempts_unsaved and not confirm:
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
                attempts=self._attempts_unsaved,
            )
            self._store_ok = await self.ports.save(state)
            if self._store_ok:
                self.saved_upto += len(state.messages)
                if self._attempts_unsaved:
                    self._attempts_unsaved = {}
            if self._held:
                # a store that failed cannot confirm anything: the trail must not wait for it
                self._release_held(self.saved_upto if self._store_ok else None)

    # -- the trail -----------------------------------------------------------------------------

    def _replay_to_recorders(self) -> None:
        """Give each recorder that can take it (``on_resume``) the saved transcript of a resumed run,
        so it can record what an earlier attempt saved but did not get to write (a worker killed
        between the checkpoint's save and the audit's batch)."""
        saved = tuple(self.transcript)
        for link in self.ports.recorders:
            on_resume = getattr(link.recorder, "on_resume", None)
            if callable(on_resume):
                link.pump.put("on_resume", on_resume, saved, self.tally.steps)

    def _record(self, method: str, *args: Any) -> None:
        """Hand a step or a tool result to the recorders once the checkpoint holds it.

        Held until then, so the audit never shows a step or result that a resume does again, nor
        one of a worker that has lost the run to another (`RunTakenOver` drops what is held).
        """
        if self.ports.checkpointer is None:
            for link in self.ports.recorders:
                link.pump.put(method, getattr(link.recorder, method), *args)
        else:
            self._held.append((len(self.transcript), method, args))

    def _release_held(self, upto: int | None) -> None:
        """Send the held rows the checkpoint holds (those up to ``upto`` messages; None: all)."""
        held, sent = self._held, 0
        for needs, method, args in held:
            if upto is not None and needs > upto:
                break
            for link in self.ports.recorders:
                link.pump.put(method, getattr(link.recorder, method), *args)
            sent += 1
        del held[:sent]

    # -- the end -----------------------------------------------------------------------------

    def _stats(self) -> RunStats:
        tally = self.tally
        return RunStats(
            status=self.status,
            output=self.text,
            error=self.error,
            steps=tally.steps,
            tool_calls=tally.tool_calls,
            runtime_seconds=round(time.monotonic() - self.started, 6),
            input_tokens=tally.input_tokens,
            output_tokens=tally.output_tokens,
            thinking_tokens=tally.thinking_tokens,
        )

    def _result(self, stats: RunStats | None = None) -> Result:
        artifacts = [a for a in self.artifacts if isinstance(a, Artifact)]
        if len(artifacts) != len(self.artifacts):
            self.warn(
                f"{len(self.artifacts) - len(artifacts)} artifacts were left out: a tool added something that "
                "is not an Artifact (use ToolContext.add_artifact)"
            )
        return Result(
            run_id=self.run_id,
            status=self.status,
            output=self.output,
            error=self.error,
            stats=stats or self._stats(),
            messages=self.transcript,
            artifacts=artifacts,
            warnings=self.warn.items,
            retry_after=self.retry_after,
            text=self.text,
            pending=self.pending,
        )

    async def _finish(self) -> Result:
        """Save and record the end, commit, end the checkpoint, deliver: each step bounded, none can raise.

        The order is the one a crash can stop anywhere: the answer is saved first (a run resumed
        after a crash past this point ends with it, asking the model nothing), recorded and charged
        next, and the checkpoint completed last, so no end is lost between the two stores.
        """
        self.phase = "finishing"
        ports = self.ports
        if self.status not in _NOT_DELIVERED and ports.checkpointer is not None and ports.taken_over is None:
            # the last word on ownership before the end is recorded: a worker that lost the run
            # records no end of it (nor completes nor delivers it)
            try:
                await self._save(confirm=True)
            except RunTakenOver as taken:
                self._end(
                    RunStatus.INTERRUPTED, _taken_message(taken, f"as it ended ({self.status.value} here)")
                )
        if ports.taken_over is None:
            self._release_held(None)
        else:
            self._held.clear()  # the run is another worker's: its trail is theirs to write
        stats = self._stats()
        self.emit(
            "run.end" if ports.taken_over is None else "run.taken_over",
            {
                "status": self.status.value,
                "error": self.error,
                "steps": stats.steps,
                "tool_calls": stats.tool_calls,
            },
        )
        # a worker that lost the run records no transcript: the run's is the new owner's
        await ports.finish(stats, self.transcript if ports.taken_over is None else None)
        if (
            await ports.end_checkpoint(self.status, self.error, self.pending)
            and self.status not in _NOT_DELIVERED
        ):
            self._end(
                RunStatus.INTERRUPTED,
                f"the run was taken over by another worker as it ended ({self.status.value} here); this "
                "worker neither completed nor delivered it",
            )
            stats = self._stats()
        result = self._result(stats)
        if self.status is RunStatus.AWAITING_APPROVAL:
            # kept here too, for Executor.resume in this process (the store, if it can load(), wins)
            self.ex._keep_paused(self._snapshot(), self.plan.agent if self.plan is not None else None)
        if self.request.delivery is not None and self.status not in _NOT_DELIVERED:
            await deliver(
                self.ex.ports.deliveries,
                self.request.delivery,
                result,
                self.warn,
                self.settings.delivery_timeout,
            )
            result.warnings = list(self.warn.items)  # the Result copied them before delivery added any
        return result

    async def _deliver_early(self) -> Result:
        result = self._result()
        if self.request.delivery is not None:
            await deliver(
                self.ex.ports.deliveries,
                self.request.delivery,
                result,
                self.warn,
                self.settings.delivery_timeout,
            )
            result.warnings = list(self.warn.items)
        return result

    def _snapshot(self) -> Interrupted:
        """The paused run as a checkpoint store would hand it back."""
        assert self.plan is not None
        tally = self.tally
        return Interrupted(
            info=self.plan.info,
            agent=self.plan.agent.spec(),
            messages=self.transcript,
            iteration=tally.steps,
            usage=Usage(
                input_tokens=tally.input_tokens,
                output_tokens=tally.output_tokens,
                thinking_tokens=tally.thinking_tokens,
            ),
            tool_calls=tally.tool_calls,
            attempts={p.call_id: 0 for p in self.pending},
            paused_at=utcnow(),
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
        body: Any = (
            guarded_sync(f"model {self.agent.model_id}: preview", preview, request)
            if callable(preview)
            else {}
        )
        if isinstance(body, Failure):
            self.warn(str(body))
            body = {}
        if not isinstance(body, dict) or not body:
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


def _taken_message(taken: RunTakenOver, when: str) -> str:
    owner = f" ({taken.owner})" if taken.owner else ""
    return f"the run was taken over by another worker{owner}: {taken}; this worker stopped it {when}"


def _parameters(fn: Any) -> frozenset[str]:
    """The parameter names ``fn`` accepts (empty when it cannot be inspected)."""
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()
