"""The errors of executus-audit-sql.

::

    ExecutusError
    └── AuditSqlError              something about the audit database went wrong
        ├── SchemaNotReady         the tables are missing or older than this version needs
        └── AuditWriteError        close() could not write a run's trail; the rows were saved to a file

The core never lets these reach a caller of `Executor.run`: an ``AuditWriteError`` from ``close``
becomes a line in ``Result.warnings`` (``audit 'audit_sql': close raised AuditWriteError: ...``).
"""

from __future__ import annotations

from pathlib import Path

from executus_core.errors import ExecutusError

__all__ = ["AuditSqlError", "AuditWriteError", "SchemaNotReady", "describe_error"]


def describe_error(exc: BaseException) -> str:
    """One line for a person: the driver's own error for a database error (without SQLAlchemy's
    statement dump and "background on this error" link), else the exception's type and message."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    orig = getattr(exc, "orig", None)  # a SQLAlchemy DBAPIError wraps the driver's exception
    shown = orig if isinstance(orig, BaseException) else exc
    lines = [line.strip() for line in str(shown).splitlines() if line.strip()]
    return f"{type(shown).__name__}: {lines[0] if lines else '(no message)'}"


class AuditSqlError(ExecutusError):
    """Base class of this battery's errors."""


class SchemaNotReady(AuditSqlError):
    """The audit tables are missing or at an older revision, and ``auto_upgrade`` is off.

    The message names the database, the revision found and the one needed, and says to run
    ``executus db upgrade``.
    """

    def __init__(self, message: str, *, found: str | None, needed: str) -> None:
        super().__init__(message)
        self.found = found
        self.needed = needed


class AuditWriteError(AuditSqlError):
    """``close`` could not write a run's rows and roll-up.

    Attributes:
        run_id: the run.
        rows: how many trail rows were not written.
        spill_path: the file they were saved to (``executus runs import`` loads it), or ``None`` if
            even that failed (the message then says why).
    """

    def __init__(self, message: str, *, run_id: str, rows: int, spill_path: Path | None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.rows = rows
        self.spill_path = spill_path
