"""The statuses of a run's row (``executus_checkpoint_runs.status``), importable without SQLAlchemy."""

from __future__ import annotations

__all__ = ["COMPLETED", "CORRUPT", "ENDED", "FAILED", "LIVE", "PAUSED"]

LIVE = "live"
"""A run that may still be resumed: running, interrupted, or handed out to a recover."""
PAUSED = "paused"
"""A run that waits for approval (``pending`` lists its calls, ``paused_at`` since when): kept, held by
nobody, never handed out by ``interrupted()``; ``load(run_id)`` (for `Executor.resume`) takes it."""
COMPLETED = "completed"
"""The run ended (ok, error, timeout, cancelled): its messages are gone."""
FAILED = "failed"
"""The run failed for good, ``error`` says why: its messages are gone, except for a run given up
after ``max_resume_attempts`` failed resumes, whose transcript is kept for a person to look at."""
CORRUPT = "corrupt"
"""Quarantined: its saved checkpoint could not be read back (``error`` names what). Never handed out
again; the rows are kept for a person to look at."""
ENDED = (COMPLETED, FAILED, CORRUPT)
"""The statuses of runs that will not go on: what retention prunes."""
