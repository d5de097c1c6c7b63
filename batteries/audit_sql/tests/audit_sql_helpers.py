"""Helpers shared by the executus-audit-sql tests (a module name of their own: every battery's tests
share one pytest session, and each battery has a ``conftest.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
from pathlib import Path
from typing import Any

from executus_audit_sql import SqlAudit
from executus_audit_sql.trail import TrailEntry

from executus_core import Agent, Executor, ModelResponse, ToolCall, tool
from executus_core.testing import ScriptedModel
from executus_core.testing.memory import RecordedRun


@dataclasses.dataclass
class Backend:
    """One database the tests run against, with the settings that point the battery at it."""

    name: str
    url: str
    db_schema: str | None
    data_dir: Path

    def settings(self, **extra: Any) -> dict[str, Any]:
        """The ``audit_sql`` settings table for this backend."""
        table: dict[str, Any] = {"url": self.url}
        if self.db_schema:
            table["db_schema"] = self.db_schema
        table.update(extra)
        return table

    def audit(self, **extra: Any) -> SqlAudit:
        """A fresh `SqlAudit` on this backend."""
        from executus_audit_sql.settings import AuditSqlSettings

        return SqlAudit(AuditSqlSettings(**self.settings(**extra)), data_dir=self.data_dir)


def other_plugins() -> list[str]:
    """Every installed executus entry point but ours: the end-to-end tests load audit_sql through its
    entry point and keep the other batteries (written at the same time) out of the picture."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="executus")} - {"audit_sql"})


async def recorded(audit: SqlAudit, run_id: str) -> RecordedRun:
    """What the audit stored for ``run_id``, in the shape the conformance suite compares."""
    record = await audit.get_run(run_id)
    if record is None:
        raise LookupError(f"no run {run_id} stored")
    trail = await audit.trail(run_id)
    return to_recorded(run_id, record, trail)


def to_recorded(run_id: str, record: Any, trail: list[TrailEntry]) -> RecordedRun:
    return RecordedRun(
        run_id=run_id,
        info=record.info,
        steps=[e.iteration or 0 for e in trail if e.kind == "step"],
        tool_calls=[(e.call_id or "", e.name or "", e.text or "") for e in trail if e.kind == "tool"],
        events=[(e.name or "", e.data) for e in trail if e.kind == "event"],
        errors=[e.text or "" for e in trail if e.kind == "error"],
        stats=record.stats,
    )


async def wait_for(predicate: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``predicate()`` until true; fail after ``timeout`` seconds (generous: never a speed test)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(0.01)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


def calls(*pairs: tuple[str, str, dict[str, object]]) -> ModelResponse:
    return ModelResponse(tool_calls=[ToolCall(id=i, name=n, arguments=a) for i, n, a in pairs])


def arithmetic_agent() -> Agent:
    model = ScriptedModel(
        [
            calls(("c1", "add", {"a": 1, "b": 2}), ("c2", "explode", {"reason": "on purpose"})),
            calls(("c3", "add", {"a": 3, "b": 4})),
            ModelResponse(text="1+2=3 and 3+4=7"),
        ],
        per_run=True,
    )
    return Agent(name="arithmetic", model=model, tools=[add, explode], instructions="Use the tools.")


def sql_audit(executor: Executor) -> SqlAudit:
    audit = dict(executor.ports.audits).get("audit_sql")
    assert isinstance(audit, SqlAudit), f"audit_sql was not loaded from its entry point: {executor.plugins}"
    return audit


def assert_same_trail(got: RecordedRun, reference: RecordedRun) -> None:
    assert got.events == reference.events
    assert got.steps == reference.steps
    assert got.tool_calls == reference.tool_calls
    assert got.errors == reference.errors
    assert got.stats is not None and reference.stats is not None
    assert got.stats.model_dump(exclude={"runtime_seconds"}) == reference.stats.model_dump(
        exclude={"runtime_seconds"}
    )


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a server: ``stop()`` is the server going away (every open
    connection cut, new ones refused); ``start()`` brings it back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)
