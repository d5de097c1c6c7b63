"""executus-otel: every run as OpenTelemetry spans, after the GenAI semantic conventions.

Installed, it traces every run of every `Executor`: an ``invoke_agent {agent}`` span per run, a
``chat {model}`` span per model call and an ``execute_tool {tool}`` span per tool call, with a child
run (a delegation) nested under the tool span that started it. The spans go to the host's tracer
provider when it configured one, else over OTLP/HTTP to the collector named in the settings::

    [tool.executus.otel]
    endpoint = "http://collector:4318"
    capture_content = false      # true: answers, tool arguments and results too, secrets masked

The recorder never blocks the run (spans are queued and exported from a thread) and never raises
(a collector that is down is a warning on the ``executus.otel`` logger).
"""

from typing import TYPE_CHECKING

from executus_core.lazy import lazy_exports

if TYPE_CHECKING:
    from executus_otel.audit import OtelAudit, host_tracer_provider
    from executus_otel.exporter import WarningExporter, build_tracer_provider
    from executus_otel.masking import Masker, mask_text, mask_value
    from executus_otel.recorder import OtelRecorder, split_model
    from executus_otel.settings import OtelSettings

# The public names are imported on first use (PEP 562): loading the plugin imports this package
# first, and a command that never touches the battery's port should not pay for its dependencies.
_LAZY = {
    "OtelAudit": "executus_otel.audit",
    "host_tracer_provider": "executus_otel.audit",
    "WarningExporter": "executus_otel.exporter",
    "build_tracer_provider": "executus_otel.exporter",
    "Masker": "executus_otel.masking",
    "mask_text": "executus_otel.masking",
    "mask_value": "executus_otel.masking",
    "OtelRecorder": "executus_otel.recorder",
    "split_model": "executus_otel.recorder",
    "OtelSettings": "executus_otel.settings",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


__all__ = [
    "Masker",
    "OtelAudit",
    "OtelRecorder",
    "OtelSettings",
    "WarningExporter",
    "build_tracer_provider",
    "host_tracer_provider",
    "mask_text",
    "mask_value",
    "split_model",
]

__version__ = "0.1.0"
