"""The `Audit` conformance suite of executus_core, run against `OtelAudit` read back from its spans."""

from __future__ import annotations

from typing import Any

import pytest
from executus_otel import OtelAudit, OtelSettings
from otel_helpers import recorded

from executus_core.testing.conformance import AuditConformance, AuditSubject


class TestOtelAuditConformance(AuditConformance):
    """Every check of the suite, with content captured (so results and payloads can be compared) and
    every event type kept as a span event."""

    @pytest.fixture
    def make_audit(self, memory: Any) -> Any:
        provider, exporter = memory

        def make() -> AuditSubject:
            audit = OtelAudit(OtelSettings(capture_content=True, skip_events=[]), tracer_provider=provider)
            return AuditSubject(audit, read=lambda run_id: recorded(exporter.get_finished_spans(), run_id))

        return make
