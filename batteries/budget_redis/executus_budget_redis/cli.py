"""``executus budget``: see each caller's usage against its limits, and reset a caller.

::

    executus budget show               every caller with usage (and every caller named in settings)
    executus budget show u1 --json     one caller, as JSON for scripts
    executus budget reset u1           forget u1's usage and free its in-flight slots

Both read ``[tool.executus.budget_redis]`` like the executor does (``-s budget_redis.url=...``
overrides it). Exit codes: 0 done, 1 Redis could not be reached, 2 the settings are wrong.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from executus_budget_redis.budget import CallerUsage, RedisBudget
from executus_budget_redis.durations import format_duration
from executus_budget_redis.errors import BudgetUnavailable
from executus_budget_redis.settings import SECTION, BudgetRedisSettings
from executus_core.cli import parse_settings
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
        help="Per-caller budgets in Redis: usage against limits, windows and resets.",
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
        """Usage against limits per caller and window, when each window resets, and runs in flight."""
        config = _config(setting)
        raise typer.Exit(asyncio.run(_show(config, caller, as_json=as_json)))

    @app.command("reset")
    def reset(
        caller: Annotated[str, typer.Argument(help="The caller id to reset.")],
        as_json: JsonOption = False,
        setting: SettingOption = None,
    ) -> None:
        """Forget CALLER's usage in every window and free its in-flight slots."""
        config = _config(setting)
        raise typer.Exit(asyncio.run(_reset(config, caller, as_json=as_json)))

    return app


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _config(pairs: list[str] | None) -> BudgetRedisSettings:
    try:
        return load_settings(parse_settings(pairs or [])).section(
            SECTION, BudgetRedisSettings, plugin=SECTION
        )
    except ConfigError as exc:
        _stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


async def _show(config: BudgetRedisSettings, caller: str | None, *, as_json: bool) -> int:
    budget = RedisBudget(config)
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
            "url": budget.url,
            "key_prefix": config.key_prefix,
            "callers": [u.as_dict() for u in usages],
        }
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    if not usages:
        _stderr().print(
            f"no budget usage under key prefix {escape(repr(config.key_prefix))} at {escape(budget.url)}",
            highlight=False,
        )
        return 0
    Console().print(_table(usages, budget.url, config.key_prefix))
    return 0


def _amount(used: float, limit: float | None, text: str, limit_text: str) -> str:
    if limit is None:
        return text
    colour = "red" if used >= limit else "yellow" if used >= 0.8 * limit else ""
    cell = f"{text} / {limit_text}"
    return f"[{colour}]{cell}[/]" if colour else cell


def _table(usages: list[CallerUsage], url: str, prefix: str) -> Table:
    table = Table(
        title=f"executus budget · {escape(url)} · prefix {escape(repr(prefix))}", title_justify="left"
    )
    # "limits from" only earns its width when some caller has limits of its own.
    sources = any(u.source != "defaults" for u in usages)
    columns = ["caller", *(["limits from"] if sources else []), "window", "runs", "tokens", "runtime"]
    for column in [*columns, "resets in", "in flight"]:
        numeric = column in ("runs", "tokens", "runtime")
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
            )
    return table


def _runtime(seconds: float) -> str:
    return "0s" if seconds == 0 else format_duration(seconds)


async def _reset(config: BudgetRedisSettings, caller: str, *, as_json: bool) -> int:
    budget = RedisBudget(config)
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
            "start afresh and its in-flight slots are free",
            highlight=False,
        )
    return 0
