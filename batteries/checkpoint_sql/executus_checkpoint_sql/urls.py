"""Database URLs checked without SQLAlchemy: building a store (every `Executor()` does) validates its
URL at once, and SQLAlchemy is imported only when the store first touches the database.

The grammar is SQLAlchemy's (``dialect+driver://user:password@host:port/database?query``), so a
URL this module accepts is one `sqlalchemy.engine.make_url` parses the same way.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re

from executus_core.errors import ConfigError

__all__ = ["CheckedUrl", "check_url", "hide_password"]

# SQLAlchemy's own pattern (sqlalchemy.engine.url._parse_url)
_URL = re.compile(
    r"""
    (?P<name>[\w\+]+)://
    (?:
        (?P<username>[^:/]*)
        (?::(?P<password>[^@]*))?
    @)?
    (?:
        (?:
            \[(?P<ipv6host>[^/\?]+)\] |
            (?P<ipv4host>[^/:\?]+)
        )?
        (?::(?P<port>[^/\?]*))?
    )?
    (?:/(?P<database>[^\?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.X,
)

# dialect+driver -> the module that must be importable, and the extra that installs it
ASYNC_DRIVERS = {
    "sqlite+aiosqlite": ("aiosqlite", None),
    "postgresql+psycopg": ("psycopg", None),
    "postgresql+psycopg_async": ("psycopg", None),
    "postgresql+asyncpg": ("asyncpg", "executus-checkpoint-sql[asyncpg]"),
}
DEFAULT_DRIVER = {"sqlite": "aiosqlite", "postgresql": "psycopg", "postgres": "psycopg"}


@dataclasses.dataclass(frozen=True)
class CheckedUrl:
    """A URL with its async driver filled in: ``url`` (with credentials), ``backend`` (``sqlite`` or
    ``postgresql``), ``driver``, and ``safe`` (the password hidden, for messages)."""

    url: str
    backend: str
    driver: str

    @property
    def safe(self) -> str:
        """The URL with its password hidden."""
        return hide_password(self.url)


def hide_password(url: str) -> str:
    """``url`` with its password shown as ``***``, as SQLAlchemy renders it."""
    found = _URL.match(url)
    if found is None or found.group("password") is None:
        return url if found is not None else "(an unparseable URL)"
    start, end = found.span("password")
    return url[:start] + "***" + url[end:]


def check_url(raw: str, *, where: str = "[tool.executus.checkpoint_sql] url") -> CheckedUrl:
    """Check ``raw`` and give it an async driver; raise `ConfigError` saying what to write instead."""
    found = _URL.fullmatch(raw.strip())
    if found is None:
        raise ConfigError(
            f"{where}: could not parse {hide_password(raw)!r} as a database URL; write e.g. "
            "sqlite+aiosqlite:///path/checkpoints.db"
        )
    port = found.group("port")
    if port and not port.isdigit():
        raise ConfigError(
            f"{where} {hide_password(raw)!r}: the port {port!r} is not a number; write e.g. "
            "postgresql+psycopg://app@db.internal:5432/app"
        )
    backend, _, driver = found.group("name").partition("+")
    if backend == "postgres":
        backend = "postgresql"
    safe = hide_password(raw)
    if backend not in DEFAULT_DRIVER:
        raise ConfigError(
            f"{where} {safe!r}: executus-checkpoint-sql works with SQLite and PostgreSQL, not {backend!r}"
        )
    drivername = f"{backend}+{driver or DEFAULT_DRIVER[backend]}"
    if drivername not in ASYNC_DRIVERS:
        asyncs = ", ".join(d for d in ASYNC_DRIVERS if d.startswith(backend) and not d.endswith("_async"))
        raise ConfigError(
            f"{where} {safe!r}: {drivername} is not an async driver, and checkpoints are written "
            f"on the event loop; use {asyncs}"
        )
    module, extra = ASYNC_DRIVERS[drivername]
    if importlib.util.find_spec(module) is None:
        install = f"pip install {extra}" if extra else f"pip install {module}"
        raise ConfigError(f"{where} {safe!r} needs the {module} driver: {install}")
    url = drivername + raw.strip()[found.end("name") :]
    if backend == "sqlite":
        database = found.group("database") or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            raise ConfigError(
                f"{where} {hide_password(url)!r}: an in-memory SQLite database lives and dies with one "
                "connection, so checkpoints could never be recovered; give a file path"
            )
    return CheckedUrl(url=url, backend=backend, driver=drivername.partition("+")[2])
