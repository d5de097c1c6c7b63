"""The checkpoint port's conformance suite, against `SqlCheckpointStore` on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from checkpoint_sql_helpers import Backend
from executus_checkpoint_sql import SqlCheckpointStore

from executus_core.testing.conformance import CheckpointStoreConformance


class TestSqlCheckpointStore(CheckpointStoreConformance):
    """Every check of the contract, once per backend (the store is built inside each check's loop)."""

    @pytest.fixture
    def make_store(self, backend: Backend) -> Callable[[], SqlCheckpointStore]:
        return backend.store
