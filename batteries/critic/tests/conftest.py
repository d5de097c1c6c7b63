"""Fixtures for the critic battery's tests.

End-to-end tests build a plain ``Executor(...)`` that loads the critic through its installed entry
point. Other installed batteries are disabled there by name, so these tests see only the critic (and
never depend on another battery's services or work in progress), and the environment and
pyproject.toml are kept out, so a developer's ``EXECUTUS_*`` variables cannot change a result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from critic_helpers import DEADLINE_POLL, FakeClock, other_plugins

from executus_core import Executor


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))
    yield


@pytest.fixture
def make_executor(tmp_path: Path) -> Callable[..., Executor]:
    """``make_executor(hang_timeout=0.3, ...)``: an Executor with the installed critic, configured so."""

    def make(*, disable: tuple[str, ...] = (), core: dict[str, Any] | None = None, **critic: Any) -> Executor:
        settings: dict[str, Any] = {"deadline_poll": DEADLINE_POLL, "port_timeout": 2.0, **(core or {})}
        if critic:
            settings["critic"] = critic
        return Executor(settings=settings, disable=[*other_plugins(), *disable], project_dir=tmp_path)

    return make
