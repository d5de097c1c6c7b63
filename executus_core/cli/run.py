"""``executus run``: build the agent, check it can start, run it with live progress, report the end.

Everything that can be known before the first model call is checked first — the agent file, the
prompt, the settings, the plugins, the model, the tools — and a problem there exits
`EXIT_CANNOT_START` (2) with one line saying what to fix. Once the run starts, it always ends with
its `Result`: exit `EXIT_OK` (0) when it ended ``ok`` (or was a ``--dry-run``), else `EXIT_FAILED` (1).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from executus_core.cli.agent_files import load_agent
from executus_core.cli.header import SCRIPTED_NOTE, describe_batteries, describe_model
from executus_core.cli.helpers import parse_settings, short_id, stderr
from executus_core.cli.options import EXIT_CANNOT_START, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from executus_core.cli.plugins import CommandState
from executus_core.cli.progress import Progress, summary_line
from executus_core.config import _env_value
from executus_core.errors import ConfigError, ExecutusError, PluginError
from executus_core.tools import Tool
from executus_core.types import Agent, Result, RunStatus

__all__ = ["RunRequest", "build_agent", "parse_options", "read_prompt", "resolve_run_id", "run_command"]

_CLI_AGENT = "executus"
"""The name of the agent ``executus run --model ID "prompt"`` makes when no agent file is given."""


class RunRequest:
    """What ``executus run`` was asked, once its arguments are parsed."""

    def __init__(
        self,
        *,
        agent: str | None,
        prompt: str,
        model: str | None = None,
        system: str | None = None,
        options: Sequence[str] = (),
        settings: Sequence[str] = (),
        caller: str | None = None,
        as_json: bool = False,
        dry_run: bool = False,
        stream: bool = False,
        quiet: bool = False,
        continue_run: str | None = None,
    ) -> None:
        self.agent = agent
        self.prompt = prompt
        self.model = model
        self.system = system
        self.options = list(options)
        self.settings = list(settings)
        self.caller = caller
        self.as_json = as_json
        self.dry_run = dry_run
        self.stream = stream
        self.quiet = quiet
        self.continue_run = continue_run


async def resolve_run_id(executor: Any, given: str) -> str:
    """The run id ``given`` stands for: itself when an audit knows it, else the one run whose id
    starts with it (``--continue 3f2a9c``, as ``runs show`` takes), asked of the audits that can
    find runs by prefix. Raises `ConfigError` when the prefix matches several runs."""
    audits = [audit for _, audit in executor.ports.audits]
    for audit in audits:
        read = getattr(audit, "transcript", None)
        if callable(read):
            with contextlib.suppress(Exception):
                if await read(given) is not None:
                    return given
    for audit in audits:
        find = getattr(audit, "find_runs", None)
        if callable(find):
            try:
                found = list(await find(given, limit=5))
            except Exception:
                continue
            if len(found) == 1 and isinstance(found[0], str):
                return found[0]
            if len(found) > 1:
                raise ConfigError(
                    f"--continue {given!r} matches several runs: {', '.join(found)}; give more of the id"
                )
    return given  # the run's own error says what is wrong with it


def _default_caller() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "cli"


def read_prompt(prompt: str) -> str:
    """The prompt to send: ``-`` reads it from stdin. Raises `ConfigError` when it is empty."""
    if prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise ConfigError('the prompt is "-" (read stdin), but stdin is a terminal: pipe the prompt in')
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise ConfigError(
            "the prompt is empty: say what to ask the agent (or pass - and pipe it in on stdin)"
        )
    return prompt


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``-o key=value`` model settings as a mapping; values read as JSON when they parse (``0.2``, ``true``).

    ``["temperature=0", "max_tokens=200", "tool_choice=auto"]`` gives ``{"temperature": 0,
    "max_tokens": 200, "tool_choice": "auto"}``. Raises `ConfigError` on a pair that is not key=value.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--option {pair!r}: write key=value, for example -o temperature=0")
        options[key] = _env_value(key, raw)
    return options


def build_agent(request: RunRequest) -> Agent:
    """The `Agent` to run: the agent file (or ``module:attribute``), or a plain one for ``--model`` alone.

    ``--model``, ``--system``, ``--option`` and ``--stream`` then override what the agent says.
    Raises `ExecutusError` (an agent file that does not load, a bad option).
    """
    if request.agent is None:
        agent = Agent(name=_CLI_AGENT, model=request.model or "default")
    else:
        agent = load_agent(request.agent)
    update: dict[str, Any] = {}
    if request.model:
        update["model"] = request.model
    if request.system is not None:
        update["instructions"] = request.system
    options = parse_options(request.options)
    if request.stream:
        options["stream"] = True
    if options:
        try:
            update["model_settings"] = agent.model_settings.model_validate(
                {**agent.model_settings.model_dump(exclude_unset=True), **options}
            )
        except ValueError as exc:
            raise ConfigError(f"--option: {exc}") from None
    return agent.model_copy(update=update) if update else agent


def _check_can_start(executor: Any, agent: Agent) -> str | None:
    """Why ``agent`` cannot start on ``executor`` (its model or a tool name), or None."""
    if isinstance(agent.model, str):
        try:
            executor.models.resolve(agent.model)
        except Exception as exc:
            message = f"model {agent.model!r}: {exc}"
            if ":" not in agent.model and "unknown model or tier" in str(exc):
                message += (
                    f"; map the tier in pyproject.toml ([tool.executus.models] {agent.model} = "
                    f'"openai:gpt-4o-mini"), or with -s models.{agent.model}=openai:gpt-4o-mini'
                )
            return message
    unknown = [t for t in agent.tools if isinstance(t, str) and t not in executor.tools]
    if unknown:
        known = ", ".join(sorted(executor.tools)) or "none"
        return (
            f"agent {agent.name!r} names unknown tool {', '.join(map(repr, unknown))}; registered tools: "
            f"{known} (a tool in a module is written module:attribute, e.g. tools:calculate)"
        )
    names = [t if isinstance(t, str) else t.name for t in agent.tools if isinstance(t, str | Tool)]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        return f"agent {agent.name!r} has two tools named {', '.join(map(repr, doubled))}"
    return None


def run_command(request: RunRequest, state: CommandState) -> int:
    """Run ``executus run`` as asked; return its exit code."""
    err = stderr()
    try:
        prompt = read_prompt(request.prompt)
        agent = build_agent(request)
        overrides = parse_settings(request.settings)
    except ExecutusError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_CANNOT_START
    return asyncio.run(
        _run(
            agent,
            prompt,
            caller=request.caller or _default_caller(),
            as_json=request.as_json,
            dry_run=request.dry_run,
            settings=overrides,
            progress=not (request.quiet or request.as_json),
            err=err,
            state=state,
            continue_run=request.continue_run,
        )
    )


@contextlib.contextmanager
def _logs_through(progress: Progress | None) -> Any:
    """Show the executus loggers' warnings as progress lines for the run (see `Progress.log_handler`)."""
    if progress is None:
        yield
        return
    handler = progress.log_handler()
    loggers = [logging.getLogger("executus")] + [
        logging.getLogger(name)
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith("executus_") and "." not in name
    ]
    saved = [(logger, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False  # shown once, through the progress console
    try:
        yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate


async def _run(
    agent: Agent,
    prompt: str,
    *,
    caller: str,
    as_json: bool,
    dry_run: bool,
    settings: Mapping[str, Any],
    progress: bool,
    err: Console,
    state: CommandState,
    continue_run: str | None = None,
) -> int:
    from executus_core.executor import Executor

    try:
        executor = Executor(settings=settings, entry_points=state.entry_points, plugins=state.plugins)
    except (ConfigError, PluginError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_CANNOT_START
    problem = _check_can_start(executor, agent)
    if problem is not None:
        await executor.shutdown()
        err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
        return EXIT_CANNOT_START
    run_id = uuid.uuid4().hex
    show = Progress(err) if progress else None
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    presses = 0

    def on_interrupt() -> None:
        # First Ctrl-C: stop the run and still print its Result; second: stop waiting.
        nonlocal presses
        presses += 1
        if presses == 1 and executor.cancel(run_id):
            err.print("[yellow]cancelling the run (Ctrl-C again to stop waiting)[/]")
        elif main_task is not None:
            main_task.cancel()

    model_line = describe_model(executor, agent)
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        async with executor:
            if continue_run is not None:
                try:
                    continue_run = await resolve_run_id(executor, continue_run)
                except ConfigError as exc:
                    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
                    return EXIT_CANNOT_START
            if not as_json:
                header = f"[bold]{escape(agent.name)}[/] · caller {escape(caller)} · run {short_id(run_id)}"
                if continue_run is not None:
                    header += f" · continues {short_id(continue_run)}"
                err.print(header + (f"\n[dim]{escape(model_line)}[/]" if model_line else ""), highlight=False)
                if batteries := describe_batteries(executor):
                    err.print(f"[dim]{escape(batteries)}[/]", highlight=False)
            if show is not None and not dry_run:
                show.start()
            try:
                with _logs_through(show):
                    result = await executor.run(
                        agent,
                        prompt,
                        caller_id=caller,
                        dry_run=dry_run,
                        on_event=show,
                        run_id=run_id,
                        continue_run=continue_run,
                    )
            finally:
                if show is not None:
                    show.close()
    except asyncio.CancelledError:
        err.print("[bold red]interrupted[/]")
        return EXIT_INTERRUPTED
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
    scripted = model_line is not None and SCRIPTED_NOTE in model_line
    return _report(
        result, as_json=as_json, err=err, progress=show, interrupted=presses > 0, scripted=scripted
    )


def _report(
    result: Result,
    *,
    as_json: bool,
    err: Console,
    out: Console | None = None,
    progress: Progress | None = None,
    interrupted: bool = False,
    scripted: bool = False,
) -> int:
    code = EXIT_OK if result.status in (RunStatus.OK, RunStatus.DRY_RUN) else EXIT_FAILED
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return code
    out = out or Console()
    if result.status is RunStatus.DRY_RUN:
        typer.echo(json.dumps(result.request, indent=2, ensure_ascii=False, default=str))
        err.print("[dim]dry run: the request above was not sent[/]", highlight=False)
        return code
    if result.output:
        shown = progress is not None and progress.answer_was_shown(result.output)
        if out.is_terminal and err.is_terminal and shown:
            pass  # streamed on this same terminal already: not twice
        elif out.is_terminal:
            from rich.markdown import Markdown

            out.print(Markdown(result.output))
        else:
            out.file.write(result.output + "\n")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if scripted and result.stats.steps:
        err.print(
            "[yellow]note:[/] a scripted replay answered: your prompt was not sent to any model, and the "
            "answer is the recording's, whatever you asked",
            highlight=False,
        )
    if result.status is RunStatus.CANCELLED and interrupted:
        err.print("[bold red]cancelled:[/] you pressed Ctrl-C", highlight=False)
    elif result.status is not RunStatus.OK:
        label = "error" if result.status is RunStatus.ERROR else result.status.value
        err.print(f"[bold red]{label}:[/] {escape(result.error or result.status.value)}", highlight=False)
    if result.ok or result.stats.steps:
        # A run refused before its first model call has nothing to sum up beyond its error.
        colour = "green" if result.ok else "red"
        err.print(f"[{colour}]{escape(summary_line(result))}[/]", highlight=False)
    return code
