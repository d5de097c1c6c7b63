"""The checkpoint port's conformance suite, against `SqlCheckpointStore` on SQLite and PostgreSQL.

Every store a check builds is a worker on the test's database; a store built with ``lease_seconds``
runs no heartbeat, so one that goes silent plays a dead or paused process. ``damage_checkpoint``
writes bad rows behind the store's back, as a disk fault or a hand edit would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from checkpoint_sql_helpers import Backend, damage, make_worker
from executus_checkpoint_sql import SqlCheckpointStore

from executus_core.testing.conformance import CheckpointStoreConformance


class TestSqlCheckpointStore(CheckpointStoreConformance):
    """Every check of the contract, once per backend (the stores are built inside each check's loop)."""

    @pytest.fixture
    def make_store(self, backend: Backend) -> Callable[..., SqlCheckpointStore]:
        return make_worker(backend)

    @pytest.fixture
    def damage_checkpoint(self, backend: Backend) -> Callable[[str, str], Awaitable[None]]:
        return damage(backend)
