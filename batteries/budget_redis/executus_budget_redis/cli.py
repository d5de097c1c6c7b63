"""``executus budget``: see each caller's usage against its limits, and reset a caller.

::

    executus budget show               every caller with usage (and every caller named in settings),
                                       then the runs in flight and the tokens each holds
    executus budget show u1 --json     one caller, as JSON for scripts
    executus budget reset u1           forget u1's usage and free its in-flight slots and holds

Both read ``[tool.executus.budget_redis]`` like the executor does (``-s budget_redis.url=...``
overrides it), so they look at the same store: Redis when a url is set, else the embedded SQLite
file. Exit codes: 0 done, 1 the store could not be reached, 2 the settings are wrong.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from executus_budget_redis.base import CallerUsage, StoreBudget
from executus_budget_redis.durations import format_duration
from executus_budget_redis.errors import BudgetUnavailable
from executus_budget_redis.factory import open_budget
from executus_budget_redis.settings import SECTION
from executus_core.cli.helpers import parse_settings, print_table, short_id
from executus_core.config import load_settings
from executus_core.errors import ConfigError

__all__ = ["make_budget_app"]

EXIT_UNAVAILABLE = 1
EXIT_BAD_SETTINGS = 2
_READ_AT_ONCE = 32  # callers read concurrently by `show`

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts, and nothing else.")]
SettingOption = Annotated[
    list[str] | None,
    typer.Option(
        "--setting", "-s", help="A setting as key=value (repeatable), as for run: budget_redis.url=..."
    ),
]


def make_budget_app() -> typer.Typer:
    """The ``executus budget`` group (a new app each time, so every CLI gets its own)."""
    app = typer.Typer(
        name="budget",
        help="Per-caller budgets: usage against limits, windows and resets, holds and runs in flight.",
        no_args_is_help=True,
    )

    @app.command("show")
    def show(
        caller: Annotated[
            str | None, typer.Argument(help="One caller id (default: every caller with usage).")
        ] = None,
        as_json: JsonOption = False,
        setting: SettingOption = None,
    ) -> None:
        """Usage against limits per caller and window, when each window resets, tokens held, and the
        runs in flight."""
        budget = _budget(setting)
        raise typer.Exit(asyncio.run(_show(budget, caller, as_json=as_json)))

    @app.command("reset")
    def reset(
        caller: Annotated[str, typer.Argument(help="The caller id to reset.")],
        as_json: JsonOption = False,
        setting: SettingOption = None,
    ) -> None:
        """Forget CALLER's usage in every window and free its in-flight slots and holds."""
        budget = _budget(setting)
        raise typer.Exit(asyncio.run(_reset(budget, caller, as_json=as_json)))

    return app


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _budget(pairs: list[str] | None) -> StoreBudget:
    from executus_budget_redis.settings import BudgetRedisSettings

    try:
        settings = load_settings(parse_settings(pairs or []))
        return open_budget(
            settings.section(SECTION, BudgetRedisSettings, plugin=SECTION), settings.core.data_dir
        )
    except ConfigError as exc:
        _stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


async def _show(budget: StoreBudget, caller: str | None, *, as_json: bool) -> int:
    config = budget.config
    try:
        if caller is not None:
            callers = [caller]
        else:
            named = {key for key in config.callers if not any(ch in key for ch in "*?[")}
            callers = sorted(set(await budget.callers()) | named)
        usages: list[CallerUsage] = []
        for start in range(0, len(callers), _READ_AT_ONCE):
            chunk = callers[start : start + _READ_AT_ONCE]
            usages += await asyncio.gather(*(budget.usage(c) for c in chunk))
    except BudgetUnavailable as exc:
        _stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_UNAVAILABLE
    finally:
        await budget.aclose()
    if as_json:
        document = {
            "backend": budget.backend,
            "store": budget.describe(),
            "url": budget.url,
            "key_prefix": config.key_prefix,
            "callers": [u.as_dict() for u in usages],
        }
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    if not usages:
        _stderr().print(
            f"no budget usage under key prefix {escape(repr(config.key_prefix))} in {escape(budget.describe())}",
            highlight=False,
        )
        return 0
    out = Console()
    # The title is a line of its own: a long store path no longer wraps it at the table's width.
    title = f"executus budget · {budget.describe()} · prefix {config.key_prefix!r}"
    print_table(_table(usages, budget.describe(), config.key_prefix), title=title, console=out)
    if any(u.runs for u in usages):
        print_table(_runs_table(usages), title="runs in flight", console=out)
    return 0


def _amount(used: float, limit: float | None, text: str, limit_text: str) -> str:
    if limit is None:
        return text
    colour = "red" if used >= limit else "yellow" if used >= 0.8 * limit else ""
    cell = f"{text} / {limit_text}"
    return f"[{colour}]{cell}[/]" if colour else cell


def _table(usages: list[CallerUsage], store: str, prefix: str) -> Table:
    table = Table()
    # "limits from" only earns its width when some caller has limits of its own.
    sources = any(u.source != "defaults" for u in usages)
    columns = ["caller", *(["limits from"] if sources else []), "window", "runs", "tokens", "runtime"]
    for column in [*columns, "resets in", "in flight", "held"]:
        numeric = column in ("runs", "tokens", "runtime", "held")
        table.add_column(
            column,
            justify="right" if numeric else "left",
            min_width=6 if column == "caller" else None,
            overflow="fold",
            no_wrap=column in ("window", "resets in"),
        )
    for usage in usages:
        in_flight = _amount(
            usage.in_flight, usage.max_concurrent, str(usage.in_flight), str(usage.max_concurrent)
        )
        for index, w in enumerate(usage.windows):
            first = index == 0
            cells = [escape(usage.caller_id) if first else ""]
            if sources:
                cells.append(escape(usage.source) if first else "")
            table.add_row(
                *cells,
                format_duration(w.window_seconds),
                _amount(
                    w.runs, w.max_runs, f"{w.runs:,}", f"{w.max_runs:,}" if w.max_runs is not None else ""
                ),
                _amount(
                    w.tokens,
                    w.max_tokens,
                    f"{w.tokens:,}",
                    f"{w.max_tokens:,}" if w.max_tokens is not None else "",
                ),
                _amount(
                    w.seconds,
                    w.max_seconds,
                    _runtime(w.seconds),
                    _runtime(w.max_seconds) if w.max_seconds is not None else "",
                ),
                format_duration(w.resets_in) if w.resets_in is not None else "[dim]not started[/]",
                in_flight if first else "",
                _held(usage) if first else "",
            )
    return table


def _held(usage: CallerUsage) -> str:
    """Tokens held by the caller's runs in flight, and what its next run would hold."""
    if not usage.in_flight and not usage.next_hold:
        return ""
    next_hold = f" [dim](next {usage.next_hold:,})[/]" if usage.next_hold else ""
    return f"{usage.held:,}{next_hold}"


def _runs_table(usages: list[CallerUsage]) -> Table:
    table = Table()
    for column in ("caller", "run", "holds", "slot expires in"):
        table.add_column(column, justify="right" if column == "holds" else "left", overflow="fold")
    for usage in usages:
        for index, run in enumerate(usage.runs):
            table.add_row(
                escape(usage.caller_id) if index == 0 else "",
                escape(short_id(run.run_id)),
                f"{run.hold:,}",
                format_duration(max(run.expires_in, 0.001)),
            )
        if usage.in_flight > len(usage.runs):
            table.add_row("", f"[dim]... and {usage.in_flight - len(usage.runs)} more[/]", "", "")
    return table


def _runtime(seconds: float) -> str:
    return "0s" if seconds == 0 else format_duration(seconds)


async def _reset(budget: StoreBudget, caller: str, *, as_json: bool) -> int:
    try:
        deleted = await budget.reset(caller)
    except BudgetUnavailable as exc:
        _stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_UNAVAILABLE
    finally:
        await budget.aclose()
    if as_json:
        typer.echo(json.dumps({"caller": caller, "deleted_keys": deleted}))
    else:
        Console(soft_wrap=True).print(
            f"reset caller {escape(caller)}: {deleted} key{'s' if deleted != 1 else ''} deleted; its windows "
            "start afresh and its in-flight slots and holds are free",
            highlight=False,
        )
    return 0
