"""What could not reach the store while it was away, kept in this process until it comes back.

Two kinds of entries, both keyed by run id, so replaying them is exactly once (the store ignores
a commit of a run it has settled, and a void of a check it never ran or already undid):

- **commits**: a finished run's usage (its tokens so far, this part's runtime);
- **voids**: a check this process gave up on (it timed out or was cut off), which Redis may still
  run; the void gives back its slot, hold and count, or makes it a no-op if it runs later.

Entries are grouped per caller and bounded by ``spool_limit`` callers; past that, a new caller's
usage is refused (and reported lost). Voids are never refused: they only give budget back.
"""

from __future__ import annotations

import dataclasses
import time

__all__ = ["Commit", "Pending", "Spool"]


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    """One run's commit that has not reached the store yet."""

    run_id: str
    tokens: int
    millis: int
    release: bool = False


@dataclasses.dataclass(slots=True)
class Pending:
    """One caller's commits and voids waiting for the store."""

    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)
    voids: dict[str, str] = dataclasses.field(default_factory=dict)  # run id -> nonce of the check
    since: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def tokens(self) -> int:
        """Tokens of the commits waiting."""
        return sum(c.tokens for c in self.commits.values())

    def merge(self, other: Pending) -> None:
        """Add ``other`` into this one (a later commit of the same run replaces the earlier)."""
        self.commits.update(other.commits)
        self.voids.update(other.voids)
        self.since = min(self.since, other.since)

    def __bool__(self) -> bool:
        return bool(self.commits or self.voids)


class Spool:
    """Per-caller `Pending` commits and voids, bounded by ``limit`` callers with commits.

    ``take`` removes an entry before it is sent, and ``put`` merges what was not sent back, so two
    flushes at once never send the same entry twice (and if they did, the store would ignore it).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, caller_id: object) -> bool:
        return caller_id in self._pending

    def callers(self) -> list[str]:
        """The callers with entries waiting, oldest first."""
        return list(self._pending)

    def put(self, caller_id: str, pending: Pending) -> bool:
        """Merge ``pending`` into the caller's entry; False when the spool is full (its commits are lost)."""
        if not pending:
            return True
        found = self._pending.get(caller_id)
        if found is not None:
            found.merge(pending)
            return True
        if pending.commits and len(self._pending) >= self.limit:
            if pending.voids:
                self._pending[caller_id] = Pending(voids=dict(pending.voids), since=pending.since)
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
            sum(len(p.commits) for p in self._pending.values()),
        )

    @property
    def voids(self) -> int:
        """Checks given up on whose void has not reached the store yet."""
        return sum(len(p.voids) for p in self._pending.values())
