"""The service helpers skip outside CI and fail inside it when a service is missing."""

from __future__ import annotations

import socket

import pytest

from executus_core.testing.services import require_service


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_service_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"Redis is not reachable at 127\.0\.0\.1"):
        require_service("Redis", f"redis://127.0.0.1:{closed_port()}/0", "EXECUTUS_TEST_REDIS_URL")


def test_missing_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: tests that need PostgreSQL fail"):
        require_service("PostgreSQL", f"postgresql://127.0.0.1:{closed_port()}/test", "X")


def test_reachable_service_returns_its_url() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
        assert require_service("Redis", url, "X") == url
