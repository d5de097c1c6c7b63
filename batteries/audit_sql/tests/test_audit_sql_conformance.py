"""The `Audit` conformance suite of executus_core, run against `SqlAudit` on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from audit_sql_helpers import Backend, recorded

from executus_core.testing.conformance import AuditConformance, AuditSubject


class TestSqlAuditConformance(AuditConformance):
    """Every check of the suite, on each backend (the ``backend`` fixture is parametrized)."""

    @pytest.fixture
    def make_audit(self, backend: Backend) -> Any:
        def make() -> AuditSubject:
            # A small batch and a short interval, so the writer runs mid-check as well as close().
            audit = backend.audit(batch_size=50, flush_interval=0.01)
            return AuditSubject(audit, read=lambda run_id: recorded(audit, run_id))

        return make
