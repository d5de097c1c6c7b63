"""Test helpers for the example service: a database of its own, the service as a child process, SSE."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import psycopg
from psycopg import sql

SERVICE_DIR = Path(__file__).resolve().parent.parent
RUN = SERVICE_DIR / "run"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def own_database(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server (dropped afterwards): ``postgresql://.../name``."""
    name = f"executus_service_test_{uuid.uuid4().hex[:10]}"
    admin = _with_database(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(server_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def service_env(database_url: str, redis_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment that points every battery and the service at the test's own database and Redis keys."""
    psycopg_url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("EXECUTUS_") or k.startswith("EXECUTUS_TEST_")
    }
    env.update(
        {
            "EXECUTUS_DATA_DIR": str(data_dir),
            "EXECUTUS_SERVICE__DATABASE_URL": database_url,
            "EXECUTUS_SERVICE__PORT": "0",
            "EXECUTUS_AUDIT_SQL__URL": psycopg_url,
            "EXECUTUS_CHECKPOINT_SQL__URL": psycopg_url,
            "EXECUTUS_BUDGET_REDIS__URL": redis_url,
            "EXECUTUS_BUDGET_REDIS__KEY_PREFIX": f"executus:service-test:{uuid.uuid4().hex[:10]}:",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Service:
    """``examples/service/run`` as a child process: its ``READY`` url and the pid of each process it started."""

    def __init__(self, env: dict[str, str], *args: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [str(RUN), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self.url: str | None = None
        self.pids: dict[str, int] = {}
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.strip()
            with self._lock:
                self.lines.append(line)
                words = line.split()
                if len(words) >= 3 and words[-2] == "pid" and words[-1].isdigit():
                    self.pids[" ".join(words[:-2])] = int(words[-1])
                if line.startswith("READY "):
                    self.url = line.split(" ", 1)[1]
                    self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 120.0) -> str:
        if not self._ready.wait(timeout) or self.url is None:
            raise AssertionError(
                f"the service did not print READY within {timeout:g}s (exit code {self.process.poll()}); "
                f"stdout: {self.lines}; log: {self.tail()}"
            )
        return self.url

    def pid(self, label: str) -> int:
        with self._lock:
            return self.pids[label]

    def tail(self, lines: int = 60) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the supervisor (it stops its children), then wait; SIGKILL the group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"the service did not stop within {timeout:g}s of SIGTERM") from None
        finally:
            self._log.close()


def read_events(
    client: httpx2.Client, url: str, timeout: float = 120.0
) -> list[tuple[str, dict[str, Any], str | None]]:
    """Read a server-sent event stream to its end: ``(event, data, id)`` for each event."""
    events: list[tuple[str, dict[str, Any], str | None]] = []
    name, data, event_id = "message", "", None
    deadline = time.monotonic() + timeout
    with client.stream("GET", url, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                raise AssertionError(f"the event stream did not end within {timeout:g}s")
            if line.startswith(":"):
                continue
            if not line:
                if data:
                    events.append((name, json.loads(data), event_id))
                name, data, event_id = "message", "", None
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data += value
            elif field == "id":
                event_id = value
    return events


def wait_result(client: httpx2.Client, base: str, run_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``/runs/{id}/result`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"{base}/runs/{run_id}/result")
        if answer.status_code == 200:
            return dict(answer.json())
        assert answer.status_code == 202, answer.text
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not end within {timeout:g}s: {answer.json()}")
        time.sleep(0.2)
