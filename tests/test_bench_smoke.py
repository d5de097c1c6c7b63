"""The benchmarks still run: ``python -m bench --quick`` ends cleanly and writes its JSON.

Timings are never asserted (they are not tests); this only keeps bench/ from rotting. It runs under
the test interpreter, where the peers (the ``bench`` dependency group) are usually not installed:
they must then be reported as unavailable, not fail the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tracked_changes() -> str | None:
    """``git status`` of the tracked files, or None outside a git checkout."""
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def test_quick_bench_runs_and_writes_results() -> None:
    before = _tracked_changes()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"bench --quick failed:\n{done.stdout}\n{done.stderr}"
    # A smoke run writes beside the published figures, never over them (nor over the docs' plot).
    output = ROOT / "bench" / "results" / "quick.json"
    assert _tracked_changes() == before
    assert "(issue" not in done.stdout  # people read this table: no tracker references
    results = json.loads(output.read_text())

    assert results["plan"]["name"] == "quick"
    assert results["machine"]["python"] and results["machine"]["cpus"]
    clients = results["clients"]
    assert set(clients) == {
        "floor",
        "bare_httpx2",
        "executus",
        "executus_aiohttp",
        "openai_agents",
        "pydantic_ai",
    }
    for name in ("floor", "bare_httpx2", "executus"):
        entry = clients[name]
        assert "error" not in entry, entry
        assert set(entry["sequential"]) == {str(n) for n in results["plan"]["ns"]}
        for concurrency in results["plan"]["concurrency"]:
            case = entry["concurrent"][str(concurrency)]
            assert case["errors"] == 0, case
            assert case["tool_calls"] == case["expected_tool_calls"]
        assert entry["versions"]
    assert clients["executus"]["provider"] == "executus_core.providers.openai"
    for peer in ("openai_agents", "pydantic_ai", "executus_aiohttp"):
        assert "sequential" in clients[peer] or "unavailable" in clients[peer], clients[peer]
    assert "executor" in results["imports"] and "executus_core" in results["imports"]
    assert results["profile"]["executus"]["top_own_time"]
    assert {t["target"] for t in results["targets"]}
    # The heavy host, small: the SQL batteries on SQLite beside the bare loop, a save's cost.
    batteries = results["batteries"]["clients"]
    assert {"bare_httpx2", "executus", "sql_both_sqlite"} <= set(batteries)
    both = batteries["sql_both_sqlite"]
    assert "error" not in both, both
    assert both["concurrent"]["20"]["errors"] == 0
    seen = both["concurrent"]["20"]["extras"][0]
    assert seen["statuses"]["ok"] == seen["runs"] and seen["saves"]["saves"] > 0
    assert seen["lost_saves"] == 0 and seen["checkpoint_rows"] == {"completed": seen["runs"]}
    steps = results["recovery"]["steps"][0]
    assert steps["backend"] == "sqlite" and steps["runs"]["10"]["at_step"]["10"]["cpu_us_per_save"] > 0
    assert results["heavy_targets"]
    # The table is printed for people: each section is there.
    for heading in (
        "Sequential runs",
        "Concurrent runs",
        "Import and build times",
        "Targets",
        "SQL batteries",
    ):
        assert heading in done.stdout
