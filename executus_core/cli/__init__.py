"""The ``executus`` command line.

::

    executus run [AGENT] PROMPT     run an agent (a TOML agent file, or module:attribute), or just --model
    executus models                 the model providers, named endpoints, and what each tier resolves to
    executus plugins                every plugin, the ports it fills, and whether it is enabled or broken

Batteries add their own commands (``executus runs``, ``executus recover``, ``executus budget``,
``executus db upgrade``, ...) through the ``executus_register_commands`` hook; they import only
from `executus_core.cli.helpers`, this package's public module for them.

Where things are:

- `executus_core.cli.app`: the typer app and its options (`create_app`, `main`);
- `executus_core.cli.run`: what ``executus run`` does, from arguments to exit code;
- `executus_core.cli.agent_files`: the TOML agent file format and `load_agent`;
- `executus_core.cli.progress`: live progress on stderr (`Progress`) and the summary line;
- `executus_core.cli.header`: the run header (which model, which batteries, which were left out);
- `executus_core.cli.models`: ``executus models``;
- `executus_core.cli.plugins`: ``executus plugins`` and the plugins' command registration;
- `executus_core.cli.db`: the shared ``executus db upgrade`` group of the SQL batteries;
- `executus_core.cli.helpers`: settings options, exit codes, errors, tables and run ids for batteries.

Exit codes (docs/cli.md has the table): ``0`` done (a run ended ``ok``, or was a ``--dry-run``);
``1`` the work failed (a run ended with another status, a database could not be read); ``2`` the
command could not start (bad usage, an agent file or model that does not load, a bad setting, a
broken plugin); ``130`` interrupted with Ctrl-C before the run could stop.
"""

from __future__ import annotations

from executus_core.cli.agent_files import AgentFile, AgentFileError, load_agent
from executus_core.cli.app import create_app, main
from executus_core.cli.db import DB_UPGRADERS, db_upgraders
from executus_core.cli.header import describe_batteries, describe_model
from executus_core.cli.helpers import parse_settings
from executus_core.cli.plugins import PluginReport, inspect_plugins
from executus_core.cli.progress import Progress, summary_line

__all__ = [
    "DB_UPGRADERS",
    "AgentFile",
    "AgentFileError",
    "PluginReport",
    "Progress",
    "create_app",
    "db_upgraders",
    "describe_batteries",
    "describe_model",
    "inspect_plugins",
    "load_agent",
    "main",
    "parse_settings",
    "summary_line",
]
