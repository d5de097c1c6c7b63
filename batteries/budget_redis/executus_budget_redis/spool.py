"""Usage that could not be metered while Redis was away, kept in this process until it comes back.

The spool merges commits per caller (tokens and milliseconds add up; the in-flight slots to release
are listed), so it grows with the number of distinct callers, not with the number of runs. It is
bounded by ``spool_limit`` callers; past that, a new caller's usage is refused (and reported lost).
"""

from __future__ import annotations

import dataclasses
import time

__all__ = ["Pending", "Spool"]

# Slots expire by TTL anyway: past this many per caller, older ones are left to expire.
MAX_SLOTS_PER_CALLER = 1000


@dataclasses.dataclass(slots=True)
class Pending:
    """One caller's unmetered usage: what its failed commits would have added."""

    tokens: int = 0
    millis: int = 0
    commits: int = 0
    slots: list[str] = dataclasses.field(default_factory=list)
    since: float = dataclasses.field(default_factory=time.monotonic)

    def merge(self, other: Pending) -> None:
        """Add ``other`` into this one."""
        self.tokens += other.tokens
        self.millis += other.millis
        self.commits += other.commits
        self.slots.extend(other.slots)
        del self.slots[:-MAX_SLOTS_PER_CALLER]
        self.since = min(self.since, other.since)


class Spool:
    """Per-caller `Pending` usage, bounded by ``limit`` callers.

    ``take`` removes an entry before it is sent, and ``put`` merges it back if sending failed, so
    two flushes at once can never send the same usage twice.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, caller_id: object) -> bool:
        return caller_id in self._pending

    def callers(self) -> list[str]:
        """The callers with usage waiting, oldest first."""
        return list(self._pending)

    def put(self, caller_id: str, pending: Pending) -> bool:
        """Merge ``pending`` into the caller's entry; False when the spool is full (the usage is lost)."""
        found = self._pending.get(caller_id)
        if found is not None:
            found.merge(pending)
            return True
        if len(self._pending) >= self.limit:
            return False
        self._pending[caller_id] = pending
        return True

    def take(self, caller_id: str) -> Pending | None:
        """Remove and return the caller's entry (``None``: nothing waits)."""
        return self._pending.pop(caller_id, None)

    def totals(self) -> tuple[int, int, int]:
        """``(callers, tokens, commits)`` waiting, for messages and logs."""
        return (
            len(self._pending),
            sum(p.tokens for p in self._pending.values()),
            sum(p.commits for p in self._pending.values()),
        )
