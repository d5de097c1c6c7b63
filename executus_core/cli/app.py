"""The ``executus`` app: the core's commands (``run``, ``models``, ``plugins``), then every plugin's.

`create_app` builds a fresh `typer.Typer` each time (tests build many); `main` is the console script.
The commands' work lives in modules named for it: `executus_core.cli.run`, `executus_core.cli.models`,
`executus_core.cli.plugins`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from executus_core.cli._help import use_plain_help_types
from executus_core.cli.approval import register as register_approval_commands
from executus_core.cli.helpers import (
    EXIT_CANNOT_START,
    JsonOption,
    SettingOption,
    fail,
    parse_settings,
    print_table,
    stderr,
    stdout,
)
from executus_core.cli.plugins import CommandState, add_plugin_commands, inspect_plugins, print_plugins
from executus_core.cli.run import RunRequest, run_command
from executus_core.errors import ConfigError, PluginError

__all__ = ["create_app", "main"]


def _print_version(value: bool) -> None:
    if value:
        from executus_core import __version__

        typer.echo(f"executus-core {__version__}")
        raise typer.Exit(0)


def create_app(*, entry_points: bool = True, plugins: Sequence[object] = ()) -> typer.Typer:
    """Build the ``executus`` app: the core's commands, then every plugin's.

    Args:
        entry_points: load installed plugins (tests turn this off and pass ``plugins``).
        plugins: plugin objects to load beside the installed ones.
    """
    use_plain_help_types()
    app = typer.Typer(
        name="executus",
        help="Run LLM agents, and see which models and executus plugins are installed.",
        no_args_is_help=True,
        add_completion=False,
        # Locals can hold API keys and webhook secrets: tracebacks never show them.
        pretty_exceptions_show_locals=False,
    )
    state = CommandState(entry_points=entry_points, plugins=plugins)

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
    def run(
        arguments: Annotated[
            list[str],
            typer.Argument(
                metavar="[AGENT] PROMPT",
                help="AGENT: a TOML agent file, or module:attribute naming an Agent (leave it out to "
                "run just a model, with --model). PROMPT: what to ask; - reads it from stdin.",
                show_default=False,
            ),
        ],
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                "-m",
                metavar="MODEL",
                help="Use this model instead of the agent's: an id (openai:gpt-4o-mini, "
                "scripted:replay.json) or a tier.",
                show_default=False,
            ),
        ] = None,
        system: Annotated[
            str | None,
            typer.Option(
                "--system",
                metavar="TEXT",
                help="The system message (replaces the agent's instructions).",
                show_default=False,
            ),
        ] = None,
        option: Annotated[
            list[str] | None,
            typer.Option(
                "--option",
                "-o",
                metavar="KEY=VALUE",
                help="A model setting (repeatable): -o temperature=0 -o max_tokens=200 -o tool_choice=auto",
                show_default=False,
            ),
        ] = None,
        caller: Annotated[
            str | None,
            typer.Option(
                "--caller",
                metavar="ID",
                help="The caller id budgets and audit see (default: your user name).",
                show_default=False,
            ),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the Result as JSON on stdout, and nothing else.")
        ] = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print the first request instead of sending it.")
        ] = False,
        setting: SettingOption = None,
        stream: Annotated[
            bool,
            typer.Option("--stream", help="Ask the model to stream its answer, and show it as it comes."),
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
        continue_run: Annotated[
            str | None,
            typer.Option(
                "--continue",
                "-c",
                metavar="RUN_ID",
                help="Continue the conversation of an earlier run (its id, or the start of it): its "
                "messages, read from the audit, come before the prompt.",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Run an agent (or just a model) on a prompt: live progress on stderr, the answer on stdout.

        \b
        executus run examples/assistant.toml "How many feet are in 3.5 km?"
        executus run --model openai:gpt-4o-mini --system "Be brief." "Name three rivers."
        echo "Summarise this" | executus run agent.toml -
        executus run agent.toml --continue 3f2a9c01b7de "And in metres?"
        """
        if len(arguments) > 2:
            raise fail(
                f"run takes [AGENT] PROMPT, got {len(arguments)} arguments; quote the prompt: "
                'executus run agent.toml "your question"',
                EXIT_CANNOT_START,
            )
        agent, prompt = (None, arguments[0]) if len(arguments) == 1 else (arguments[0], arguments[1])
        request = RunRequest(
            agent=agent,
            prompt=prompt,
            model=model,
            system=system,
            options=option or [],
            settings=setting or [],
            caller=caller,
            as_json=as_json,
            dry_run=dry_run,
            stream=stream,
            quiet=quiet,
            continue_run=continue_run,
        )
        raise typer.Exit(run_command(request, state))

    @app.command("chat")
    def chat(
        agent: Annotated[
            str | None,
            typer.Argument(
                metavar="[AGENT]",
                help="A TOML agent file, or module:attribute naming an Agent (leave it out to chat "
                "with just a model, with --model).",
                show_default=False,
            ),
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                "-m",
                metavar="MODEL",
                help="Use this model instead of the agent's: an id (openai:gpt-4o-mini, "
                "scripted:replay.json) or a tier.",
                show_default=False,
            ),
        ] = None,
        system: Annotated[
            str | None,
            typer.Option(
                "--system",
                metavar="TEXT",
                help="The system message (replaces the agent's instructions).",
                show_default=False,
            ),
        ] = None,
        option: Annotated[
            list[str] | None,
            typer.Option(
                "--option",
                "-o",
                metavar="KEY=VALUE",
                help="A model setting (repeatable): -o temperature=0 -o max_tokens=200",
                show_default=False,
            ),
        ] = None,
        caller: Annotated[
            str | None,
            typer.Option(
                "--caller",
                metavar="ID",
                help="The caller id budgets and audit see (default: your user name).",
                show_default=False,
            ),
        ] = None,
        continue_run: Annotated[
            str | None,
            typer.Option(
                "--continue",
                "-c",
                metavar="RUN_ID",
                help="Go on with the conversation of an earlier run (its id, or the start of it).",
                show_default=False,
            ),
        ] = None,
        setting: SettingOption = None,
        stream: Annotated[
            bool,
            typer.Option("--stream", help="Ask the model to stream its answers, and show them as they come."),
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    ) -> None:
        """Chat with an agent (or just a model): each line you type is a turn, a run of one conversation.

        exit, quit or Ctrl-D leaves; Ctrl-C stops the turn that is running. Lines come from stdin, so
        a script can pipe a chat in.

        \b
        executus chat examples/assistant.toml
        executus chat --model openai:gpt-4o-mini --system "Be brief."
        executus chat agent.toml --continue 3f2a9c01b7de
        """
        from executus_core.cli.chat import chat_command

        request = RunRequest(
            agent=agent,
            prompt="",
            model=model,
            system=system,
            options=option or [],
            settings=setting or [],
            caller=caller,
            stream=stream,
            quiet=quiet,
            continue_run=continue_run,
        )
        raise typer.Exit(chat_command(request, state))

    @app.command("models")
    def models_command(setting: SettingOption = None, as_json: JsonOption = False) -> None:
        """List the model providers, the named endpoints, and the model each tier resolves to."""
        from executus_core.cli.models import describe_models
        from executus_core.executor import Executor

        try:
            executor = Executor(
                settings=parse_settings(setting or []),
                entry_points=state.entry_points,
                plugins=state.plugins,
            )
        except (ConfigError, PluginError) as exc:
            raise fail(str(exc), EXIT_CANNOT_START) from None
        try:
            report = describe_models(executor)
        finally:
            executor.close()
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        out = stdout()
        providers = Table()
        for column in ("prefix", "what", "endpoint", "plugin"):
            providers.add_column(column)
        for row in report["providers"]:
            keys = ", ".join(
                f"{name} {'set' if on else 'not set'}" for name, on in row["environment"].items()
            )
            providers.add_row(
                escape(row["prefix"]),
                escape(row["description"]) + (f"\n[dim]{escape(keys)}[/]" if keys else ""),
                escape(row["endpoint"] or "—"),
                escape(row["plugin"] or "—"),
            )
        print_table(providers, title="providers (model ids prefix:name)", console=out)
        if report["endpoints"]:
            endpoints = Table()
            for column in ("endpoint", "api", "base URL"):
                endpoints.add_column(column)
            for row in report["endpoints"]:
                endpoints.add_row(
                    escape(row["name"] + ":"), escape(row["api"]), escape(row["base_url"] or "—")
                )
            print_table(endpoints, title="named endpoints ([tool.executus.providers.endpoints])", console=out)
        tiers = Table()
        for column in ("tier", "resolves to"):
            tiers.add_column(column)
        for row in report["tiers"]:
            if row["model"] is not None:
                tiers.add_row(escape(row["tier"]), escape(" → ".join(row["chain"][1:])))
            else:
                tiers.add_row(escape(row["tier"]), "[red]does not resolve (below)[/]")
        print_table(tiers, title="tiers ([tool.executus.models])", console=out)
        for row in report["tiers"]:
            if row["error"]:
                out.print(f"[red]{escape(row['tier'])}:[/] {escape(row['error'])}", highlight=False)

    @app.command("plugins")
    def plugins_command(setting: SettingOption = None, as_json: JsonOption = False) -> None:
        """List every plugin, built-ins too: its distribution, the ports it fills, and its status."""
        err = stderr()
        try:
            overrides = parse_settings(setting or [])
        except ConfigError as exc:
            raise fail(str(exc), EXIT_CANNOT_START) from None
        report = inspect_plugins(
            settings=overrides,
            entry_points=state.entry_points,
            plugins=state.plugins,
            command_records=state.command_records,
        )
        if as_json:
            typer.echo(json.dumps({"plugins": report.plugins, "notes": report.notes}, indent=2))
        else:
            print_plugins(report)
        if any(row["status"] == "broken" for row in report.plugins):
            err.print(
                "[yellow]a broken plugin stops `executus run` and Executor(): fix or uninstall it, "
                "or disable it (EXECUTUS_DISABLE=name)[/]",
                highlight=False,
            )

    register_approval_commands(app)  # executus approve / deny
    add_plugin_commands(app, state)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """The ``executus`` console script."""
    app = create_app()
    app(args=list(argv) if argv is not None else None, prog_name="executus")
