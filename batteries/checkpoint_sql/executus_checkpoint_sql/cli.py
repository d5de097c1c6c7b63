"""The commands this battery adds to ``executus``.

::

    executus recover [--agent AGENT ...] [--json] [-q]     resume every interrupted run, show each one's end
    executus checkpoints list [--all] [--limit N] [--json] the live runs: who holds them, what waits and why
    executus checkpoints prune [--older-than DAYS] [--dry-run] [--yes] [--json]
                                                          delete ended runs' rows older than retention_days
    executus db upgrade [NAME ...] [--json]               create or migrate every SQL battery's tables

Every command takes ``-s key=value`` settings like ``executus run`` (``-s checkpoint_sql.url=...``).
People get tables and progress on stderr; ``--json`` prints JSON on stdout and nothing else there.
Exit codes: ``0`` done (every recovered run ended ``ok``); ``1`` a run did not end ``ok``, or the
database could not be read; ``2`` the command could not start (bad settings, no checkpoint store).

**The shared ``executus db`` group.** Each SQL battery has tables to migrate, and one
``executus db upgrade`` runs them all: the core's `executus_core.cli.helpers.db_upgraders` adds the ``db``
group once, and every SQL battery (executus-audit-sql too) puts its step in its registry,
``name -> step(settings) -> str``. ``db upgrade`` runs the steps in name order, prints each one's
line, and exits 1 if any failed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from executus_checkpoint_sql.settings import SECTION
from executus_core.cli.helpers import (
    DryRunOption,
    YesOption,
    confirm,
    db_upgraders,
    load_agent,
    parse_settings,
    print_table,
    short_id,
)
from executus_core.config import Settings, load_settings
from executus_core.errors import ConfigError, ExecutusError, PluginError
from executus_core.types import Result, RunEvent, RunStatus

if TYPE_CHECKING:
    from rich.status import Status

    from executus_checkpoint_sql.store import CheckpointListing, SqlCheckpointStore
    from executus_core.types import Agent

__all__ = ["RecoverProgress", "register_commands", "upgrade_step"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANNOT_START = 2

SettingOption = Annotated[
    list[str] | None,
    typer.Option("--setting", "-s", help="A setting as key=value (repeatable): checkpoint_sql.url=..."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts on stdout, and nothing else.")
]

_STATE_COLOUR = {
    "running": "cyan",
    "interrupted": "yellow",
    "claimed": "magenta",
    "paused": "bright_magenta",
    "backoff": "blue",
    "completed": "green",
    "failed": "red",
    "corrupt": "red",
}

# Runs read to find what to rebuild and what to explain: far more than any one recovery resumes.
_SCAN_LIMIT = 10_000


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    _err().print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _count(number: int | None, noun: str) -> str:
    """``1 step``, ``3 steps``."""
    number = number or 0
    return f"{number} {noun}{'s' * (number != 1)}"


def _short(text: str | None, limit: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -------------------------------------------------------------------------------------------------
# executus db upgrade: the group is shared by every SQL battery (executus_core.cli.helpers.db_upgraders)
# -------------------------------------------------------------------------------------------------


def upgrade_step(settings: Settings) -> str:
    """This battery's step of ``executus db upgrade``: migrate the checkpoint tables to head."""
    from executus_checkpoint_sql.migrate import VERSION_TABLE, upgrade_url
    from executus_checkpoint_sql.store import SqlCheckpointStore

    store = SqlCheckpointStore.from_settings(settings)
    if store is None:
        return f"disabled ([tool.executus.{SECTION}] enabled = false): nothing to upgrade"
    config = store.config
    report = asyncio.run(
        upgrade_url(
            store.url,
            db_schema=config.db_schema,
            connect_timeout=config.connect_timeout,
            busy_timeout=config.busy_timeout,
        )
    )
    where = f" (schema {config.db_schema})" if config.db_schema else ""
    if report.changed:
        moved = f"upgraded from {report.before or 'no tables'} to {report.after}"
    else:
        moved = f"already at {report.after}"
    return f"{report.database}{where}: {moved} (version table {VERSION_TABLE})"


# -------------------------------------------------------------------------------------------------
# executus recover
# -------------------------------------------------------------------------------------------------


class RecoverProgress:
    """Shows recovered runs to a person, on stderr: each resume, its steps and tools, and its end.

    Used as ``on_event=`` of `Executor.recover`; events of concurrent runs are told apart by a short
    run id.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.spinner: Status | None = None
        self.going: dict[str, str] = {}  # run id -> what it is doing now

    def start(self) -> None:
        """Recovery begins: show that the store is being asked."""
        self._spin("[dim]looking for interrupted runs[/]")

    def close(self) -> None:
        """Recovery ended: stop the spinner."""
        if self.spinner is not None:
            self.spinner.stop()
            self.spinner = None

    def _spin(self, text: str) -> None:
        if not self.console.is_terminal:
            return
        if self.spinner is None:
            self.spinner = self.console.status(text, spinner="dots")
            self.spinner.start()
        else:
            self.spinner.update(text)

    def _doing(self, run_id: str, what: str) -> None:
        self.going[run_id] = what
        shown = "; ".join(f"{short_id(rid)}: {doing}" for rid, doing in list(self.going.items())[:4])
        more = f" (+{len(self.going) - 4})" if len(self.going) > 4 else ""
        self._spin(f"[dim]{len(self.going)} running · {escape(shown)}{more}[/]")

    def __call__(self, event: RunEvent) -> None:
        short = short_id(event.run_id)
        data = event.data
        if event.type == "run.start":
            self.console.print(
                f"[bold cyan]↻[/] resuming [bold]{short}[/] ({escape(str(data.get('agent')))}, "
                f"caller {escape(str(data.get('caller_id')))})",
                highlight=False,
            )
            self._doing(event.run_id, "waiting for the model")
        elif event.type == "step":
            calls = data.get("tool_calls") or []
            what = f"step {data.get('iteration')}" + (f": {', '.join(map(str, calls))}" if calls else "")
            self._doing(event.run_id, what)
        elif event.type == "tool.start":
            self._doing(event.run_id, f"running {data.get('name')}")
        elif event.type == "run.end":
            self.going.pop(event.run_id, None)
            status = str(data.get("status"))
            mark = "[green]✓[/]" if status == RunStatus.OK.value else "[red]✗[/]"
            error = f" [red]{escape(_short(str(data.get('error')), 100))}[/]" if data.get("error") else ""
            self.console.print(
                f"{mark} [bold]{short}[/] {escape(status)} · {_count(data.get('steps'), 'step')} · "
                f"{_count(data.get('tool_calls'), 'tool call')}{error}",
                highlight=False,
            )
            if self.going:
                self._doing(next(iter(self.going)), self.going[next(iter(self.going))])
            else:
                self._spin("[dim]finishing[/]")


def _results_table(results: list[Result]) -> Table:
    table = Table(title=f"recovered {len(results)} run{'s' * (len(results) != 1)}", title_justify="left")
    table.add_column("run id", no_wrap=True)
    for column in ("status", "steps", "tool calls", "output / error"):
        table.add_column(column, overflow="fold")
    for result in results:
        colour = "green" if result.ok else "red"
        detail = result.output if result.ok else result.error
        table.add_row(
            escape(short_id(result.run_id) if result.run_id else "—"),
            f"[{colour}]{result.status.value}[/]",
            str(result.stats.steps),
            str(result.stats.tool_calls),
            escape(_short(detail, 80)),
        )
    return table


def _seconds(value: float | None) -> str:
    """``42s``, ``3m``, ``2h``: a duration for people."""
    seconds = max(0.0, value or 0.0)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _rebuild(
    listings: list[CheckpointListing], given: dict[str, Agent], err: Console
) -> tuple[dict[str, Agent], set[str]]:
    """The agents of interrupted runs, rebuilt from where each was loaded (its spec's ``source``),
    with the model the run used; and the agent ids that could not be rebuilt (for the hint)."""
    rebuilt: dict[str, Agent] = {}
    failed: set[str] = set()
    seen: set[tuple[str, str, str | None]] = set()
    for listing in listings:
        subject = listing.subject_id
        if listing.state != "interrupted" or subject in given or listing.source is None:
            continue
        key = (subject, listing.source, listing.model)
        if key in seen:
            continue
        seen.add(key)
        try:
            agent = load_agent(listing.source)
        except Exception as exc:
            failed.add(subject)
            err.print(
                f"[yellow]warning:[/] cannot rebuild agent {escape(subject)!r} of run {escape(listing.run_id[:8])} "
                f"from {escape(listing.source)}: {escape(str(exc))}; pass --agent with the agent to resume it",
                highlight=False,
            )
            continue
        if listing.model and agent.model_id != listing.model:
            agent = agent.model_copy(update={"model": listing.model})
        if agent.id != subject:
            agent = agent.model_copy(update={"id": subject})
        if subject in rebuilt and rebuilt[subject].model_id != agent.model_id:
            err.print(
                f"[yellow]warning:[/] runs of agent {escape(subject)!r} used several models; they resume on "
                f"{escape(rebuilt[subject].model_id)} (pass --agent to choose)",
                highlight=False,
            )
            continue
        rebuilt[subject] = agent
    return rebuilt, failed


def _explain_nothing(listings: list[CheckpointListing], err: Console) -> None:
    """Why there was nothing to recover: runs still held by a live lease, waiting, or quarantined."""
    for x in listings:
        short = escape(x.run_id[:8])
        if x.state in ("running", "claimed"):
            doing = "running it" if x.state == "running" else "about to resume it"
            err.print(
                f"  {short} is held by {escape(x.owner or '?')} ({doing}, for {_seconds(x.held_seconds)}); its "
                f"lease lapses in {_seconds(x.lease_seconds_left)} if that worker is gone: run `executus "
                "recover` again then",
                highlight=False,
            )
        elif x.state == "backoff":
            err.print(
                f"  {short} waits after {_count(x.resume_failures, 'failed resume')} "
                f"({escape(_short(x.error, 80))}); retried in {_seconds(x.retry_in_seconds)}, or now with "
                "--agent giving the agent to resume it with",
                highlight=False,
            )
        elif x.state == "paused":
            err.print(
                f"  {short} waits for approval of {', '.join(escape(p.tool) for p in x.pending) or 'its calls'}: "
                "`executus approve` or `executus deny` continues it, not recover",
                highlight=False,
            )
        elif x.state == "corrupt":
            err.print(
                f"  {short} is quarantined and will not be resumed: {escape(_short(x.error, 100))}",
                highlight=False,
            )


async def _recover(
    overrides: Mapping[str, Any], agents: list[Agent], *, as_json: bool, progress: bool, err: Console
) -> int:
    from executus_checkpoint_sql.store import SqlCheckpointStore
    from executus_core.executor import Executor

    try:
        executor = Executor(settings=overrides)
    except (ConfigError, PluginError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_CANNOT_START
    given = {a.id: a for a in agents}
    unbuildable: set[str] = set()
    listings: list[CheckpointListing] = []
    async with executor:
        if executor.ports.checkpoints is None:
            err.print(
                "[bold red]error:[/] no checkpoint store is enabled: install executus-checkpoint-sql and "
                f"leave [tool.executus.{SECTION}] enabled (or remove {SECTION} from disable)",
                highlight=False,
            )
            return EXIT_CANNOT_START
        store = executor.ports.checkpoints[1]
        sql = store if isinstance(store, SqlCheckpointStore) else None
        rebuilt: dict[str, Agent] = {}
        if sql is not None:
            try:
                listings = await sql.list_runs(limit=_SCAN_LIMIT)
            except Exception as exc:
                err.print(f"[bold red]error:[/] cannot read the checkpoints in {escape(sql.database)}: {exc}")
                return EXIT_FAILED
            rebuilt, unbuildable = _rebuild(listings, given, err)
            # The person gives the agent now: runs of it that wait after a failed resume go now.
            waiting = [x.run_id for x in listings if x.state == "backoff" and x.subject_id in given]
            if waiting:
                await sql.retry_now(waiting)
        show = RecoverProgress(err) if progress else None
        if show is not None:
            show.start()
        try:
            results = await executor.recover(agents={**rebuilt, **given}, on_event=show)
        finally:
            if show is not None:
                show.close()
        if sql is not None and not results:
            listings = await sql.list_runs(limit=_SCAN_LIMIT)
    if as_json:
        typer.echo(json.dumps({"results": [r.model_dump(mode="json") for r in results]}, indent=2))
    elif results:
        Console(soft_wrap=True).print(_results_table(results))
        for result in results:
            for warning in result.warnings:
                err.print(
                    f"[yellow]warning:[/] {escape(short_id(result.run_id))}: {escape(warning)}",
                    highlight=False,
                )
    else:
        err.print("no interrupted runs: nothing to recover", highlight=False)
        _explain_nothing(listings, err)
    failed = [r for r in results if not r.ok]
    if failed and not as_json:
        sources = {x.run_id: x for x in listings}
        blind = [
            r.run_id[:8]
            for r in failed
            if r.run_id in sources
            and (sources[r.run_id].source is None or sources[r.run_id].subject_id in unbuildable)
            and sources[r.run_id].subject_id not in given
        ]
        err.print(
            f"[yellow]{len(failed)} run{'s' * (len(failed) != 1)} did not end ok.[/] A run that could not "
            "resume here is kept and handed out again after a backoff (`executus checkpoints list` shows "
            "why and when).",
            highlight=False,
        )
        if blind:
            err.print(
                f"  {', '.join(blind)}: the checkpoint does not say where the agent comes from; pass "
                "--agent FILE.toml or --agent module:attribute with the agent to resume it with",
                highlight=False,
            )
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def recover_command(
    agent: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            "-a",
            help="An agent to resume its runs with (TOML file or module:attribute; repeatable), matched by "
            "agent id; runs of it waiting after a failed resume are retried now. Other runs are rebuilt "
            "from where their agent was loaded (saved with the checkpoint), with the model they used.",
        ),
    ] = None,
    setting: SettingOption = None,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
) -> None:
    """Resume every interrupted run from its last checkpoint, and show how each one ended.

    A run started by ``executus run`` resumes with no flags: its agent is rebuilt from the TOML file or
    ``module:attribute`` it was loaded from, with the model the run used.
    """
    err = _err()
    try:
        overrides = parse_settings(setting or [])
        agents = [load_agent(reference) for reference in agent or []]
    except ExecutusError as exc:
        raise _fail(str(exc), EXIT_CANNOT_START) from None
    code = asyncio.run(_recover(overrides, agents, as_json=as_json, progress=not (quiet or as_json), err=err))
    raise typer.Exit(code)


# -------------------------------------------------------------------------------------------------
# executus checkpoints list
# -------------------------------------------------------------------------------------------------


def _store(setting: list[str] | None) -> SqlCheckpointStore:
    from executus_checkpoint_sql.store import SqlCheckpointStore

    try:
        settings = load_settings(parse_settings(setting or []))
        store = SqlCheckpointStore.from_settings(settings)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_CANNOT_START) from None
    if store is None:
        raise _fail(
            f"[tool.executus.{SECTION}] enabled = false: there is no checkpoint store", EXIT_CANNOT_START
        )
    return store


async def _read(store: SqlCheckpointStore, *, include_finished: bool, limit: int) -> list[CheckpointListing]:
    try:
        return await store.list_runs(include_finished=include_finished, limit=limit)
    finally:
        await store.aclose()


def _ago(when: datetime) -> str:
    seconds = max(0.0, (datetime.now(UTC) - when).total_seconds())
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 129600:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _lease(listing: CheckpointListing) -> str:
    left = listing.lease_seconds_left
    if listing.status != "live":
        return "—"
    if listing.state == "backoff":
        return f"retried in {_seconds(listing.retry_in_seconds)}"
    if left is None:
        return "released"
    return f"lease {left:.0f}s left" if left >= 0 else f"lease lapsed {-left:.0f}s ago"


def list_command(
    include_finished: Annotated[
        bool, typer.Option("--all", help="Include runs that completed or failed.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Most runs to show.")] = 50,
    setting: SettingOption = None,
    as_json: JsonOption = False,
) -> None:
    """The runs with a checkpoint: running (held by which owner, for how long), claimed, paused for
    approval (which calls, since when), interrupted (the next recover takes them), waiting after a
    failed resume, or quarantined."""
    store = _store(setting)
    try:
        listings = asyncio.run(_read(store, include_finished=include_finished, limit=limit))
    except Exception as exc:
        raise _fail(f"cannot read the checkpoints in {store.database}: {type(exc).__name__}: {exc}") from None
    if as_json:
        typer.echo(
            json.dumps({"database": store.database, "runs": [x.as_dict() for x in listings]}, indent=2)
        )
        return
    if not listings:
        what = "runs" if include_finished else "live runs"
        _err().print(f"no {what} in {escape(store.database)}", highlight=False)
        return
    table = Table()
    table.add_column("run id", no_wrap=True)
    table.add_column("agent / caller", overflow="fold")
    table.add_column("state", min_width=11)
    table.add_column("progress", no_wrap=True)
    table.add_column("owner", overflow="fold")
    table.add_column("updated", no_wrap=True)
    for x in listings:
        colour = _STATE_COLOUR.get(x.state, "white")
        state = f"[{colour}]{x.state}[/]"
        if x.status == "live":
            state += f"\n[dim]{_lease(x)}[/]"
        if x.state == "paused":
            since = _ago(x.paused_at) if x.paused_at is not None else "?"
            state += f"\n[dim]waits since {since} for[/]"
            for p in x.pending:
                state += f"\n[dim]{escape(p.tool)} ({escape(p.call_id)})[/]"
        if x.resume_failures and x.status == "live":
            state += f"\n[dim]{_count(x.resume_failures, 'failed resume')}[/]"
        if x.error:
            state += f"\n[red]{escape(_short(x.error, 60))}[/]"
        owner = escape(x.owner or "—")
        if x.held_seconds is not None:
            owner += f"\n[dim]held {_seconds(x.held_seconds)}[/]"
        table.add_row(
            escape(short_id(x.run_id)),
            f"{escape(x.name)}\n[dim]{escape(x.caller_id)}[/]",
            state,
            f"{_count(x.steps, 'step')}\n{_count(x.tool_calls, 'tool call')}\n{_count(x.messages, 'message')}",
            owner,
            _ago(x.updated_at),
        )
    print_table(table, title=f"checkpoints in {store.database}")
    interrupted = sum(1 for x in listings if x.state == "interrupted")
    if interrupted:
        _err().print(
            f"[yellow]{interrupted} interrupted run{'s' * (interrupted != 1)}[/]: `executus recover` resumes "
            f"{'them' if interrupted != 1 else 'it'}",
            highlight=False,
        )
    paused = sum(1 for x in listings if x.state == "paused")
    if paused:
        _err().print(
            f"[bright_magenta]{paused} run{'s' * (paused != 1)} paused for approval[/]: `executus approve RUN_ID` "
            "runs the pending calls, `executus deny RUN_ID CALL_ID --reason ...` refuses one",
            highlight=False,
        )
    corrupt = sum(1 for x in listings if x.state == "corrupt")
    if corrupt:
        _err().print(
            f"[red]{corrupt} quarantined run{'s' * (corrupt != 1)}[/]: {'their' if corrupt != 1 else 'its'} "
            "checkpoint does not read back (the error says which part); the rows are kept for you to look at",
            highlight=False,
        )


# -------------------------------------------------------------------------------------------------
# executus checkpoints prune
# -------------------------------------------------------------------------------------------------


async def _prune(store: SqlCheckpointStore, days: float, *, dry_run: bool) -> int:
    try:
        return await store.prune(days, dry_run=dry_run)
    finally:
        await store.aclose()


def prune_command(
    older_than: Annotated[
        float | None,
        typer.Option("--older-than", min=0, help="Days; default: retention_days from the settings."),
    ] = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    setting: SettingOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete the rows of ended runs (completed, failed, quarantined) that ended more than
    --older-than days ago. Live and paused runs are never touched.

    It counts them first and asks before deleting (--yes: do not ask); --dry-run only counts.
    """
    store = _store(setting)
    days = older_than if older_than is not None else store.config.retention_days
    if not days:
        raise _fail(
            f"say how old: --older-than DAYS (retention_days = 0 in [tool.executus.{SECTION}] keeps "
            "ended runs for ever)",
            EXIT_CANNOT_START,
        )
    where = store.database
    noun = f"ended run{{}} older than {days:g} days in {where}"
    try:
        found = asyncio.run(_prune(store, days, dry_run=True))  # closes this store: deleting opens its own
    except Exception as exc:
        raise _fail(f"cannot read the checkpoints in {where}: {type(exc).__name__}: {exc}") from None
    if dry_run or not found:
        if as_json:
            typer.echo(json.dumps({"deleted": 0, "would_delete": found, "older_than_days": days}))
        elif dry_run:
            Console().print(f"would delete {found} {noun.format('s' * (found != 1))}", highlight=False)
        else:
            Console().print(f"deleted 0 runs older than {days:g} days", highlight=False)
        return
    confirm(f"Delete {found} {noun.format('s' * (found != 1))}?", yes=yes)
    try:
        deleted = asyncio.run(_prune(_store(setting), days, dry_run=False))
    except Exception as exc:
        raise _fail(f"cannot prune the checkpoints in {where}: {type(exc).__name__}: {exc}") from None
    if as_json:
        typer.echo(json.dumps({"deleted": deleted, "older_than_days": days}))
    else:
        Console().print(
            f"deleted {deleted} run{'s' * (deleted != 1)} older than {days:g} days", highlight=False
        )


# -------------------------------------------------------------------------------------------------
# Registration
# -------------------------------------------------------------------------------------------------


def register_commands(cli: typer.Typer) -> None:
    """Add ``executus recover``, ``executus checkpoints list`` / ``prune`` and this battery's ``db upgrade`` step."""
    db_upgraders(cli)[SECTION] = upgrade_step
    cli.command("recover")(recover_command)
    checkpoints = typer.Typer(
        help="The runs executus-checkpoint-sql keeps for recovery.", no_args_is_help=True
    )
    checkpoints.command("list")(list_command)
    checkpoints.command("prune")(prune_command)
    cli.add_typer(checkpoints, name="checkpoints")
