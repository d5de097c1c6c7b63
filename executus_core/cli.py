"""The ``executus`` command line.

::

    executus run AGENT "prompt"     run an agent: a TOML agent file, or module:attribute naming an Agent
    executus plugins                every plugin, the ports it fills, and whether it is enabled or broken

Batteries add their own commands (``executus runs``, ``executus recover``, ...) through the
``executus_register_commands`` hook, called for every loadable plugin when the command starts. A
plugin that fails to import, or whose hook raises, never takes the command line down: it is listed
as broken by ``executus plugins``. SQL batteries share one ``executus db upgrade`` through
`db_upgraders`.

Output: people get tables, live progress and colours on stderr, and the answer on stdout; scripts
get JSON on stdout with ``--json`` and nothing else there.

Exit codes: ``0`` the run ended ``ok`` (or was a ``--dry-run``); ``1`` it ended with another status
(the error is printed); ``2`` the command could not start (bad usage, an agent file that does not
load, bad settings, a broken plugin); ``130`` interrupted with Ctrl-C before the run could stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import importlib
import json
import signal
import sys
import tomllib
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer
import typer.main
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from executus_core.config import Settings, _env_value, load_settings
from executus_core.errors import ConfigError, ExecutusError, PluginError
from executus_core.plugins import PluginRecord, build_plugin_manager
from executus_core.tools import Tool, tool
from executus_core.types import Agent, ModelSettings, Result, RunEvent, RunStatus

if TYPE_CHECKING:
    from rich.status import Status

    from executus_core.executor import Executor

__all__ = [
    "DB_UPGRADERS",
    "AgentFile",
    "AgentFileError",
    "PluginReport",
    "Progress",
    "create_app",
    "db_upgraders",
    "describe_model",
    "inspect_plugins",
    "load_agent",
    "main",
    "parse_settings",
    "summary_line",
]

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_CANNOT_START = 2
EXIT_INTERRUPTED = 130

SCRIPTED_NOTE = "scripted replay, offline: no model is called"


# -------------------------------------------------------------------------------------------------
# Agent files
# -------------------------------------------------------------------------------------------------


class AgentFileError(ExecutusError):
    """An agent file (or ``module:attribute``) that cannot be loaded; the message says where and why."""


class AgentFile(BaseModel):
    """The TOML agent file ``executus run`` reads; every key is optional (``name`` defaults to the file's stem).

    Example (``examples/assistant.toml``)::

        name = "assistant"
        instructions = "You are a careful assistant. Use the tools for arithmetic and units."
        model = "default"                  # a tier or a model id: "openai:gpt-4o-mini"
        tools = ["run_status", "tools:calculate", "tools:convert_units"]
        max_steps = 8
        soft_timeout = 60                  # seconds
        hard_timeout = 120                 # seconds
        skill_palette = []
        subagent_palette = []

        [model_settings]
        temperature = 0

    ``tools`` entries are names of registered tools (``run_status``) or ``module:attribute``: the
    module is imported with the agent file's folder first on ``sys.path``, and the attribute is a
    `Tool` or a plain typed function (wrapped with `tool`).
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="The agent's name (default: the file's stem).")
    id: str = Field("", description="A stable id for audit and recovery (default: the name).")
    description: str = ""
    instructions: str = ""
    model: str = Field("default", description="A model id or a tier name.")
    tools: list[str] = Field(default_factory=list)
    skill_palette: list[str] = Field(default_factory=list)
    subagent_palette: list[str] = Field(default_factory=list)
    max_steps: int | None = Field(None, ge=1)
    soft_timeout: float | None = Field(None, gt=0)
    hard_timeout: float | None = Field(None, gt=0)
    model_settings: ModelSettings = Field(default_factory=ModelSettings)


def _import_attribute(reference: str, *, base: Path | None, what: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise AgentFileError(f"{what} {reference!r} is not module:attribute")
    if base is not None and str(base) not in sys.path:
        # Tool modules sit beside their agent file, the way pytest finds conftest.py.
        sys.path.insert(0, str(base))
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        where = f" (looked in {base} first)" if base is not None else ""
        raise AgentFileError(
            f"{what} {reference!r}: cannot import module {module_name!r}{where}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AgentFileError(
                f"{what} {reference!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return obj


def _load_tool(reference: str, base: Path) -> Tool | str:
    if ":" not in reference:
        return reference  # a registered tool's name: the run checks it against the registry
    obj = _import_attribute(reference, base=base, what="tool")
    if isinstance(obj, Tool):
        return obj
    if callable(obj):
        try:
            return tool(obj)
        except Exception as exc:
            raise AgentFileError(f"tool {reference!r}: cannot make a tool of it: {exc}") from exc
    raise AgentFileError(f"tool {reference!r} is {type(obj).__name__}, not a Tool or a function")


def load_agent(reference: str) -> Agent:
    """The `Agent` named by ``reference``: a TOML agent file (see `AgentFile`) or ``module:attribute``.

    A ``module:attribute`` reference is imported with the current directory first on ``sys.path``.
    Raises `AgentFileError` saying what is wrong and where.
    """
    path = Path(reference).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise AgentFileError(f"agent file {reference!r} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AgentFileError(f"cannot read agent file {reference!r}: {exc}") from exc
        try:
            spec = AgentFile.model_validate(data)
        except ValidationError as exc:
            problems = "\n  ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()
            )
            known = ", ".join(AgentFile.model_fields)
            raise AgentFileError(f"agent file {reference!r}:\n  {problems}\n  (keys: {known})") from None
        base = path.resolve().parent
        fields = spec.model_dump(exclude={"tools", "model_settings"})
        fields["name"] = spec.name or path.stem
        return Agent(
            **fields,
            tools=[_load_tool(ref, base) for ref in spec.tools],
            model_settings=spec.model_settings,
        )
    if ":" in reference:
        obj = _import_attribute(reference, base=Path.cwd(), what="agent")
        if not isinstance(obj, Agent):
            raise AgentFileError(f"agent {reference!r} is {type(obj).__name__}, not an executus Agent")
        return obj
    raise AgentFileError(
        f"agent {reference!r} is neither a file nor module:attribute; pass a TOML agent file "
        "(examples/assistant.toml) or an importable Agent (my_app.agents:helper)"
    )


# -------------------------------------------------------------------------------------------------
# Settings from the command line
# -------------------------------------------------------------------------------------------------


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``--setting key=value`` pairs into a settings mapping; dotted keys name sections.

    ``["max_steps=5", "models.fast=openai:gpt-4o-mini", "audit_sql.url=sqlite:///x.db"]`` gives
    ``{"max_steps": 5, "models": {"fast": "openai:gpt-4o-mini"}, "audit_sql": {"url": ...}}``.
    Values are read as JSON when they parse (numbers, booleans, lists), else as strings.
    """
    table: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        path = [part.strip() for part in key.split(".")]
        if not sep or not all(path):
            raise ConfigError(
                f"--setting {pair!r}: write key=value, with dots for sections (audit_sql.url=...)"
            )
        node = table
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--setting {pair!r}: {part} is set both as a value and as a table")
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(f"--setting {pair!r}: {key} is a table; set its keys ({key}.name=...)")
        node[path[-1]] = _env_value(path[-1], raw)  # read like EXECUTUS_* variables
    return table


# -------------------------------------------------------------------------------------------------
# Live progress
# -------------------------------------------------------------------------------------------------


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
        elif data.get("thinking"):
            # Thinking can run to pages: show that it happens, not all of it.
            self._spin(f"[dim]the model is thinking (step {self.step + 1})[/]")
        elif isinstance(data.get("tool_call"), Mapping) and data["tool_call"].get("name"):
            self._spin(f"[dim]the model is writing a call to {escape(str(data['tool_call']['name']))}[/]")

    def _on_step(self, data: Mapping[str, Any]) -> None:
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
        if isinstance(left, int | float):
            self._say(f"  [magenta]critic moved the deadline:[/] {left:.0f} s left")

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


# -------------------------------------------------------------------------------------------------
# Which model runs
# -------------------------------------------------------------------------------------------------


def _public_url(url: str) -> str:
    # Users put credentials in URLs now and then; never echo them.
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an endpoint)"
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def describe_model(executor: Executor, agent: Agent) -> str | None:
    """A line saying which model the run uses, and that a scripted replay calls no model.

    ``None`` when the model cannot be resolved; the run then ends with the registry's error.
    """
    from executus_core.providers.scripted import ScriptedModel

    model_id = agent.model_id
    resolved_id = model_id
    if isinstance(agent.model, str):
        try:
            resolved_id = executor.models.resolve_id(agent.model)
            model = executor.models.resolve(agent.model)
        except Exception:
            return None
    else:
        model = agent.model
    via = f" (tier {model_id!r})" if resolved_id != model_id else ""
    if isinstance(model, ScriptedModel) or resolved_id.startswith("scripted:"):
        return f"model: {resolved_id}{via} — {SCRIPTED_NOTE}"
    where = ""
    endpoint = getattr(model, "endpoint", None)
    for owner, attribute in (
        (model, "base_url"),
        (model, "url"),
        (endpoint, "display_url"),
        (model, "endpoint"),
    ):
        value = getattr(owner, attribute, None)
        if isinstance(value, str) and value:
            where = f" at {_public_url(value)}"
            break
    return f"model: {resolved_id}{via}{where}"


def describe_batteries(executor: Executor) -> str:
    """``batteries: audit_sql (audit), critic (critic)``: the installed plugins taking part in runs."""
    engaged = [
        f"{r.name} ({', '.join(p for p in r.ports if p != 'commands')})"
        for r in executor.plugins
        if r.status == "enabled" and r.distribution != "executus-core" and set(r.ports) - {"commands"}
    ]
    return "batteries: " + ", ".join(engaged) if engaged else ""


# -------------------------------------------------------------------------------------------------
# Plugins
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PluginReport:
    """What ``executus plugins`` shows: every plugin, and notes about settings it could not read."""

    plugins: list[dict[str, Any]]
    notes: list[str]


def inspect_plugins(
    *,
    settings: Mapping[str, Any] | None = None,
    entry_points: bool = True,
    plugins: Sequence[object] = (),
    command_records: Sequence[PluginRecord] = (),
) -> PluginReport:
    """Build an executor that skips broken plugins, and report every plugin's state; never raises.

    A plugin that fails to import, whose hook raises, or whose port object is not what the port
    asks for is reported ``broken`` with its error; the others are ``enabled`` (or ``disabled``).
    ``command_records`` are the records of the CLI's own start, which called
    ``executus_register_commands``: a failure there shows here too.
    """
    from executus_core.executor import Executor

    notes: list[str] = []
    try:
        loaded = load_settings(settings)
    except ConfigError as exc:
        notes.append(f"settings: {exc} (plugins were probed with default settings)")
        loaded = Settings({})
    loaded.core.skip_broken_plugins = True  # list the broken ones instead of refusing to start
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            executor = Executor(settings=loaded, entry_points=entry_points, plugins=plugins)
    except Exception as exc:  # skip_broken contains plugin errors; this is for the unforeseen
        notes.append(f"cannot build an executor: {type(exc).__name__}: {exc}")
        return PluginReport([], notes)
    by_name = {r.name: r for r in command_records}
    rows = []
    for record in executor.plugins:
        earlier = by_name.get(record.name)
        if earlier is not None and earlier.status == "broken" and record.status != "broken":
            record.status, record.error = "broken", earlier.error
        row = record.as_dict()
        row["provides"] = executor.provides.get(record.name, [])
        rows.append(row)
    executor.close()  # port objects may hold pools (webhook client, database engines)
    return PluginReport(rows, notes)


# -------------------------------------------------------------------------------------------------
# executus db upgrade: shared by every SQL battery
# -------------------------------------------------------------------------------------------------

DB_UPGRADERS = "executus_db_upgraders"
"""The attribute of the shared ``db`` group's `typer.Typer` that holds ``{name: step(settings) -> str}``."""


def db_upgraders(cli: typer.Typer) -> dict[str, Callable[[Settings], str]]:
    """The registry of ``executus db upgrade`` steps on ``cli``, adding the ``db`` group if it is not there.

    Each SQL battery has tables to migrate, and one ``executus db upgrade [NAME ...] [--json]`` runs
    them all. A SQL battery calls this from its ``executus_register_commands`` hook and adds its step,
    a function of the loaded `Settings` that migrates its tables and returns one line saying what it
    did::

        @hookimpl
        def executus_register_commands(cli):
            db_upgraders(cli)["audit_sql"] = upgrade_step

    The first call adds a ``db`` group to ``cli`` whose `typer.Typer` carries the registry (a dict)
    in its `DB_UPGRADERS` attribute; later calls find the group and return the same dict, so the
    command is registered once whichever battery comes first.

    ``executus db upgrade`` loads the settings (``-s key=value`` like ``executus run``), runs every
    step in name order (or only the named ones) and prints a line per step; with ``--json``, only
    ``{"upgraded": {name: {"ok": bool, "message": str}}}`` on stdout. A step that raises is reported
    as failed with its message (an `ExecutusError`'s own text, else the exception's type and text)
    and the others still run. Exit codes: ``0`` every step succeeded; ``1`` one failed; ``2`` bad
    settings or a name no battery registered.

    Raises ``ValueError`` when ``cli`` has a ``db`` group that does not follow this convention.
    """
    for group in cli.registered_groups:
        if group.name == "db":
            registry = getattr(group.typer_instance, DB_UPGRADERS, None)
            if not isinstance(registry, dict):
                raise ValueError(
                    "the `executus db` group was added by a plugin that does not share it "
                    f"(no {DB_UPGRADERS} registry on it); `executus db upgrade` cannot include the SQL "
                    "batteries: make that plugin add its step with executus_core.cli.db_upgraders"
                )
            return registry
    db = typer.Typer(help="The tables executus batteries keep in your databases.", no_args_is_help=True)
    steps: dict[str, Callable[[Settings], str]] = {}
    setattr(db, DB_UPGRADERS, steps)

    @db.command("upgrade")
    def upgrade_command(
        names: Annotated[
            list[str] | None,
            typer.Argument(
                help="Only these batteries (default: every installed SQL battery).", show_default=False
            ),
        ] = None,
        setting: Annotated[
            list[str] | None,
            typer.Option(
                "--setting", "-s", help="A setting as key=value (repeatable), as for run: audit_sql.url=..."
            ),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print JSON for scripts on stdout, and nothing else.")
        ] = False,
    ) -> None:
        """Create or migrate the tables of every installed SQL battery (safe to run again)."""
        err = _stderr()
        try:
            settings = load_settings(parse_settings(setting or []))
        except ConfigError as exc:
            raise _fail(err, str(exc)) from None
        unknown = sorted(set(names or ()) - set(steps))
        if unknown:
            raise _fail(
                err,
                f"no SQL battery named {', '.join(unknown)}; installed: {', '.join(sorted(steps)) or 'none'}",
            )
        report: dict[str, dict[str, Any]] = {}
        for name, step in sorted(steps.items()):
            if names and name not in names:
                continue
            try:
                report[name] = {"ok": True, "message": step(settings)}
            except Exception as exc:
                # An ExecutusError's message is written for people already; others need their type.
                message = str(exc) if isinstance(exc, ExecutusError) else f"{type(exc).__name__}: {exc}"
                report[name] = {"ok": False, "message": message}
        if as_json:
            typer.echo(json.dumps({"upgraded": report}, indent=2))
        else:
            out = Console(soft_wrap=True)
            for name, outcome in report.items():
                mark = "[green]✓[/]" if outcome["ok"] else "[bold red]✗[/]"
                out.print(f"{mark} [bold]{escape(name)}[/]: {escape(outcome['message'])}", highlight=False)
            if not report:
                out.print("no SQL battery is installed: nothing to upgrade")
        if not all(outcome["ok"] for outcome in report.values()):
            raise typer.Exit(EXIT_RUN_FAILED)

    cli.add_typer(db, name="db")
    return steps


# -------------------------------------------------------------------------------------------------
# The app
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _State:
    """What the CLI learnt when it started: the records of the command-registration pass."""

    command_records: list[PluginRecord] = dataclasses.field(default_factory=list)
    entry_points: bool = True
    plugins: Sequence[object] = ()


def _stderr() -> Console:
    # soft_wrap: long lines are left for the terminal to wrap, and logs keep one event per line.
    return Console(stderr=True, soft_wrap=True)


def _default_caller() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "cli"


def _print_version(value: bool) -> None:
    if value:
        from executus_core import __version__

        typer.echo(f"executus-core {__version__}")
        raise typer.Exit(0)


def _fail(console: Console, message: str, code: int = EXIT_CANNOT_START) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def create_app(*, entry_points: bool = True, plugins: Sequence[object] = ()) -> typer.Typer:
    """Build the ``executus`` app: the core's commands, then every plugin's.

    Args:
        entry_points: load installed plugins (tests turn this off and pass ``plugins``).
        plugins: plugin objects to load beside the installed ones.
    """
    app = typer.Typer(
        name="executus",
        help="Run LLM agents, and see which executus plugins are installed.",
        no_args_is_help=True,
        add_completion=False,
        # Locals can hold API keys and webhook secrets: tracebacks never show them.
        pretty_exceptions_show_locals=False,
    )
    state = _State(entry_points=entry_points, plugins=plugins)

    @app.callback()
    def _root(
        version: Annotated[
            bool,
            typer.Option(
                "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
            ),
        ] = False,
    ) -> None:
        """executus: run LLM agents; batteries fill its ports."""

    @app.command("run")
    def run_command(
        agent: Annotated[str, typer.Argument(help="A TOML agent file, or module:attribute naming an Agent.")],
        prompt: Annotated[str, typer.Argument(help="What to ask the agent.")],
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                "-m",
                help="Use this model instead of the agent's: an id (openai:gpt-4o-mini, "
                "scripted:replay.json) or a tier.",
            ),
        ] = None,
        caller: Annotated[
            str | None, typer.Option("--caller", help="The caller id budgets and audit see (default: you).")
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the Result as JSON on stdout, and nothing else.")
        ] = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print the first request instead of sending it.")
        ] = False,
        setting: Annotated[
            list[str] | None,
            typer.Option(
                "--setting",
                "-s",
                help="A setting as key=value (repeatable); dotted keys for sections: audit_sql.url=...",
            ),
        ] = None,
        stream: Annotated[
            bool,
            typer.Option("--stream", help="Ask the model to stream its answer, and show it as it comes."),
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    ) -> None:
        """Run AGENT on PROMPT: live progress on stderr, the answer on stdout."""
        err = _stderr()
        try:
            loaded = load_agent(agent)
            if model:
                loaded = loaded.model_copy(update={"model": model})
            if stream:
                streamed = loaded.model_settings.model_copy(update={"stream": True})
                loaded = loaded.model_copy(update={"model_settings": streamed})
            overrides = parse_settings(setting or [])
        except ExecutusError as exc:
            raise _fail(err, str(exc)) from None
        code = asyncio.run(
            _run(
                loaded,
                prompt,
                caller=caller or _default_caller(),
                as_json=as_json,
                dry_run=dry_run,
                settings=overrides,
                progress=not (quiet or as_json),
                err=err,
                state=state,
            )
        )
        raise typer.Exit(code)

    @app.command("plugins")
    def plugins_command(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
        setting: Annotated[
            list[str] | None,
            typer.Option("--setting", "-s", help="A setting as key=value (repeatable), as for run."),
        ] = None,
    ) -> None:
        """List every plugin, built-ins too: its distribution, the ports it fills, and its status."""
        err = _stderr()
        try:
            overrides = parse_settings(setting or [])
        except ConfigError as exc:
            raise _fail(err, str(exc)) from None
        report = inspect_plugins(
            settings=overrides,
            entry_points=state.entry_points,
            plugins=state.plugins,
            command_records=state.command_records,
        )
        if as_json:
            typer.echo(json.dumps({"plugins": report.plugins, "notes": report.notes}, indent=2))
        else:
            _print_plugins(report)
        if any(row["status"] == "broken" for row in report.plugins):
            err.print(
                "[yellow]a broken plugin stops `executus run` and Executor(): fix or uninstall it, "
                "or disable it (EXECUTUS_DISABLE=name)[/]",
                highlight=False,
            )

    _add_plugin_commands(app, state)
    return app


def _print_plugins(report: PluginReport) -> None:
    out = Console()
    table = Table(title="executus plugins", title_justify="left")
    for column in ("plugin", "distribution", "version", "ports", "status"):
        table.add_column(column)
    colour = {"enabled": "green", "disabled": "dim", "broken": "bold red"}
    for row in report.plugins:
        ports = ", ".join(row["ports"]) or "—"
        if row["provides"]:
            ports += f" [dim]({escape(', '.join(row['provides']))})[/]"
        status = f"[{colour[row['status']]}]{row['status']}[/]"
        if row["error"]:
            status += f"\n[red]{escape(row['error'])}[/]"
        table.add_row(
            escape(row["name"]),
            escape(row["distribution"] or "—"),
            escape(row["version"] or "—"),
            ports,
            status,
        )
    out.print(table)
    for note in report.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def _command_names(app: typer.Typer, start: tuple[int, int] = (0, 0)) -> list[str]:
    """The names of the commands and groups registered on ``app`` from index ``start`` on."""
    names = [
        info.name or typer.main.get_command_name(getattr(info.callback, "__name__", ""))
        for info in app.registered_commands[start[0] :]
    ]
    for group in app.registered_groups[start[1] :]:
        name = group.name or getattr(getattr(group.typer_instance, "info", None), "name", None)
        if isinstance(name, str) and name:
            names.append(name)
    return names


def _add_plugin_commands(app: typer.Typer, state: _State) -> None:
    """Call ``executus_register_commands(cli=app)`` for every loadable plugin; never raise.

    Each plugin's additions are checked before the next plugin is asked: commands that do not
    build (typer would fail on them only when the CLI runs, taking every command down) or that take
    a name already in use (``run``...) are removed again, and the plugin is marked broken.
    """
    try:
        try:
            disable = load_settings().core.disable
        except ConfigError:
            disable = []  # `run` and `plugins` report the settings error themselves
        pm, records = build_plugin_manager(
            plugins=state.plugins, disable=disable, entry_points=state.entry_points
        )
        state.command_records = records
        for impl in reversed(pm.hook.executus_register_commands.get_hookimpls()):
            name = pm.get_name(impl.plugin) or ""
            before = (len(app.registered_commands), len(app.registered_groups))
            taken = set(_command_names(app))
            try:
                impl.function(*(app for _ in impl.argnames))
                clashes = sorted(set(_command_names(app, before)) & taken)
                if clashes:
                    raise ValueError(f"it adds command {', '.join(clashes)}, which exists already")
                typer.main.get_command(app)  # build now, so a bad command fails here, not in the CLI
            except Exception as exc:
                del app.registered_commands[before[0] :]
                del app.registered_groups[before[1] :]
                for record in records:
                    if record.name == name:
                        record.status = "broken"
                        record.error = f"executus_register_commands: {type(exc).__name__}: {exc}"
    except Exception as exc:  # whatever happens, the core's commands stay usable
        _stderr().print(
            f"[yellow]warning:[/] loading plugin commands failed: {escape(f'{type(exc).__name__}: {exc}')}",
            highlight=False,
        )


async def _run(
    agent: Agent,
    prompt: str,
    *,
    caller: str,
    as_json: bool,
    dry_run: bool,
    settings: dict[str, Any],
    progress: bool,
    err: Console,
    state: _State,
) -> int:
    from executus_core.executor import Executor

    try:
        executor = Executor(settings=settings, entry_points=state.entry_points, plugins=state.plugins)
    except (ConfigError, PluginError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
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

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        async with executor:
            if not as_json:
                line = describe_model(executor, agent)
                header = f"[bold]{escape(agent.name)}[/] · caller {escape(caller)}"
                err.print(header + (f"\n[dim]{escape(line)}[/]" if line else ""), highlight=False)
                if batteries := describe_batteries(executor):
                    err.print(f"[dim]{escape(batteries)}[/]", highlight=False)
            if show is not None and not dry_run:
                show.start()
            try:
                result = await executor.run(
                    agent, prompt, caller_id=caller, dry_run=dry_run, on_event=show, run_id=run_id
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
    return _report(result, as_json=as_json, err=err)


def _report(result: Result, *, as_json: bool, err: Console) -> int:
    code = EXIT_OK if result.status in (RunStatus.OK, RunStatus.DRY_RUN) else EXIT_RUN_FAILED
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return code
    out = Console()
    if result.status is RunStatus.DRY_RUN:
        typer.echo(json.dumps(result.request, indent=2, ensure_ascii=False, default=str))
        err.print("[dim]dry run: the request above was not sent[/]", highlight=False)
        return code
    if result.output:
        if out.is_terminal:
            from rich.markdown import Markdown

            out.print(Markdown(result.output))
        else:
            typer.echo(result.output)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if result.status is not RunStatus.OK:
        label = "error" if result.status is RunStatus.ERROR else result.status.value
        err.print(f"[bold red]{label}:[/] {escape(result.error or result.status.value)}", highlight=False)
    if result.ok or result.stats.steps:
        # A run refused before its first model call has nothing to sum up beyond its error.
        colour = "green" if result.ok else "red"
        err.print(f"[{colour}]{escape(summary_line(result))}[/]", highlight=False)
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """The ``executus`` console script."""
    app = create_app()
    app(args=list(argv) if argv is not None else None, prog_name="executus")
