"""Plugin inspection: ``executus plugins``, and the commands plugins add to ``executus``.

`inspect_plugins` reports every plugin — the core's built-ins too — with its distribution, the
ports it fills and whether it is enabled, disabled or broken, and never raises.
`add_plugin_commands` calls every plugin's ``executus_register_commands`` hook once, when the
command line starts; a plugin whose commands fail is marked broken and its commands removed.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import typer
import typer.main
from rich.markup import escape
from rich.table import Table

from executus_core.cli.helpers import print_table, stderr, stdout
from executus_core.config import Settings, load_settings
from executus_core.errors import ConfigError
from executus_core.plugins import PluginRecord, build_plugin_manager
from executus_core.secrets import mask_text

__all__ = ["CommandState", "PluginReport", "add_plugin_commands", "inspect_plugins", "print_plugins"]


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@dataclasses.dataclass
class CommandState:
    """What the CLI learnt when it started: the records of the command-registration pass."""

    command_records: list[PluginRecord] = dataclasses.field(default_factory=list)
    entry_points: bool = True
    plugins: Sequence[object] = ()


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
    # List the broken ones instead of refusing to start. The executor warns and logs each plugin it
    # skips "(skipped: skip_broken_plugins is set)": true here, but not something the user set, so
    # neither reaches them; the table says what is broken.
    loaded.core.skip_broken_plugins = True
    quiet = _DropRecords()
    logger = logging.getLogger("executus")
    logger.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            executor = Executor(settings=loaded, entry_points=entry_points, plugins=plugins)
    except Exception as exc:  # skip_broken contains plugin errors; this is for the unforeseen
        notes.append(mask_text(f"cannot build an executor: {type(exc).__name__}: {exc}"))
        return PluginReport([], notes)
    finally:
        logger.removeFilter(quiet)
    by_name = {r.name: r for r in command_records}
    from executus_core.cli.header import describe_port

    ports = executor.ports
    objects = [*ports.audits, *ports.budgets, *ports.palettes, *ports.deliveries]
    objects += [pair for pair in (ports.critic, ports.checkpoints) if pair is not None]
    uses: dict[str, list[str]] = {}
    for name, obj in objects:
        described = describe_port(obj)
        if described:  # where the plugin keeps its data: "SQLite at ... (embedded: this machine only)"
            uses.setdefault(name, []).append(described)
    rows = []
    for record in executor.plugins:
        earlier = by_name.get(record.name)
        if earlier is not None and earlier.status == "broken" and record.status != "broken":
            record.status, record.error = "broken", earlier.error
        row = record.as_dict()
        row["provides"] = executor.provides.get(record.name, [])
        row["uses"] = uses.get(record.name, [])
        rows.append(row)
    executor.close()  # port objects may hold pools (webhook client, database engines)
    return PluginReport(rows, notes)


def print_plugins(report: PluginReport) -> None:
    """Print ``report`` as a table on stdout, and its notes under it."""
    out = stdout()
    table = Table()
    for column in ("plugin", "distribution", "version", "ports", "status"):
        table.add_column(column)
    colour = {"enabled": "green", "disabled": "dim", "broken": "bold red"}
    for row in report.plugins:
        ports = ", ".join(row["ports"]) or "—"
        if row["provides"]:
            ports += f" [dim]({escape(', '.join(row['provides']))})[/]"
        for described in row.get("uses", []):
            ports += f"\n[dim]on {escape(described)}[/]"
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
    print_table(table, title="executus plugins", console=out)
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


def add_plugin_commands(app: typer.Typer, state: CommandState) -> None:
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
        stderr().print(
            f"[yellow]warning:[/] loading plugin commands failed: {escape(f'{type(exc).__name__}: {exc}')}",
            highlight=False,
        )
