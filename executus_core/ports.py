"""The port objects batteries implement, as Protocols.

A hook in `executus_core.hookspecs` returns one of these once, when an `Executor` is built; the loop
then calls the object's methods directly, never through pluggy.

Rules every implementation follows (the conformance suites in `executus_core.testing` check them):

- Methods marked ``async`` may do I/O; they must not block the event loop (use an async driver or
  ``asyncio.to_thread``). Every call is bounded by the executor's ``port_timeout``.
- The recorder's ``on_step`` / ``on_tool`` / ``log_event`` / ``log_error`` are called on the per-step
  path: they must return at once (buffer, and write from a task or in ``close``). They may also be
  ``async def``; the loop then awaits them, bounded like any port call.
- An exception from any method is contained: the run goes on (or, for ``Budget.check``, is refused)
  and the `Result` names the port and method in ``warnings`` or ``error``.
- Objects may also define ``async aclose()``; `Executor.shutdown` calls it once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from executus_core.agent import Agent
from executus_core.types import (
    CheckpointState,
    DeliveryTarget,
    Interrupted,
    Message,
    ModelRequest,
    ModelResponse,
    PaletteEntry,
    Result,
    RunInfo,
    RunStats,
    ToolCall,
    Usage,
)

__all__ = [
    "Audit",
    "Budget",
    "CheckpointStore",
    "Checkpointer",
    "Critic",
    "CriticHandle",
    "Delivery",
    "EventCallback",
    "Model",
    "PaletteSource",
    "RunRecorder",
]

EventCallback = Callable[[str, Mapping[str, Any]], Awaitable[None] | None]
"""``on_event(type, data)`` handed to `PaletteSource.invoke_agent`: the child's progress."""


@runtime_checkable
class Model(Protocol):
    """Anything that answers a `ModelRequest`. Providers build these from ids like ``openai:gpt-4o``."""

    async def complete(self, request: ModelRequest) -> ModelResponse: ...


# --- Audit ------------------------------------------------------------------------------------


@runtime_checkable
class RunRecorder(Protocol):
    """Records one run: its steps, tool calls and events, then its final stats."""

    def on_step(self, iteration: int, response: ModelResponse) -> None:
        """A model call finished (``iteration`` counts from 1)."""

    def on_tool(self, call: ToolCall, result: str) -> None:
        """A tool call finished; ``result`` is the text sent back to the model."""

    def log_event(self, type: str, payload: Mapping[str, Any]) -> None:
        """A run event (see `RunEvent` for the types)."""

    def log_error(self, message: str) -> None:
        """Something went wrong that the run survived or that ended it."""

    async def close(self, stats: RunStats) -> None:
        """The run ended: write the roll-up and flush what is buffered. Called exactly once."""


@runtime_checkable
class Audit(Protocol):
    """Starts a `RunRecorder` per run (``None``: do not record this run)."""

    async def start_run(self, info: RunInfo) -> RunRecorder | None: ...


# --- Budget -----------------------------------------------------------------------------------


@runtime_checkable
class Budget(Protocol):
    """Gates runs per caller and meters what they used."""

    async def check(self, caller_id: str) -> None:
        """Return to allow the run; raise `BudgetExceeded` to refuse it. Any other outcome refuses too."""

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage) -> None:
        """Meter a finished run (every run that passed ``check``, whatever its status)."""


# --- Critic -----------------------------------------------------------------------------------


@runtime_checkable
class CriticHandle(Protocol):
    """The executor's live link to the critic of one run.

    ``record_*`` and ``steer`` are called from the run's task; ``deadline`` from the core's deadline
    watcher task, concurrently; ``stop`` once at the end. All must be cheap and never block.

    A handle may also expose ``reason: str | None``, why it set the deadline it returns now; the
    core puts it in the ``critic`` event and in the error of a run its deadline ends.
    """

    def record_step(self, iteration: int) -> None: ...

    def record_tool_start(self, name: str, arguments: Mapping[str, Any]) -> None: ...

    def steer(self) -> list[Message]:
        """Messages to inject before the next model call (drained: each is returned once)."""

    def deadline(self) -> datetime | None:
        """The current hard deadline (timezone-aware); the critic may move it. ``None``: none."""

    def stop(self) -> None: ...


@runtime_checkable
class Critic(Protocol):
    """Watches long runs for hangs and runaways."""

    async def monitor(self, info: RunInfo, soft_timeout: float) -> CriticHandle | None: ...


# --- Checkpoint -------------------------------------------------------------------------------


@runtime_checkable
class Checkpointer(Protocol):
    """Persists one run's progress, appending only what is new.

    Any method raises `executus_core.RunTakenOver` when this process no longer owns the run (its
    lease lapsed and another worker took it): the loop then ends the run ``interrupted`` before
    any further model call, tool or delivery.
    """

    async def save(self, state: CheckpointState) -> None: ...

    async def complete(self) -> None:
        """The run ended (ok, error, timeout, cancelled): drop its checkpoint."""

    async def fail(self, error: str) -> None:
        """The run failed for good: drop its checkpoint (keeping the error where the store can)."""

    # Optional: ``async pause(pending: list[PendingCall])``. Called when a run ends
    # ``awaiting_approval``: keep the checkpoint, give up the lease, and do not hand the run to
    # ``interrupted()``: it waits for `Executor.resume`, which reads it with the store's ``load``.
    #
    # Optional: ``async release()``. Called when a run ends ``interrupted`` (shutdown, or its
    # caller's task cancelled): the checkpoint is kept for recovery, and a store that holds runs
    # under a lease gives this one up at once, so any worker's ``interrupted()`` may hand it out.


@runtime_checkable
class CheckpointStore(Protocol):
    """Makes a `Checkpointer` per run and lists the runs left interrupted."""

    async def for_run(self, info: RunInfo, agent: Agent) -> Checkpointer | None: ...

    async def interrupted(self) -> list[Interrupted]:
        """Runs whose host stopped before they ended, oldest first; each is handed out once."""

    # Optional: ``async load(run_id) -> Interrupted | None``. Claim one run — paused for approval
    # or interrupted — for `Executor.resume`; ``None`` when the store holds no such run; raise
    # `RunTakenOver` when a live worker holds it.


# --- Palette ----------------------------------------------------------------------------------


@runtime_checkable
class PaletteSource(Protocol):
    """Resolves palette names to skills and agents, and runs them for a parent run.

    ``invoke_*`` return ``(output, run_id, status)`` with ``status`` a `RunStatus` value. The core
    calls every method with keyword arguments named as here.
    """

    async def resolve_skill(self, caller_id: str, name: str) -> PaletteEntry | None: ...

    async def invoke_skill(
        self,
        caller_id: str,
        channel_id: str | None,
        name: str,
        inputs: dict[str, Any],
        parent_run_id: str | None,
    ) -> tuple[str, str, str]: ...

    async def resolve_agent(self, caller_id: str, name: str) -> PaletteEntry | None: ...

    async def invoke_agent(
        self,
        caller_id: str,
        channel_id: str | None,
        name: str,
        prompt: str,
        parent_run_id: str | None,
        model_tier_override: str | None,
        prompt_prepend: str | None,
        tools_subset: list[str] | None,
        on_event: EventCallback | None,
    ) -> tuple[str, str, str]: ...


# --- Delivery ---------------------------------------------------------------------------------


@runtime_checkable
class Delivery(Protocol):
    """Sends a finished run's result somewhere. ``kinds`` names the target kinds it serves."""

    kinds: frozenset[str]

    async def deliver(self, target: DeliveryTarget, result: Result) -> None: ...

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None: ...
