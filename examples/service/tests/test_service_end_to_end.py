"""The example service, started with its one command, takes runs over HTTP and streams their progress."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx2
import psycopg
import pytest
from executus_service.fake_model import expected_output
from service_helpers import Service, read_events, service_env, wait_result

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_runs_over_http_with_progress_as_server_sent_events(
    service_database: str, service_redis: str, tmp_path: Path
) -> None:
    env = service_env(service_database, service_redis, tmp_path)
    service = Service(env, "--workers", "2", log_path=tmp_path / "service.log")
    try:
        base = service.wait_ready()
        assert {"model", "web", "worker 1", "worker 2"} <= set(service.pids), service.lines
        with httpx2.Client(timeout=30) as client:
            assert client.get(f"{base}/healthz").json() == {"ok": True}

            # Requests the service must refuse, each with a reason.
            refused = client.post(f"{base}/runs", json={"prompt": "hi"})
            assert refused.status_code == 422 and "caller_id" in refused.json()["error"]
            refused = client.post(f"{base}/runs", json={"prompt": "hi", "caller_id": "a", "agent": "nope"})
            assert refused.status_code == 422 and "unknown agent 'nope'" in refused.json()["error"]
            missing = client.get(f"{base}/runs/0123456789abcdef/result")
            assert missing.status_code == 404

            asked = {}
            for index in range(6):
                entries, account = 3 + index % 3, f"acct-{index}"
                answer = client.post(
                    f"{base}/runs",
                    json={
                        "prompt": f"Record {entries} payments for account {account}",
                        "caller_id": f"caller-{index % 2}",
                    },
                )
                assert answer.status_code == 202, answer.text
                body = answer.json()
                assert answer.headers["location"] == body["links"]["status"] == f"/runs/{body['run_id']}"
                asked[body["run_id"]] = (entries, account)

            # One run followed from the start to its end over server-sent events.
            followed = next(iter(asked))
            events = read_events(client, f"{base}/runs/{followed}/events")
            names = [name for name, _, _ in events]
            assert names[-1] == "end" and events[-1][1]["status"] == "ok", names
            assert "run.start" in names and "run.end" in names, names
            assert names.count("tool.start") == names.count("tool.end") == asked[followed][0], names
            assert names.count("trail.tool") == asked[followed][0], names
            seqs = [int(event_id) for _, _, event_id in events if event_id is not None]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs

            # Reconnecting with Last-Event-ID gives only what came after.
            middle = seqs[len(seqs) // 2]
            again = read_events(client, f"{base}/runs/{followed}/events?after={middle}")
            assert [int(i) for _, _, i in again if i is not None] == [s for s in seqs if s > middle]

            for run_id, (entries, account) in asked.items():
                result = wait_result(client, base, run_id)
                assert result["status"] == "ok", result
                assert result["output"] == expected_output(entries, account)
                assert result["tool_calls"] == entries and result["attempts"] == 1
                status = client.get(f"{base}/runs/{run_id}").json()
                assert status["status"] == "ok" and status["input_tokens"] > 0

            # The viewer, mounted under /viewer: every run listed with the worker that ran it, each trace.
            listed = client.get(f"{base}/viewer/")
            assert listed.status_code == 200, listed.text
            for run_id in asked:
                row = listed.text[listed.text.index(f'id="run-{run_id}"') :].split("</tr>")[0]
                assert "status-ok" in row and f"<td>{socket.gethostname()}:" in row, row  # a worker's id
            trace = client.get(f"{base}/viewer/runs/{followed}")
            assert trace.status_code == 200 and "append_ledger" in trace.text

        with psycopg.connect(service_database) as conn:
            entries_by_run = dict(
                conn.execute("SELECT run_id, count(*) FROM service_ledger_entries GROUP BY run_id").fetchall()
            )
            assert entries_by_run == {run_id: entries for run_id, (entries, _) in asked.items()}
            ends = {r: (s, n) for r, s, n in conn.execute("SELECT run_id, status, ends FROM service_results")}
            assert ends == dict.fromkeys(asked, ("ok", 1))
            workers = {w for (w,) in conn.execute("SELECT DISTINCT worker FROM service_ledger_calls")}
            assert workers, "no tool call was logged"
    finally:
        code = service.stop()
    assert code == 0, service.tail()
