"""Live progress of a run, for people: steps, tool calls, retries, critic decisions, streamed text.

`Progress` is the ``on_event=`` consumer ``executus run`` passes to `Executor.run`; it writes to
stderr, so stdout keeps only the answer. Log records of the executus loggers (a battery's warning,
the critic's decisions) are shown through it too (`Progress.log_handler`), so they never land in the
middle of a line it is drawing. `summary_line` is the line that ends every run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from executus_core.types import Result, RunEvent

if TYPE_CHECKING:
    from rich.status import Status

__all__ = ["Progress", "summary_line"]


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _arguments(arguments: Any) -> str:
    if not isinstance(arguments, Mapping):
        return _short(arguments)
    return _short(
        ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in arguments.items())
    )


class Progress:
    """Shows a run's events to a person, on stderr: steps, tool calls, retries, streamed text.

    Used as ``on_event=`` of `Executor.run`; the executor calls it from a task of its own, in order.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.spinner: Status | None = None
        self.streaming = False  # a streamed text line is open (no newline yet)
        self.step = 0
        self.streamed: list[str] = []  # the text streamed in the current step
        self.last_streamed = ""  # the whole text the last finished step streamed

    def answer_was_shown(self, output: str | None) -> bool:
        """True when ``output`` is exactly what the last step streamed on this console already.

        ``executus run --stream`` then leaves it out of stdout when stdout is the same terminal,
        so a person does not read the answer twice.
        """
        return bool(output) and self.last_streamed.strip() == (output or "").strip()

    def log_handler(self) -> logging.Handler:
        """A `logging.Handler` that shows log records as progress lines (warnings and above).

        ``executus run`` attaches it to the ``executus`` loggers for the run, so a battery's log
        line (the critic cutting a run, a database that is slow) is its own line, not written into
        the middle of a streamed answer or over the spinner.
        """
        progress = self

        class _ProgressHandler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    message = record.getMessage()
                except Exception:  # a bad format string in someone's log call: show it raw
                    message = str(record.msg)
                colour = "red" if record.levelno >= logging.ERROR else "yellow"
                progress._say(f"  [{colour}]{escape(record.levelname.lower())}:[/] [dim]{escape(message)}[/]")

        handler = _ProgressHandler(level=logging.WARNING)
        return handler

    def _say(self, text: str) -> None:
        self._end_stream()
        self.console.print(text, highlight=False)

    def _spin(self, text: str) -> None:
        if not self.console.is_terminal:
            return
        if self.spinner is None:
            self.spinner = self.console.status(text, spinner="dots")
            self.spinner.start()
        else:
            self.spinner.update(text)

    def _stop_spinner(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()
            self.spinner = None

    def _end_stream(self) -> None:
        if self.streaming:
            self.console.print()
            self.streaming = False

    def start(self) -> None:
        """The run is starting: show that the first model call is on its way."""
        self._spin("[dim]waiting for the model (step 1)[/]")

    def close(self) -> None:
        """The run ended: stop the spinner and close an open streamed line."""
        self._stop_spinner()
        self._end_stream()

    def __call__(self, event: RunEvent) -> None:
        handler = getattr(self, "_on_" + event.type.replace(".", "_"), None)
        if handler is not None:
            handler(event.data)

    def _on_model_delta(self, data: Mapping[str, Any]) -> None:
        text = data.get("text")
        if isinstance(text, str) and text:
            self._stop_spinner()
            self.console.print(text, end="", style="dim", markup=False, highlight=False)
            self.streaming = True
            self.streamed.append(text)
        elif data.get("thinking"):
            # Thinking can run to pages: show that it happens, not all of it.
            self._spin(f"[dim]the model is thinking (step {self.step + 1})[/]")
        elif isinstance(data.get("tool_call"), Mapping) and data["tool_call"].get("name"):
            self._spin(f"[dim]the model is writing a call to {escape(str(data['tool_call']['name']))}[/]")

    def _on_step(self, data: Mapping[str, Any]) -> None:
        self.last_streamed, self.streamed = "".join(self.streamed), []
        self.step = int(data.get("iteration") or self.step + 1)
        calls = data.get("tool_calls") or []
        tokens = ""
        if data.get("input_tokens") or data.get("output_tokens"):
            tokens = f" · {data.get('input_tokens', 0)} in / {data.get('output_tokens', 0)} out tokens"
        what = f"asked for {', '.join(escape(str(c)) for c in calls)}" if calls else "answered"
        self._say(f"[bold cyan]step {self.step}[/] {what}[dim]{tokens}[/]")
        if calls:
            self._spin(f"[dim]running {escape(', '.join(str(c) for c in calls))}[/]")
        else:
            self._stop_spinner()

    def _on_tool_start(self, data: Mapping[str, Any]) -> None:
        self._say(
            f"  [yellow]→[/] {escape(str(data.get('name')))}({escape(_arguments(data.get('arguments')))})"
        )

    def _on_tool_end(self, data: Mapping[str, Any]) -> None:
        mark = "[green]✓[/]" if data.get("ok") else "[red]✗[/]"
        seconds = data.get("seconds")
        took = f" [dim]{seconds:.3f} s[/]" if isinstance(seconds, int | float) else ""
        result = escape(_short(data.get("result", "")))
        self._say(f"  {mark} {escape(str(data.get('name')))}{took} [dim]→[/] {result}")
        self._spin(f"[dim]waiting for the model (step {self.step + 1})[/]")

    def _on_model_retry(self, data: Mapping[str, Any]) -> None:
        attempt, limit = data.get("attempt"), data.get("max_retries")
        parts = []
        if attempt is not None:
            parts.append(f"attempt {attempt}" + (f" of {limit}" if limit is not None else ""))
        if isinstance(data.get("wait_seconds"), int | float):
            parts.append(f"in {data['wait_seconds']:.1f} s")
        reason = f": {_short(data['error'], 120)}" if data.get("error") else ""
        self._say(f"  [magenta]↻ retrying the model call[/] [dim]{escape(', '.join(parts) + reason)}[/]")

    def _on_steer(self, data: Mapping[str, Any]) -> None:
        for message in data.get("messages") or []:
            self._say(f"  [magenta]critic:[/] {escape(_short(message))}")

    def _on_critic(self, data: Mapping[str, Any]) -> None:
        left = data.get("deadline_in_seconds")
        reason = f" [dim]({escape(str(data['reason']))})[/]" if data.get("reason") else ""
        if isinstance(left, int | float):
            # Rounded to whole seconds, a deadline a few milliseconds away read "-0 s left".
            when = f"{left:.0f} s left" if left >= 0.5 else "now"
            self._say(f"  [magenta]critic moved the deadline:[/] {when}{reason}")

    def _on_child(self, data: Mapping[str, Any]) -> None:
        inner = data.get("data") or {}
        if data.get("type") == "tool.start" and isinstance(inner, Mapping):
            self._say(f"    [dim]↳ {escape(str(data.get('tool')))}: {escape(str(inner.get('name')))}(…)[/]")
        elif data.get("type") == "run.end" and isinstance(inner, Mapping):
            self._say(
                f"    [dim]↳ {escape(str(data.get('tool')))} ended {escape(str(inner.get('status')))}[/]"
            )


def summary_line(result: Result) -> str:
    """One line for people: status, steps, tool calls, tokens, seconds."""
    stats = result.stats
    tokens = stats.input_tokens + stats.output_tokens
    detail = f"{stats.input_tokens:,} in, {stats.output_tokens:,} out"
    if stats.thinking_tokens:
        detail += f", {stats.thinking_tokens:,} thinking"
    return (
        f"{result.status.value} · {stats.steps} step{'s' * (stats.steps != 1)} · "
        f"{stats.tool_calls} tool call{'s' * (stats.tool_calls != 1)} · {tokens:,} tokens ({detail}) · "
        f"{stats.runtime_seconds:.2f} s"
    )
