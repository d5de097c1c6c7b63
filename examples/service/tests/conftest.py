"""Fixtures for the example service's tests: its package on sys.path, a database of its own, Redis."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICE_DIR = Path(__file__).resolve().parent.parent
for path in (SERVICE_DIR, SERVICE_DIR / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from service_helpers import own_database  # noqa: E402

from executus_core.testing.services import postgres_url, redis_url  # noqa: E402


@pytest.fixture
def service_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (the service's queue, ledger, audit and checkpoints)."""
    with own_database(postgres_url()) as url:
        yield url


@pytest.fixture
def service_redis() -> str:
    """The test Redis (each test's budget keys get a prefix of their own)."""
    return redis_url()
