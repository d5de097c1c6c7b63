"""The exit codes and the options every ``executus`` command shares (re-exported by `executus_core.cli.helpers`)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = [
    "EXIT_CANNOT_START",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "RUN_ID_LENGTH",
    "DryRunOption",
    "JsonOption",
    "SettingOption",
    "YesOption",
]

EXIT_OK = 0
"""The command did what it was asked (a run ended ``ok``, or it was a ``--dry-run``)."""
EXIT_FAILED = 1
"""The command started but its work failed: a run did not end ``ok``, a database could not be read."""
EXIT_CANNOT_START = 2
"""Bad usage: an unknown option (typer's code too), a bad setting, an agent or model that does not load."""
EXIT_INTERRUPTED = 130
"""Ctrl-C before the work could stop."""

RUN_ID_LENGTH = 12
"""How many characters of a run id people see (like git's short hashes); ``--json`` shows all of them."""

SettingOption = Annotated[
    list[str] | None,
    typer.Option(
        "--setting",
        "-s",
        metavar="KEY=VALUE",
        help="A setting (repeatable); dots for sections: -s audit_sql.url=sqlite:///runs.db",
        show_default=False,
    ),
]
"""The ``-s/--setting KEY=VALUE`` option every command takes; read it with `settings_from_options`."""

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts on stdout, and nothing else there.")
]
"""The ``--json`` flag."""

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
"""The ``--yes/-y`` flag of commands that delete (see `confirm`)."""

DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Say what would be done, and do nothing.")]
"""The ``--dry-run`` flag of commands that change or delete something."""
