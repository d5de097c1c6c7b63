"""``executus viewer``: the page served alone over the audit database, on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from viewer_helpers import ViewerDb, record_story


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_executus_viewer_serves_the_audit_database(db: ViewerDb, tmp_path: Path) -> None:
    run_id = asyncio.run(record_story(db, caller_id="erin"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executus = Path(sys.executable).parent / "executus"
    env = {**os.environ, "EXECUTUS_AUDIT_SQL__URL": db.url, "EXECUTUS_VIEWER__TITLE": "erin's runs"}
    process = subprocess.Popen(
        [str(executus), "viewer", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while True:
                try:
                    page = http.get("/")
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            f"executus viewer did not start: {process.stdout and process.stdout.read()}"
                        ) from None
                    time.sleep(0.1)
            assert page.status_code == 200 and "erin&#39;s runs" in page.text
            assert f'id="run-{run_id}"' in page.text
            assert (http.get(f"/runs/{run_id}.json")).json()["run"]["caller_id"] == "erin"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}/" in output
