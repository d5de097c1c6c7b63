"""Database URLs and engines: which drivers are allowed, and how each connection is set up.

Only async drivers may be used, since every call runs on the host's event loop:

- SQLite through aiosqlite (``sqlite+aiosqlite:///path.db``; a plain ``sqlite:///`` URL gets it),
  in WAL mode so readers never wait for the writer, with ``synchronous=NORMAL`` (a commit survives
  the process being killed; only a power cut can take the last ones) and a busy timeout for other
  processes' writes;
- PostgreSQL through psycopg 3 (``postgresql+psycopg://``; a plain ``postgresql://`` gets it) or
  asyncpg (``postgresql+asyncpg://``), with a connect timeout and, given ``db_schema``, that schema
  first on every connection's ``search_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Float, cast, event, func, literal_column
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

from executus_checkpoint_sql.urls import check_url

__all__ = [
    "create_engine",
    "db_epoch",
    "is_driver_outage",
    "is_outage",
    "resolve_url",
    "safe_url",
    "sqlite_path",
]


def safe_url(url: URL | str) -> str:
    """The URL with its password hidden, for messages and listings."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        return "(an unparseable URL)"
    return parsed.render_as_string(hide_password=True)


def resolve_url(raw: str, *, where: str = "[tool.executus.checkpoint_sql] url") -> URL:
    """Parse ``raw`` and give it an async driver; raise `ConfigError` saying what to write instead
    (the checks are `executus_checkpoint_sql.urls.check_url`'s)."""
    return make_url(check_url(raw, where=where).url)


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL (``None`` for other databases)."""
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database).expanduser()


def _dumps(value: Any) -> str:
    # default=str: an agent's model_settings may carry values JSON has no type for (a Decimal, ...)
    return orjson.dumps(value, default=str).decode()


def create_engine(
    url: URL,
    *,
    db_schema: str | None,
    connect_timeout: float,
    busy_timeout: float,
    pool: dict[str, Any] | None = None,
) -> AsyncEngine:
    """An engine for ``url`` with this battery's connection settings (no I/O until first used).

    ``pool`` sizes the connection pool (``pool_size``, ``max_overflow``, ``pool_timeout``).
    """
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {
        "json_serializer": _dumps,
        "json_deserializer": orjson.loads,
        # No pre-ping: it would add a round trip to every save. A connection that died with a
        # database restart fails one save (a warning; the next save catches up) and SQLAlchemy then
        # replaces every connection of the pool.
        "pool_pre_ping": False,
        **(pool or {}),
    }
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        connect_args["timeout"] = busy_timeout
    elif url.get_driver_name() == "asyncpg":
        connect_args["timeout"] = connect_timeout
        if db_schema:
            connect_args["server_settings"] = {"search_path": db_schema}
    else:
        connect_args["connect_timeout"] = max(1, round(connect_timeout))
        if db_schema:
            # A startup option, not a SET: it holds for the whole session, whatever is rolled back.
            connect_args["options"] = f"-c search_path={db_schema}"
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)
    if backend == "sqlite":
        timeout_ms = int(busy_timeout * 1000)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cursor.close()

    return engine


def db_epoch(dialect: str) -> ColumnElement[float]:
    """The database's clock as epoch seconds (with fractions): what leases are measured on."""
    if dialect == "sqlite":
        return cast((func.julianday(literal_column("'now'")) - 2440587.5) * 86400.0, Float)
    # clock_timestamp(), not now(): a lease must not be measured from the start of a long transaction
    return cast(func.extract("epoch", func.clock_timestamp()), Float)


def _sqlstate(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    return str(getattr(inner, "sqlstate", None) or getattr(inner, "pgcode", None) or "")


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the database could not be reached (or dropped the connection).

    A deadlock or serialization failure (SQLSTATE class 40) is not one: the database answered, and
    the statement can be tried again at once.
    """
    if _sqlstate(exc).startswith("40"):
        return False
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError | ConnectionError | TimeoutError)


def is_driver_outage(exc: BaseException) -> bool:
    """`is_outage` for an error straight from a driver (sqlite3, psycopg, asyncpg), as the
    group-commit writer gets them."""
    if _sqlstate(exc).startswith("40"):
        return False
    if is_outage(exc):
        return True
    import sqlite3

    if isinstance(exc, sqlite3.OperationalError):
        return True  # locked past busy_timeout, or the file cannot be opened
    module = type(exc).__module__
    if module.startswith("psycopg"):
        import psycopg

        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    if module.startswith("asyncpg"):
        from asyncpg import exceptions

        return isinstance(
            exc,
            exceptions.PostgresConnectionError
            | exceptions.InterfaceError
            | exceptions.OperatorInterventionError,
        )
    return False
