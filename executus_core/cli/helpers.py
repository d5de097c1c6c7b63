"""What a battery needs to add ``executus`` commands that look and behave like the core's.

A battery's ``executus_register_commands(cli)`` hook adds typer commands to the root app; this module
is the one place it imports from, so the command line's internals can change without breaking it::

    from executus_core.cli.helpers import (
        EXIT_CANNOT_START, JsonOption, SettingOption, fail, print_table, settings_from_options, short_id,
    )

    @runs.command("list")
    def list_command(setting: SettingOption = None, as_json: JsonOption = False) -> None:
        settings = settings_from_options(setting)       # exit 2 with a clear message on bad settings
        ...
        print_table(table, title=f"runs in {where}")    # fits the terminal; never cut when piped

Conventions every command follows (docs/cli.md has the table):

- exit codes: `EXIT_OK` (0), `EXIT_FAILED` (1: the work failed, e.g. a database could not be read),
  `EXIT_CANNOT_START` (2: bad usage or settings; also typer's own code for a bad option),
  `EXIT_INTERRUPTED` (130);
- people get tables and progress on stderr/stdout with colours; ``--json`` prints JSON on stdout and
  nothing else there;
- errors are one ``error: ...`` line on stderr saying what went wrong and what to do (`fail`);
- run ids are shown `RUN_ID_LENGTH` characters long (`short_id`), and commands that take a run id
  accept that prefix; ``--json`` always carries the full id;
- a command that deletes asks first (`confirm`), unless ``--yes``; ``--dry-run`` says what it would do.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from executus_core.cli.agent_files import AgentFile, AgentFileError, load_agent
from executus_core.cli.db import DB_UPGRADERS, db_upgraders
from executus_core.cli.options import (
    EXIT_CANNOT_START,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    RUN_ID_LENGTH,
    DryRunOption,
    JsonOption,
    SettingOption,
    YesOption,
)
from executus_core.config import Settings, _env_value, load_settings
from executus_core.errors import ConfigError

__all__ = [
    "DB_UPGRADERS",
    "EXIT_CANNOT_START",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "RUN_ID_LENGTH",
    "AgentFile",
    "AgentFileError",
    "DryRunOption",
    "JsonOption",
    "SettingOption",
    "YesOption",
    "confirm",
    "db_upgraders",
    "fail",
    "load_agent",
    "parse_settings",
    "print_table",
    "settings_from_options",
    "short_id",
    "stderr",
    "stdout",
]


def stderr() -> Console:
    """The console for people: progress, notes and errors go to stderr, so stdout stays the answer."""
    # soft_wrap: long lines are left for the terminal to wrap, and logs keep one event per line.
    return Console(stderr=True, soft_wrap=True)


def stdout() -> Console:
    """The console for what a command answers (tables, text) on stdout."""
    return Console(soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr and return the `typer.Exit` to raise: ``raise fail("...")``."""
    stderr().print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def short_id(run_id: str) -> str:
    """The run id as people see it: its first `RUN_ID_LENGTH` characters (ids that are not hex stay whole).

    The core's run ids are uuid4 hex (32 characters); 12 of them are unique in any real history, and
    the commands that take a run id accept such a prefix.
    """
    if len(run_id) > RUN_ID_LENGTH and all(c in "0123456789abcdef" for c in run_id):
        return run_id[:RUN_ID_LENGTH]
    return run_id


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``--setting key=value`` pairs into a settings mapping; dotted keys name sections.

    ``["max_steps=5", "models.fast=openai:gpt-4o-mini", "audit_sql.url=sqlite:///x.db"]`` gives
    ``{"max_steps": 5, "models": {"fast": "openai:gpt-4o-mini"}, "audit_sql": {"url": ...}}``.
    Values are read as JSON when they parse (numbers, booleans, lists), else as strings.
    Raises `ConfigError` on a pair that is not ``key=value``.
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


def settings_from_options(pairs: Sequence[str] | None) -> Settings:
    """The settings a command runs with: ``-s`` pairs over ``EXECUTUS_*`` over pyproject.toml.

    A malformed pair or a bad setting prints ``error: ...`` and exits `EXIT_CANNOT_START`.
    """
    try:
        return load_settings(parse_settings(pairs or []))
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CANNOT_START) from None


def confirm(question: str, *, yes: bool) -> None:
    """Ask ``question [y/N]`` on the terminal before something is deleted; exit 2 unless answered yes.

    With ``yes`` (the ``--yes`` flag) it does not ask. Without a terminal to ask on (a script, a
    pipe), it refuses and says to pass ``--yes``: nothing is deleted by surprise.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise fail(f"{question} Not asking without a terminal: pass --yes to go ahead.", EXIT_CANNOT_START)
    if not typer.confirm(question, default=False, err=True):
        raise fail("nothing was done (not confirmed)", EXIT_CANNOT_START)


def print_table(table: Table, *, title: str | None = None, console: Console | None = None) -> None:
    """Print ``table`` (with ``title``, plain text, as its own line above it) so it fits where it is shown.

    On a terminal the table takes the terminal's width and its cells wrap; piped or redirected (no
    width to respect), it is printed at its natural width, so no column is ever cut at 80 characters.
    The title is a plain line, left for the terminal to wrap, never squeezed into the table's width.
    """
    out = console or stdout()
    if title:
        out.print(f"[bold]{escape(title)}[/]", highlight=False, soft_wrap=True)
    if out.is_terminal:
        out.print(table)
        return
    natural = Measurement.get(out, out.options.update(width=100_000), table).maximum
    wide = Console(
        file=out.file,
        width=max(natural, 20),
        force_terminal=False,
        no_color=out.no_color,
        color_system=None,
        soft_wrap=False,
    )
    wide.print(table)
