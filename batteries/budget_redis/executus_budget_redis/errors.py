"""The one error this battery raises itself.

::

    ExecutusError                (executus_core)
    └── BudgetUnavailable        the store could not be reached, answered with an error or too late,
                                 or this process's connection pool was exhausted (``cause`` says which)

`RedisBudget.check` raises it when it cannot ask Redis: the kernel then refuses the run (status
``error``), because budgets fail closed. `RedisBudget.commit` raises it when it cannot meter a run:
the kernel adds it to ``Result.warnings``, and the usage waits in the process's spool until Redis
answers again. Refusals because a limit was reached are `executus_core.BudgetExceeded`, not this.
"""

from __future__ import annotations

from executus_core import ExecutusError

__all__ = ["BudgetUnavailable"]


class BudgetUnavailable(ExecutusError):
    """The budget's store could not answer; the message says what to set or start.

    Attributes:
        url: where usage lives: the Redis URL (without its password) or the SQLite file.
        caller_id: the caller whose check or commit failed.
        cause: ``"unreachable"`` (refused, dropped, or gone), ``"timeout"`` (no answer within
            ``timeout``), ``"error"`` (the store answered with an error), or ``"pool_exhausted"``
            (every connection of this process's pool was busy: raise ``max_connections``).
    """

    def __init__(
        self, message: str, *, url: str, caller_id: str | None = None, cause: str = "unreachable"
    ) -> None:
        super().__init__(message)
        self.url = url
        self.caller_id = caller_id
        self.cause = cause
