"""The compatibility suite, against the loopback server playing a server with known gaps."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from executus_core.providers import compat

from .replies import OPENAI_HELLO, OPENAI_STREAM_HELLO, openai_completion
from .server import LoopbackServer, Reply


def call(call_id: str, city: str) -> dict[str, Any]:
    arguments = orjson.dumps({"city": city}).decode()
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


WEATHER_CALL = openai_completion(
    {"role": "assistant", "content": None, "tool_calls": [call("c1", "Paris")]}, "tool_calls"
)
TWO_CALLS = openai_completion(
    {"role": "assistant", "content": None, "tool_calls": [call("c1", "Paris"), call("c2", "Tokyo")]},
    "tool_calls",
)
NO_SUCH_MODEL = {
    "error": {
        "message": "The model `executus-compat-no-such-model` does not exist",
        "code": "model_not_found",
    }
}


def a_server_like_llama_cpp() -> list[Reply]:
    """What llama-cpp-python's server did: one call where two were asked, an empty stream for tools
    with tool_choice, no usage in streams, any model name accepted."""
    no_usage = [e for e in OPENAI_STREAM_HELLO if b'"usage":{' not in e]
    return [
        Reply(json=OPENAI_HELLO),  # plain answer
        Reply(json=WEATHER_CALL),  # tool call
        Reply(json=OPENAI_HELLO),  # tool result
        Reply(json=WEATHER_CALL),  # parallel tools: one call only
        Reply(events=no_usage),  # streaming, no usage
        Reply(events=[]),  # streamed tool call: an empty 200
        Reply(json=OPENAI_HELLO),  # bad model name: answered anyway
    ]


def a_server_that_does_it_all() -> list[Reply]:
    events = [
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function",'
        b'"function":{"name":"get_weather","arguments":"{\\"city\\": \\"Paris\\"}"}}]}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":9,'
        b'"completion_tokens":3}}\n\n',
        b"data: [DONE]\n\n",
    ]
    return [
        Reply(json=OPENAI_HELLO),
        Reply(json=WEATHER_CALL),
        Reply(json=OPENAI_HELLO),
        Reply(json=TWO_CALLS),
        Reply(events=OPENAI_STREAM_HELLO),
        Reply(events=events),
        Reply(404, json=NO_SUCH_MODEL),
    ]


async def test_a_server_with_gaps_gets_each_named(server: LoopbackServer) -> None:
    server.add(*a_server_like_llama_cpp())
    report = await compat.run_checks(f"{server.url}/v1", "gemma", timeout=10)
    statuses = {check.name: check.status for check in report.checks}
    assert statuses == {
        "plain answer": "pass",
        "tool call": "pass",
        "tool result": "pass",
        "parallel tools": "warn",
        "streaming": "pass",
        "streamed tool call": "fail",
        "usage reported": "pass",
        "streamed usage": "warn",
        "bad model name": "warn",
    }
    details = {check.name: check.detail for check in report.checks}
    assert (
        "tool_choice" in details["streamed tool call"]
        and "turn streaming off" in details["streamed tool call"]
    )
    assert "estimate_usage" in details["streamed usage"]
    assert "ignores the model name" in details["bad model name"]
    assert report.failed and report.base_url == f"{server.url}/v1"
    # the requests are the ones a run sends: tools with tool_choice, "" beside tool calls, no retries
    sent = [seen.json for seen in server.requests]
    assert len(sent) == 7
    assert sent[1]["tool_choice"] == "auto" and sent[2]["messages"][1]["content"] == ""
    result = '{"city":"Paris","temperature_c":21,"sky":"clear"}'
    assert sent[2]["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": result}
    assert sent[6]["model"] == compat.MISSING_MODEL


async def test_a_server_that_does_it_all_passes(server: LoopbackServer) -> None:
    server.add(*a_server_that_does_it_all())
    report = await compat.run_checks(
        f"{server.url}/v1", "gpt-4o-mini", api_key="sk-compat-test-key", timeout=10
    )
    assert [(c.name, c.status) for c in report.checks if c.status != "pass"] == []
    assert not report.failed
    assert server.requests[0].headers["authorization"] == "Bearer sk-compat-test-key"


async def test_a_failed_tool_call_skips_the_result_check(server: LoopbackServer) -> None:
    server.add(Reply(json=OPENAI_HELLO), Reply(500, json={"error": {"message": "1 validation error for X"}}))
    server.add(*(Reply(500, json={"error": {"message": "boom"}}) for _ in range(6)))
    report = await compat.run_checks(f"{server.url}/v1", "m", timeout=10)
    checks = {check.name: check for check in report.checks}
    assert checks["tool call"].status == "fail" and "not retried" in checks["tool call"].detail
    assert checks["tool result"].status == "skip" and "'tool call'" in checks["tool result"].detail
    assert checks["streaming"].status == "fail" and checks["streamed usage"].status == "skip"
    assert checks["bad model name"].status == "fail"  # a 500 is not how a missing model is refused


async def test_a_server_that_never_answers_times_out(server: LoopbackServer) -> None:
    server.add(*(Reply(json=OPENAI_HELLO, delay=5) for _ in range(7)))
    report = await compat.run_checks(f"{server.url}/v1", "m", timeout=0.2)
    assert report.checks[0].status == "fail" and "no answer within 0.2 s" in report.checks[0].detail


@contextlib.contextmanager
def server_in_a_thread() -> Iterator[LoopbackServer]:
    """A loopback server on its own event loop, for main(), which runs asyncio.run itself."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    srv = asyncio.run_coroutine_threadsafe(LoopbackServer().start(), loop).result()
    try:
        yield srv
    finally:
        asyncio.run_coroutine_threadsafe(srv.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_main_prints_json_and_exits_1_on_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    with server_in_a_thread() as srv:
        srv.add(*a_server_like_llama_cpp())
        code = compat.main(["--base-url", f"{srv.url}/v1", "--model", "gemma", "--json", "--timeout", "10"])
    assert code == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["model"] == "gemma" and report["api"] == "openai" and report["executus_version"]
    assert [c["name"] for c in report["checks"]][:3] == ["plain answer", "tool call", "tool result"]
    assert {c["status"] for c in report["checks"]} == {"pass", "warn", "fail"}


def test_main_prints_a_table_and_exits_0_when_all_pass(capsys: pytest.CaptureFixture[str]) -> None:
    with server_in_a_thread() as srv:
        srv.add(*a_server_that_does_it_all())
        code = compat.main(["--base-url", f"{srv.url}/v1", "--model", "gpt-4o-mini"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("plain answer", "parallel tools", "streamed usage", "bad model name"):
        assert name in out
    assert "9 pass" in out


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert compat.main(["--model", "m"]) == 2  # no --base-url
    assert compat.main(["--base-url", "ftp://127.0.0.1/v1", "--model", "m"]) == 2
    assert "must be an http:// or https:// URL" in capsys.readouterr().err
    assert compat.main(["--help"]) == 0


def test_print_table_writes_to_a_file() -> None:
    report = compat.Report(
        "http://127.0.0.1:1/v1",
        "m",
        "openai",
        "2026-01-01T00:00:00+00:00",
        "0",
        [compat.CheckResult("plain answer", "pass", "ok", 0.5)],
    )
    out = io.StringIO()
    compat.print_table(report, out)
    assert "plain answer" in out.getvalue() and "1 pass" in out.getvalue()


async def test_a_check_that_needed_a_retry_says_so(server: LoopbackServer) -> None:
    server.add(Reply(503, json={"error": {"message": "loading model"}}), *a_server_that_does_it_all())
    report = await compat.run_checks(f"{server.url}/v1", "m", timeout=10)
    first = report.checks[0]
    assert first.status == "warn" and "after 1 retry;" in first.detail and "HTTP 503" in first.detail
    assert all(check.status == "pass" for check in report.checks[1:])
