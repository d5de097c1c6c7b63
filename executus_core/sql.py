"""Helpers the SQL batteries share (executus-audit-sql, executus-checkpoint-sql, ...).

The core itself speaks no SQL and does not depend on Alembic or SQLAlchemy: nothing here imports
them when this module is imported, only when a helper is called (by a battery that has them).

**One Alembic at a time per process.** Alembic's ``op`` and ``context`` are module-level proxies,
bound to the migration that is running: two migrations at once in one process (two batteries that
migrate on their first run, or two threads) would send one's DDL down the other's connection. Every
battery holds `migration_lock` while Alembic runs, from a thread::

    with migration_lock():
        command.upgrade(config, "head")

or from the event loop, without blocking it, with `hold_migration_lock`::

    async with hold_migration_lock():
        await conn.run_sync(upgrade_on, "head")

**One migration at a time between processes.** On PostgreSQL each battery takes its own
transaction-level advisory lock. SQLite has none, so every battery migrates a SQLite file under
`sqlite_migration_lock` (an exclusive ``flock`` on ``<database>.upgrade-lock``; from the event loop,
`hold_sqlite_migration_lock`): workers that start together on a fresh file migrate one at a time,
and the others find the tables at head. Take these between-process locks first and `migration_lock`
last, as every battery does, so waiting for one never holds up the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere SQLite migrations are not serialized between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MIGRATION_LOCK_NAME",
    "hold_migration_lock",
    "hold_sqlite_migration_lock",
    "migration_lock",
    "sqlite_lock_path",
    "sqlite_migration_lock",
]

MIGRATION_LOCK_NAME = "_executus_migration_lock"
"""The attribute of the ``alembic`` module that holds the lock (earlier batteries look for it there)."""

# Makes the setdefault on alembic's module dict happen once, even from threads racing to it.
_create_lock = threading.Lock()


def migration_lock() -> Any:
    """The process-wide `threading.Lock` held while Alembic runs, shared by every executus SQL battery.

    It lives on the ``alembic`` module itself (attribute ``_executus_migration_lock``), so batteries
    that do not import each other, or an older battery with its own copy of this function, still
    find the same one. Imports Alembic: call it only where Alembic is installed. Not reentrant.
    """
    import alembic

    with _create_lock:
        return alembic.__dict__.setdefault(MIGRATION_LOCK_NAME, threading.Lock())


@contextlib.asynccontextmanager
async def hold_migration_lock() -> AsyncIterator[None]:
    """Hold `migration_lock` for the body, waiting for it in a worker thread, never on the event loop.

    A task cancelled while it waits never takes the lock for no one: the waiting thread gives it up
    if it gets it after the task has gone.
    """
    lock = migration_lock()
    guard = threading.Lock()  # orders "the thread took the lock" against "the waiter left"
    taken = False
    abandoned = False

    def acquire() -> bool:
        nonlocal taken
        # Wait in slices, so a thread whose waiter left stops waiting instead of living on.
        while True:
            got = lock.acquire(timeout=0.1)
            with guard:
                if abandoned:
                    if got:
                        lock.release()
                    return False
                if got:
                    taken = True
                    return True

    try:
        await asyncio.to_thread(acquire)
    except BaseException:
        with guard:
            abandoned = True
            if taken:  # the thread got it just as the waiter was cancelled: give it back
                lock.release()
        raise
    try:
        yield
    finally:
        lock.release()


# --- one migration at a time between processes, on SQLite --------------------------------------


def sqlite_lock_path(database: str | os.PathLike[str]) -> Path:
    """The lock file beside a SQLite database: ``<database>.upgrade-lock``."""
    path = Path(database).expanduser()
    return path.with_name(path.name + ".upgrade-lock")


@contextlib.contextmanager
def sqlite_migration_lock(database: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold an exclusive lock, between processes, on the lock file beside a SQLite ``database``.

    SQLite has no advisory locks, and two processes that both find no tables race to create them
    (the loser gets "table ... already exists"). Every SQL battery migrates a SQLite file under
    this lock (`fcntl.flock` on ``<database>.upgrade-lock``), so workers that start together
    migrate one at a time and the others find the tables at head. ``None`` (not SQLite) does
    nothing; so does a platform without ``fcntl``. Blocking: from the event loop use
    `hold_sqlite_migration_lock`. Take it before `migration_lock`.
    """
    if database is None or fcntl is None:
        yield
        return
    lock_path = sqlite_lock_path(database)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.asynccontextmanager
async def hold_sqlite_migration_lock(database: str | os.PathLike[str] | None) -> AsyncIterator[None]:
    """`sqlite_migration_lock` from the event loop: the wait happens in a worker thread."""
    if database is None or fcntl is None:
        yield
        return
    lock_path = sqlite_lock_path(database)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_path.open("a+b")
    try:
        # flock blocks: wait for it in a thread, never on the event loop. Closing the file (below)
        # releases the lock, even when the waiter was cancelled after the thread got it.
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()
