"""Fixtures for executus-budget-redis: the real Redis, a key prefix of this session's own, and a TCP
proxy in front of Redis that a test can cut and restore (Redis "going away" without stopping the
server other suites share)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from executus_budget_redis import RedisBudget, SQLiteBudget

from executus_core.testing.services import redis_url as service_redis_url

SESSION = uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (``EXECUTUS_TEST_REDIS_URL``); skips without it, fails under CI=true."""
    return service_redis_url()


@pytest.fixture(scope="session")
def session_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test session uses; every key under it is deleted at the end."""
    prefix = f"executus:test:budget_redis:{SESSION}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def key_prefix(session_prefix: str) -> str:
    """A prefix for one test, inside the session's."""
    return f"{session_prefix}{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def make(redis_url: str, key_prefix: str) -> Any:
    """``make(**settings)``: a `RedisBudget` on the test Redis under this test's prefix."""

    def build(**fields: Any) -> RedisBudget:
        fields.setdefault("url", redis_url)
        fields.setdefault("key_prefix", key_prefix)
        return RedisBudget(**fields)

    return build


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No EXECUTUS_* settings from the machine; embedded defaults of other batteries write under tmp."""
    for name in list(os.environ):
        if name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def other_plugins() -> list[str]:
    """Every installed ``executus`` entry point but ours: end-to-end tests load ours by its entry
    point and disable the rest, so other batteries being built beside this one cannot interfere."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="executus")}
    assert "budget_redis" in names, (
        "executus-budget-redis is not installed: pip install -e batteries/budget_redis"
    )
    return sorted(names - {"budget_redis"})


@pytest.fixture
def closed_url() -> str:
    """A Redis URL on a loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return f"redis://127.0.0.1:{port}/0"


class RedisProxy:
    """A TCP proxy on 127.0.0.1 in front of Redis: ``cut()`` drops every connection and stops
    listening (Redis is gone), ``restore()`` listens again on the same port (Redis is back), and
    ``black_hole()`` keeps accepting connections but never answers (Redis hangs)."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.port_to = parts.hostname or "127.0.0.1", parts.port or 6379
        self.db = parts.path or "/0"
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.silent = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.db}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        if self.silent:
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port_to)
        except OSError:
            writer.transport.abort()
            return
        self.writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()

    async def cut(self) -> None:
        """Redis goes away: stop listening and drop every open connection."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None

    async def restore(self) -> None:
        """Redis is back, on the same port."""
        self.silent = False
        await self.start()

    async def black_hole(self) -> None:
        """Redis hangs: connections are accepted and never answered."""
        await self.cut()
        self.silent = True
        await self.start()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[RedisProxy]:
    """A `RedisProxy` in front of the test Redis, listening."""
    front = RedisProxy(redis_url)
    await front.start()
    yield front
    await front.cut()


@pytest.fixture(params=["redis", "sqlite"])
def make_store(request: pytest.FixtureRequest, key_prefix: str, tmp_path: Any) -> Any:
    """``make_store(**settings)``: a budget on each backend in turn — the test Redis under this test's
    prefix, and the embedded SQLite in a file of this test's own."""
    backend = request.param
    url = service_redis_url() if backend == "redis" else None
    built: list[Any] = []

    def build(**fields: Any) -> Any:
        fields.setdefault("key_prefix", key_prefix)
        budget: Any
        if backend == "redis":
            fields.setdefault("url", url)
            budget = RedisBudget(**fields)
        else:
            fields.setdefault("path", str(tmp_path / "budget.sqlite3"))
            budget = SQLiteBudget(**fields)
        built.append(budget)
        return budget

    build.backend = backend  # type: ignore[attr-defined]
    return build


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A ``redis-server`` of a test's own on a free loopback port, which the test may pause
    (SIGSTOP), resume (SIGCONT), kill and start again — never the shared one."""

    def __init__(self, workdir: Any, *, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
                pytest.fail("redis-server is not installed: the stall tests start their own")
            pytest.skip("redis-server is not installed: the stall tests start their own")
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(port=self.port, socket_timeout=0.5)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[OwnRedis]:
    """A started `OwnRedis`, killed (by its PID) at the end."""
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def start_redis(tmp_path: Any) -> Iterator[Any]:
    """``start_redis(appendonly=False)``: start an `OwnRedis` in a directory of its own; every one
    started is killed (by its PID) at the end."""
    started: list[OwnRedis] = []

    def start(*, appendonly: bool = False) -> OwnRedis:
        workdir = tmp_path / f"redis-{len(started)}"
        workdir.mkdir()
        server = OwnRedis(workdir, appendonly=appendonly)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()
