"""Helpers shared by the MCP battery's tests (a uniquely named module: every battery's tests share
one pytest session, where a second ``helpers`` module would clash)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from executus_mcp import McpSettings, McpToolSet

SERVER_APP = str(Path(__file__).with_name("mcp_server_app.py"))


def stdio_server(**extra: Any) -> dict[str, Any]:
    """A ``[tool.executus.mcp.servers.NAME]`` table that starts the test server over stdio."""
    env = {key: str(value) for key, value in extra.pop("env", {}).items()}
    return {"command": sys.executable, "args": [SERVER_APP], "env": env, **extra}


def toolset(servers: dict[str, dict[str, Any]], **limits: Any) -> McpToolSet:
    return McpToolSet(McpSettings.model_validate({"servers": servers, **limits}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    return True


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def eventually(predicate: Any, timeout: float = 5.0, what: str = "it") -> None:
    """Wait, without blocking the loop, until ``predicate()`` is true."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class HttpServer:
    """The test server on streamable HTTP, on a free loopback port, in a process this test owns."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, SERVER_APP, "--http", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test MCP server did not start on port {self.port}")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server: SIGKILL by default (a crash); SIGTERM lets it close its streams first."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def http_server(env: dict[str, str] | None = None) -> Iterator[HttpServer]:
    server = HttpServer(env)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def tool_context(seconds_left: float | None = None, call_id: str = "call-1") -> Any:
    """A `ToolContext` as the core builds one for a call, with the run's deadline ``seconds_left`` away."""
    from executus_core import RunInfo, Tally, ToolContext

    tally = Tally()
    if seconds_left is not None:
        tally.deadline = time.monotonic() + seconds_left
    info = RunInfo(run_id="run-1", subject_id="agent", name="agent", caller_id="tests")
    return ToolContext(
        info=info, tally=tally, call_id=call_id, idempotency_key=f"run-1:{call_id}", artifacts=[]
    )


def log_lines(path: Path) -> list[list[str]]:
    """The test server's call log, one ``[pid, tool, argument]`` per call."""
    if not path.exists():
        return []
    return [line.split(" ", 2) for line in path.read_text().splitlines()]
