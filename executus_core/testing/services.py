"""Where the test services are, and what to do when one is missing.

Batteries' tests ask for PostgreSQL and Redis through these functions, so every suite reads the same
variables and behaves the same way when a service is down:

- ``EXECUTUS_TEST_POSTGRES_URL`` (default ``postgresql://127.0.0.1:5432/test``)
- ``EXECUTUS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)

A service that cannot be reached skips the tests that need it, with the reason, except under CI
(``CI=true``), where it fails them: a CI run must never pass by skipping its database tests.
"""

from __future__ import annotations

import os
import socket

import pytest

__all__ = ["in_ci", "postgres_url", "redis_url", "require_service"]

DEFAULT_POSTGRES_URL = "postgresql://127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def in_ci() -> bool:
    """True when ``CI`` is set to a true value (``true``, ``1``, ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _reachable(host: str, port: int, timeout: float = 1.0) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def require_service(name: str, url: str, variable: str) -> str:
    """Return ``url`` if its host and port accept a connection; otherwise skip, or fail under CI."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    default_port = {"postgresql": 5432, "redis": 6379}.get(parts.scheme.split("+")[0], 0)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    problem = _reachable(host, port)
    if problem is None:
        return url
    message = f"{name} is not reachable at {host}:{port} ({problem}); start it, or point {variable} at one"
    if in_ci():
        pytest.fail(f"{message} (CI=true: tests that need {name} fail instead of skipping)", pytrace=False)
    pytest.skip(message)


def postgres_url() -> str:
    """The test PostgreSQL URL (plain ``postgresql://``; add your driver, e.g. ``+psycopg``)."""
    variable = "EXECUTUS_TEST_POSTGRES_URL"
    return require_service("PostgreSQL", os.environ.get(variable, DEFAULT_POSTGRES_URL), variable)


def redis_url() -> str:
    """The test Redis URL."""
    variable = "EXECUTUS_TEST_REDIS_URL"
    return require_service("Redis", os.environ.get(variable, DEFAULT_REDIS_URL), variable)
