"""Helpers shared by executus-checkpoint-sql's tests (a module of its own: `conftest` is ambiguous
when several batteries' test folders are collected together)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from executus_checkpoint_sql.schema import MESSAGES_TABLE, RUNS_TABLE
from executus_checkpoint_sql.store import SqlCheckpointStore
from sqlalchemy import text

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Ask ``check()`` until it answers something truthy, and return that; fail after ``timeout`` s.

    For what happens in the background (a heartbeat, a lease lapsing): the test waits for the event
    itself, never for a guessed duration.
    """
    async with asyncio.timeout(timeout):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(interval)


def other_plugins() -> list[str]:
    """Every installed executus plugin but this one, to disable in end-to-end tests.

    Executors in these tests load this battery through its entry point, as a host would; the other
    batteries installed beside it (audit, budgets, ...) are turned off so a test sees only this one.
    """
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="executus")} - {"checkpoint_sql"})


@dataclasses.dataclass
class Backend:
    """A database for one test: its name and the ``[tool.executus.checkpoint_sql]`` table for it."""

    name: str
    settings: dict[str, Any]
    path: Path | None = None

    def store(self, **options: Any) -> SqlCheckpointStore:
        """A store on this database; ``options`` override settings (``worker_id``, ``lease_seconds``...)."""
        fields = {**self.settings, **options}
        return SqlCheckpointStore(**fields)

    def executor_settings(self, **options: Any) -> dict[str, Any]:
        """Executor settings with this battery's section pointing here."""
        return {"checkpoint_sql": {**self.settings, **options}}


def driver_url(url: str, driver: str = "psycopg") -> str:
    """``postgresql://...`` with an async driver."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+{driver}://{rest}" if scheme in ("postgresql", "postgres") else url


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that a test can cut and restore: a database that goes away.

    ``down()`` closes the listening socket and drops every open connection (clients see a reset or
    connection refused); ``up()`` listens again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        await self.down()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.links.update((writer, up_writer))
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        for pipe in pipes:
            self.tasks.add(pipe)
            pipe.add_done_callback(self.tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self.links.discard(writer)


class LockOutage:
    """SQLite's way of going away: another connection holds the write lock, so writes time out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.holder: Any = None

    async def start(self) -> None:
        pass

    def _lock(self) -> Any:
        import sqlite3

        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")
        return conn

    async def cut(self) -> None:
        self.holder = await asyncio.to_thread(self._lock)

    async def restore(self) -> None:
        if self.holder is not None:
            holder, self.holder = self.holder, None
            await asyncio.to_thread(holder.close)  # closing rolls the open transaction back

    async def close(self) -> None:
        await self.restore()


class ProxyOutage:
    """PostgreSQL going away: the store talks to the server through a `TcpProxy` the test cuts."""

    def __init__(self, pg_url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(pg_url)
        self.parts = parts
        self.proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)

    async def start(self) -> None:
        await self.proxy.up()

    @property
    def url(self) -> str:
        """The server's URL through the proxy, with the psycopg driver."""
        user = f"{self.parts.username}@" if self.parts.username else ""
        return f"postgresql+psycopg://{user}127.0.0.1:{self.proxy.port}{self.parts.path}"

    async def cut(self) -> None:
        await self.proxy.down()

    async def restore(self) -> None:
        await self.proxy.up()

    async def close(self) -> None:
        await self.proxy.aclose()


def cli_settings(backend: Backend, **extra: object) -> list[str]:
    """``-s checkpoint_sql.KEY=VALUE`` arguments pointing the command line at ``backend``."""
    args: list[str] = []
    for key, value in {**backend.settings, **extra}.items():
        args += ["-s", f"checkpoint_sql.{key}={value}"]
    return args


async def abandon(store: SqlCheckpointStore) -> None:
    """Drop a store the way a killed process does: no release, no pending writes, the pool just gone."""
    if store._heartbeat is not None:
        store._heartbeat.cancel()
        await asyncio.gather(store._heartbeat, return_exceptions=True)
    store._closed = True
    await store._drop_writer_connection()  # the group-commit writer's connection goes with the pool
    if store._sqlite_batch is not None:
        await store._sqlite_batch.aclose()
        store._sqlite_batch = None
    if store._engine is not None:
        await store._engine.dispose()


def make_worker(backend: Backend) -> Callable[..., SqlCheckpointStore]:
    def make(**options: Any) -> SqlCheckpointStore:
        if "lease_seconds" in options:
            options.setdefault("heartbeat_seconds", 0)  # silent means silent: no background renewal
        return backend.store(**options)

    return make


def damage(backend: Backend) -> Callable[[str, str], Awaitable[None]]:
    """``damage(run_id, part)``: a message row that is not a Message, or run info that is not a RunInfo."""

    async def run(run_id: str, part: str) -> None:
        store = backend.store()
        try:
            engine = await store._ensure_ready()
            async with engine.begin() as conn:
                if part == "message":
                    await conn.execute(
                        text(
                            f"UPDATE {MESSAGES_TABLE} SET message = :bad WHERE run_id = :run AND position = 1"
                        ),
                        {"bad": '{"role": "nobody", "content": 42}', "run": run_id},
                    )
                elif conn.dialect.name == "sqlite":
                    # SQLite keeps JSON as text: a value that is not JSON at all
                    await conn.execute(
                        text(f"UPDATE {RUNS_TABLE} SET info = :bad WHERE run_id = :run"),
                        {"bad": "{not json", "run": run_id},
                    )
                else:
                    await conn.execute(
                        text(f"UPDATE {RUNS_TABLE} SET info = CAST(:bad AS jsonb) WHERE run_id = :run"),
                        {"bad": '{"run_id": 7, "started_at": "never"}', "run": run_id},
                    )
        finally:
            await store.aclose()

    return run
