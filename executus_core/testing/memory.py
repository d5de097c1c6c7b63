"""In-memory implementations of every port: small, correct, and strict about the contract.

They are what the conformance suites are proven against, and what a host's tests (and ours) plug
into an `Executor` to see what a run did::

    audit, checkpoints = MemoryAudit(), MemoryCheckpointStore()
    async with Executor(plugins=[audit, checkpoints], entry_points=False) as executor:
        result = await executor.run(agent, "hi", caller_id="u1")
    assert audit.run(result.run_id).stats.status is RunStatus.OK

Each class is also a plugin (its hook returns the object itself), so it goes straight into
``Executor(plugins=[...])``; `PortPlugin` wraps any other port objects the same way. Nothing here
leaves the process: state lives in the object, guarded by a lock so the objects may be shared by
several executors, event loops or threads.

Where the contract leaves a choice open these implementations are strict, so a test notices when
the core misuses a port: a recorder refuses events after ``close`` and a second ``close``; a
checkpointer refuses a save that would leave a gap; a store refuses a save for another run.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from executus_core.config import Settings
from executus_core.errors import BudgetExceeded
from executus_core.hookspecs import hookimpl
from executus_core.ports import (
    Audit,
    Budget,
    CheckpointStore,
    Critic,
    Delivery,
    EventCallback,
    PaletteSource,
)
from executus_core.types import (
    Agent,
    CheckpointState,
    DeliveryTarget,
    Interrupted,
    Message,
    ModelResponse,
    PaletteEntry,
    Result,
    RunInfo,
    RunStats,
    RunStatus,
    ToolCall,
    Usage,
    utcnow,
)

__all__ = [
    "BudgetLimits",
    "Delivered",
    "MemoryAudit",
    "MemoryBudget",
    "MemoryCheckpointStore",
    "MemoryCheckpointer",
    "MemoryCritic",
    "MemoryCriticHandle",
    "MemoryDelivery",
    "MemoryPalette",
    "MemoryRecorder",
    "PaletteCall",
    "PortPlugin",
    "RecordedRun",
    "SavedRun",
]


# --- Audit ------------------------------------------------------------------------------------


@dataclasses.dataclass
class RecordedRun:
    """What an audit holds about one run, in a shape every audit battery can produce.

    The conformance suite of `Audit` compares what it sent with this; `MemoryAudit` stores it
    directly. ``stats`` is ``None`` until the recorder is closed.

    Attributes:
        run_id: the run's id.
        info: the `RunInfo` given to ``start_run``.
        steps: the ``iteration`` of each ``on_step``, in order.
        tool_calls: ``(call id, tool name, result text)`` of each ``on_tool``, in order.
        events: ``(type, payload)`` of each ``log_event``, in order.
        errors: each ``log_error`` message, in order.
        stats: the roll-up given to ``close``.
        responses: the `ModelResponse` of each ``on_step`` (kept by `MemoryAudit`; batteries may
            leave it empty).
    """

    run_id: str
    info: RunInfo | None = None
    steps: list[int] = dataclasses.field(default_factory=list)
    tool_calls: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    stats: RunStats | None = None
    responses: list[ModelResponse] = dataclasses.field(default_factory=list)

    def event_types(self) -> list[str]:
        """The types of the logged events, in order (``["run.start", "step", ...]``)."""
        return [type_ for type_, _ in self.events]


class MemoryRecorder:
    """The `RunRecorder` of `MemoryAudit`: appends to the run's `RecordedRun` as events arrive.

    It also keeps the live tally (``steps``, ``tool_calls``, tokens) that a ``run_status`` tool
    could report. Strict: an event after ``close``, or a second ``close``, raises `RuntimeError`.
    """

    def __init__(self, record: RecordedRun, lock: threading.Lock) -> None:
        self.record = record
        self._lock = lock
        self.closed = False
        self.steps = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.thinking_tokens = 0

    def _open(self, method: str) -> None:
        if self.closed:
            raise RuntimeError(f"recorder of run {self.record.run_id}: {method} called after close")

    def on_step(self, iteration: int, response: ModelResponse) -> None:
        """Record a finished model call."""
        with self._lock:
            self._open("on_step")
            self.record.steps.append(iteration)
            self.record.responses.append(response)
            self.steps = max(self.steps, iteration)
            self.input_tokens += response.usage.input_tokens
            self.output_tokens += response.usage.output_tokens
            self.thinking_tokens += response.usage.thinking_tokens

    def on_tool(self, call: ToolCall, result: str) -> None:
        """Record a finished tool call."""
        with self._lock:
            self._open("on_tool")
            self.record.tool_calls.append((call.id, call.name, result))
            self.tool_calls += 1

    def log_event(self, type: str, payload: Mapping[str, Any]) -> None:
        """Record a run event (the payload is copied: the caller may reuse its dict)."""
        with self._lock:
            self._open("log_event")
            self.record.events.append((type, dict(payload)))

    def log_error(self, message: str) -> None:
        """Record an error the run survived or that ended it."""
        with self._lock:
            self._open("log_error")
            self.record.errors.append(message)

    async def close(self, stats: RunStats) -> None:
        """Write the roll-up; a second call raises (the core calls it exactly once)."""
        with self._lock:
            if self.closed:
                raise RuntimeError(f"recorder of run {self.record.run_id}: close called twice")
            self.closed = True
            self.record.stats = stats.model_copy()


class MemoryAudit:
    """An `Audit` that keeps every run's trail in memory: ``audit.run(run_id)`` or ``audit.runs``.

    Args:
        name: the plugin name (give two instances different names to use both in one executor).
    """

    def __init__(self, *, name: str = "memory_audit") -> None:
        self.executus_name = name
        self.runs: dict[str, RecordedRun] = {}
        self.recorders: dict[str, MemoryRecorder] = {}
        self._lock = threading.Lock()

    @hookimpl
    def executus_audit(self, settings: Settings) -> Audit:
        return self

    async def start_run(self, info: RunInfo) -> MemoryRecorder:
        """Start recording ``info.run_id`` (a resumed run keeps appending to its earlier trail)."""
        with self._lock:
            record = self.runs.get(info.run_id)
            if record is None:
                record = self.runs[info.run_id] = RecordedRun(run_id=info.run_id, info=info)
            else:
                record.stats = None  # resumed: the new roll-up replaces the interrupted one
            recorder = self.recorders[info.run_id] = MemoryRecorder(record, self._lock)
            return recorder

    def run(self, run_id: str) -> RecordedRun:
        """The trail of ``run_id``; raises `KeyError` naming the runs recorded when there is none."""
        with self._lock:
            try:
                return self.runs[run_id]
            except KeyError:
                known = ", ".join(self.runs) or "none"
                raise KeyError(f"run {run_id!r} was not recorded; recorded runs: {known}") from None


# --- Budget -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BudgetLimits:
    """Limits for one caller; ``None`` means no limit. Durations are seconds.

    Attributes:
        max_runs: runs admitted by ``check`` (a run counts when it is let through).
        max_tokens: input + output tokens committed (thinking tokens are part of output).
        max_seconds: runtime seconds committed.
        window_seconds: count only what happened in the last this-many seconds (a sliding window);
            ``None``: count forever.
    """

    max_runs: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    window_seconds: float | None = None


@dataclasses.dataclass
class _Entry:
    at: float
    runs: int = 0
    tokens: int = 0
    seconds: float = 0.0


_SETTLED_KEPT = 100_000  # run ids a MemoryBudget remembers as committed


class MemoryBudget:
    """A `Budget` with per-caller limits on runs, tokens and runtime, in one process.

    Every caller gets the default limits given here, or its own from ``limits``. ``check`` refuses
    with `BudgetExceeded` once a caller has reached a limit; with ``window_seconds`` the limits
    slide, and the refusal carries ``retry_after``: the seconds until enough usage leaves the
    window. ``check`` counts the run at once (so concurrent checks never admit more than
    ``max_runs``); ``commit`` adds its tokens and seconds.

    Example::

        budget = MemoryBudget(max_runs=10, window_seconds=60)      # 10 runs a minute per caller
        budget = MemoryBudget(max_tokens=100_000, limits={"vip": BudgetLimits()})

    Args:
        limits: per-caller limits that replace the defaults for those callers.
        clock: a monotonic clock in seconds (tests may pass a fake one).
        name: the plugin name.
    """

    def __init__(
        self,
        *,
        max_runs: int | None = None,
        max_tokens: int | None = None,
        max_seconds: float | None = None,
        window_seconds: float | None = None,
        limits: Mapping[str, BudgetLimits] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "memory_budget",
    ) -> None:
        self.executus_name = name
        self.defaults = BudgetLimits(max_runs, max_tokens, max_seconds, window_seconds)
        self.limits = dict(limits or {})
        self.clock = clock
        self.commits: list[tuple[str, float, Usage]] = []
        self.refusals: list[tuple[str, BudgetExceeded]] = []
        self._entries: dict[str, list[_Entry]] = {}
        self._admitted: dict[str, _Entry] = {}  # run id -> its count, until it commits
        self._settled: dict[str, None] = {}  # run ids committed (the latest _SETTLED_KEPT)
        self._lock = threading.Lock()

    @hookimpl
    def executus_budget(self, settings: Settings) -> Budget:
        return self

    def limits_for(self, caller_id: str) -> BudgetLimits:
        """The limits that apply to ``caller_id``."""
        return self.limits.get(caller_id, self.defaults)

    def _live(self, caller_id: str, limits: BudgetLimits, now: float) -> list[_Entry]:
        entries = self._entries.setdefault(caller_id, [])
        if limits.window_seconds is not None:
            cutoff = now - limits.window_seconds
            while entries and entries[0].at <= cutoff:
                entries.pop(0)
        return entries

    def used(self, caller_id: str) -> tuple[int, int, float]:
        """``(runs, tokens, seconds)`` ``caller_id`` has used (in the window, if there is one)."""
        with self._lock:
            entries = self._live(caller_id, self.limits_for(caller_id), self.clock())
            return (
                sum(e.runs for e in entries),
                sum(e.tokens for e in entries),
                sum(e.seconds for e in entries),
            )

    async def check(self, caller_id: str, *, run_id: str | None = None) -> None:
        """Let the run through (and count it), or raise `BudgetExceeded`.

        With ``run_id``, a run already admitted is let through again without counting it twice,
        and a run committed before (a recovered run) is not counted as a new run.
        """
        with self._lock:
            if run_id is not None and run_id in self._admitted:
                return
            counted = True
            if run_id is not None and run_id in self._settled:
                del self._settled[run_id]  # a recovered run: not a new run; its next commit charges
                counted = False
            limits = self.limits_for(caller_id)
            now = self.clock()
            entries = self._live(caller_id, limits, now)
            for field, limit, unit in (
                ("runs", limits.max_runs, "runs"),
                ("tokens", limits.max_tokens, "tokens"),
                ("seconds", limits.max_seconds, "seconds of runtime"),
            ):
                if limit is None or (field == "runs" and not counted):
                    continue
                total = sum(getattr(e, field) for e in entries)
                if total < limit:
                    continue
                retry_after = None
                if limits.window_seconds is not None:
                    # The first moment enough old usage has left the window to go below the limit.
                    for entry in entries:
                        total -= getattr(entry, field)
                        if total < limit:
                            retry_after = max(0.0, entry.at + limits.window_seconds - now)
                            break
                window = f" in the last {limits.window_seconds:g}s" if limits.window_seconds else ""
                refusal = BudgetExceeded(
                    f"caller {caller_id!r} used {_amount(sum(getattr(e, field) for e in entries))} "
                    f"{unit}{window}; the limit is {_amount(limit)}",
                    retry_after=retry_after,
                )
                self.refusals.append((caller_id, refusal))
                raise refusal
            entry = _Entry(at=now, runs=1 if counted else 0)
            entries.append(entry)
            if run_id is not None:
                self._admitted[run_id] = entry

    async def commit(
        self, caller_id: str, runtime_seconds: float, usage: Usage, *, run_id: str | None = None
    ) -> None:
        """Add a finished run's tokens and runtime to ``caller_id``'s usage.

        With ``run_id``, a run already committed is charged nothing (a retried commit), and a
        commit of nothing (a release: another budget refused the run) uncounts the run.
        """
        with self._lock:
            if run_id is not None:
                if run_id in self._settled:
                    return
                self._settled[run_id] = None
                while len(self._settled) > _SETTLED_KEPT:
                    del self._settled[next(iter(self._settled))]
                admitted = self._admitted.pop(run_id, None)
                if admitted is not None and not runtime_seconds and not usage.total_tokens:
                    admitted.runs = 0
            self.commits.append((caller_id, runtime_seconds, usage))
            limits = self.limits_for(caller_id)
            now = self.clock()
            self._live(caller_id, limits, now).append(
                _Entry(at=now, tokens=usage.total_tokens, seconds=float(runtime_seconds))
            )


def _amount(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}".rstrip("0").rstrip(".")


# --- Checkpoints ------------------------------------------------------------------------------


@dataclasses.dataclass
class SavedRun:
    """What `MemoryCheckpointStore` keeps for one run.

    ``state`` is ``open`` while the run may still be resumed, then ``completed`` or ``failed``
    (the messages are dropped then; ``error`` keeps why it failed). ``saves`` counts save calls.
    """

    info: RunInfo
    agent: dict[str, Any]
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    iteration: int = 0
    usage: Usage = dataclasses.field(default_factory=Usage)
    tool_calls: int = 0
    state: str = "open"
    error: str | None = None
    saves: int = 0
    handed_out: bool = False


class MemoryCheckpointer:
    """The `Checkpointer` of one run in a `MemoryCheckpointStore`."""

    def __init__(self, store: MemoryCheckpointStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    async def save(self, state: CheckpointState) -> None:
        """Write ``state.messages`` at ``state.offset``: new messages append; a retried save overwrites.

        Raises `ValueError` for another run's state or an offset past the end (a lost save).
        """
        if state.run_id != self.run_id:
            raise ValueError(f"checkpointer of run {self.run_id} was given a state of run {state.run_id}")
        # Stored as JSON-able data, as a database would: later changes to the objects don't leak in.
        new = [m.model_dump(mode="json") for m in state.messages]
        with self.store._lock:
            saved = self.store._open_run(self.run_id, "save")
            if state.offset > len(saved.messages):
                raise ValueError(
                    f"checkpoint of run {self.run_id}: save at offset {state.offset} but only "
                    f"{len(saved.messages)} messages are saved; a save was lost"
                )
            del saved.messages[state.offset :]
            saved.messages.extend(new)
            saved.iteration = state.iteration
            saved.usage = state.usage.model_copy()
            saved.tool_calls = state.tool_calls
            saved.saves += 1

    async def complete(self) -> None:
        """The run ended: drop its checkpoint."""
        with self.store._lock:
            saved = self.store._open_run(self.run_id, "complete")
            saved.state, saved.messages = "completed", []

    async def fail(self, error: str) -> None:
        """The run failed for good: drop its checkpoint, keep the error."""
        with self.store._lock:
            saved = self.store._open_run(self.run_id, "fail")
            saved.state, saved.error, saved.messages = "failed", error, []


class MemoryCheckpointStore:
    """A `CheckpointStore` in memory: append-only per run, with the runs left open for `recover`.

    Hand the same object to a new `Executor` and its ``recover()`` resumes what the old one left
    ``interrupted``. ``interrupted()`` lists every run that was saved and neither completed nor
    failed, so call it when no executor sharing the store is running runs (at boot), as
    `Executor.recover` is meant to be; each run is handed out once until a new ``for_run`` takes it.
    ``store.runs`` holds every run's `SavedRun` for tests to inspect.
    """

    def __init__(self, *, name: str = "memory_checkpoints") -> None:
        self.executus_name = name
        self.runs: dict[str, SavedRun] = {}
        self._lock = threading.Lock()

    @hookimpl
    def executus_checkpointer(self, settings: Settings) -> CheckpointStore:
        return self

    def _open_run(self, run_id: str, method: str) -> SavedRun:
        saved = self.runs.get(run_id)
        if saved is None:
            raise RuntimeError(f"checkpoint {method} for run {run_id}, which for_run never started")
        if saved.state != "open":
            raise RuntimeError(f"checkpoint {method} for run {run_id}, which is already {saved.state}")
        return saved

    async def for_run(self, info: RunInfo, agent: Agent) -> MemoryCheckpointer:
        """The checkpointer of ``info.run_id``; a run that is still open keeps what it saved (a resume)."""
        with self._lock:
            saved = self.runs.get(info.run_id)
            if saved is None or saved.state != "open":
                self.runs[info.run_id] = SavedRun(info=info, agent=agent.spec())
            else:
                saved.handed_out = False  # a live run owns it again; if it is interrupted, list it again
            return MemoryCheckpointer(self, info.run_id)

    async def interrupted(self) -> list[Interrupted]:
        """Open runs with at least one save, oldest first; each is handed out once."""
        with self._lock:
            found = sorted(
                (s for s in self.runs.values() if s.state == "open" and s.messages and not s.handed_out),
                key=lambda s: s.info.started_at,
            )
            for saved in found:
                saved.handed_out = True
            return [
                Interrupted(
                    info=saved.info.model_copy(),
                    agent=dict(saved.agent),
                    messages=[Message.model_validate(m) for m in saved.messages],
                    iteration=saved.iteration,
                    usage=saved.usage.model_copy(),
                    tool_calls=saved.tool_calls,
                )
                for saved in found
            ]

    def messages(self, run_id: str) -> list[Message]:
        """The transcript saved for ``run_id`` so far (empty once completed or failed)."""
        with self._lock:
            saved = self.runs.get(run_id)
            return [] if saved is None else [Message.model_validate(m) for m in saved.messages]


# --- Critic -----------------------------------------------------------------------------------


class MemoryCriticHandle:
    """The `CriticHandle` of `MemoryCritic` for one run; every method takes a lock, so the run's
    task, the core's deadline watcher and other threads may call it at once."""

    def __init__(self, critic: MemoryCritic, info: RunInfo, soft_timeout: float) -> None:
        self.critic = critic
        self.info = info
        self.soft_timeout = soft_timeout
        self.started = utcnow()
        self.last_activity = self.started
        self.steps: list[int] = []
        self.tools: list[tuple[str, dict[str, Any]]] = []
        self.steered: list[Message] = []
        self.stopped = False
        self._soft_hits = 0
        self._lock = threading.Lock()

    def record_step(self, iteration: int) -> None:
        """A model call finished: the run is alive."""
        with self._lock:
            self.steps.append(iteration)
            self.last_activity = utcnow()

    def record_tool_start(self, name: str, arguments: Mapping[str, Any]) -> None:
        """A tool call started: the run is alive."""
        with self._lock:
            self.tools.append((name, dict(arguments)))
            self.last_activity = utcnow()

    def steer(self) -> list[Message]:
        """One message each time another ``soft_timeout`` has passed; each is returned once."""
        with self._lock:
            if self.stopped or self.soft_timeout <= 0:
                return []
            elapsed = (utcnow() - self.started).total_seconds()
            hits = int(elapsed // self.soft_timeout)
            if hits <= self._soft_hits:
                return []
            self._soft_hits = hits
            message = Message.user(self.critic.steer_message.format(seconds=round(elapsed)))
            self.steered.append(message)
            return [message]

    def deadline(self) -> datetime | None:
        """``hard_timeout`` after the start, pushed to ``idle_timeout`` after the last step or tool
        start while there is activity, never past ``max_runtime``; ``None`` once stopped."""
        critic = self.critic
        with self._lock:
            if self.stopped:
                return None
            when: datetime | None = None
            if critic.hard_timeout is not None:
                when = self.started + timedelta(seconds=critic.hard_timeout)
            if critic.idle_timeout is not None:
                alive_until = self.last_activity + timedelta(seconds=critic.idle_timeout)
                when = alive_until if when is None else max(when, alive_until)
            if critic.max_runtime is not None:
                cap = self.started + timedelta(seconds=critic.max_runtime)
                when = cap if when is None else min(when, cap)
            return when

    def stop(self) -> None:
        """The run ended."""
        with self._lock:
            self.stopped = True


class MemoryCritic:
    """A `Critic` with a soft timeout that steers and a hard deadline that activity may extend.

    - Each time another ``soft_timeout`` (given by the executor) passes, ``steer()`` returns one
      message asking the model to wrap up.
    - ``deadline()`` is ``hard_timeout`` seconds after the start; with ``idle_timeout``, every step
      or tool start moves it to at least ``idle_timeout`` seconds after that activity, so a slow
      run that keeps making progress goes on while a hung one is cut off; ``max_runtime`` caps it.
      With none of the three the critic sets no deadline and the executor's ``hard_timeout`` holds.

    ``critic.handles`` maps each run id to its `MemoryCriticHandle`.
    """

    def __init__(
        self,
        *,
        hard_timeout: float | None = None,
        idle_timeout: float | None = None,
        max_runtime: float | None = None,
        steer_message: str = (
            "You have been working on this for {seconds} seconds. Finish now: give your best answer "
            "with what you have."
        ),
        name: str = "memory_critic",
    ) -> None:
        self.executus_name = name
        self.hard_timeout = hard_timeout
        self.idle_timeout = idle_timeout
        self.max_runtime = max_runtime
        self.steer_message = steer_message
        self.handles: dict[str, MemoryCriticHandle] = {}
        self._lock = threading.Lock()

    @hookimpl
    def executus_critic(self, settings: Settings) -> Critic:
        return self

    async def monitor(self, info: RunInfo, soft_timeout: float) -> MemoryCriticHandle:
        """Start watching a run."""
        handle = MemoryCriticHandle(self, info, soft_timeout)
        with self._lock:
            self.handles[info.run_id] = handle
        return handle


# --- Palette ----------------------------------------------------------------------------------


@dataclasses.dataclass
class PaletteCall:
    """One ``invoke_skill`` / ``invoke_agent`` call `MemoryPalette` received, with every argument."""

    kind: str
    name: str
    caller_id: str
    channel_id: str | None
    parent_run_id: str | None
    run_id: str
    inputs: dict[str, Any] | None = None
    prompt: str | None = None
    model_tier_override: str | None = None
    prompt_prepend: str | None = None
    tools_subset: list[str] | None = None


Handler = Callable[[Any], Any]


@dataclasses.dataclass
class _Served:
    entry: PaletteEntry
    handler: Handler


class MemoryPalette:
    """A `PaletteSource` whose skills and agents are Python functions.

    A skill's handler takes the inputs dict, an agent's takes the prompt; either returns the output
    text (or an awaitable of it). A handler that raises makes the invoke return status ``error``
    with the exception as output. ``palette.calls`` lists every invoke with its arguments.

    Example::

        palette = MemoryPalette()
        palette.add_skill("shout", lambda inputs: inputs["text"].upper(),
                          input_schema={"type": "object", "properties": {"text": {"type": "string"}}})
        palette.add_agent("echo", lambda prompt: prompt)
    """

    def __init__(self, *, name: str = "memory_palette") -> None:
        self.executus_name = name
        self.skills: dict[str, _Served] = {}
        self.agents: dict[str, _Served] = {}
        self.calls: list[PaletteCall] = []
        self._lock = threading.Lock()

    @hookimpl
    def executus_palette(self, settings: Settings) -> PaletteSource:
        return self

    def add_skill(
        self,
        name: str,
        handler: Handler,
        *,
        description: str = "",
        input_schema: dict[str, Any] | None = None,
    ) -> None:
        """Serve ``skill__<name>``: ``handler(inputs)`` gives the output."""
        schema = input_schema or {"type": "object", "properties": {}, "additionalProperties": True}
        entry = PaletteEntry(
            name=name, id=name, description=description or f"The {name} skill.", input_schema=schema
        )
        self.skills[name] = _Served(entry, handler)

    def add_agent(self, name: str, handler: Handler, *, description: str = "") -> None:
        """Serve ``agent__<name>``: ``handler(prompt)`` gives the output."""
        entry = PaletteEntry(
            name=name,
            id=name,
            description=description or f"The {name} agent.",
            input_schema={
                "type": "object",
                "properties": {"prompt": {"type": "string"}},
                "required": ["prompt"],
            },
        )
        self.agents[name] = _Served(entry, handler)

    async def resolve_skill(self, caller_id: str, name: str) -> PaletteEntry | None:
        """The skill's entry, or ``None`` when this palette does not serve it."""
        served = self.skills.get(name)
        return None if served is None else served.entry.model_copy()

    async def resolve_agent(self, caller_id: str, name: str) -> PaletteEntry | None:
        """The agent's entry, or ``None`` when this palette does not serve it."""
        served = self.agents.get(name)
        return None if served is None else served.entry.model_copy()

    async def invoke_skill(
        self,
        caller_id: str,
        channel_id: str | None,
        name: str,
        inputs: dict[str, Any],
        parent_run_id: str | None,
    ) -> tuple[str, str, str]:
        """Run the skill's handler on ``inputs``: ``(output, run_id, status)``."""
        run_id = uuid.uuid4().hex
        with self._lock:
            self.calls.append(
                PaletteCall("skill", name, caller_id, channel_id, parent_run_id, run_id, inputs=dict(inputs))
            )
        served = self.skills.get(name)
        if served is None:
            return f"the skill {name!r} is not served by this palette", run_id, RunStatus.ERROR.value
        return await _serve(served.handler, dict(inputs), run_id)

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
        """Run the agent's handler on the prompt (``prompt_prepend`` first); reports ``run.start``
        and ``run.end`` to ``on_event``: ``(output, run_id, status)``."""
        run_id = uuid.uuid4().hex
        with self._lock:
            self.calls.append(
                PaletteCall(
                    "agent",
                    name,
                    caller_id,
                    channel_id,
                    parent_run_id,
                    run_id,
                    prompt=prompt,
                    model_tier_override=model_tier_override,
                    prompt_prepend=prompt_prepend,
                    tools_subset=list(tools_subset) if tools_subset is not None else None,
                )
            )
        served = self.agents.get(name)
        if served is None:
            return f"the agent {name!r} is not served by this palette", run_id, RunStatus.ERROR.value
        if prompt_prepend:
            prompt = f"{prompt_prepend}\n\n{prompt}"
        await _notify(on_event, "run.start", {"run_id": run_id, "agent": name})
        outcome = await _serve(served.handler, prompt, run_id)
        await _notify(on_event, "run.end", {"run_id": run_id, "status": outcome[2]})
        return outcome


async def _serve(handler: Handler, argument: Any, run_id: str) -> tuple[str, str, str]:
    try:
        value = handler(argument)
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}", run_id, RunStatus.ERROR.value
    return str(value), run_id, RunStatus.OK.value


async def _notify(on_event: EventCallback | None, type: str, data: dict[str, Any]) -> None:
    if on_event is None:
        return
    value = on_event(type, data)
    if isinstance(value, Awaitable):
        await value


# --- Delivery ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Delivered:
    """One delivery `MemoryDelivery` received: ``method`` is ``deliver`` or ``deliver_error``."""

    method: str
    target: DeliveryTarget
    result: Result


class MemoryDelivery:
    """A `Delivery` that keeps what it is given in ``delivered`` (the result as its JSON came back).

    Args:
        kinds: the target kinds it serves (default ``{"memory"}``).
    """

    def __init__(
        self, kinds: tuple[str, ...] | frozenset[str] = ("memory",), *, name: str = "memory_delivery"
    ):
        self.executus_name = name
        self.kinds: frozenset[str] = frozenset(kinds)
        self.delivered: list[Delivered] = []
        self._lock = threading.Lock()

    @hookimpl
    def executus_delivery(self, settings: Settings) -> Delivery:
        return self

    def _keep(self, method: str, target: DeliveryTarget, result: Result) -> None:
        if target.kind not in self.kinds:
            raise ValueError(
                f"{self.executus_name} serves {sorted(self.kinds)}, not targets of kind {target.kind!r}"
            )
        # Through JSON, as a real delivery sends it: a result that does not serialize fails here.
        copy = Result.model_validate_json(result.model_dump_json())
        with self._lock:
            self.delivered.append(Delivered(method, target.model_copy(), copy))

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        """Keep a successful run's result."""
        self._keep("deliver", target, result)

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        """Keep a failed run's result."""
        self._keep("deliver_error", target, result)

    def results(self) -> list[Result]:
        """Every result delivered so far, in order."""
        with self._lock:
            return [d.result for d in self.delivered]


# --- Any port object as a plugin --------------------------------------------------------------


class PortPlugin:
    """A plugin that hands an `Executor` the port objects it is given.

    For port objects that are not plugins themselves (a battery's object built by hand, a wrapper
    in a test)::

        Executor(plugins=[PortPlugin(budget=my_budget, audit=my_audit)], entry_points=False)
    """

    def __init__(
        self,
        name: str = "test_ports",
        *,
        audit: Any = None,
        budget: Any = None,
        critic: Any = None,
        checkpoints: Any = None,
        palette: Any = None,
        delivery: Any = None,
    ) -> None:
        self.executus_name = name
        self.audit, self.budget, self.critic = audit, budget, critic
        self.checkpoints, self.palette, self.delivery = checkpoints, palette, delivery

    @hookimpl
    def executus_audit(self, settings: Settings) -> Any:
        return self.audit

    @hookimpl
    def executus_budget(self, settings: Settings) -> Any:
        return self.budget

    @hookimpl
    def executus_critic(self, settings: Settings) -> Any:
        return self.critic

    @hookimpl
    def executus_checkpointer(self, settings: Settings) -> Any:
        return self.checkpoints

    @hookimpl
    def executus_palette(self, settings: Settings) -> Any:
        return self.palette

    @hookimpl
    def executus_delivery(self, settings: Settings) -> Any:
        return self.delivery
