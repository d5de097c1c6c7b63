"""``[tool.executus.audit_sql]``: where the trail goes and how it is written.

::

    [tool.executus.audit_sql]
    url = "postgresql+psycopg://audit@db.internal/app"   # default: SQLite file audit.db in data_dir
    db_schema = "executus"                               # PostgreSQL only: tables go in this schema
    auto_upgrade = false                                 # default true; false: `executus db upgrade` does it
    batch_size = 500
    flush_interval = 0.5
    retention_days = 30

The same from the environment: ``EXECUTUS_AUDIT_SQL__URL=...``; in code:
``Executor(settings={"audit_sql": {"url": ...}})``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from executus_core.errors import ConfigError
from executus_core.secrets import mask_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["DEFAULT_DB_FILE", "AuditSqlSettings", "async_url", "check_url", "public_url", "sync_url"]

SECTION = "audit_sql"
DEFAULT_DB_FILE = "audit.db"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# The scheme and the rest of a URL, read without SQLAlchemy (which building an audit must not import).
_SCHEME = re.compile(r"^(?P<driver>[\w+]+)://(?P<rest>.*)$", re.DOTALL)

# The drivers this battery speaks, and the async / sync driver pair each URL scheme maps to. The sync
# one runs migrations (in a worker thread, or in `executus db upgrade`).
_ASYNC = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg_async",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
_SYNC = {
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "postgresql+asyncpg": "postgresql+psycopg",
}


class AuditSqlSettings(BaseModel):
    """The settings of the ``audit_sql`` battery (``[tool.executus.audit_sql]``). Durations are seconds."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the database: postgresql+psycopg://user@host/db, or "
        "sqlite:///path.db. Default: a SQLite file audit.db in the executus data directory.",
    )
    db_schema: str | None = Field(
        None, description="PostgreSQL only: keep the tables (and the version table) in this schema."
    )
    auto_upgrade: bool = Field(
        True,
        description="Create or upgrade the tables on first use (workers starting together on PostgreSQL "
        "take turns under an advisory lock); set false where a deploy step runs `executus db upgrade`, "
        "and a schema that is not at head is then refused.",
    )
    batch_size: int = Field(500, ge=1, description="Buffered rows that make the writer flush at once.")
    flush_interval: float = Field(0.5, gt=0, description="Longest a buffered row waits to be written.")
    max_write_rows: int = Field(
        20_000,
        ge=1,
        description="Most rows one transaction takes (closing runs first); what is left goes with the next, "
        "at once. The writes run in a thread of their own, so a big one never holds the event loop.",
    )
    write_timeout: float | None = Field(
        None,
        gt=0,
        description="Longest one write may take; close() gives up after it and saves the rows to a file. "
        "Default: half the core's port_timeout, at most 5 s.",
    )
    connect_timeout: float = Field(
        5.0, gt=0, description="Longest wait for a connection (SQLite: for a locked database)."
    )
    pool_size: int = Field(
        5,
        ge=1,
        description="Connections the engine keeps open. One batch writer per process writes every run's "
        "rows, so a few serve any number of concurrent runs; readers (executus runs, the viewer) use the rest.",
    )
    max_overflow: int = Field(
        10, ge=0, description="Connections opened beyond pool_size when all are busy, closed when returned."
    )
    pool_timeout: float = Field(
        30.0,
        gt=0,
        description="Longest wait for a free connection of the pool (a write's own bound is write_timeout).",
    )
    skip_events: list[str] = Field(
        default_factory=lambda: ["model.delta"],
        description="Run event types not stored (streamed text deltas: the step row holds the text).",
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="Delete finished runs older than this, hourly and with `executus runs prune`.",
    )
    spill_dir: Path | None = Field(
        None,
        description="Where rows that could not be written are saved (default: audit_sql-unwritten/ in "
        "the data directory); `executus runs import` loads them.",
    )

    @field_validator("db_schema")
    @classmethod
    def _schema_is_an_identifier(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.match(value):
            raise ValueError(
                "must be a plain identifier (letters, digits and _, not starting with a digit, at most 63)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url_parses(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value)  # raises ValueError naming what is wrong
        return value


def check_url(url: str) -> str:
    """``url`` with this battery's async driver, checked without importing SQLAlchemy:
    ``sqlite:///x.db`` becomes ``sqlite+aiosqlite:///x.db``, ``postgresql://...`` becomes
    ``postgresql+psycopg://...``.

    Raises ``ValueError`` for a URL that does not parse, a database this battery does not speak, or
    an in-memory SQLite database (each connection would see a database of its own).
    """
    match = _SCHEME.match(url)
    if match is None:
        raise ValueError(
            f"not a database URL (could not parse {public_url(url)!r}); example: postgresql+psycopg://user@host/db"
        )
    driver = _ASYNC.get(match["driver"])
    if driver is None:
        raise ValueError(
            f"the driver {match['driver']!r} is not supported; use sqlite:///path.db, "
            "postgresql+psycopg://... or postgresql+asyncpg://..."
        )
    rest = match["rest"]
    host = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    port = host.partition("]")[2] if host.startswith("[") else host.partition(":")[2]
    port = port.removeprefix(":") if host.startswith("[") else port
    if port and not port.isdigit():
        raise ValueError(
            f"not a database URL (the port {port!r} of {public_url(url)} is not a number); "
            "example: postgresql+psycopg://user@host:5432/db"
        )
    if driver.startswith("sqlite"):
        path = rest.partition("?")[0]
        database = path[1:] if path.startswith("/") else ""
        if database in ("", ":memory:"):
            raise ValueError(
                "an in-memory SQLite database cannot hold an audit trail; give a file: sqlite:///audit.db"
            )
    return f"{driver}://{rest}"


def async_url(url: str | URL) -> URL:
    """`check_url` as a SQLAlchemy `URL` (imports SQLAlchemy: for the engines and migrations)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not isinstance(url, str):
        url = url.render_as_string(hide_password=False)
    try:
        parsed = make_url(check_url(url))
    except ArgumentError as exc:
        raise ValueError(f"not a database URL ({exc}); example: postgresql+psycopg://user@host/db") from None
    return parsed


def sync_url(url: str | URL) -> URL:
    """The URL with the synchronous driver migrations use (psycopg serves both; SQLite has sqlite3)."""
    parsed = async_url(url)
    return parsed.set(drivername=_SYNC[parsed.drivername])


def public_url(url: str | URL) -> str:
    """The URL for messages: never the password."""
    if isinstance(url, str):
        return mask_url(url)
    return url.render_as_string(hide_password=True)


def resolve_url(settings: AuditSqlSettings, data_dir: Path) -> str:
    """The async URL to use, as text: the setting, or ``sqlite+aiosqlite:///<data_dir>/audit.db``
    (`async_url` makes it a SQLAlchemy `URL` when an engine needs one)."""
    if settings.url is None:
        return check_url(f"sqlite:///{Path(data_dir).expanduser() / DEFAULT_DB_FILE}")
    url = check_url(settings.url)
    if settings.db_schema is not None and not url.startswith("postgresql"):
        raise ConfigError(
            f"[tool.executus.audit_sql] db_schema: schemas are a PostgreSQL setting, but url is "
            f"{public_url(url)}; remove db_schema (plugin 'audit_sql')"
        )
    return url


def driver_module(url: str) -> str:
    """The module the driver of ``url`` (as `check_url` gives it) is imported from."""
    driver = url.partition("://")[0]
    return {"sqlite+aiosqlite": "aiosqlite", "postgresql+asyncpg": "asyncpg"}.get(driver, "psycopg")
