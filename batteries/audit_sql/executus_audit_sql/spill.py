"""Rows the database would not take: saved to a file, loaded later with ``executus runs import``.

When ``close`` cannot write a run's trail (the database is down, the tables are missing, the write
timed out), nothing is dropped: the run's row, its roll-up and every row still buffered go to one
JSON Lines file in the spill directory, and ``close`` raises `AuditWriteError` naming the file, which
the core lists in ``Result.warnings``. Loading the file writes the run exactly as ``close`` would
have, and deletes the file; loading it twice stores nothing twice.

The format: a header line, then one line per row::

    {"format": "executus-audit-sql/1", "info": {...RunInfo...}, "registered": true, "base": 40,
     "tally": {...}, "stats": {...RunStats...} | null, "ended_at": "...", "transcript": [...] | null}
    [41, "event", "tool.start", null, null, null, {"name": "add"}, "2026-01-01T12:00:00+00:00"]
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from executus_audit_sql.state import Row, RunState
from executus_core.types import RunInfo, RunStats, utcnow

__all__ = ["FORMAT", "Spilled", "read_spill", "spill_files", "write_spill"]

FORMAT = "executus-audit-sql/1"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclasses.dataclass
class Spilled:
    """One spill file, read back."""

    path: Path
    state: RunState
    rows: list[Row]
    stats: RunStats | None
    ended_at: datetime | None


def _tally(state: RunState) -> dict[str, int]:
    return {
        f.name: getattr(state, f.name)
        for f in dataclasses.fields(state)
        if f.name not in ("info", "registered", "base", "transcript")
    }


def write_spill(
    directory: Path,
    state: RunState,
    rows: Sequence[Row],
    stats: RunStats | None,
    ended_at: datetime | None,
) -> Path:
    """Write one run's unwritten rows (and roll-up) to a new file in ``directory``; return its path.

    Synchronous on purpose: it is called from ``close`` even while that is being cancelled, and a
    local append of what one run buffered is quick.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stamp = utcnow().strftime("%Y%m%dT%H%M%S")
    name = f"{_UNSAFE.sub('_', state.info.run_id)[:80]}-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    path = directory / name
    header = {
        "format": FORMAT,
        "info": state.info.model_dump(mode="json"),
        "registered": state.registered,
        "base": state.base,
        "tally": _tally(state),
        "stats": stats.model_dump(mode="json") if stats is not None else None,
        "ended_at": ended_at.isoformat() if ended_at is not None else None,
        "transcript": state.transcript,
    }
    partial = path.with_suffix(".partial")
    with partial.open("wb") as f:
        f.write(orjson.dumps(header) + b"\n")
        for row in rows:
            f.write(orjson.dumps(list(row), default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)  # a file that exists is complete: import never reads half of one
    return path


def read_spill(path: Path) -> Spilled:
    """Read a spill file. Raises ``ValueError`` naming the file when it is not one."""
    with path.open("rb") as f:
        lines = f.read().splitlines()
    try:
        header: dict[str, Any] = orjson.loads(lines[0]) if lines else {}
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not an executus-audit-sql spill file: {exc}") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not an executus-audit-sql spill file (format {header.get('format')!r})")
    state = RunState(
        info=RunInfo.model_validate(header["info"]),
        registered=bool(header["registered"]),
        base=int(header["base"]),
        transcript=header.get("transcript"),
        **header["tally"],
    )
    rows: list[Row] = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            local, kind, name, iteration, call_id, text, data, at = orjson.loads(line)
            rows.append((local, kind, name, iteration, call_id, text, data, datetime.fromisoformat(at)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}, line {number}: not a trail row ({exc})") from None
    stats = RunStats.model_validate(header["stats"]) if header.get("stats") else None
    ended = header.get("ended_at")
    return Spilled(path, state, rows, stats, datetime.fromisoformat(ended) if ended else None)


def spill_files(directory: Path) -> list[Path]:
    """The spill files in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))
