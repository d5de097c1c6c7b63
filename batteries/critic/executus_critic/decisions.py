"""`Decision`: one thing the critic did to a run, and why.

Every handle keeps its run's decisions in order (`RunCriticHandle.decisions`), the critic keeps
them for recent runs (`RunCritic.decisions`), and each is logged on the ``executus.critic`` logger
(``WARNING`` for a cut, ``INFO`` otherwise). A run the critic never had to touch has none.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import Any

__all__ = ["Decision", "DecisionKind"]


class DecisionKind(enum.StrEnum):
    """What the critic decided."""

    WRAP_UP = "wrap_up"
    """The soft timeout passed: the model is asked to wrap up (a steering message)."""
    LOOP = "loop"
    """A tool was called with the same arguments ``loop_threshold`` times in a row: the model is
    told it is looping (a steering message)."""
    STALL = "stall"
    """``stall_steps`` steps in a row made no new tool call: the model is told it is going in
    circles (a steering message)."""
    CUT = "cut"
    """The model kept looping after it was told: the deadline is pulled in to now."""
    HANG = "hang"
    """No model call or tool call started or finished for ``hang_timeout``: the deadline is pulled in."""
    EXTEND = "extend"
    """The run was still making progress at its deadline: the deadline is moved later."""


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """One decision of the critic about one run.

    Attributes:
        kind: what was decided.
        reason: a sentence for people: what the critic saw and what it did.
        at: when (timezone-aware).
        elapsed: seconds since the critic started watching the run.
        deadline: the run's deadline after the decision (``None``: the core's hard timeout).
    """

    kind: DecisionKind
    reason: str
    at: datetime
    elapsed: float
    deadline: datetime | None

    @property
    def ends_run(self) -> bool:
        """True for the decisions that end the run as ``timeout`` (``cut`` and ``hang``)."""
        return self.kind in (DecisionKind.CUT, DecisionKind.HANG)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: times as ISO 8601 strings."""
        return {
            "kind": self.kind.value,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "elapsed": round(self.elapsed, 6),
            "deadline": self.deadline.isoformat() if self.deadline is not None else None,
        }
