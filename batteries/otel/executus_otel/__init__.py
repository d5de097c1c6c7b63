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

from executus_otel.audit import OtelAudit, host_tracer_provider
from executus_otel.exporter import WarningExporter, build_tracer_provider
from executus_otel.masking import Masker, mask_text, mask_value
from executus_otel.recorder import OtelRecorder, split_model
from executus_otel.settings import OtelSettings

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
