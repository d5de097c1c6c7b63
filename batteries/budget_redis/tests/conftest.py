"""Fixtures for executus-budget-redis: the real Redis, a key prefix of this session's own, and a TCP
proxy in front of Redis that a test can cut and restore (Redis "going away" without stopping the
server other suites share)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from executus_budget_redis import RedisBudget

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
