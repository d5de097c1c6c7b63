"""Engines: the async one the recorders write through, and the sync one migrations run on.

Both come from the same settings, so they agree on the driver options: the connect timeout, the
PostgreSQL schema (as the connection's ``search_path``), and SQLite's pragmas (WAL, so the CLI can
read while runs write; a busy timeout instead of an immediate "database is locked").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, QueuePool

from executus_audit_sql.settings import sync_url

__all__ = [
    "dumps",
    "dumps_postgres",
    "engine_options",
    "make_async_engine",
    "make_sync_engine",
    "make_writer_engine",
    "sqlite_path",
]


def dumps(value: Any) -> str:
    """JSON for the JSON columns: anything JSON cannot hold becomes its ``str()``, never an error."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def dumps_postgres(value: Any) -> str:
    """`dumps` for PostgreSQL, whose JSONB refuses the NUL character: it becomes U+FFFD."""
    text = dumps(value)
    if "\\u0000" in text:
        text = dumps(_without_nul(value))
    return text


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, else ``None``."""
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database).expanduser()


def engine_options(url: URL, *, connect_timeout: float, db_schema: str | None) -> dict[str, Any]:
    """The ``create_engine`` keyword arguments for ``url`` (either driver of the same database)."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    serializer = dumps_postgres if backend == "postgresql" else dumps
    options: dict[str, Any] = {"json_serializer": serializer, "json_deserializer": orjson.loads}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": connect_timeout}
    elif driver == "asyncpg":
        connect: dict[str, Any] = {"timeout": connect_timeout}
        if db_schema:
            connect["server_settings"] = {"search_path": db_schema}
        options["connect_args"] = connect
        options["pool_pre_ping"] = True
    else:  # psycopg: libpq takes whole seconds
        connect = {"connect_timeout": max(1, math.ceil(connect_timeout))}
        if db_schema:
            connect["options"] = f"-c search_path={db_schema}"
        options["connect_args"] = connect
        # A database that restarted leaves dead connections in the pool: test each before use.
        options["pool_pre_ping"] = True
    return options


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()


def make_async_engine(
    url: URL,
    *,
    connect_timeout: float,
    db_schema: str | None,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 30.0,
) -> AsyncEngine:
    """The engine recorders and readers use (creating it connects to nothing).

    ``pool_size``, ``max_overflow`` and ``pool_timeout`` size its connection pool (the settings of
    the same names); a SQLite file database gets the same pool, with aiosqlite's thread per connection.
    An in-memory SQLite database has one shared connection (no pool to size).
    """
    options = engine_options(url, connect_timeout=connect_timeout, db_schema=db_schema)
    if issubclass(url.get_dialect().get_pool_class(url), QueuePool):  # type: ignore[attr-defined]
        options.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout)
    engine = create_async_engine(url, **options)
    if url.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine.sync_engine)
    return engine


def make_sync_engine(url: URL, *, connect_timeout: float, db_schema: str | None) -> Engine:
    """A one-off engine with the sync driver, for migrations (no pool: it is used once)."""
    sync = sync_url(url)
    path = sqlite_path(sync)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        sync, poolclass=NullPool, **engine_options(sync, connect_timeout=connect_timeout, db_schema=db_schema)
    )
    if sync.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine)
    return engine


def make_writer_engine(url: URL, *, connect_timeout: float, db_schema: str | None) -> Engine:
    """The batch writer's engine: the sync driver (its writes run in a thread of their own), one
    connection kept open between writes (PostgreSQL's is tested before each use), one more while a
    given-up write is still rolling back."""
    sync = sync_url(url)
    path = sqlite_path(sync)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    options = engine_options(sync, connect_timeout=connect_timeout, db_schema=db_schema)
    engine = create_engine(
        sync, poolclass=QueuePool, pool_size=1, max_overflow=1, pool_timeout=connect_timeout, **options
    )
    if sync.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine)
    return engine
