"""A compatibility suite anyone can point at a server: does it serve what executus needs?

Run it against any OpenAI-compatible server (or an Anthropic-compatible one with ``--api
anthropic``)::

    python -m executus_core.providers.compat --base-url http://127.0.0.1:8080/v1 --model llama3.2
    python -m executus_core.providers.compat --base-url ... --model ... --json   # for a script

Each check sends real requests through executus's own provider (the same bytes a run sends) and
says ``pass``, ``warn`` (it works, with a caveat or a setting to change), ``fail`` (executus cannot
use that on this server as set up) or ``skip`` (an earlier check it needs failed):

- **plain answer**: a question, a text answer;
- **tool call**: a declared tool, the model calls it with arguments that are a JSON object;
- **tool result**: the call and its result sent back, the model answers (the step every multi-step
  run takes, where an assistant message carries only tool calls);
- **parallel tools**: two calls in one answer;
- **streaming**: the same plain question over server-sent events;
- **streamed tool call**: a tool call over server-sent events;
- **usage reported** / **streamed usage**: token counts, plain and streamed;
- **bad model name**: a model that does not exist is refused with an error status.

A small local model may fail a capability check (parallel calls, say) where the server is fine: the
detail column tells which. Nothing here reads ``pyproject.toml`` or the environment (``--api-key``
gives a key); importing this module does nothing. `main` returns the exit status: 0 when no check
failed, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TextIO

import orjson

from executus_core.config import load_settings
from executus_core.errors import ConfigError, ProviderError
from executus_core.providers._http import HttpModel
from executus_core.providers.anthropic import create_anthropic
from executus_core.providers.openai import create_openai
from executus_core.types import Message, ModelRequest, ModelResponse, ModelSettings, ToolSpec

__all__ = ["CheckResult", "Report", "main", "run_checks"]

Status = Literal["pass", "warn", "fail", "skip"]

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city, e.g. Paris"}},
        "required": ["city"],
    },
)
PLAIN_PROMPT = "Reply with one short friendly sentence."
TOOL_PROMPT = "What is the weather in Paris right now? Use the get_weather tool."
PARALLEL_PROMPT = "Use the get_weather tool twice, in one answer: once for Paris and once for Tokyo."
MISSING_MODEL = "executus-compat-no-such-model"


@dataclasses.dataclass
class CheckResult:
    """One check: its name, how it went, what was seen, and how long it took (seconds)."""

    name: str
    status: Status
    detail: str
    seconds: float = 0.0


@dataclasses.dataclass
class Report:
    """What `run_checks` found, with what it ran against."""

    base_url: str
    model: str
    api: str
    started: str
    executus_version: str
    checks: list[CheckResult]

    @property
    def failed(self) -> bool:
        """Whether any check failed."""
        return any(check.status == "fail" for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data, for ``--json``."""
        return dataclasses.asdict(self)


def _short(text: str | None, limit: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _calls(response: ModelResponse) -> str:
    return ", ".join(
        f"{call.name}({call.raw_arguments if call.arguments_error else orjson.dumps(call.arguments).decode()})"
        for call in response.tool_calls
    )


def _usage(response: ModelResponse) -> tuple[Status, str]:
    usage = response.usage
    if usage.input_tokens or usage.output_tokens:
        return "pass", f"{usage.input_tokens} in, {usage.output_tokens} out"
    return "warn", "no token usage: runs count 0 tokens (estimate_usage = true estimates them)"


class _Suite:
    def __init__(self, model: HttpModel, max_tokens: int, timeout: float) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.results: list[CheckResult] = []
        self.answers: dict[str, ModelResponse] = {}
        self.retries: list[str] = []  # what the current check retried, as run events told

    async def ask(
        self,
        messages: list[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        stream: bool = False,
        model: HttpModel | None = None,
    ) -> tuple[ModelResponse, int]:
        """One call; returns the answer and how many streamed deltas came."""
        deltas = 0

        def emit(kind: str, data: dict[str, Any]) -> None:
            nonlocal deltas
            if kind == "model.delta":
                deltas += 1
            elif kind == "model.retry":
                self.retries.append(str(data.get("error", "")))

        request = ModelRequest(
            messages=messages,
            tools=list(tools),
            settings=ModelSettings(max_tokens=self.max_tokens, stream=stream),
            emit=emit,
        )
        response = await asyncio.wait_for((model or self.model).complete(request), self.timeout)
        return response, deltas

    async def check(
        self, name: str, body: Callable[[], Awaitable[tuple[Status, str]]], *, needs: str | None = None
    ) -> None:
        if needs is not None and needs not in self.answers:
            self.results.append(CheckResult(name, "skip", f"needs {needs!r}, which did not answer"))
            return
        started = time.perf_counter()
        self.retries = []
        try:
            status, detail = await body()
        except ProviderError as exc:
            # The error's own message and the server's words; where it came from is the report's title.
            said = f": {exc.provider_message}" if exc.provider_message else ""
            status, detail = "fail", f"{type(exc).__name__}: {exc.to_dict()['message']}{said}"
        except TimeoutError:
            status, detail = "fail", f"no answer within {self.timeout:g} s (--timeout)"
        if self.retries:
            # A run would have retried too; the report says so rather than hide it.
            if status == "pass":
                status = "warn"
            count = len(self.retries)
            detail += f" (after {count} {'retry' if count == 1 else 'retries'}; the first: {self.retries[0]})"
        self.results.append(
            CheckResult(name, status, _short(detail, 400), round(time.perf_counter() - started, 2))
        )

    # -- the checks ------------------------------------------------------------------------------

    async def plain(self) -> tuple[Status, str]:
        response, _ = await self.ask([Message.user(PLAIN_PROMPT)])
        self.answers["plain answer"] = response
        if not response.text:
            return "fail", f"no text (finish reason {response.finish_reason})"
        return "pass", f"{_short(response.text)!r} (finish reason {response.finish_reason})"

    async def tool_call(self) -> tuple[Status, str]:
        response, _ = await self.ask([Message.user(TOOL_PROMPT)], tools=[WEATHER])
        if not response.tool_calls:
            return "fail", f"no tool call; the model answered {_short(response.text)!r}"
        self.answers["tool call"] = response
        call = response.tool_calls[0]
        if call.arguments_error:
            return "warn", f"arguments are not a JSON object ({call.arguments_error}): {call.raw_arguments!r}"
        if call.name != WEATHER.name:
            return "warn", f"called {call.name!r}, not get_weather"
        return "pass", _calls(response)

    async def tool_result(self) -> tuple[Status, str]:
        first = self.answers["tool call"]
        transcript = [Message.user(TOOL_PROMPT), first.to_message()]
        for call in first.tool_calls:
            result = {"city": call.arguments.get("city", "Paris"), "temperature_c": 21, "sky": "clear"}
            transcript.append(Message.tool(call.id, orjson.dumps(result).decode(), name=call.name))
        response, _ = await self.ask(transcript, tools=[WEATHER])
        if response.text:
            return "pass", f"{_short(response.text)!r}"
        if response.tool_calls:
            return "pass", f"the model called again: {_calls(response)}"
        return "warn", "the server accepted the result, but the model answered nothing"

    async def parallel(self) -> tuple[Status, str]:
        response, _ = await self.ask([Message.user(PARALLEL_PROMPT)], tools=[WEATHER])
        count = len(response.tool_calls)
        if count >= 2:
            return "pass", _calls(response)
        if count == 1:
            return "warn", f"one call only ({_calls(response)}): the model, or the server's chat format"
        return "fail", f"no tool call; the model answered {_short(response.text)!r}"

    async def streaming(self) -> tuple[Status, str]:
        response, deltas = await self.ask([Message.user(PLAIN_PROMPT)], stream=True)
        self.answers["streaming"] = response
        if not response.text:
            return "fail", f"no text in {deltas} deltas (finish reason {response.finish_reason})"
        return "pass", f"{deltas} deltas: {_short(response.text)!r}"

    async def streamed_tool_call(self) -> tuple[Status, str]:
        response, deltas = await self.ask([Message.user(TOOL_PROMPT)], tools=[WEATHER], stream=True)
        if not response.tool_calls:
            return "fail", f"no tool call in {deltas} deltas; the model answered {_short(response.text)!r}"
        return "pass", f"{deltas} deltas: {_calls(response)}"

    async def usage(self) -> tuple[Status, str]:
        return _usage(self.answers["plain answer"])

    async def streamed_usage(self) -> tuple[Status, str]:
        return _usage(self.answers["streaming"])

    async def bad_model(self) -> tuple[Status, str]:
        other = type(self.model)(MISSING_MODEL, self.model.endpoint)
        try:
            response, _ = await self.ask([Message.user(PLAIN_PROMPT)], model=other)
        except ProviderError as exc:
            if exc.status_code in (400, 404, 422):
                return "pass", f"HTTP {exc.status_code}: {_short(exc.provider_message or str(exc), 120)}"
            raise
        return "warn", (
            f"answered 200 for {MISSING_MODEL!r} (as {response.model!r}): the server ignores the model "
            "name, so a misspelled model is not caught"
        )


async def run_checks(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    api: str = "openai",
    max_tokens: int = 200,
    timeout: float = 300.0,
    transport: Any = None,
) -> Report:
    """Run every check against ``base_url`` and ``model``; never raises for what the server does.

    ``transport`` (an ``httpx2.AsyncBaseTransport``) is for tests. Each check's call is bounded by
    ``timeout`` seconds. A failure a run would retry (a dropped connection, a 5xx) is retried up
    to twice, as a run would, and the check then says so and passes at best as ``warn``.
    """
    from executus_core import __version__

    endpoint: dict[str, Any] = {"api": api, "base_url": base_url}
    if api_key:
        endpoint["api_key"] = api_key
    table: dict[str, Any] = {
        "max_retries": 2,
        "retry_base_seconds": 0.2,
        "read_timeout": timeout,
        "endpoints": {"compat": endpoint},
    }
    if transport is not None:
        table["transport"] = transport
    settings = load_settings({"providers": table}, read_pyproject=False, environ={})
    factory = create_anthropic if api == "anthropic" else create_openai
    built = factory(model, settings, endpoint="compat")
    suite = _Suite(built, max_tokens, timeout)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        await suite.check("plain answer", suite.plain)
        await suite.check("tool call", suite.tool_call)
        await suite.check("tool result", suite.tool_result, needs="tool call")
        await suite.check("parallel tools", suite.parallel)
        await suite.check("streaming", suite.streaming)
        await suite.check("streamed tool call", suite.streamed_tool_call)
        await suite.check("usage reported", suite.usage, needs="plain answer")
        await suite.check("streamed usage", suite.streamed_usage, needs="streaming")
        await suite.check("bad model name", suite.bad_model)
    finally:
        await built.aclose()
    return Report(
        base_url=built.endpoint.display_url,
        model=model,
        api=api,
        started=started,
        executus_version=__version__,
        checks=suite.results,
    )


_STYLE = {"pass": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def print_table(report: Report, file: TextIO | None = None) -> None:
    """The report as a table on a terminal (rich), one row per check."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.api} server {report.base_url}, model {report.model}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("what was seen", overflow="fold")
    for check in report.checks:
        style = _STYLE[check.status]
        table.add_row(check.name, f"[{style}]{check.status}[/{style}]", f"{check.seconds:.2f}", check.detail)
    console = Console(file=file or sys.stdout, width=None if file is None else 160)
    console.print(table)
    counts = {s: sum(c.status == s for c in report.checks) for s in _STYLE}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"  ({report.started})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m executus_core.providers.compat",
        description="Check that a model server serves what executus needs (plain answers, tools, "
        "streaming, usage, errors), with the requests executus itself sends.",
    )
    parser.add_argument("--base-url", required=True, help="the API's base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--model", required=True, help="the model name the server knows")
    parser.add_argument("--api-key", default=None, help="the API key, if the server wants one")
    parser.add_argument("--api", choices=["openai", "anthropic"], default="openai", help="the wire format")
    parser.add_argument("--max-tokens", type=int, default=200, help="max_tokens for each answer")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each check may take")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None, *, transport: Any = None) -> int:
    """Run the checks from the command line; returns the exit status (0: no check failed)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.timeout <= 0 or args.max_tokens < 1:
        sys.stderr.write("error: --timeout must be above 0 and --max-tokens at least 1\n")
        return 2
    try:
        report = asyncio.run(
            run_checks(
                args.base_url,
                args.model,
                api_key=args.api_key,
                api=args.api,
                max_tokens=args.max_tokens,
                timeout=args.timeout,
                transport=transport,
            )
        )
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_table(report)
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
