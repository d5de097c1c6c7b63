"""executus with the SQL batteries on: audit-sql and/or checkpoint-sql, on SQLite or PostgreSQL.

The same client as `bench.clients.executus` (one `Executor`, an async ``lookup`` tool, model
``openai:bench-<n>``), but built with the installed ``audit_sql`` and ``checkpoint_sql`` plugins
enabled and every other battery disabled, as a host that installed them runs. Each process gets
databases of its own: a temporary directory for SQLite, a fresh schema in the bench database for
PostgreSQL (``EXECUTUS_BENCH_POSTGRES_URL``, default ``postgresql+psycopg://127.0.0.1:5432/bench``),
dropped when the client closes.

The checkpoint store is wrapped (not changed) so that every ``save`` is timed: wall latency, and
whether it raised. The client also keeps each run's `Result.warnings`, and counts the audit's
spill files at the end. `bench.client`, `bench.durable` and `bench.recovery` drive it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.clients import ToolCounter
from bench.workload import INSTRUCTIONS, PROMPT, TOOL_DESCRIPTION, model_name, tool_result

LABEL = "executus + SQL batteries"
PACKAGES = [
    "executus-core",
    "executus-audit-sql",
    "executus-checkpoint-sql",
    "sqlalchemy",
    "aiosqlite",
    "psycopg",
    "httpx2",
]
PROVIDER = "executus_core.providers.openai"
POSTGRES_URL = os.environ.get("EXECUTUS_BENCH_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/bench")
"""The PostgreSQL the bench uses: a database of its own, each process in a schema of its own."""
PARTS = ("audit", "checkpoint")
PLUGIN = {"audit": "audit_sql", "checkpoint": "checkpoint_sql"}


def postgres_admin(sql: str, url: str = POSTGRES_URL) -> list[tuple[Any, ...]]:
    """Run one statement on the bench database with the synchronous driver (autocommit)."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        dbname=parsed.database,
        autocommit=True,
    ) as conn:
        cur = conn.execute(sql)  # type: ignore[call-overload]
        return list(cur.fetchall()) if cur.description else []


class SaveStats:
    """Every checkpoint save of one process: wall latency (s), CPU of sequential saves, errors."""

    def __init__(self) -> None:
        self.latency: list[float] = []
        self.cpu: list[float] = []
        self.bytes: list[int] = []
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None
        self.track_cpu = False
        self.track_bytes = False

    def summary(self) -> dict[str, Any]:
        """Count, p50/p99/max latency in ms, errors by type."""
        found = sorted(self.latency)

        def pct(p: float) -> float | None:
            if not found:
                return None
            return found[min(len(found) - 1, int(p * len(found)))] * 1000

        return {
            "saves": len(found),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": found[-1] * 1000 if found else None,
            "errors": sum(self.errors.values()),
            "errors_by_type": dict(self.errors),
            "first_error": self.first_error,
        }


class TimedCheckpointer:
    """A `Checkpointer` that times each ``save`` of the one it wraps; everything else passes through."""

    def __init__(self, inner: Any, stats: SaveStats) -> None:
        self._inner = inner
        self._stats = stats

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def save(self, state: Any) -> None:
        stats = self._stats
        if stats.track_bytes:
            import orjson

            stats.bytes.append(
                sum(
                    len(orjson.dumps(m.model_dump(mode="json", exclude_defaults=True)))
                    for m in state.messages
                )
            )
        c0 = time.process_time() if stats.track_cpu else 0.0  # aiosqlite's thread included
        w0 = time.perf_counter()
        try:
            await self._inner.save(state)
        except BaseException as exc:
            name = type(exc).__name__
            stats.errors[name] = stats.errors.get(name, 0) + 1
            if stats.first_error is None:
                stats.first_error = f"{name}: {exc}"[:300]
            raise
        finally:
            stats.latency.append(time.perf_counter() - w0)
            if stats.track_cpu:
                stats.cpu.append(time.process_time() - c0)

    async def complete(self) -> None:
        await self._inner.complete()

    async def fail(self, error: str) -> None:
        await self._inner.fail(error)


class TimedStore:
    """A `CheckpointStore` whose checkpointers are `TimedCheckpointer`; everything else passes through."""

    def __init__(self, inner: Any, stats: SaveStats) -> None:
        self._inner = inner
        self._stats = stats

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def for_run(self, info: Any, agent: Any) -> Any:
        found = await self._inner.for_run(info, agent)
        return None if found is None else TimedCheckpointer(found, self._stats)

    async def interrupted(self, limit: int | None = None) -> Any:
        return await self._inner.interrupted(limit=limit)


class SqlClient:
    """One `Executor` with the chosen SQL batteries on the chosen database, for the whole process."""

    def __init__(
        self,
        *,
        backend: str,
        parts: tuple[str, ...] = PARTS,
        schema: str | None = None,
        extra: dict[str, Any] | None = None,
        block_at: int | None = None,
    ) -> None:
        from executus_core import Agent, Executor, tool
        from executus_core.plugins import installed_plugin_names

        if backend not in ("sqlite", "postgres"):
            raise ValueError(f"backend {backend!r}: sqlite or postgres")
        self.backend = backend
        self.parts = parts
        self.counter = counter = ToolCounter()
        self.warnings: list[list[str]] = []  # each finished run's Result.warnings
        self.statuses: dict[str, int] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix=f"executus-bench-{backend}-"))
        self.spill_dir = self.tmp / "spill"
        self.own_schema = schema is None and backend == "postgres"
        self.schema = schema or (f"bench_{uuid.uuid4().hex[:10]}" if backend == "postgres" else None)
        if self.own_schema:
            postgres_admin(f"CREATE SCHEMA {self.schema}")
        blocked = self.blocked = ToolCounter()

        @tool(name="lookup", description=TOOL_DESCRIPTION)
        async def lookup(key: str) -> str:
            counter.calls += 1
            if block_at is not None and key == f"k{block_at}":
                import asyncio

                blocked.calls += 1
                await asyncio.Event().wait()  # never returns: the process is killed here
            return tool_result(key)

        self.tool = lookup
        settings: dict[str, Any] = {"data_dir": str(self.tmp / "data")}
        if "audit" in parts:
            settings["audit_sql"] = {"spill_dir": str(self.spill_dir)}
        if "checkpoint" in parts:
            settings["checkpoint_sql"] = {}
        for part in parts:
            section = settings[PLUGIN[part]]
            if backend == "sqlite":
                section["url"] = f"sqlite+aiosqlite:///{self.tmp / (part + '.db')}"
            else:
                section["url"] = POSTGRES_URL
                section["db_schema"] = self.schema
            section.update((extra or {}).get(PLUGIN[part], {}))
        for key, value in (extra or {}).items():
            if key not in PLUGIN.values():
                settings[key] = value
        wanted = {PLUGIN[p] for p in parts}
        disable = [name for name in installed_plugin_names() if name not in wanted]
        self.executor = Executor(settings=settings, disable=disable)
        missing = wanted - {r.name for r in self.executor.plugin_records if not r.error}
        if missing:
            raise ImportError(f"battery plugin(s) not installed: {', '.join(sorted(missing))}")
        self.saves = SaveStats()
        if self.executor.ports.checkpoints is not None:
            name, store = self.executor.ports.checkpoints
            self.store = store
            self.executor.ports.checkpoints = (name, TimedStore(store, self.saves))
        self.closed: dict[str, Any] = {}
        self.Agent = Agent
        self.agents: dict[int, Any] = {}

    @property
    def model_provider(self) -> str:
        return PROVIDER

    def agent(self, n: int) -> Any:
        agent = self.agents.get(n)
        if agent is None:
            agent = self.agents[n] = self.Agent(
                name=f"bench-{n}",
                instructions=INSTRUCTIONS,
                model=f"openai:{model_name(n)}",
                tools=[self.tool],
                max_steps=n + 2,
            )
        return agent

    def note(self, result: Any) -> None:
        """Keep a finished run's status and warnings."""
        status = result.status.value
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.warnings.append(list(result.warnings))

    async def run(self, n: int) -> str | None:
        result = await self.executor.run(self.agent(n), PROMPT, caller_id="bench")
        self.note(result)
        if not result.ok:
            raise RuntimeError(f"executus: run ended {result.status.value}: {result.error}")
        return result.output

    def extras(self) -> dict[str, Any]:
        """What the batteries saw: run statuses, runs with warnings, saves, spill files, and the
        checkpoint rows by status (read when the client closed; all ``completed`` when no save was
        lost)."""
        warned = [w for w in self.warnings if w]
        saves = self.saves.summary()
        rows = self.closed.get("checkpoint_rows", {})
        return {
            "runs": len(self.warnings),
            "statuses": dict(self.statuses),
            "runs_with_warnings": len(warned),
            "first_warnings": self._kinds(warned),
            "saves": saves,
            "checkpoint_rows": rows,
            # A save that raised (or was cut off at port_timeout): the run went on without it.
            "lost_saves": saves["errors"],
            # Runs that ended ok but whose checkpoint row is not `completed` (or was never written).
            "checkpoints_not_completed": (
                max(0, self.statuses.get("ok", 0) - rows.get("completed", 0))
                if "checkpoint" in self.parts
                else 0
            ),
            "spill_files": self.closed.get("spill_files", self.spill_files()),
            "closed_error": self.closed.get("error"),
        }

    @staticmethod
    def _kinds(warned: list[list[str]], most: int = 8) -> list[str]:
        """One warning of each kind (alike but for run ids and counts), at most ``most``."""
        import re

        kinds: dict[str, str] = {}
        for warning in (w for ws in warned for w in ws):
            key = re.sub(r"[0-9a-f]{32}|\d+", "#", warning)[:120]
            kinds.setdefault(key, warning[:400])
            if len(kinds) >= most:
                break
        return list(kinds.values())

    def spill_files(self) -> int:
        """Files the audit saved rows to because it could not write them."""
        return sum(1 for p in self.spill_dir.rglob("*") if p.is_file()) if self.spill_dir.exists() else 0

    def checkpoint_statuses(self) -> dict[str, int]:
        """Rows of the checkpoint runs table by status (read after the batch)."""
        table = "executus_checkpoint_runs"
        sql = f"SELECT status, count(*) FROM {table} GROUP BY status"
        if self.backend == "postgres":
            rows = postgres_admin(sql.replace(table, f"{self.schema}.{table}"))
        else:
            import sqlite3

            with sqlite3.connect(self.tmp / "checkpoint.db") as conn:
                rows = conn.execute(sql).fetchall()
        return {str(s): int(c) for s, c in rows}

    async def aclose(self) -> None:
        try:
            await self.executor.shutdown()
            self.closed["spill_files"] = self.spill_files()
            if "checkpoint" in self.parts:
                self.closed["checkpoint_rows"] = self.checkpoint_statuses()
        except Exception as exc:  # reported in extras(), never hidden
            self.closed["error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Drop this client's schema (PostgreSQL) and files."""
        if self.own_schema:
            # A bench must not fail on its clean-up; the schema's name is random.
            with contextlib.suppress(Exception):
                postgres_admin(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        shutil.rmtree(self.tmp, ignore_errors=True)


def _parts(spec: str) -> tuple[str, ...]:
    parts = tuple(p for p in spec.split("+") if p)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts {spec!r}: audit, checkpoint or audit+checkpoint")
    return parts


async def create(base_url: str, backend: str = "sqlite", parts: str = "audit+checkpoint") -> SqlClient:
    """The client for the server at ``base_url``, with ``parts`` on ``backend``."""
    os.environ["OPENAI_BASE_URL"] = base_url
    os.environ["OPENAI_API_KEY"] = "bench"
    try:
        import executus_audit_sql  # noqa: F401
        import executus_checkpoint_sql  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the SQL batteries are not installed: {exc}") from exc
    return SqlClient(backend=backend, parts=_parts(parts))
