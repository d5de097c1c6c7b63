"""Real worker processes: a worker killed between taking a run and saving its prompt, and cancels
that reach the worker running a run (or wait for the worker that takes it up)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from executus_service.fake_model import expected_output
from service_helpers import Service, service_env, wait_result

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Short leases and stall timeouts, so a dead worker's run moves on within seconds.
FAST = {
    "EXECUTUS_SERVICE__HEARTBEAT_SECONDS": "1",
    "EXECUTUS_SERVICE__STALLED_SECONDS": "3",
    "EXECUTUS_SERVICE__SWEEP_SECONDS": "0.5",
    "EXECUTUS_SERVICE__BUSY_RETRY_SECONDS": "0.5",
    "EXECUTUS_CHECKPOINT_SQL__LEASE_SECONDS": "3",
    "EXECUTUS_CHECKPOINT_SQL__HEARTBEAT_SECONDS": "1",
}


def _submit(client: httpx2.Client, base: str, entries: int, account: str) -> str:
    answer = client.post(
        f"{base}/runs", json={"prompt": f"Record {entries} payments for account {account}", "caller_id": "c"}
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["run_id"])


def _wait(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.1)


def _calls(database_url: str, run_id: str) -> list[tuple[Any, ...]]:
    """The ledger tool's executions for the run: (attempt, resumed, worker, finished)."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT attempt, resumed, worker, finished_at IS NOT NULL FROM service_ledger_calls "
            "WHERE run_id = %s ORDER BY id",
            (run_id,),
        ).fetchall()


def _checkpoint(database_url: str, run_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT status, owner, message_count FROM executus.executus_checkpoint_runs WHERE run_id = %s",
            (run_id,),
        ).fetchone()


def _ends(database_url: str, run_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT status, error, ends FROM service_results WHERE run_id = %s", (run_id,)
        ).fetchone()


def test_a_worker_killed_before_it_saved_the_prompt_leaves_a_run_that_starts_afresh(
    service_database: str, service_redis: str, tmp_path: Path
) -> None:
    marker = tmp_path / "stalled"
    env = service_env(
        service_database,
        service_redis,
        tmp_path,
        EXECUTUS_TEST_SERVICE_STALL_AFTER_REGISTER=str(marker),
        **FAST,
    )
    service = Service(env, "--workers", "2", log_path=tmp_path / "service.log")
    try:
        base = service.wait_ready()
        with httpx2.Client(timeout=30) as client:
            run_id = _submit(client, base, 4, "stall")
            # The worker that took the job wrote the run's checkpoint row, then stalls before the prompt.
            stalled_run, pid = _wait(
                "a worker stalled", lambda: marker.exists() and marker.read_text().split()
            )
            assert stalled_run == run_id
            status, owner, messages = _checkpoint(service_database, run_id) or (None, None, None)
            assert (status, messages) == ("live", 0) and f":{pid}:" in owner, (status, owner, messages)
            os.kill(int(pid), signal.SIGKILL)

            result = wait_result(client, base, run_id, timeout=90)
        assert result["status"] == "ok", result
        assert result["output"] == expected_output(4, "stall")
        # Nothing ran before the kill: every call ran once, on another worker, unflagged.
        calls = _calls(service_database, run_id)
        assert len(calls) == 4, calls
        assert all(a == 1 and not r and f":{pid}" not in w and done for a, r, w, done in calls), calls
        assert _ends(service_database, run_id) == ("ok", None, 1)
        assert (_checkpoint(service_database, run_id) or ("",))[0] == "completed"
    finally:
        code = service.stop()
    assert code == 0, service.tail()


def test_cancels_reach_the_worker_running_the_run_or_wait_for_the_one_that_takes_it(
    service_database: str, service_redis: str, tmp_path: Path
) -> None:
    env = service_env(
        service_database,
        service_redis,
        tmp_path,
        EXECUTUS_SERVICE__CONCURRENCY="1",  # one run per worker: a third run waits in the queue
        EXECUTUS_SERVICE__TOOL_SECONDS="1.0",
        **FAST,
    )
    service = Service(env, "--workers", "2", log_path=tmp_path / "service.log")
    try:
        base = service.wait_ready()
        model = next(line.split()[1] for line in service.lines if line.startswith("model http"))
        with httpx2.Client(timeout=30) as client:
            # Two long runs, one on each worker (one job slot each).
            first, second = _submit(client, base, 20, "first"), _submit(client, base, 20, "second")
            _wait(
                "both runs ran a tool",
                lambda: all(len(_calls(service_database, r)) >= 2 for r in (first, second)),
            )
            workers = {_calls(service_database, r)[0][2] for r in (first, second)}
            assert len(workers) == 2, workers
            # A third run waits for a free slot: cancelled before any worker starts it.
            queued = _submit(client, base, 4, "queued")
            answer = client.post(f"{base}/runs/{queued}/cancel")
            assert answer.status_code == 202 and answer.json()["was"] == "queued", answer.text

            # One cancel over the service's API, one from the viewer's button: each reaches its worker.
            answer = client.post(f"{base}/runs/{first}/cancel")
            assert answer.status_code == 202, answer.text
            answer = client.post(f"{base}/viewer/runs/{second}/cancel", headers={"X-Executus-Viewer": "1"})
            assert answer.status_code == 200 and answer.json()["ok"], answer.text
            for run_id in (first, second):
                result = wait_result(client, base, run_id, timeout=30)
                assert result["status"] == "cancelled", result
                assert len(_calls(service_database, run_id)) < 20
                ends = _ends(service_database, run_id)
                assert ends is not None and ends[0] == "cancelled" and ends[2] == 1, ends
                assert (_checkpoint(service_database, run_id) or ("",))[0] == "failed"
            assert client.post(f"{base}/runs/{first}/cancel").status_code == 409  # it ended

            result = wait_result(client, base, queued, timeout=30)
            assert result["status"] == "cancelled" and "before it started" in result["error"], result
            assert _calls(service_database, queued) == []
            assert "queued" not in client.get(f"{model}/stats").json()  # the model was never asked

            # A run whose worker dies, cancelled while no worker holds it: the worker that takes the
            # job up resumes it only to cancel it; the call in flight is not run again.
            dying = _submit(client, base, 20, "dying")
            _wait("the run ran a tool", lambda: len(_calls(service_database, dying)) >= 2)
            worker = _calls(service_database, dying)[-1][2]
            os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)
            answer = client.post(f"{base}/runs/{dying}/cancel")
            assert answer.status_code == 202, answer.text
            result = wait_result(client, base, dying, timeout=60)
            assert result["status"] == "cancelled", result
            calls = _calls(service_database, dying)
            assert {w for _, _, w, _ in calls} == {worker}, calls  # nothing ran on another worker
            # A cancelled run's checkpoint is closed for good (the core marks it failed: never resumed).
            assert (_checkpoint(service_database, dying) or ("",))[0] == "failed"
    finally:
        code = service.stop()
    assert code == 0, service.tail()
