"""What the page may do to a run: cancel it, resume it, answer its pending approval.

The page only reads the audit database; acting on a run needs the process (or the queue) that runs
it. A host passes an object with any of these async methods as ``make_viewer(actions=...)``:

- ``cancel(run_id) -> ActionOutcome``
- ``resume(run_id) -> ActionOutcome``
- ``answer(run_id, decisions) -> ActionOutcome``; ``decisions`` maps a tool call id to
  ``{"decision": "approve" | "deny", "reason": ...}``

and turns each on with its setting (`ViewerSettings.allow_cancel`, ``allow_resume``,
``allow_approval``). A method the object lacks, or a setting left off, shows no button and answers
``403`` with what to change. `ExecutorActions` acts through an `Executor` of the same process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from executus_core import Executor

__all__ = ["APPROVAL_UNAVAILABLE", "ActionOutcome", "ExecutorActions", "RunActions", "approval_available"]

log = logging.getLogger("executus.viewer")

APPROVAL_UNAVAILABLE = (
    "answering an approval is not available: this executus has no Executor.resume(run_id, decisions=...) "
    "yet; approve or deny from the host's code once it does"
)


@dataclasses.dataclass(frozen=True, slots=True)
class ActionOutcome:
    """What an action did: ``ok`` and a sentence for the person who clicked."""

    ok: bool
    message: str


@runtime_checkable
class RunActions(Protocol):
    """The actions a host lets the page take; each method is optional (see the module's docstring)."""


def approval_available() -> bool:
    """True when `Executor.resume` (answering pending approvals) exists in this executus."""
    return callable(getattr(Executor, "resume", None))


class ExecutorActions:
    """Actions through an `Executor` in the process that serves the page.

    ``cancel`` stops a run this executor runs (`Executor.cancel`); ``resume`` starts
    `Executor.recover` in the background, which resumes every run its checkpoint store hands out
    (the core has no resume of one run by id); ``answer`` calls ``Executor.resume(run_id,
    decisions=...)`` where it exists. A host whose runs live in other processes (workers behind a
    queue) writes its own object with the same methods instead.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._tasks: set[asyncio.Task[Any]] = set()

    def _background(self, coro: Any, label: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=label)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("viewer: %s failed: %s", label, t.exception())

        task.add_done_callback(done)

    async def cancel(self, run_id: str) -> ActionOutcome:
        """Cancel the run if this executor runs it."""
        if self.executor.cancel(run_id):
            return ActionOutcome(True, f"run {run_id} is being cancelled")
        return ActionOutcome(
            False,
            f"run {run_id} is not running in this process (it ended, or another process runs it); nothing done",
        )

    async def resume(self, run_id: str) -> ActionOutcome:
        """Resume interrupted runs from their checkpoints (`Executor.recover`), in the background."""
        if run_id in self.executor.running:
            return ActionOutcome(False, f"run {run_id} is running in this process already")
        if self.executor.ports.checkpoints is None:
            return ActionOutcome(
                False,
                "this executor has no checkpoint store (install executus-checkpoint-sql): nothing to resume",
            )
        self._background(self.executor.recover(), f"resume {run_id}")
        return ActionOutcome(
            True, f"resuming run {run_id} (and any other run whose lease lapsed) from its checkpoint"
        )

    async def answer(self, run_id: str, decisions: Mapping[str, Any]) -> ActionOutcome:
        """Answer a pending approval: ``Executor.resume(run_id, decisions=...)``, in the background.

        ``decisions`` maps call ids to ``{"kind": "approve" | "deny" | "edit", "reason": ...,
        "arguments": ..., "by": ...}`` (``"decision"`` is read as ``"kind"``), or to the words
        ``"approve"`` / ``"deny"``.
        """
        if not approval_available():
            return ActionOutcome(False, APPROVAL_UNAVAILABLE)
        made: dict[str, Any] = {}
        for call_id, choice in decisions.items():
            given = dict(choice) if isinstance(choice, Mapping) else {"kind": str(choice)}
            if "kind" not in given and "decision" in given:
                given["kind"] = given.pop("decision")
            given.pop("decision", None)
            if given.get("kind") not in ("approve", "deny", "edit"):
                return ActionOutcome(
                    False,
                    f"the decision for call {call_id} must be approve, deny or edit, got {given.get('kind')!r}",
                )
            if given["kind"] == "deny" and not given.get("reason"):
                given["reason"] = "denied from the viewer"
            made[str(call_id)] = given
        if not made:
            return ActionOutcome(False, "no decision given: choose approve or deny for a pending call")
        resume: Any = getattr(self.executor, "resume")  # noqa: B009 - not on every executus
        self._background(resume(run_id, decisions=made), f"answer {run_id}")
        return ActionOutcome(True, f"run {run_id} resumes with {len(made)} decision(s)")
