"""`MemoryCheckpointStore`: checkpoints in memory, with the ownership rules every store follows.

Each store instance is an owner of its own. Several instances can share one storage, as workers
share a database (``store.peer()``, or ``MemoryCheckpointStore(storage=...)``): the conformance
suite uses that to check ownership, and a host's tests can use it to play several workers in one
process. A run is held by the store that started or claimed it; each start, claim, resume and
release raises the run's epoch, and a checkpointer writes only while the epoch is the one it got,
so a checkpointer whose run was taken over, released or ended gets `RunTakenOver` from every
method.

Leases: with ``lease_seconds`` a store holds its runs that long after its last save (there is no
heartbeat), and another store may take a run whose lease lapsed; without (the default) a run is
held until its store ends or releases it, as fits one process, where a store dies only with the
storage it lives in.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from executus_core.config import Settings
from executus_core.errors import RunTakenOver
from executus_core.hookspecs import hookimpl
from executus_core.ports import CheckpointStore
from executus_core.types import (
    Agent,
    CheckpointState,
    Interrupted,
    Message,
    PendingCall,
    RunInfo,
    Usage,
    utcnow,
)

__all__ = ["MemoryCheckpointStorage", "MemoryCheckpointStore", "MemoryCheckpointer", "SavedRun"]

log = logging.getLogger("executus.testing")


@dataclasses.dataclass
class SavedRun:
    """What `MemoryCheckpointStore` keeps for one run.

    ``state`` is ``open`` while the run may still be resumed, ``paused`` while it waits for
    approval (``pending`` holds the waiting calls, ``paused_at`` since when; never handed out by
    ``interrupted()``, only by ``load``), then ``completed`` or ``failed``
    (the messages are dropped then; ``error`` keeps why it failed; a run given up after too many
    failed resumes keeps them), or ``corrupt`` (quarantined: its checkpoint did not read back).
    ``saves`` counts save calls. ``info`` and ``messages`` are kept as a database would keep them
    (messages as JSON-able data), so a test may damage them to see a quarantine.

    Who holds it: ``owner`` (the holding store's owner id, or the last holder's), ``epoch`` (the
    fencing token), ``held`` (False once released or ended), ``lease_until`` (on the storage's
    clock; ``None``: no expiry), ``claimed`` (handed out by ``interrupted()`` and not resumed yet).
    After a failed resume, ``resume_failures`` counts them and ``not_before`` is when the run may be
    handed out again. ``attempts`` holds the tool-call attempts saved (`CheckpointState.attempts`).
    """

    info: RunInfo | dict[str, Any]
    agent: dict[str, Any]
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    iteration: int = 0
    usage: Usage = dataclasses.field(default_factory=Usage)
    tool_calls: int = 0
    state: str = "open"
    error: str | None = None
    saves: int = 0
    owner: str | None = None
    epoch: int = 1
    held: bool = True
    lease_until: float | None = None
    claimed: bool = False
    not_before: float | None = None
    resume_failures: int = 0
    attempts: dict[str, int] = dataclasses.field(default_factory=dict)
    pending: list[PendingCall] = dataclasses.field(default_factory=list)
    paused_at: datetime | None = None


class MemoryCheckpointStorage:
    """What several `MemoryCheckpointStore` instances share, as workers share one database.

    ``runs`` maps run ids to `SavedRun`; ``clock`` (monotonic seconds) measures every lease and
    backoff, so all the stores on it agree.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.runs: dict[str, SavedRun] = {}
        self.clock = clock
        self.lock = threading.Lock()


class MemoryCheckpointer:
    """The `Checkpointer` of one run in a `MemoryCheckpointStore`, writing under one epoch."""

    def __init__(self, store: MemoryCheckpointStore, run_id: str, epoch: int | None = None) -> None:
        self.store = store
        self.run_id = run_id
        if epoch is None:  # made by hand (a test's subclass): write under the run's current epoch
            with store._lock:
                saved = store.runs.get(run_id)
                epoch = saved.epoch if saved is not None else 0
        self.epoch = epoch

    def _held(self, method: str) -> SavedRun:
        """The run, if this checkpointer still holds it; else `RunTakenOver` saying why."""
        saved = self.store.runs.get(self.run_id)
        stop = "this checkpointer must not write it, and the run must not go on here"
        if saved is None:
            raise RunTakenOver(
                f"checkpoint {method} for run {self.run_id}, which the store does not hold; {stop}",
                run_id=self.run_id,
            )
        if saved.state != "open":
            raise RunTakenOver(
                f"checkpoint {method} for run {self.run_id}, which is already {saved.state}; {stop}",
                run_id=self.run_id,
                owner=saved.owner,
            )
        if saved.epoch != self.epoch:
            if saved.held and saved.owner != self.store.owner:
                why = f"it is now held by {saved.owner!r} (this store's lease lapsed and it was taken over)"
                owner = saved.owner
            else:
                why = "it was released, or taken again under a newer claim"
                owner = saved.owner if saved.held else None
            raise RunTakenOver(
                f"checkpoint {method} for run {self.run_id}: {why}; {stop}", run_id=self.run_id, owner=owner
            )
        return saved

    async def save(self, state: CheckpointState) -> None:
        """Write ``state.messages`` at ``state.offset``: new messages append; a retried save overwrites.

        Renews the lease and merges ``state.attempts``. Raises `ValueError` for another run's state
        or an offset past the end (a lost save), `RunTakenOver` once this checkpointer no longer
        holds the run.
        """
        if state.run_id != self.run_id:
            raise ValueError(f"checkpointer of run {self.run_id} was given a state of run {state.run_id}")
        # Stored as JSON-able data, as a database would: later changes to the objects don't leak in.
        new = [m.model_dump(mode="json") for m in state.messages]
        with self.store._lock:
            saved = self._held("save")
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
            saved.attempts.update(state.attempts)
            saved.lease_until = self.store._lease_end()
            saved.saves += 1

    async def complete(self) -> None:
        """The run ended: drop its checkpoint."""
        with self.store._lock:
            saved = self._held("complete")
            saved.state, saved.messages, saved.held, saved.epoch = "completed", [], False, saved.epoch + 1

    async def fail(self, error: str) -> None:
        """The run failed for good: drop its checkpoint, keep the error."""
        with self.store._lock:
            saved = self._held("fail")
            saved.state, saved.error, saved.messages = "failed", error, []
            saved.held, saved.epoch = False, saved.epoch + 1

    async def pause(self, pending: list[PendingCall]) -> None:
        """The run waits for approval: keep its checkpoint, give it up, and keep it out of
        ``interrupted()``; only ``load(run_id)`` hands it out (for `Executor.resume`)."""
        with self.store._lock:
            saved = self._held("pause")
            saved.state, saved.held, saved.claimed, saved.epoch = "paused", False, False, saved.epoch + 1
            saved.pending = [p.model_copy(deep=True) for p in pending]
            saved.paused_at = utcnow()
            saved.not_before = None

    async def release(self, error: str | None = None, *, retry_after: float | None = None) -> None:
        """Keep the checkpoint and give the run up at once, so any store may hand it out.

        With ``error`` (resuming it failed): the error is kept, the run waits out a backoff before
        it is handed out again, and after ``max_resume_attempts`` failures it is marked failed.
        ``retry_after`` (seconds) holds the run back that long without counting a failure.
        """
        with self.store._lock:
            saved = self._held("release")
            saved.held, saved.claimed, saved.epoch = False, False, saved.epoch + 1
            if retry_after is not None and retry_after > 0:
                saved.not_before = self.store.storage.clock() + retry_after
                if error is not None:
                    saved.error = error
            elif error is not None:
                self.store._failed_resume(saved, error)


class MemoryCheckpointStore:
    """A `CheckpointStore` in memory: append-only per run, with the runs left open for `recover`.

    Hand the same object to a new `Executor` and its ``recover()`` resumes what the old one left
    ``interrupted`` (the core releases such runs). ``interrupted()`` hands out runs that were
    released, or whose lease lapsed, never one this store holds itself. ``store.runs`` holds every
    run's `SavedRun` for tests to inspect; ``store.peer()`` is another store (another owner) on
    the same storage.

    Args:
        name: the plugin name.
        storage: the `MemoryCheckpointStorage` (or another store, whose storage is then shared).
            Default: storage of its own.
        lease_seconds: how long a run stays held after its store's last save; ``None`` (default):
            until the store ends or releases it.
        max_resume_attempts: failed resumes after which a run is marked failed.
        resume_backoff_seconds: the wait after a failed resume, doubled after each further failure
            up to ``resume_backoff_max_seconds``.
        worker_id: the first part of this store's owner id (``<worker_id>:<random>``).
    """

    def __init__(
        self,
        *,
        name: str = "memory_checkpoints",
        storage: MemoryCheckpointStorage | MemoryCheckpointStore | None = None,
        lease_seconds: float | None = None,
        max_resume_attempts: int = 5,
        resume_backoff_seconds: float = 30.0,
        resume_backoff_max_seconds: float = 3600.0,
        worker_id: str = "memory",
    ) -> None:
        if isinstance(storage, MemoryCheckpointStore):
            storage = storage.storage
        self.executus_name = name
        self.storage: MemoryCheckpointStorage = storage if storage is not None else MemoryCheckpointStorage()
        self.lease_seconds = lease_seconds
        self.max_resume_attempts = max_resume_attempts
        self.resume_backoff_seconds = resume_backoff_seconds
        self.resume_backoff_max_seconds = resume_backoff_max_seconds
        self.owner = f"{worker_id}:{uuid.uuid4().hex[:8]}"

    @property
    def runs(self) -> dict[str, SavedRun]:
        """Every run on this store's storage, by run id."""
        return self.storage.runs

    @property
    def _lock(self) -> threading.Lock:
        return self.storage.lock

    def peer(self, **options: Any) -> MemoryCheckpointStore:
        """Another store (another owner) on the same storage; ``options`` as for the constructor."""
        return MemoryCheckpointStore(storage=self.storage, **options)

    @hookimpl
    def executus_checkpointer(self, settings: Settings) -> CheckpointStore:
        return self

    def _lease_end(self) -> float | None:
        return None if self.lease_seconds is None else self.storage.clock() + self.lease_seconds

    def _lapsed(self, saved: SavedRun, now: float) -> bool:
        return not saved.held or (saved.lease_until is not None and saved.lease_until < now)

    def _backoff(self, failures: int) -> float:
        return min(self.resume_backoff_max_seconds, self.resume_backoff_seconds * 2 ** max(0, failures - 1))

    def _failed_resume(self, saved: SavedRun, error: str, *, backoff: bool = True) -> None:
        """Count a failed resume: give the run up after ``max_resume_attempts``, else back off."""
        saved.resume_failures += 1
        saved.error = error
        if saved.resume_failures >= self.max_resume_attempts:
            saved.state = "failed"
            saved.error = f"gave up after {saved.resume_failures} failed resumes; the last: {error}"
            saved.held, saved.claimed, saved.not_before = False, False, None
            saved.epoch += 1
        elif backoff:
            saved.not_before = self.storage.clock() + self._backoff(saved.resume_failures)

    async def for_run(self, info: RunInfo, agent: Agent) -> MemoryCheckpointer:
        """The checkpointer of ``info.run_id``; a run still open that this store may take keeps
        what it saved (a resume). Raises `RunTakenOver` when another store holds the run."""
        with self._lock:
            saved = self.runs.get(info.run_id)
            now = self.storage.clock()
            if saved is not None and saved.state == "paused":
                raise RunTakenOver(
                    f"run {info.run_id} waits for approval: continue it with Executor.resume(run_id, "
                    "decisions=...), which loads it; never start another run with its run_id",
                    run_id=info.run_id,
                )
            if saved is None or saved.state != "open":
                epoch = 1 if saved is None else saved.epoch + 1
                saved = self.runs[info.run_id] = SavedRun(
                    info=info,
                    agent=agent.spec(),
                    owner=self.owner,
                    epoch=epoch,
                    lease_until=self._lease_end(),
                )
                return MemoryCheckpointer(self, info.run_id, saved.epoch)
            if saved.owner != self.owner and not self._lapsed(saved, now):
                raise RunTakenOver(
                    f"run {info.run_id} is live and held by {saved.owner!r}: it is not this store's to run; "
                    "resume interrupted runs with Executor.recover(), and never start two runs with one run_id",
                    run_id=info.run_id,
                    owner=saved.owner,
                )
            saved.owner, saved.held, saved.claimed = self.owner, True, False
            saved.epoch += 1
            saved.lease_until = self._lease_end()
            saved.pending, saved.paused_at = [], None  # running again: no longer waiting
            return MemoryCheckpointer(self, info.run_id, saved.epoch)

    async def interrupted(self, limit: int | None = None) -> list[Interrupted]:
        """Claim the open runs with at least one save whose owner is gone (released, or lease
        lapsed) and whose backoff is over, oldest first, at most ``limit``; never one this store
        holds. A run that does not read back is quarantined (``corrupt``) and left out."""
        with self._lock:
            now = self.storage.clock()
            candidates = [
                (run_id, saved)
                for run_id, saved in self.runs.items()
                if saved.state == "open"
                and saved.messages
                and self._lapsed(saved, now)
                and (saved.not_before is None or saved.not_before <= now)
                and not (saved.held and saved.owner == self.owner)
            ]
            candidates.sort(key=lambda pair: (_started(pair[1]), pair[0]))
            found: list[Interrupted] = []
            for run_id, saved in candidates:
                if limit is not None and len(found) >= limit:
                    break
                if saved.held and saved.claimed:
                    # claimed by a store that never resumed nor released it: a failed resume too
                    error = f"claimed by {saved.owner}, which never resumed nor released it"
                    self._failed_resume(saved, error, backoff=False)
                    if saved.state != "open":
                        continue
                saved.owner, saved.held, saved.claimed = self.owner, True, True
                saved.epoch += 1
                saved.lease_until = self._lease_end()
                try:
                    found.append(_interrupted(run_id, saved))
                except Exception as exc:
                    saved.state, saved.held, saved.claimed = "corrupt", False, False
                    saved.error = f"corrupt checkpoint: {exc}"
                    log.warning("run %s is quarantined and will not be resumed: %s", run_id, saved.error)
            return found

    async def load(self, run_id: str) -> Interrupted | None:
        """Claim one run for `Executor.resume`: paused for approval, or open with its owner gone
        (released, or lease lapsed); ``None`` when there is no such run. Raises `RunTakenOver`
        when another store holds it. A paused run comes back with ``paused_at``; it is open again
        (claimed by this store) until it is resumed with ``for_run``.
        """
        with self._lock:
            saved = self.runs.get(run_id)
            if saved is None or saved.state not in ("open", "paused"):
                return None
            now = self.storage.clock()
            if saved.state == "open":
                if not saved.messages:
                    return None
                if (
                    saved.held
                    and not (saved.owner == self.owner and saved.claimed)
                    and not self._lapsed(saved, now)
                ):
                    raise RunTakenOver(
                        f"run {run_id} is live and held by {saved.owner!r}: it cannot be resumed here "
                        "while that worker runs it",
                        run_id=run_id,
                        owner=saved.owner,
                    )
            try:
                item = _interrupted(run_id, saved)
            except Exception as exc:
                saved.state, saved.held, saved.claimed = "corrupt", False, False
                saved.error = f"corrupt checkpoint: {exc}"
                log.warning("run %s is quarantined and will not be resumed: %s", run_id, saved.error)
                raise ValueError(f"run {run_id}: {saved.error}; it is quarantined") from exc
            saved.state, saved.owner, saved.held, saved.claimed = "open", self.owner, True, True
            saved.epoch += 1
            saved.lease_until = self._lease_end()
            saved.not_before = None  # asked for by id: no backoff
            return item

    async def release(self, run_ids: Iterable[str] | None = None) -> int:
        """Give up this store's open runs at once (or those of ``run_ids``); returns how many."""
        wanted = None if run_ids is None else set(run_ids)
        released = 0
        with self._lock:
            for run_id, saved in self.runs.items():
                mine = saved.state == "open" and saved.held and saved.owner == self.owner
                if mine and (wanted is None or run_id in wanted):
                    saved.held, saved.claimed, saved.epoch = False, False, saved.epoch + 1
                    released += 1
        return released

    def messages(self, run_id: str) -> list[Message]:
        """The transcript saved for ``run_id`` so far (empty once completed or failed)."""
        with self._lock:
            saved = self.runs.get(run_id)
            return [] if saved is None else [Message.model_validate(m) for m in saved.messages]


def _started(saved: SavedRun) -> float:
    try:
        return RunInfo.model_validate(saved.info).started_at.timestamp()
    except Exception:
        return 0.0  # it does not read back: quarantined when its turn comes


def _interrupted(run_id: str, saved: SavedRun) -> Interrupted:
    """The saved run as an `Interrupted`; raises, naming the part, when it does not read back."""
    messages = []
    for position, raw in enumerate(saved.messages):
        try:
            messages.append(Message.model_validate(raw))
        except Exception as exc:
            raise ValueError(f"message {position} does not read back: {exc}") from exc
    try:
        info = RunInfo.model_validate(saved.info)
    except Exception as exc:
        raise ValueError(f"the run info does not read back: {exc}") from exc
    if info.run_id != run_id:
        raise ValueError(f"the run info is of run {info.run_id!r}")
    return Interrupted(
        info=info,
        agent=dict(saved.agent),
        messages=messages,
        iteration=saved.iteration,
        usage=saved.usage.model_copy(),
        tool_calls=saved.tool_calls,
        attempts=dict(saved.attempts),
        paused_at=saved.paused_at,
    )
