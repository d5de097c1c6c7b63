"""The viewer's pages over a big audit table: 100,000 runs in SQLite (or a PostgreSQL URL).

    .venv/bin/python -m bench.viewer                      # 100,000 runs in a temporary SQLite file
    .venv/bin/python -m bench.viewer --runs 20000 --url postgresql+psycopg://127.0.0.1/test --schema bench_viewer

Fills ``executus_runs`` with ``--runs`` rows (5 agents, 200 callers, 1 in 200 still running; 20 trail
rows each for the newest 2,000), then times each page the way a browser asks for it (through the
ASGI app, the median of ``--repeat`` requests) and prints a table. Every query behind the pages is
a keyset page on an index: the list's first page, a page 90,000 runs deep, the filters, a trace.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


async def fill(url: str, schema: str | None, runs: int) -> None:
    from executus_audit_sql.migrate import upgrade
    from executus_audit_sql.trail import EVENTS, RUNS
    from sqlalchemy.ext.asyncio import create_async_engine

    await asyncio.to_thread(upgrade, url, db_schema=schema)
    options: dict[str, Any] = {}
    if schema:
        options["execution_options"] = {"schema_translate_map": {None: schema}}
    engine = create_async_engine(url.replace("sqlite:///", "sqlite+aiosqlite:///"), **options)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    traced = max(0, runs - 2_000)
    async with engine.begin() as conn:
        batch: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for n in range(runs):
            running = n % 200 == 0
            at = start + timedelta(seconds=n * 3)
            batch.append(
                {
                    "run_id": f"run{n:08d}",
                    "subject_id": f"agent{n % 5}",
                    "name": f"agent{n % 5}",
                    "caller_id": f"caller{n % 200}",
                    "channel_id": None,
                    "parent_run_id": None,
                    "inputs": None,
                    "started_at": at.replace(tzinfo=None) if url.startswith("sqlite") else at,
                    "attempts": 1,
                    "status": None if running else ("ok" if n % 7 else "error"),
                    "output": None if running else "done",
                    "error": None,
                    "steps": 4,
                    "tool_calls": 3,
                    "runtime_seconds": None if running else 2.5,
                    "input_tokens": 1200,
                    "output_tokens": 90,
                    "thinking_tokens": 0,
                    "ended_at": None,
                }
            )
            if n >= traced:
                for seq in range(1, 21):
                    kind = "step" if seq % 4 == 1 else ("tool" if seq % 4 == 3 else "event")
                    when = at + timedelta(milliseconds=seq * 100)
                    events.append(
                        {
                            "run_id": f"run{n:08d}",
                            "seq": seq,
                            "kind": kind,
                            "name": "lookup"
                            if kind == "tool"
                            else ("tool.start" if kind == "event" else None),
                            "iteration": seq // 4 + 1 if kind == "step" else None,
                            "call_id": f"c{seq}" if kind != "step" else None,
                            "text": "some text",
                            "data": {"call_id": f"c{seq}", "name": "lookup", "arguments": {"q": "x"}},
                            "at": when.replace(tzinfo=None) if url.startswith("sqlite") else when,
                        }
                    )
            if len(batch) >= 5_000 or len(events) >= 5_000:
                # the runs first: their trail rows refer to them
                await conn.execute(RUNS.insert(), batch)
                batch = []
                if events:
                    await conn.execute(EVENTS.insert(), events)
                    events = []
        if batch:
            await conn.execute(RUNS.insert(), batch)
        if events:
            await conn.execute(EVENTS.insert(), events)
    await engine.dispose()


async def measure(url: str, schema: str | None, runs: int, repeat: int) -> list[tuple[str, float, float]]:
    import httpx
    from executus_audit_sql import SqlAudit
    from executus_audit_sql.settings import AuditSqlSettings
    from executus_viewer import ViewerSettings, make_viewer

    audit = SqlAudit(AuditSqlSettings(url=url, db_schema=schema))
    app = make_viewer(audit, settings=ViewerSettings(page_size=50))
    deep = runs - 90_000 if runs > 90_000 else runs // 10
    deep_at = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=deep * 3)).isoformat()
    pages = [
        ("list, first page", "/"),
        ("list, 90,000 runs deep (cursor)", f"/?before={deep_at}|run{deep:08d}"),
        ("list, status=running", "/?status=running"),
        ("list, status=error", "/?status=error"),
        ("list, caller=caller7", "/?caller=caller7"),
        ("list, agent=agent3 (no index: scans)", "/?agent=agent3"),
        ("trace of a run (20 trail rows)", f"/runs/run{runs - 1:08d}"),
        ("run as JSON", f"/runs/run{runs - 1:08d}.json"),
    ]
    rows = []
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v") as http:
            await http.get("/")  # migrations checked, connections made
            for label, path in pages:
                times = []
                for _ in range(repeat):
                    began = time.perf_counter()
                    answer = await http.get(path.replace("+00:00", "%2B00:00"))
                    times.append(time.perf_counter() - began)
                    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
                rows.append((label, statistics.median(times) * 1000, max(times) * 1000))
    finally:
        await audit.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--url", default=None, help="default: a new SQLite file")
    parser.add_argument("--schema", default=None)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'audit.db'}"
        began = time.perf_counter()
        asyncio.run(fill(url, args.schema, args.runs))
        print(f"filled {args.runs:,} runs in {time.perf_counter() - began:.1f}s ({url.split('://')[0]})")
        rows = asyncio.run(measure(url, args.schema, args.runs, args.repeat))
    print(f"{'page':44} {'median ms':>10} {'max ms':>8}")
    for label, median, worst in rows:
        print(f"{label:44} {median:10.1f} {worst:8.1f}")


if __name__ == "__main__":
    main()
