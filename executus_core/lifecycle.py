"""The ports' side of one run: admitted by the budgets, watched, recorded and checkpointed, then closed.

`RunPorts` starts each port for a run and ends it, every call through the guarded call: a port that
raises, hangs or answers oddly becomes a warning in ``Result.warnings`` (or, for a budget's
``check``, a refusal) and never reaches the run's caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from executus_core.agent import Agent
from executus_core.errors import BudgetExceeded, RunTakenOver
from executus_core.events import EventHandler, EventPump
from executus_core.guard import Failure, guarded, guarded_sync
from executus_core.ports import Checkpointer, CriticHandle, RunRecorder
from executus_core.types import (
    CheckpointState,
    Message,
    PendingCall,
    RunEvent,
    RunInfo,
    RunStats,
    RunStatus,
    Usage,
    utcnow,
)

if TYPE_CHECKING:
    from executus_core.executor import Executor

__all__ = ["Refusal", "RunPorts", "Warnings"]


class Warnings:
    """The failures a run survived: each message once, in order, also sent to the recorders."""

    __slots__ = ("forward", "items", "seen")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.seen: set[str] = set()
        self.forward: Callable[[str, EventPump | None], None] | None = None

    def __call__(self, message: str, skip: EventPump | None = None) -> None:
        if message in self.seen:
            return
        self.seen.add(message)
        self.items.append(message)
        if self.forward is not None:
            self.forward(message, skip)


@dataclasses.dataclass(slots=True)
class Refusal:
    """Why the budgets did not admit a run."""

    status: RunStatus
    error: str
    retry_after: float | None = None


@dataclasses.dataclass(slots=True)
class _Recorder:
    name: str
    recorder: RunRecorder
    pump: EventPump


def _seconds(value: float) -> str:
    """A wait for a person: rounded up (never tell a caller to retry too early), 0.1 s below 10 s."""
    return f"{math.ceil(value)}" if value >= 10 else f"{math.ceil(value * 10) / 10:g}"


def takes_run_id(method: Any) -> bool:
    """Whether a budget method accepts ``run_id=`` (by name or ``**kwargs``); asked once per executor."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "run_id" or p.kind is p.VAR_KEYWORD for p in parameters)


class RunPorts:
    """The port objects of one run and their lifecycle; made by the loop, one per run."""

    def __init__(self, executor: Executor, run_id: str, caller_id: str, warn: Warnings) -> None:
        self.ex = executor
        self.run_id = run_id
        self.caller_id = caller_id
        self.timeout = executor.settings.core.port_timeout
        self.warn = warn
        warn.forward = self._log_error
        self.recorders: list[_Recorder] = []
        self.pumps: list[EventPump] = []
        self.event_pump: EventPump | None = None
        self.on_event: EventHandler | None = None
        self.critic: CriticHandle | None = None
        self.critic_name = ""
        self.checkpointer: Checkpointer | None = None
        self.checkpointer_name = ""
        self.admitted: list[tuple[str, Any]] = []
        self.taken_over: RunTakenOver | None = None

    # -- events --------------------------------------------------------------------------------

    def _log_error(self, message: str, skip: EventPump | None) -> None:
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

    async def call(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A port method that returns nothing: a failure or a value back becomes a warning."""
        value = await guarded(label, fn, *args, timeout=self.timeout, **kwargs)
        if isinstance(value, Failure):
            self.warn(str(value))
        elif value is not None:
            self.warn(f"{label} returned {type(value).__name__}, not None (ignored)")
        return value

    # -- budgets -------------------------------------------------------------------------------

    def _budget_kwargs(self, name: str) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.ex.budget_run_id.get(name) else {}

    async def admit(self) -> Refusal | None:
        """Ask every budget in order; the first refusal (or failure to answer) refuses the run.

        The budgets that admitted it before the refusal are committed with nothing used, so one
        that holds a slot per admitted run gets it back.
        """
        try:
            for name, budget in self.ex.ports.budgets:
                refusal = await self._ask(name, budget)
                if refusal is not None:
                    await self.commit(0.0, Usage())
                    return refusal
                self.admitted.append((name, budget))
        except asyncio.CancelledError:
            await self.commit(0.0, Usage())  # the caller left while the budgets were asked
            raise
        return None

    async def _ask(self, name: str, budget: Any) -> Refusal | None:
        label = f"budget {name!r}"
        cannot = "the run is refused (a budget that cannot answer never lets a run through)"
        answer = await guarded(
            f"{label}: check", budget.check, self.caller_id, timeout=self.timeout, **self._budget_kwargs(name)
        )
        if isinstance(answer, Failure):
            error = answer.error
            if isinstance(error, BudgetExceeded):
                retry = error.retry_after
                if not isinstance(retry, int | float) or not math.isfinite(retry) or retry < 0:
                    retry = None
                limit = getattr(error, "limit", None)
                which = f" ({limit})" if isinstance(limit, str) and limit else ""
                wait = f" (retry after {_seconds(retry)}s)" if retry is not None else ""
                return Refusal(
                    RunStatus.BUDGET_EXCEEDED, f"{label} refused the run{which}: {error.reason}{wait}", retry
                )
            return Refusal(RunStatus.ERROR, f"{answer}; {cannot}")
        if answer is not None:
            return Refusal(
                RunStatus.ERROR,
                f"{label}: check returned {type(answer).__name__}; a Budget allows by returning None and "
                "refuses by raising BudgetExceeded, so the run is refused",
            )
        return None

    async def commit(self, runtime_seconds: float, usage: Usage) -> None:
        """Meter the run on every budget that admitted it (each exactly once)."""
        admitted, self.admitted = self.admitted, []
        for name, budget in admitted:
            await self.call(
                f"budget {name!r}: commit",
                budget.commit,
                self.caller_id,
                runtime_seconds,
                usage,
                **self._budget_kwargs(name),
            )

    # -- start ---------------------------------------------------------------------------------

    async def start(
        self, info: RunInfo, agent: Agent, soft_timeout: float, on_event: EventHandler | None
    ) -> None:
        """Start the recorders, the event consumer, the critic's handle and the checkpointer."""
        core = self.ex.settings.core
        for name, audit in self.ex.ports.audits:
            recorder = await self._made(f"audit {name!r}: start_run", RunRecorder, audit.start_run, info)
            if recorder is not None:
                pump = EventPump(
                    f"audit {name!r} recorder",
                    self.warn,
                    core.event_queue_size,
                    self.timeout,
                    returns_none=True,
                )
                self.recorders.append(_Recorder(name, recorder, pump))
                self.pumps.append(pump)
        if on_event is not None:
            self.on_event = on_event
            self.event_pump = EventPump("on_event consumer", self.warn, core.event_queue_size, self.timeout)
            self.pumps.append(self.event_pump)
        if self.ex.ports.critic is not None:
            self.critic_name, critic = self.ex.ports.critic
            label = f"critic {self.critic_name!r}: monitor"
            self.critic = await self._made(label, CriticHandle, critic.monitor, info, soft_timeout)
        if self.checkpointer is None:
            await self.open_checkpointer(info, agent)

    async def open_checkpointer(self, info: RunInfo, agent: Agent) -> None:
        """Get the run's `Checkpointer` from the store (a failure is a warning: the run goes on)."""
        if self.ex.ports.checkpoints is None:
            return
        self.checkpointer_name, store = self.ex.ports.checkpoints
        label = f"checkpoint {self.checkpointer_name!r}: for_run"
        made = await guarded(label, store.for_run, info, agent, timeout=self.timeout)
        if isinstance(made, Failure) and isinstance(made.error, RunTakenOver):
            # another live owner holds this run id: this worker must not run it at all
            self.taken_over = made.error
            raise made.error
        self.checkpointer = self._check_made(label, Checkpointer, made)

    async def _made(self, label: str, protocol: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """A per-run object a port makes (a recorder, a handle, a checkpointer), or None with a warning."""
        return self._check_made(label, protocol, await guarded(label, fn, *args, timeout=self.timeout))

    def _check_made(self, label: str, protocol: Any, made: Any) -> Any:
        if isinstance(made, Failure):
            self.warn(str(made))
            return None
        if made is not None and not isinstance(made, protocol):
            self.warn(f"{label} returned {type(made).__name__}, not a {protocol.__name__}")
            return None
        return made

    # -- the critic ----------------------------------------------------------------------------

    def critic_call(self, method: str, *args: Any) -> Any:
        """Call a critic handle method (synchronous by contract); a failure becomes a warning."""
        assert self.critic is not None
        label = f"critic {self.critic_name!r}: {method}"
        value = guarded_sync(label, getattr(self.critic, method), *args)
        if isinstance(value, Failure):
            self.warn(str(value))
            return None
        if value is not None and method != "steer":
            self.warn(f"{label} returned {type(value).__name__}, not None (ignored)")
        return value

    # -- checkpoints ---------------------------------------------------------------------------

    async def checkpoint(self, method: str, *args: Any, **kwargs: Any) -> bool:
        """Call a checkpointer method; True when it answered. Raises `RunTakenOver` when it says so."""
        assert self.checkpointer is not None
        if self.taken_over is not None:
            raise self.taken_over
        label = f"checkpoint {self.checkpointer_name!r}: {method}"
        fn = getattr(self.checkpointer, method)
        value = await guarded(label, fn, *args, timeout=self.timeout, **kwargs)
        if isinstance(value, Failure):
            if isinstance(value.error, RunTakenOver):
                self.taken_over = value.error
                raise value.error
            self.warn(str(value))
            return False
        if value is not None:
            self.warn(f"{label} returned {type(value).__name__}, not None (ignored)")
        return True

    async def save(self, state: CheckpointState) -> bool:
        """Save what is new; True when the store has it. Raises `RunTakenOver`."""
        return await self.checkpoint("save", state)

    # -- the end -------------------------------------------------------------------------------

    async def end_checkpoint(
        self, status: RunStatus, error: str | None, pending: list[PendingCall] | None = None
    ) -> bool:
        """Complete, fail, pause or release the run's checkpoint; True when the store said the run
        was taken over (then it is another worker's: nothing more is written, nothing delivered)."""
        if self.checkpointer is None or self.taken_over is not None:
            return self.taken_over is not None
        try:
            if status is RunStatus.OK:
                await self.checkpoint("complete")
            elif status is RunStatus.AWAITING_APPROVAL and callable(
                getattr(self.checkpointer, "pause", None)
            ):
                # kept until a decision comes; a store that knows pauses never hands it to recover()
                await self.checkpoint("pause", list(pending or []))
            elif status not in (RunStatus.INTERRUPTED, RunStatus.AWAITING_APPROVAL):
                await self.checkpoint("fail", error or status.value)
            elif callable(getattr(self.checkpointer, "release", None)):
                # kept for recovery, and let go now, so another worker need not wait for a lease
                await self.checkpoint("release")
        except RunTakenOver:
            return True
        return False

    async def finish(self, stats: RunStats, messages: list[Message] | None = None) -> None:
        """Close the recorders, commit the budgets and stop the critic (before `end_checkpoint`:
        a crash between them leaves the run to resume, not its end unrecorded).

        ``messages`` (the run's transcript) go to each recorder that has ``on_transcript`` first.
        Each step is bounded and none can raise.
        """
        if stats.error and self.recorders:
            for link in self.recorders:
                link.pump.put("log_error", link.recorder.log_error, stats.error)
        if self.pumps:
            await asyncio.gather(*(pump.close() for pump in self.pumps))
        for link in self.recorders:
            keep = getattr(link.recorder, "on_transcript", None)
            if messages is not None and callable(keep):
                await self.call(f"audit {link.name!r}: on_transcript", keep, list(messages))
        for link in self.recorders:
            await self.call(f"audit {link.name!r}: close", link.recorder.close, stats)
        await self.commit(stats.runtime_seconds, stats.usage)
        if self.critic is not None:
            self.critic_call("stop")
