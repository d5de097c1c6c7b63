"""The one error this battery raises itself.

::

    ExecutusError                (executus_core)
    └── BudgetUnavailable        Redis could not be reached, or answered with an error

`RedisBudget.check` raises it when it cannot ask Redis: the kernel then refuses the run (status
``error``), because budgets fail closed. `RedisBudget.commit` raises it when it cannot meter a run:
the kernel adds it to ``Result.warnings``, and the usage waits in the process's spool until Redis
answers again. Refusals because a limit was reached are `executus_core.BudgetExceeded`, not this.
"""

from __future__ import annotations

from executus_core import ExecutusError

__all__ = ["BudgetUnavailable"]


class BudgetUnavailable(ExecutusError):
    """Redis could not be reached or answered with an error; the message says what to set or start.

    Attributes:
        url: the Redis URL, without its password.
        caller_id: the caller whose check or commit failed.
    """

    def __init__(self, message: str, *, url: str, caller_id: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.caller_id = caller_id
