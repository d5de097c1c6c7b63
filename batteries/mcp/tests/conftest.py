"""Fixtures for the MCP battery's tests: a clean environment, and tool sets closed after each test.

Every server these tests talk to is the real SDK server in ``mcp_server_app.py``, started by the
test (stdio through the battery itself, HTTP as a process on a free loopback port) and stopped by
it; nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from executus_mcp import McpToolSet
from mcp_helpers import toolset


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))
    yield


@pytest.fixture
async def new_toolset() -> AsyncIterator[Callable[..., McpToolSet]]:
    """``new_toolset({"demo": stdio_server()}, call_timeout=1)``: closed (servers stopped) after the test."""
    made: list[McpToolSet] = []

    def make(servers: dict[str, dict[str, Any]], **limits: Any) -> McpToolSet:
        made.append(toolset(servers, **limits))
        return made[-1]

    yield make
    for item in made:
        await item.aclose()


@pytest.fixture
def call_log(tmp_path: Path) -> Path:
    """A file the test server appends each call to (``MCP_TEST_LOG``)."""
    return tmp_path / "calls.log"
