"""Loading the plugin (what every `executus` command and `Executor()` do) imports the OTLP exporter only on first use.

Issue 17, found case 3: every cold command paid for the batteries' heavy dependencies. Each check
runs in a fresh interpreter, so what an earlier test imported cannot hide an import.
"""

from __future__ import annotations

from executus_core.testing.imports import imported_after


def test_loading_the_plugin_imports_no_otlp_exporter(tmp_path) -> None:
    found = imported_after(
        "import executus_otel.plugin", ["opentelemetry.exporter.otlp.proto.http.trace_exporter"], tmp_path
    )
    assert found == []


def test_the_package_still_offers_its_names(tmp_path) -> None:
    code = "import executus_otel as o; assert all(getattr(o, n) is not None for n in o.__all__)"
    assert imported_after(code, [], tmp_path) == []


def test_building_the_audit_imports_no_sdk(tmp_path) -> None:
    """Issue 17, found case 3: `Executor()` imported the OpenTelemetry SDK (about 35 ms of the first
    `Executor()` on the shared machine) to build an audit that, with no endpoint set, sends nothing;
    the SDK comes with the first run that builds a provider of its own."""
    code = (
        "from executus_core import Executor; "
        "Executor(entry_points=False, plugins=[__import__('executus_otel.plugin').plugin])"
    )
    assert imported_after(code, ["opentelemetry.sdk.trace", "opentelemetry.sdk"], tmp_path) == []
