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
    """Records one run: its steps, tool calls and events, then its final stats.

    The per-run methods are fed from a bounded buffer by a task of their own, never from the run's
    task: they should return at once (append to a buffer; write in a task or in ``close``).
    """

    def on_step(self, iteration: int, response: ModelResponse) -> None:
        """Called after each model call that returned.

        :param iteration: the run's model-call count, from 1 (it goes on counting after a resume).
        :param response: what the model answered (text, tool calls, usage, the model that answered).

        Return ``None``; a value back is ignored with a warning. Raising loses this call only.
        """

    def on_tool(self, call: ToolCall, result: str) -> None:
        """Called after each tool call was answered (run, refused, denied or failed).

        :param call: the call as the model made it (``raw_arguments`` holds what it sent when that
            was not valid JSON).
        :param result: the text sent back to the model (``error: ...`` for a failure).
        """

    def log_event(self, type: str, payload: Mapping[str, Any]) -> None:
        """Called with each run event (see `RunEvent` for the types and their data).

        :param type: the event type (``step``, ``tool.start``, ``approval.decided``, ...).
        :param payload: its data; do not keep a reference past the call without copying it.
        """

    def log_error(self, message: str) -> None:
        """Called with each failure the run survived (the lines of ``Result.warnings``) and with
        the error that ended it. A ``log_error`` that raises is not told about its own failure."""

    async def close(self, stats: RunStats) -> None:
        """Called exactly once, when the run ended (whatever its status): write the roll-up and
        flush what is buffered, within ``port_timeout``.

        :param stats: the run's status, error, output text, counts and tokens of this run segment
            (a resumed run is a new segment with its running totals).

        Raising, or not answering in time, is a warning in ``Result.warnings``.
        """

    # Optional: ``on_transcript(messages: list[Message])``. Called once per run segment, after its
    # last event and before ``close``, with the messages the run ended with (`Result.messages`: the
    # history it was given, its prompt, the model's answers and the tool results). The list is the
    # recorder's to keep; store it with the roll-up, for the audit's ``transcript(run_id)``.
    #
    # With a checkpoint store, ``on_step`` and ``on_tool`` come once the checkpoint holds the step
    # or result (after its save): a recorder never sees one that a resume does again, nor one of a
    # worker that lost the run to another (that worker's last event is ``run.taken_over``, not
    # ``run.end``, and its ``close`` gets status ``interrupted``).
    #
    # Optional: ``on_resume(messages: Sequence[Message], iteration: int)``. Called first in a
    # resumed run, with its saved transcript and model-call count: the steps (the last
    # ``iteration`` assistant messages) and tool results an earlier attempt saved. A recorder that
    # writes in batches records those it lacks (a worker killed between the checkpoint's save and
    # its batch) and skips the rest.


@runtime_checkable
class Audit(Protocol):
    """Starts a `RunRecorder` per run."""

    async def start_run(self, info: RunInfo) -> RunRecorder | None:
        """Called once per run (and once per resume of it), after the budgets admitted it.

        :param info: who runs what: run id, agent, caller, channel, parent run, conversation.

        Return the run's recorder, or ``None`` not to record this run. Raising, hanging past
        ``port_timeout`` or returning something else is a warning; the run goes on unrecorded.
        """

    # Optional: ``async transcript(run_id) -> RunTranscript | None``. What
    # ``Executor.run(..., continue_run=run_id)`` reads: the run's info, its status (``None`` while
    # it has not ended) and the messages its recorder's ``on_transcript`` got (empty when it kept
    # none); ``None`` when this audit holds no such run. Bounded by ``port_timeout``; a failure
    # ends the continuing run ``error``, saying so.


# --- Budget -----------------------------------------------------------------------------------


@runtime_checkable
class Budget(Protocol):
    """Gates runs per caller and meters what they used.

    Both methods may take a keyword-only ``run_id``: the core passes it when the signature accepts
    it (decided once per executor), and a budget that uses it as an idempotency key applies each
    check and commit at most once per run, across retries and recoveries.
    """

    async def check(self, caller_id: str) -> None:
        """Called before a run starts (a run resumed by `Executor.recover` or `resume` too), one
        budget after another in plugin order.

        :param caller_id: who pays.

        Return ``None`` to allow the run; raise `BudgetExceeded` (with ``reason``, and
        ``retry_after`` and ``limit`` where known) to refuse it: it ends ``budget_exceeded``. Any
        other exception, a hang past ``port_timeout`` or a value back refuses it too, as ``error``.
        """

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage) -> None:
        """Called once when a run this budget admitted ended, whatever its status; also, with zero
        usage, when a later budget refused the run this one admitted (give back what check took).

        :param caller_id: who pays.
        :param runtime_seconds: the wall time of this run segment.
        :param usage: the run's tokens so far (a resumed run reports its running total: a budget
            keyed by run id charges the difference from what it charged before).

        Raising or hanging is a warning; the run's status does not change.
        """


# --- Critic -----------------------------------------------------------------------------------


@runtime_checkable
class CriticHandle(Protocol):
    """The executor's live link to the critic of one run.

    ``record_*`` and ``steer`` are called from the run's task; ``deadline`` from the run's task
    (before each model call and tool) and from the core's deadline watcher, concurrently; ``stop``
    once at the end. All must be synchronous, cheap and never block. A method that raises is a
    warning and the run goes on.

    A handle may also expose ``reason: str | None``, why it set the deadline it returns now; the
    core puts it in the ``critic`` event and in the error of a run its deadline ends.
    """

    def record_step(self, iteration: int) -> None:
        """Called after each model call; ``iteration`` counts from 1."""

    def record_tool_start(self, name: str, arguments: Mapping[str, Any]) -> None:
        """Called as each tool call starts, with the tool's name and the model's arguments."""

    def steer(self) -> list[Message]:
        """Called before each model call: messages to add to the transcript first (drained: each
        is returned once). Return ``[]`` for none."""

    def deadline(self) -> datetime | None:
        """The current hard deadline (timezone-aware); the critic may move it. ``None``: none.

        A deadline in the past takes effect before the next model call or tool starts.
        """

    def stop(self) -> None:
        """Called once, when the run ended."""


@runtime_checkable
class Critic(Protocol):
    """Watches long runs for hangs and runaways."""

    async def monitor(self, info: RunInfo, soft_timeout: float) -> CriticHandle | None:
        """Called once per run segment, before its first step.

        :param info: the run.
        :param soft_timeout: seconds after which the run counts as long (the agent's or the
            executor's ``soft_timeout``).

        Return the run's handle, or ``None`` not to watch it. A failure is a warning.
        """


# --- Checkpoint -------------------------------------------------------------------------------


@runtime_checkable
class Checkpointer(Protocol):
    """Persists one run's progress, appending only what is new.

    Any method raises `executus_core.RunTakenOver` when this process no longer owns the run (its
    lease lapsed and another worker took it): the loop then ends the run ``interrupted`` before
    any further model call, tool or delivery. Any other failure is a warning; the next save
    carries what the failed one had.
    """

    async def save(self, state: CheckpointState) -> None:
        """Called before the first model call (the prompt), after each model answer and after each
        tool result — before the next model call, tool start or delivery.

        :param state: the messages after ``state.offset`` (those before were saved already), the
            running totals, and ``attempts`` for calls a recovered run starts again (0 for a call
            that waits for approval). Saves of one run never overlap.

        Return when the state is durable: the loop goes on only then.
        """

    async def complete(self) -> None:
        """The run ended ``ok``: drop its checkpoint. Called before any delivery."""

    async def fail(self, error: str) -> None:
        """The run ended ``error``, ``timeout`` or ``cancelled``: drop its checkpoint (keeping the
        error where the store can)."""

    # Optional: ``async release(error: str | None = None)``. Called when a run ends
    # ``interrupted`` (shutdown, its caller's task cancelled) or a resumed run could not start
    # (with why): keep the checkpoint and give up the lease at once, so any worker's
    # ``interrupted()`` may hand the run out.
    #
    # Optional: ``async pause(pending: list[PendingCall])``. Called when a run ends
    # ``awaiting_approval``: keep the checkpoint, give up the lease, and do not hand the run to
    # ``interrupted()``: it waits for `Executor.resume`, which reads it with the store's ``load``.


@runtime_checkable
class CheckpointStore(Protocol):
    """Makes a `Checkpointer` per run and lists the runs left interrupted."""

    async def for_run(self, info: RunInfo, agent: Agent) -> Checkpointer | None:
        """Called once per run segment, after the budgets admitted it (for a resumed run, before
        the budgets, so a refusal can give the run back).

        :param info: the run; for a resumed run, the info it was saved with.
        :param agent: the agent (``agent.spec()`` is what a store keeps to rebuild it).

        Return the run's checkpointer (taking ownership of a run this store handed out), or
        ``None`` not to checkpoint it. A failure is a warning: the run goes on, not durable.
        """

    async def interrupted(self) -> list[Interrupted]:
        """Called by `Executor.recover`: runs whose host stopped before they ended, oldest first;
        each is handed out (claimed) once, and never a run this store is running itself.

        A corrupt checkpoint must not stop the others: skip (quarantine) it and name it.
        """

    # Optional: ``async load(run_id) -> Interrupted | None``. Claim one run — paused for approval
    # or interrupted — for `Executor.resume`; ``None`` when the store holds no such run; raise
    # `RunTakenOver` when a live worker holds it.


# --- Palette ----------------------------------------------------------------------------------


@runtime_checkable
class PaletteSource(Protocol):
    """Resolves palette names to skills and agents, and runs them for a parent run.

    The core calls every method with keyword arguments named as here. A method that raises, hangs
    or answers oddly is a warning (``resolve_*``: the next source is asked) or a tool error the
    model reads (``invoke_*``); the parent run goes on.
    """

    async def resolve_skill(self, caller_id: str, name: str) -> PaletteEntry | None:
        """Called once per run that lists ``name`` in ``skill_palette``, while the run starts.

        Return the skill's entry (its description and input schema become the ``skill__<name>``
        tool), or ``None`` when this source does not serve it.
        """

    async def invoke_skill(
        self,
        caller_id: str,
        channel_id: str | None,
        name: str,
        inputs: dict[str, Any],
        parent_run_id: str | None,
    ) -> tuple[str, str, str]:
        """Called when the model calls ``skill__<name>``: run the skill as a child run.

        :param inputs: the model's arguments (validate them; raise `ToolArgumentsError` to tell
            the model what is wrong).
        :param parent_run_id: the delegating run.

        Return ``(output, run_id, status)``: the child's output (or error), its run id, and a
        `RunStatus` value; a status other than ``ok`` becomes a tool error.
        """

    async def resolve_agent(self, caller_id: str, name: str) -> PaletteEntry | None:
        """Called once per run that lists ``name`` in ``subagent_palette``, while the run starts.
        Return the agent's entry, or ``None`` when this source does not serve it."""

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
    ) -> tuple[str, str, str]:
        """Called when the model calls ``agent__<name>``: run the agent on ``prompt`` as a child run.

        :param on_event: ``on_event(type, data)`` for the child's progress (put its run id in
            ``data["run_id"]``), or ``None`` when nobody listens; it never raises and may be
            awaited or not.

        Return ``(output, run_id, status)`` as `invoke_skill` does.
        """


# --- Delivery ---------------------------------------------------------------------------------


@runtime_checkable
class Delivery(Protocol):
    """Sends a finished run's result somewhere. ``kinds`` names the target kinds it serves."""

    kinds: frozenset[str]

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        """Called once per target of this kind, after a run ended ``ok`` (and after its
        checkpoint completed), within ``delivery_timeout``. Raising or hanging is a warning."""

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        """Called instead of `deliver` for a run that ended otherwise (not for ``interrupted`` or
        ``awaiting_approval``: those are not over), and for a run refused before it started."""
