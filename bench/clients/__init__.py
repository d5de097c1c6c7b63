"""The benchmark's clients: one module each, all with the same interface.

Each module defines ``LABEL`` (the name in tables), ``PACKAGES`` (the distributions whose versions
the results record) and ``async create(base_url) -> BenchClient``. A client whose packages are not
installed raises `ImportError` from ``create``; the bench then records it as unavailable.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

__all__ = ["BATTERY_CLIENTS", "CLIENTS", "BenchClient", "ToolCounter", "load", "options"]

# Order of the tables and the plot: the floor first, then the bare loop, executus, the peers.
CLIENTS: dict[str, str] = {
    "floor": "bench.clients.floor",
    "bare_httpx2": "bench.clients.bare_httpx2",
    "executus": "bench.clients.executus",
    "executus_aiohttp": "bench.clients.executus_aiohttp",
    "openai_agents": "bench.clients.peer_openai_agents",
    "pydantic_ai": "bench.clients.peer_pydantic_ai",
}


# executus with the SQL batteries (`bench.clients.executus_sql`): name -> (label, create's options).
# Measured in a section of their own beside the bare loop and the core (`bench.run`).
BATTERY_CLIENTS: dict[str, tuple[str, dict[str, str]]] = {
    "sql_audit_sqlite": ("+ audit-sql (SQLite)", {"backend": "sqlite", "parts": "audit"}),
    "sql_checkpoint_sqlite": ("+ checkpoint-sql (SQLite)", {"backend": "sqlite", "parts": "checkpoint"}),
    "sql_both_sqlite": ("audit + checkpoint, SQLite", {"backend": "sqlite", "parts": "audit+checkpoint"}),
    "sql_both_postgres": (
        "audit + checkpoint, PostgreSQL",
        {"backend": "postgres", "parts": "audit+checkpoint"},
    ),
}


class ToolCounter:
    """Counts the tool calls a client executed, so a batch can be checked against the script."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0


class BenchClient(Protocol):
    """What the measuring process drives: one run of ``n`` steps, returning the model's final text."""

    counter: ToolCounter

    async def run(self, n: int) -> str | None: ...

    async def aclose(self) -> None: ...


def load(name: str) -> ModuleType:
    """The module of client ``name``; raises KeyError naming the known clients."""
    if name in BATTERY_CLIENTS:
        return importlib.import_module("bench.clients.executus_sql")
    if name not in CLIENTS:
        raise KeyError(f"unknown client {name!r}; known: {', '.join([*CLIENTS, *BATTERY_CLIENTS])}")
    return importlib.import_module(CLIENTS[name])


def options(name: str) -> tuple[str | None, dict[str, str]]:
    """The label and ``create`` options of client ``name`` (none for the main clients)."""
    if name in BATTERY_CLIENTS:
        label, found = BATTERY_CLIENTS[name]
        return label, dict(found)
    return None, {}
