"""``executus db upgrade``: one command that migrates the tables of every installed SQL battery.

Each SQL battery adds its step with `db_upgraders` (re-exported by `executus_core.cli.helpers`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from executus_core.cli.options import EXIT_CANNOT_START, EXIT_FAILED, JsonOption, SettingOption
from executus_core.config import Settings
from executus_core.errors import ExecutusError

__all__ = ["DB_UPGRADERS", "db_upgraders"]


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
                    "batteries: make that plugin add its step with executus_core.cli.helpers.db_upgraders"
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
        setting: SettingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Create or migrate the tables of every installed SQL battery (safe to run again)."""
        from executus_core.cli.helpers import fail, settings_from_options

        settings = settings_from_options(setting)
        unknown = sorted(set(names or ()) - set(steps))
        if unknown:
            raise fail(
                f"no SQL battery named {', '.join(unknown)}; installed: {', '.join(sorted(steps)) or 'none'}",
                EXIT_CANNOT_START,
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
            raise typer.Exit(EXIT_FAILED)

    cli.add_typer(db, name="db")
    return steps
