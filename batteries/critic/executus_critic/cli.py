"""``executus critic policy``: what the critic will do to a run, in seconds, under the current settings.

::

    $ executus critic policy --soft-timeout 60
    $ executus critic policy -s critic.hard_factor=4 -s critic.hang_timeout=30 --json

The critic keeps no state between processes (its decisions live in the executor that made them,
see `RunCritic.decisions`), so this command shows the policy, not past runs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from executus_core import ConfigError, load_settings
from executus_core.cli.helpers import parse_settings
from executus_critic.policy import Policy
from executus_critic.settings import SECTION, CriticSettings

__all__ = ["critic_app", "describe_policy", "register"]

critic_app = typer.Typer(
    name="critic",
    help="The critic battery: soft and hard timeouts, hang and loop detection.",
    no_args_is_help=True,
)


def _s(value: float) -> str:
    return f"{value:g} s"


def describe_policy(
    settings: CriticSettings, policy: Policy, *, core_hard_timeout: float
) -> list[tuple[str, str]]:
    """The policy as ``(what, when)`` rows for people; the same facts ``--json`` prints."""
    rows = [("enabled", "yes" if settings.enabled else "no: runs are not watched; hard_timeout applies")]
    if not settings.enabled:
        return rows
    rows.append(("soft timeout", _s(policy.soft_timeout)))
    rows.append(
        (
            "nudge to wrap up",
            f"at {_s(policy.steer_at)} (a user message)" if policy.steer_at is not None else "never",
        )
    )
    if policy.hard_timeout is None:
        rows.append(
            (
                "hard deadline",
                f"the core's: Agent.hard_timeout, else hard_timeout ({_s(core_hard_timeout)}); "
                "set hard_factor or hard_timeout to let the critic own it",
            )
        )
    else:
        rows.append(("hard deadline", f"at {_s(policy.hard_timeout)} (replaces the core's hard_timeout)"))
        rows.append(
            (
                "extension",
                f"up to {_s(policy.max_extension)} more while the run makes progress (never past "
                f"{_s(policy.latest or policy.hard_timeout)})"
                if policy.max_extension
                else "none",
            )
        )
    rows.append(
        (
            "hang",
            f"nothing started or finished for {_s(policy.hang_timeout)}: the run ends as timeout"
            if policy.hang_timeout is not None
            else "not checked",
        )
    )
    rows.append(
        (
            "loop",
            f"the same tool with the same arguments {policy.loop_threshold} times in a row: warned once, "
            "then cut"
            if policy.loop_threshold is not None
            else "not checked",
        )
    )
    rows.append(
        (
            "stall",
            f"{policy.stall_steps} steps in a row without a new tool call: warned once, then cut"
            if policy.stall_steps is not None
            else "not checked",
        )
    )
    return rows


@critic_app.command("policy")
def policy_command(
    soft_timeout: Annotated[
        float | None,
        typer.Option(
            "--soft-timeout", min=0.001, help="The run's soft timeout in seconds (default: the setting)."
        ),
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option("--setting", "-s", help="A setting as key=value (repeatable): critic.hang_timeout=30."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show when the critic nudges, cuts and extends a run, under the current settings."""
    err = Console(stderr=True, soft_wrap=True)
    try:
        settings = load_settings(parse_settings(setting or []))
        critic = settings.section(SECTION, CriticSettings, plugin="critic")
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    soft = soft_timeout if soft_timeout is not None else settings.core.soft_timeout
    policy = Policy.resolve(critic, soft, deadline_poll=settings.core.deadline_poll)
    if as_json:
        data: dict[str, Any] = {
            "enabled": critic.enabled,
            "settings_source": settings.source,
            "core_hard_timeout": settings.core.hard_timeout,
            "policy": policy.as_dict() if critic.enabled else None,
            "messages": critic.messages.model_dump(),
        }
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"executus critic policy (settings: {settings.source})", title_justify="left")
    table.add_column("check")
    table.add_column("what the critic does")
    for what, when in describe_policy(critic, policy, core_hard_timeout=settings.core.hard_timeout):
        table.add_row(escape(what), escape(when))
    Console().print(table)


def register(cli: typer.Typer) -> None:
    """Add ``executus critic ...`` to the root app."""
    cli.add_typer(critic_app, name="critic")
