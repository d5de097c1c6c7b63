"""The errors executus-checkpoint-sql raises.

::

    ExecutusError (executus_core)
    └── CheckpointSqlError                 anything this battery refuses or cannot do
        ├── DatabaseUnavailable            the database cannot be reached (or was not, moments ago)
        ├── SchemaOutOfDate                auto_upgrade is off and the tables are behind this version
        ├── SaveGap                        a save past the end of what is saved (a save was lost)
        └── RunNotOwned                    the run is not this worker's to save, complete or fail
            └── RunTakenOver               another worker took the run over after this one's lease lapsed

Inside a run none of these escape: the loop turns each into a line of ``Result.warnings`` and the
run goes on (see `executus_core.ports`).
"""

from __future__ import annotations

from executus_core.errors import ExecutusError

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
    """A save, complete or fail for a run this worker does not hold (never started, or already ended)."""


class RunTakenOver(RunNotOwned):
    """Another worker claimed the run (this worker's lease had lapsed); this one must stop saving it."""
