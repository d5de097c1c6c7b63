"""The errors executus-checkpoint-sql raises.

::

    ExecutusError (executus_core)
    └── CheckpointSqlError                 anything this battery refuses or cannot do
        ├── DatabaseUnavailable            the database cannot be reached (or was not, moments ago)
        ├── SchemaOutOfDate                auto_upgrade is off and the tables are behind this version
        ├── SaveGap                        a save past the end of what is saved (a save was lost)
        └── RunNotOwned                    the run is not this store's to start, save, complete or fail
            └── RunTakenOver               another owner holds the run now (also executus_core.RunTakenOver)

`RunTakenOver` is also an `executus_core.RunTakenOver`: the loop stops the run ``interrupted`` on it,
so a worker that lost its run never runs another tool for it. The others end up as a line of
``Result.warnings`` and the run goes on (a save that failed is sent again with the next one).
"""

from __future__ import annotations

from executus_core.errors import ExecutusError
from executus_core.errors import RunTakenOver as CoreRunTakenOver

__all__ = [
    "CheckpointSqlError",
    "DatabaseUnavailable",
    "RunNotOwned",
    "RunTakenOver",
    "SaveGap",
    "SchemaOutOfDate",
]


class CheckpointSqlError(ExecutusError):
    """Base class of this battery's errors."""


class DatabaseUnavailable(CheckpointSqlError):
    """The checkpoint database could not be reached; saves are retried with the run's next step."""


class SchemaOutOfDate(CheckpointSqlError):
    """The tables are at an older revision than this version needs, and ``auto_upgrade`` is off."""


class SaveGap(CheckpointSqlError, ValueError):
    """A save at an offset past the messages already saved: one was lost, and the transcript would have a hole."""


class RunNotOwned(CheckpointSqlError):
    """A run this store does not hold: ``for_run`` of a run another owner holds, or a write for a run
    this store never started. Every refusal of a `SqlCheckpointer` method is the subclass
    `RunTakenOver`."""


class RunTakenOver(RunNotOwned, CoreRunTakenOver):
    """This store no longer owns the run: another owner claimed it (this one's lease had lapsed), it
    was released, or it ended. The same class as `executus_core.RunTakenOver` for ``except``.

    ``run_id`` names the run and ``owner`` the owner that holds it now, where the store knows.
    """
