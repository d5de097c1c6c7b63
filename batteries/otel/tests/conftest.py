"""Fixtures of the executus-otel tests: an in-memory tracer provider, and an environment of our own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No EXECUTUS_* or OTEL_* settings from the machine; embedded defaults write under tmp_path."""
    for name in list(os.environ):
        if (name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_")) or name.startswith(
            "OTEL_"
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A provider that hands every ended span at once to an in-memory exporter (no thread, no batch),
    with room for many span events (the conformance suite logs 1,000 on one run)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_events=5000))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()
