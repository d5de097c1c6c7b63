"""The commands this battery adds: ``executus runs ...`` and its step of ``executus db upgrade``.

::

    executus runs list [--caller C] [--status S] [--agent A] [--limit N] [--json]
    executus runs show RUN_ID [--all] [--json]        RUN_ID may be a unique prefix; with its conversation's thread
    executus runs prune [--older-than DAYS] [--dry-run] [--yes] [--json]
    executus runs import [FILE ...] [--dry-run] [--json]   load the rows close() saved when the database was down
    executus db upgrade [NAME ...]                    migrate every installed SQL battery (or those named)

Every command takes ``-s key=value`` settings like ``executus run`` (``-s audit_sql.url=...``).

**The shared ``executus db`` group.** Several SQL batteries each have tables to migrate, and
``executus db upgrade`` runs all of them: the core's `executus_core.cli.helpers.db_upgraders` adds the ``db``
group once, and every SQL battery puts its step in its registry, ``name -> step(settings) -> str``.
``db upgrade`` runs every step in name order, prints each one's line, and exits 1 if any failed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from executus_audit_sql.audit import SqlAudit
from executus_audit_sql.errors import AuditSqlError, describe_error
from executus_audit_sql.settings import SECTION, AuditSqlSettings
from executus_audit_sql.state import RUNNING
from executus_core.cli.helpers import (
    DryRunOption,
    YesOption,
    confirm,
    db_upgraders,
    parse_settings,
    print_table,
    short_id,
)
from executus_core.config import Settings, load_settings
from executus_core.errors import ConfigError, ExecutusError
from executus_core.types import RunStatus

if TYPE_CHECKING:
    from executus_audit_sql.trail import RunRecord, ThreadTurn, TrailEntry

__all__ = ["register", "upgrade_step"]

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_CANNOT_START = 2

SettingOption = Annotated[
    list[str] | None,
    typer.Option("--setting", "-s", help="A setting as key=value (repeatable): audit_sql.url=..."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts on stdout, and nothing else.")
]

_STATUS_COLOUR = {
    RunStatus.OK.value: "green",
    RUNNING: "cyan",
    RunStatus.DRY_RUN.value: "dim",
    RunStatus.INTERRUPTED.value: "yellow",
    RunStatus.CANCELLED.value: "yellow",
}


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    _err().print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


# -------------------------------------------------------------------------------------------------
# executus db upgrade: the group is shared by every SQL battery (executus_core.cli.helpers.db_upgraders)
# -------------------------------------------------------------------------------------------------


def upgrade_step(settings: Settings) -> str:
    """This battery's step of ``executus db upgrade``: migrate the audit tables to head."""
    section = settings.section(SECTION, AuditSqlSettings, plugin=SECTION)
    audit = SqlAudit(section, data_dir=settings.core.data_dir)  # resolves the default URL
    try:
        from executus_audit_sql.migrate import upgrade

        report = upgrade(audit.url, db_schema=audit.db_schema, connect_timeout=section.connect_timeout)
    except ExecutusError:
        raise
    except Exception as exc:
        # The driver's own line, without SQLAlchemy's statement dump and "background" link.
        raise AuditSqlError(describe_error(exc)) from exc
    where = f" (schema {audit.db_schema})" if audit.db_schema else ""
    return str(report) + where


# -------------------------------------------------------------------------------------------------
# executus runs
# -------------------------------------------------------------------------------------------------


def _audit(setting: list[str] | None) -> SqlAudit:
    from executus_audit_sql.plugin import build_audit

    try:
        return build_audit(load_settings(parse_settings(setting or [])))
    except (ConfigError, ValueError) as exc:
        raise _fail(str(exc), EXIT_CANNOT_START) from None


def _run(audit: SqlAudit, work: Callable[[SqlAudit], Coroutine[Any, Any, T]]) -> T:
    """Run ``work(audit)`` in a new event loop; a database error becomes a clear message and exit 1."""

    async def main() -> T:
        try:
            return await work(audit)
        finally:
            await audit.aclose()

    try:
        return asyncio.run(main())
    except typer.Exit:
        raise
    except ExecutusError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:
        raise _fail(
            f"cannot read the audit trail at {audit.describe_database()}: {describe_error(exc)}"
        ) from None


def _when(value: datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _when_short(value: datetime) -> str:
    local = value.astimezone()
    if local.year == datetime.now().year:
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%Y-%m-%d")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'s' * (number != 1)}"


def _status(text: str) -> str:
    return f"[{_STATUS_COLOUR.get(text, 'red')}]{escape(text)}[/]"


def _short(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


_short_id = short_id  # run ids as every executus command shows them


def _record_json(record: RunRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json")
    data["status"] = record.shown_status
    data["tokens"] = record.tokens
    data["duration_seconds"] = round(record.duration_seconds, 6)
    return data


def _print_runs(records: Sequence[RunRecord], audit: SqlAudit) -> None:
    out = Console()
    if not records:
        _err().print(f"no runs recorded in {escape(audit.describe_database())} match", highlight=False)
        return
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    table.add_column("run id", no_wrap=True)
    for name in ("agent", "caller", "status"):
        table.add_column(name)
    for name in ("steps", "tools", "tokens"):
        table.add_column(name, justify="right")
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    for record in records:
        table.add_row(
            escape(_short_id(record.run_id)),
            escape(record.name),
            escape(record.caller_id),
            _status(record.shown_status),
            str(record.steps),
            str(record.tool_calls),
            f"{record.tokens:,}",
            _when_short(record.started_at),
            _duration(record.duration_seconds),
        )
    print_table(table, title=f"runs in {audit.describe_database()}", console=out)


def _resolve(audit: SqlAudit, run_id: str) -> Callable[[SqlAudit], Coroutine[Any, Any, RunRecord]]:
    async def find(audit: SqlAudit) -> RunRecord:
        record = await audit.get_run(run_id)
        if record is not None:
            return record
        matches = await audit.find_runs(run_id)
        if len(matches) == 1:
            found = await audit.get_run(matches[0])
            assert found is not None
            return found
        if matches:
            raise _fail(f"{run_id!r} matches several runs: {', '.join(matches)}; give more of the id")
        raise _fail(f"no run {run_id!r} in {audit.describe_database()}")

    return find


def _hidden(entry: TrailEntry, tool_calls: set[str]) -> bool:
    """Events that repeat what a step or tool row already says (``--all`` shows them)."""
    if entry.kind != "event":
        return False
    if entry.name in ("step", "tool.end"):
        return True
    return (
        entry.name == "tool.start"
        and isinstance(entry.data, dict)
        and entry.data.get("call_id") in tool_calls
    )


def _json_short(value: Any, limit: int = 120) -> str:
    return _short(json.dumps(value, ensure_ascii=False, default=str), limit)


def _entry_label(entry: TrailEntry, started: datetime) -> str:
    offset = f"[dim]+{(entry.at - started).total_seconds():.3f}s[/]"
    data = entry.data if isinstance(entry.data, dict) else {}
    if entry.kind == "step":
        usage = data.get("usage", {})
        calls = [c.get("name", "?") for c in data.get("tool_calls", [])]
        label = (
            f"{offset} [bold]step {entry.iteration}[/] · {usage.get('input_tokens', 0):,} in / "
            f"{usage.get('output_tokens', 0):,} out"
        )
        if calls:
            label += f" · calls {escape(', '.join(calls))}"
        if entry.text:
            label += f"\n[italic]{escape(_short(entry.text))}[/]"
        return label
    if entry.kind == "tool":
        arguments = data.get("arguments")
        return (
            f"{offset} [bold]tool {escape(entry.name or '?')}[/]"
            f"({escape(_json_short(arguments) if arguments else '')}) [dim]{escape(entry.call_id or '')}[/]"
            f"\n→ {escape(_short(entry.text))}"
        )
    if entry.kind == "error":
        return f"{offset} [bold red]error[/] {escape(_short(entry.text, 400))}"
    return f"{offset} [cyan]{escape(entry.name or '?')}[/] {escape(_json_short(entry.data))}"


def _print_run(
    record: RunRecord, trail: Sequence[TrailEntry], *, show_all: bool, thread: Sequence[ThreadTurn] = ()
) -> None:
    out = Console()
    from executus_audit_sql.trail import run_facts

    facts = run_facts(trail)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("run", escape(record.run_id))
    head.add_row(
        "agent",
        escape(record.name)
        + (f" [dim]({escape(record.subject_id)})[/]" if record.subject_id != record.name else ""),
    )
    head.add_row("caller", escape(record.caller_id))
    if facts.model:
        model = escape(facts.model)
        if facts.tier:
            model += f" [dim](tier {escape(facts.tier)})[/]"
        answered = [name for name in facts.answered_by if name != facts.model.partition(":")[2]]
        if answered:
            model += f" [dim]· answered by {escape(', '.join(answered))}[/]"
        head.add_row("model", model)
    if facts.prompt is not None:
        head.add_row("prompt", escape(_short(facts.prompt, 600)))
    if record.channel_id:
        head.add_row("channel", escape(record.channel_id))
    if record.parent_run_id:
        head.add_row("parent run", escape(record.parent_run_id))
    if record.conversation_id:
        head.add_row("conversation", escape(record.conversation_id))
    head.add_row("status", _status(record.shown_status))
    head.add_row(
        "started",
        _when(record.started_at) + (f" · {record.attempts} attempts" if record.attempts > 1 else ""),
    )
    head.add_row(
        "used",
        f"{_count(record.steps, 'step')} · {_count(record.tool_calls, 'tool call')} · {record.input_tokens:,} in / "
        f"{record.output_tokens:,} out"
        + (f" / {record.thinking_tokens:,} thinking" if record.thinking_tokens else "")
        + f" · {_duration(record.duration_seconds)}",
    )
    if record.inputs:
        head.add_row("inputs", escape(_json_short(record.inputs, 400)))
    if record.output:
        head.add_row("output", escape(_short(record.output, 600)))
    if record.error:
        head.add_row("error", f"[red]{escape(record.error)}[/]")
    out.print(head)
    _print_thread(record, thread)

    tree = Tree("[bold]trail[/]" + ("" if trail else " [dim](empty)[/]"))
    tool_calls = {e.call_id for e in trail if e.kind == "tool" and e.call_id}
    step_node: Tree | None = None
    for entry in trail:
        if not show_all and _hidden(entry, tool_calls):
            continue
        label = _entry_label(entry, record.started_at)
        if entry.kind == "step":
            step_node = tree.add(label)
        elif entry.kind == "event" and entry.name in ("run.start", "run.end"):
            tree.add(label)
        else:
            (step_node or tree).add(label)
    out.print(tree)


THREAD_TEXT = 100
"""How many characters of each turn's prompt and output the thread shows (``runs show`` a turn for all)."""


def _thread_json(record: RunRecord, thread: Sequence[ThreadTurn]) -> dict[str, Any] | None:
    """The conversation ``record`` belongs to, for ``--json``: its id and its runs in order, each
    prompt and output shortened, this run marked; ``None`` for a run outside any conversation."""
    if record.conversation_id is None and len(thread) <= 1:
        return None
    return {
        "id": record.conversation,
        "runs": [
            {
                "run_id": turn.run_id,
                "this": turn.run_id == record.run_id,
                "status": turn.status,
                "started_at": turn.started_at.isoformat(),
                "prompt": _short(turn.prompt, THREAD_TEXT) or None,
                "output": _short(turn.output, THREAD_TEXT) or None,
                "error": _short(turn.error, THREAD_TEXT) or None,
            }
            for turn in thread
        ],
    }


def _print_thread(record: RunRecord, thread: Sequence[ThreadTurn]) -> None:
    """The conversation's runs in order, this one marked, each with its prompt and answer shortened."""
    if record.conversation_id is None and len(thread) <= 1:
        return
    out = Console()
    out.print(
        f"[bold]conversation[/] {escape(record.conversation)} · {_count(len(thread), 'run')}", highlight=False
    )
    table = Table.grid(padding=(0, 1))
    for _ in range(4):
        table.add_column(no_wrap=True)
    table.add_column()
    for number, turn in enumerate(thread, start=1):
        this = turn.run_id == record.run_id
        mark = "[bold]▶[/]" if this else " "
        said = (
            f"[italic]{escape(_short(turn.prompt, THREAD_TEXT))}[/]" if turn.prompt else "[dim](no prompt)[/]"
        )
        answer = turn.output if turn.output else turn.error
        if answer:
            said += f" → {escape(_short(answer, THREAD_TEXT))}"
        run = escape(_short_id(turn.run_id)) + (" [bold](this run)[/]" if this else "")
        table.add_row(
            mark, f"{number}.", run, _status(turn.status) + " " + _when_short(turn.started_at), said
        )
    out.print(table)


def register(cli: typer.Typer) -> None:
    """Add ``executus runs`` and this battery's ``executus db upgrade`` step to ``cli``."""
    db_upgraders(cli)[SECTION] = upgrade_step

    runs = typer.Typer(help="The audit trail: runs recorded by executus-audit-sql.", no_args_is_help=True)

    @runs.command("list")
    def list_command(
        caller: Annotated[str | None, typer.Option("--caller", help="Only this caller's runs.")] = None,
        status: Annotated[
            str | None,
            typer.Option(
                "--status",
                help=f"Only runs with this status ({', '.join(s.value for s in RunStatus)}, {RUNNING}).",
            ),
        ] = None,
        agent: Annotated[
            str | None, typer.Option("--agent", help="Only runs of the agent with this name.")
        ] = None,
        limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs, newest first.")] = 20,
        setting: SettingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """The most recent runs: who ran what, how it ended, what it used."""
        known = {s.value for s in RunStatus} | {RUNNING}
        if status is not None and status not in known:
            raise _fail(
                f"--status {status!r} is not a status; use one of {', '.join(sorted(known))}",
                EXIT_CANNOT_START,
            )
        audit = _audit(setting)

        async def work(audit: SqlAudit) -> list[RunRecord]:
            return await audit.list_runs(caller_id=caller, status=status, name=agent, limit=limit)

        records = _run(audit, work)
        if as_json:
            typer.echo(json.dumps({"runs": [_record_json(r) for r in records]}, indent=2, ensure_ascii=False))
        else:
            _print_runs(records, audit)

    @runs.command("show")
    def show_command(
        run_id: Annotated[str, typer.Argument(help="The run's id, or the start of it.")],
        show_all: Annotated[
            bool, typer.Option("--all", help="Also the events that repeat a step or tool row.")
        ] = False,
        setting: SettingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """One run: its info, its roll-up, its conversation's thread and its trail of steps, tool calls,
        events and errors."""
        audit = _audit(setting)
        find = _resolve(audit, run_id)

        async def work(audit: SqlAudit) -> tuple[RunRecord, list[TrailEntry], list[ThreadTurn]]:
            record = await find(audit)
            return record, await audit.trail(record.run_id), await audit.thread(record.conversation)

        record, trail, thread = _run(audit, work)
        if as_json:
            from executus_audit_sql.trail import run_facts

            run = _record_json(record) | run_facts(trail).model_dump(mode="json")
            payload = {
                "run": run,
                "conversation": _thread_json(record, thread),
                "trail": [e.model_dump(mode="json") for e in trail],
            }
            typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        else:
            _print_run(record, trail, show_all=show_all, thread=thread)

    @runs.command("prune")
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
        """Delete finished runs (and their trails) that started more than --older-than days ago.

        It counts them first and asks before deleting (--yes: do not ask); --dry-run only counts.
        """
        audit = _audit(setting)
        days = older_than if older_than is not None else audit.settings.retention_days
        if days is None:
            raise _fail(
                "say how old: --older-than DAYS, or set [tool.executus.audit_sql] retention_days",
                EXIT_CANNOT_START,
            )
        where = audit.describe_database()
        noun = f"finished run{{}} older than {days:g} days in {where}"

        async def count(audit: SqlAudit) -> int:
            return await audit.prune(days, dry_run=True)

        found = _run(audit, count)  # closes this audit: the deletion opens its own
        if dry_run or not found:
            if as_json:
                typer.echo(json.dumps({"deleted": 0, "would_delete": found, "older_than_days": days}))
            elif dry_run:
                Console().print(f"would delete {found} {noun.format('s' * (found != 1))}", highlight=False)
            else:
                Console().print(f"deleted 0 runs older than {days:g} days", highlight=False)
            return
        confirm(f"Delete {found} {noun.format('s' * (found != 1))}, with their trails?", yes=yes)

        async def work(audit: SqlAudit) -> int:
            return await audit.prune(days)

        deleted = _run(_audit(setting), work)
        if as_json:
            typer.echo(json.dumps({"deleted": deleted, "older_than_days": days}))
        else:
            Console().print(
                f"deleted {deleted} run{'s' * (deleted != 1)} older than {days:g} days", highlight=False
            )

    @runs.command("import")
    def import_command(
        files: Annotated[
            list[Path] | None,
            typer.Argument(
                help="Spill files (default: every file in the spill directory).", show_default=False
            ),
        ] = None,
        dry_run: DryRunOption = False,
        setting: SettingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Write the rows close() saved to files while the database was down; delete each file written.

        It writes into the database the settings name here (-s audit_sql.url=... to choose) and
        says which; a file that was not written is kept, to import again.
        """
        audit = _audit(setting)
        where = audit.describe_database()
        paths = list(files or audit.spill_files())
        if dry_run:
            if as_json:
                typer.echo(json.dumps({"database": where, "would_import": [str(p) for p in paths]}, indent=2))
            else:
                out = Console(soft_wrap=True)
                out.print(
                    f"would import {len(paths)} spill file{'s' * (len(paths) != 1)} into {escape(where)}:"
                )
                for path in paths:
                    out.print(f"  {escape(str(path))}", highlight=False)
            return
        if paths and not as_json:
            _err().print(
                f"importing {len(paths)} spill file{'s' * (len(paths) != 1)} into {escape(where)}",
                highlight=False,
            )

        async def work(audit: SqlAudit) -> list[dict[str, Any]]:
            outcomes = []
            for path in paths:
                try:
                    spilled = await audit.import_spill(path)  # deletes the file once written
                    outcomes.append(
                        {
                            "file": str(path),
                            "ok": True,
                            "run_id": spilled.state.info.run_id,
                            "rows": len(spilled.rows),
                        }
                    )
                except Exception as exc:
                    outcomes.append(
                        {"file": str(path), "ok": False, "error": describe_error(exc), "kept": path.exists()}
                    )
            return outcomes

        outcomes = _run(audit, work)
        if as_json:
            typer.echo(json.dumps({"database": where, "imported": outcomes}, indent=2))
        else:
            out = Console(soft_wrap=True)
            if not outcomes:
                out.print(
                    f"nothing to import: no spill files in {escape(str(audit.spill_dir))}", highlight=False
                )
            for outcome in outcomes:
                if outcome["ok"]:
                    out.print(
                        f"[green]✓[/] run {escape(short_id(outcome['run_id']))}: {outcome['rows']} rows from "
                        f"{escape(outcome['file'])} into {escape(where)} (file deleted)",
                        highlight=False,
                    )
                else:
                    kept = " (file kept)" if outcome["kept"] else ""
                    out.print(
                        f"[bold red]✗[/] {escape(outcome['file'])}: {escape(outcome['error'])}{kept}",
                        highlight=False,
                    )
        if not all(o["ok"] for o in outcomes):
            raise typer.Exit(EXIT_FAILED)

    cli.add_typer(runs, name="runs")
