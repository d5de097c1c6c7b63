"""The battery as installed: its entry point, `executus plugins`, its settings table, and which tracer
provider it picks (the host's global one is checked in a fresh interpreter: a process sets it once)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from executus_otel import OtelAudit, OtelSettings, split_model
from executus_otel.settings import traces_url
from otel_helpers import other_plugins
from typer.testing import CliRunner

from executus_core import Executor
from executus_core.cli import create_app
from executus_core.errors import ExecutusError
from executus_core.testing.conformance._harness import make_info


def test_installed_it_is_loaded_through_its_entry_point() -> None:
    executor = Executor(disable=other_plugins())
    audits = dict(executor.ports.audits)
    assert isinstance(audits.get("otel"), OtelAudit), executor.plugins
    record = {r.name: r for r in executor.plugins}["otel"]
    assert (record.status, record.distribution, record.ports) == ("enabled", "executus-otel", ["audit"])
    off = Executor(disable=other_plugins(), settings={"otel": {"enabled": False}})
    assert "otel" not in dict(off.ports.audits)


def test_executus_plugins_lists_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTUS_DISABLE", ",".join(other_plugins()))
    result = CliRunner().invoke(create_app(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["plugins"]}
    assert rows["otel"]["distribution"] == "executus-otel"
    assert rows["otel"]["ports"] == ["audit"] and rows["otel"]["status"] == "enabled"


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"timeout": -1}, "timeout"),
        ({"endpont": "http://x:4318"}, "endpont"),
        ({"endpoint": "grpc://collector:4317"}, "endpoint"),
        ({"tracer_provider": "mine"}, "tracer_provider"),
    ],
)
def test_bad_settings_stop_the_executor_naming_the_key(table: dict[str, Any], named: str) -> None:
    with pytest.raises(ExecutusError) as info:
        Executor(disable=other_plugins(), settings={"otel": table})
    assert named in str(info.value) and "otel" in str(info.value)


def test_the_endpoint_takes_a_base_url_or_the_traces_url() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://otlp.example/api/v1/traces") == "https://otlp.example/api/v1/traces"
    assert "headers" not in repr(OtelSettings(headers={"authorization": "Bearer s3cret"}))


def test_model_ids_and_tiers_name_the_provider_and_model() -> None:
    assert split_model("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert split_model("anthropic:claude-sonnet-4-5") == ("anthropic", "claude-sonnet-4-5")
    assert split_model("scripted:replay.json") == ("executus.scripted", "replay.json")
    assert split_model("fast", {"fast": "openai:gpt-4o-mini"}) == ("openai", "gpt-4o-mini")
    assert split_model("my-model") == ("unknown", "my-model")


def test_with_nothing_configured_runs_are_not_recorded_and_one_warning_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import executus_otel.audit as module

    module._told_nowhere = False
    audit = OtelAudit()

    async def main() -> list[Any]:
        return [await audit.start_run(make_info(i)) for i in range(3)]

    with caplog.at_level(logging.WARNING, logger="executus.otel"):
        recorders = asyncio.run(main())
    assert recorders == [None, None, None]
    assert audit.provider is None and audit.exporter is None, "no provider, no thread, no export"
    messages = [r.getMessage() for r in caplog.records if r.name == "executus.otel"]
    assert len(messages) == 1 and "OTEL_EXPORTER_OTLP_ENDPOINT" in messages[0]


def test_the_standard_endpoint_variable_gives_our_own_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    audit = OtelAudit(OtelSettings(shutdown_timeout=0.5))

    async def main() -> None:
        recorder = await audit.start_run(make_info())
        assert recorder is not None
        assert audit.own_provider and audit.exporter is not None
        assert audit.exporter.where == "http://127.0.0.1:1/v1/traces"
        await audit.aclose()
        assert not audit.own_provider and audit.provider is None

    asyncio.run(main())


HOST_SCRIPT = textwrap.dedent(
    """
    import asyncio, json
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from executus_core import Agent, Executor, ModelResponse
    from executus_core.testing import ScriptedModel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)          # the host's own tracing, set up before executus runs

    async def main():
        async with Executor(disable=DISABLE) as executor:
            audit = dict(executor.ports.audits)["otel"]
            result = await executor.run(
                Agent(name="hosted", model=ScriptedModel([ModelResponse(text="hi")])), "hi", caller_id="c"
            )
            return result.ok, audit.provider is provider, audit.own_provider

    ok, same, own = asyncio.run(main())
    print(json.dumps({"ok": ok, "same": same, "own": own,
                      "spans": sorted(s.name for s in exporter.get_finished_spans())}))
    """
)


def test_the_hosts_global_tracer_provider_is_used_when_it_set_one(tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(f"DISABLE = {other_plugins()!r}\n" + HOST_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {
        "ok": True,
        "same": True,
        "own": False,
        "spans": ["chat scripted", "invoke_agent hosted"],
    }


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio
    from executus_core import Agent, Executor, ModelResponse
    from executus_core.testing import ScriptedModel

    async def main():
        executor = Executor(disable=DISABLE, settings={"otel": {"endpoint": ENDPOINT}})
        result = await executor.run(
            Agent(name="left", model=ScriptedModel([ModelResponse(text="hi")])), "hi", caller_id="c"
        )
        assert result.ok, result.error
        # no executor.shutdown(): the spans are still queued when the interpreter exits

    asyncio.run(main())
    import time
    print("ran", time.time(), flush=True)
    """
)


def test_a_process_that_exits_without_shutting_down_is_not_held_by_a_collector_that_is_down(
    tmp_path: Path,
) -> None:
    import socket
    import time

    from executus_otel.audit import EXIT_TIMEOUT

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    script = tmp_path / "leave.py"
    script.write_text(f"DISABLE = {other_plugins()!r}\nENDPOINT = {endpoint!r}\n" + EXIT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        assert line[:1] == ["ran"], process.communicate(timeout=30)[1]
        process.wait(timeout=60)
        exiting = time.time() - float(line[1])
        stderr = process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    # at most the exit bound (without it, the exporter's own 10 s of retries would hold the exit)
    assert exiting < EXIT_TIMEOUT + 2.5, f"the process took {exiting:.1f}s to exit after its last line"
    assert "could not be exported" in stderr


def test_it_says_where_the_spans_go(monkeypatch: pytest.MonkeyPatch, memory: Any) -> None:
    provider, _ = memory
    assert OtelAudit().describe() == "nothing: no tracer provider or OTLP endpoint is configured"
    assert (
        OtelAudit(OtelSettings(endpoint="http://otel:s3cret@collector:4318")).describe()
        == "OTLP/HTTP to http://otel:***@collector:4318/v1/traces"
    )
    assert (
        OtelAudit(OtelSettings(tracer_provider="own")).describe()
        == "OTLP/HTTP to http://localhost:4318/v1/traces"
    )
    given = OtelAudit(OtelSettings(capture_content=True), tracer_provider=provider)
    assert given.describe() == "the given tracer provider, content captured"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gateway:4318/otlp/")
    assert OtelAudit().describe() == "OTLP/HTTP to http://gateway:4318/otlp/v1/traces"
