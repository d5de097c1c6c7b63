"""Our own tracer provider against a real OTLP/HTTP receiver on loopback, started by the test: it
decodes each ``ExportTraceServiceRequest`` (protobuf, with opentelemetry-proto) and keeps what came.
Also: a collector that is down, or answers errors, is a warning and never touches the run."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from executus_otel import OtelAudit, OtelSettings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from otel_helpers import planner_and_helper

from executus_core import Executor
from executus_core.testing import PortPlugin


class Receiver:
    """A minimal OTLP/HTTP traces receiver: ``POST /v1/traces`` with a protobuf body."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, request))
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(receiver.status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received: (its resource's attributes, the span)."""
        found = []
        for _, request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {kv.key: value(kv.value) for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append((resource, span))
        return found


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(v) for v in any_value.array_value.values)
    return getattr(any_value, kind) if kind else None


def span_attrs(span: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in span.attributes}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()


def test_the_spans_reach_a_real_otlp_http_receiver(receiver: Receiver) -> None:
    planner, helper = planner_and_helper()
    settings = OtelSettings(
        tracer_provider="own",
        endpoint=receiver.url,
        headers={"x-api-key": "collector-key"},
        service_name="support-bot",
    )
    audit = OtelAudit(settings)

    async def main() -> str:
        async with Executor(plugins=[PortPlugin(audit=audit)], entry_points=False) as executor:
            executor.register_agent(helper)
            result = await executor.run(planner, "plan it", caller_id="tester")
            assert result.ok, result.error
            assert audit.own_provider
        # leaving the executor shut it down: our provider sent what it had queued
        return result.run_id

    run_id = asyncio.run(main())
    assert receiver.requests, "nothing reached the receiver"
    headers = receiver.requests[0][0]
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-api-key"] == "collector-key"
    received = receiver.spans()
    names = sorted(span.name for _, span in received)
    assert names == sorted(
        [
            "invoke_agent planner",
            "chat scripted",
            "chat scripted",
            "chat scripted",
            "execute_tool lookup",
            "execute_tool fetch",
            "execute_tool explode",
            "execute_tool agent__helper",
            "invoke_agent helper",
            "chat claude-test",
            "chat claude-test",
            "execute_tool lookup",
        ]
    )
    assert all(resource["service.name"] == "support-bot" for resource, _ in received)
    by_id = {span.span_id: span for _, span in received}
    root = next(s for _, s in received if s.name == "invoke_agent planner")
    assert span_attrs(root)["executus.run.id"] == run_id and not root.parent_span_id
    assert span_attrs(root)["gen_ai.operation.name"] == "invoke_agent"
    child = next(s for _, s in received if s.name == "invoke_agent helper")
    delegation = by_id[child.parent_span_id]
    assert delegation.name == "execute_tool agent__helper" and delegation.parent_span_id == root.span_id
    assert len({span.trace_id for _, span in received}) == 1
    explode = next(s for _, s in received if s.name == "execute_tool explode")
    assert explode.status.code == explode.status.STATUS_CODE_ERROR
    assert span_attrs(explode)["error.type"] == "ValueError"
    chat = next(s for _, s in received if s.name == "chat scripted")
    ca = span_attrs(chat)
    assert ca["gen_ai.operation.name"] == "chat" and ca["gen_ai.provider.name"] == "executus.scripted"
    assert ca["gen_ai.usage.input_tokens"] == 10 and ca["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert chat.kind == chat.SPAN_KIND_CLIENT and chat.start_time_unix_nano <= chat.end_time_unix_nano


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("collector", ["down", "refusing"])
def test_a_failing_collector_is_a_warning_and_never_touches_the_run(
    collector: str, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = Receiver(status=503 if collector == "refusing" else 200)
    if collector == "refusing":
        refusing.thread.start()
        endpoint = refusing.url
    else:
        endpoint = f"http://127.0.0.1:{closed_port()}"
    planner, helper = planner_and_helper()
    audit = OtelAudit(
        OtelSettings(tracer_provider="own", endpoint=endpoint, timeout=1.0, shutdown_timeout=2.0)
    )

    async def main() -> float:
        async with Executor(plugins=[PortPlugin(audit=audit)], entry_points=False) as executor:
            executor.register_agent(helper)
            result = await executor.run(planner, "plan it", caller_id="tester")
            assert result.ok, result.error
            assert not result.warnings, result.warnings
            started = time.monotonic()
        return time.monotonic() - started

    try:
        with caplog.at_level(logging.WARNING, logger="executus.otel"):
            shutdown_seconds = asyncio.run(main())
    finally:
        if collector == "refusing":
            refusing.server.shutdown()
            refusing.server.server_close()
    assert shutdown_seconds < 2.0 + 1.5, f"shutdown took {shutdown_seconds:.1f}s"
    assert audit.exporter is not None and audit.exporter.failed_spans >= 12
    warnings = [r for r in caplog.records if r.name == "executus.otel"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "could not be exported" in warnings[0].getMessage() and endpoint in warnings[0].getMessage()
    if collector == "refusing":
        assert refusing.requests, "the exporter never reached the refusing collector"
