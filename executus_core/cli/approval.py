"""``executus approve`` and ``executus deny``: answer a run paused for approval, from any shell.

::

    executus approve RUN_ID [CALL_ID ...] [--by NAME] [--agent AGENT] [--json]
    executus deny RUN_ID CALL_ID --reason TEXT [--by NAME] [--agent AGENT] [--json]

The run is read from the checkpoint store the settings name (``-s key=value`` as for ``executus
run``), so the process that paused it may be long gone: the store keeps a paused run until it is
answered. ``approve`` with no CALL_ID approves every pending call; a call left without a decision
keeps waiting (the run pauses again). The agent is rebuilt from where it was loaded (the
checkpoint's saved ``source``, with the model the run used), as ``executus recover`` does, or
given with ``--agent``.

Both commands show the pending calls and each decision, then how the run ended. Exit codes: ``0``
the run ended ``ok`` (or paused again, waiting for the calls left); ``1`` it ended otherwise, or the
run could not be read (no such paused run, held by a live worker); ``2`` the command could not start
(bad settings, no checkpoint store, an unknown call id, an agent that cannot be rebuilt).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from executus_core.approval import Approve, Decision, Deny
from executus_core.cli.helpers import (
    EXIT_CANNOT_START,
    EXIT_FAILED,
    EXIT_OK,
    JsonOption,
    SettingOption,
    fail,
    load_agent,
    parse_settings,
    print_table,
    short_id,
)
from executus_core.errors import ExecutusError, RunTakenOver
from executus_core.types import Interrupted, PendingCall, Result, RunStatus

if TYPE_CHECKING:
    from executus_core.executor import Executor
    from executus_core.types import Agent

__all__ = ["approve_command", "deny_command", "pending_calls", "register"]

ByOption = Annotated[
    str | None,
    typer.Option(
        "--by", metavar="NAME", help="Who decides (kept in the audit trail; default: your user name)."
    ),
]
AgentOption = Annotated[
    str | None,
    typer.Option(
        "--agent",
        "-a",
        metavar="AGENT",
        help="The agent to continue the run with (TOML file or module:attribute). Default: rebuilt from "
        "where the run's agent was loaded (saved with the checkpoint), with the model the run used.",
    ),
]


class _Stop(Exception):
    """The command stops: ``message`` on stderr, exit ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def pending_calls(item: Interrupted) -> list[PendingCall]:
    """The calls of a saved run that wait for approval: without a result, and never started
    (``attempts`` 0, as a paused run saves them)."""
    answered = {m.tool_call_id for m in item.messages if m.role == "tool"}
    return [
        PendingCall(call_id=call.id, tool=call.name, arguments=dict(call.arguments))
        for message in item.messages
        if message.role == "assistant"
        for call in message.tool_calls
        if call.id not in answered and item.attempts.get(call.id) == 0
    ]


def _default_by(by: str | None) -> str | None:
    if by:
        return by
    try:
        return getpass.getuser()
    except Exception:
        return None


async def _peek(store: Any, run_id: str) -> tuple[str, Any]:
    """``(run id, listing)``: a short run id (as the tables show it) made whole, and what the store
    shows of the run without claiming it, where the store can list its runs (``list_runs``, as
    executus-checkpoint-sql's); else ``(run_id, None)``."""
    list_runs = getattr(store, "list_runs", None)
    if not callable(list_runs):
        return run_id, None
    listed = await list_runs(limit=10_000)
    exact = [x for x in listed if x.run_id == run_id]
    if exact:
        return run_id, exact[0]
    found = [x for x in listed if x.run_id.startswith(run_id)]
    if len(found) > 1:
        ids = ", ".join(sorted(x.run_id for x in found)[:5])
        raise _Stop(
            f"run id {run_id!r} is ambiguous: {ids} start with it; give more of it", EXIT_CANNOT_START
        )
    return (found[0].run_id, found[0]) if found else (run_id, None)


def _rebuild(run_id: str, subject: str, spec: Mapping[str, Any], given: Agent | None) -> Agent:
    """The agent to continue the run with: ``--agent``, else rebuilt from the checkpoint's spec
    (``source``: where it was loaded from; ``model``: the model the run used)."""
    if given is not None:
        return given if given.id == subject else given.model_copy(update={"id": subject})
    source = spec.get("source")
    if not isinstance(source, str) or not source:
        raise _Stop(
            f"the checkpoint of run {run_id} does not say where its agent {subject!r} comes from; "
            "pass --agent FILE.toml or --agent module:attribute with the agent to continue it with",
            EXIT_CANNOT_START,
        )
    try:
        agent = load_agent(source)
    except Exception as exc:
        raise _Stop(
            f"cannot rebuild agent {subject!r} of run {run_id} from {source}: {exc}; pass --agent "
            "with the agent to continue it with",
            EXIT_CANNOT_START,
        ) from None
    model = spec.get("model")
    if isinstance(model, str) and model and agent.model_id != model:
        agent = agent.model_copy(update={"model": model})
    if agent.id != subject:
        agent = agent.model_copy(update={"id": subject})
    return agent


async def _give_back(executor: Executor, run_id: str, agent: Agent | None) -> None:
    """The run was loaded (claimed) but is not continued: pause it again, as it was."""
    if agent is not None:
        await executor.resume(run_id, decisions={}, agents={agent.id: agent})
        return
    release = getattr(executor.ports.checkpoints[1] if executor.ports.checkpoints else None, "release", None)
    if callable(release):
        with contextlib.suppress(Exception):  # else the claim lapses after the store's lease
            await release([run_id])


async def _answer(
    overrides: Mapping[str, Any],
    run_id: str,
    decide: Any,
    given: Agent | None,
) -> tuple[list[PendingCall], dict[str, Decision], Result]:
    """Load the run, make the decisions (``decide(pending) -> {call_id: decision}``), resume it."""
    from executus_core.executor import Executor

    try:
        executor = Executor(settings=overrides)
    except ExecutusError as exc:
        raise _Stop(str(exc), EXIT_CANNOT_START) from None
    async with executor:
        if executor.ports.checkpoints is None:
            raise _Stop(
                "no checkpoint store is enabled: a paused run is kept in one (install executus-checkpoint-sql, "
                "and point -s checkpoint_sql.url=... at the database the run paused in)",
                EXIT_CANNOT_START,
            )
        name, store = executor.ports.checkpoints
        load = getattr(store, "load", None)
        if not callable(load):
            raise _Stop(
                f"checkpoint store {name!r} cannot read a run by id (it has no load(run_id)): it cannot keep "
                "runs paused for approval",
                EXIT_CANNOT_START,
            )
        where = getattr(store, "database", name)
        try:
            run_id, listing = await _peek(store, run_id)
        except _Stop:
            raise
        except Exception as exc:
            raise _Stop(
                f"cannot read the runs in {where}: {type(exc).__name__}: {exc}", EXIT_FAILED
            ) from None
        agent: Agent | None = None
        decisions: dict[str, Decision] = {}
        if listing is not None:
            # Everything is checked before the run is claimed: a mistake leaves it paused, as it was.
            if listing.state != "paused":
                held = f" (held by {listing.owner})" if listing.state in ("running", "claimed") else ""
                raise _Stop(
                    f"run {run_id} does not wait for approval: it is {listing.state}{held}", EXIT_FAILED
                )
            spec = {"source": listing.source, "model": listing.model}
            agent = _rebuild(run_id, listing.subject_id, spec, given)
            decisions = decide(list(listing.pending))
        try:
            found = await load(run_id)
        except RunTakenOver as exc:
            raise _Stop(str(exc), EXIT_FAILED) from None
        except Exception as exc:
            raise _Stop(
                f"cannot read run {run_id} from {where}: {type(exc).__name__}: {exc}", EXIT_FAILED
            ) from None
        if found is None:
            raise _Stop(
                f"no paused run {run_id} in {where} (`executus checkpoints list` shows the runs it keeps)",
                EXIT_FAILED,
            )
        item = Interrupted.model_validate(found)
        pending = pending_calls(item)
        try:
            if not pending:
                raise _Stop(
                    f"run {run_id} does not wait for approval: it was interrupted (`executus recover` resumes it)",
                    EXIT_FAILED,
                )
            if agent is None:
                agent = _rebuild(run_id, item.info.subject_id, item.agent, given)
            decisions = decide(pending)
        except _Stop as stop:
            await _give_back(executor, run_id, agent if pending else None)
            raise stop from None
        result = await executor.resume(run_id, decisions=decisions, agents={agent.id: agent})
    return pending, decisions, result


def _show(
    pending: list[PendingCall], decisions: dict[str, Decision], result: Result, console: Console
) -> None:
    table = Table()
    table.add_column("call id", no_wrap=True)
    table.add_column("tool")
    table.add_column("arguments", overflow="fold")
    table.add_column("decision", overflow="fold")
    for call in pending:
        decision = decisions.get(call.call_id)
        if decision is None:
            said = "[dim]waits[/]"
        elif isinstance(decision, Deny):
            said = f"[red]deny[/]: {escape(decision.reason)}"
        elif isinstance(decision, Approve):
            said = "[green]approve[/]"
        else:
            said = f"[yellow]edit[/]: {escape(json.dumps(decision.arguments, ensure_ascii=False))}"
        if decision is not None and decision.by:
            said += f" [dim](by {escape(decision.by)})[/]"
        table.add_row(
            escape(call.call_id),
            escape(call.tool),
            escape(json.dumps(call.arguments, ensure_ascii=False)),
            said,
        )
    print_table(table, title=f"run {short_id(result.run_id)}: pending calls", console=console)
    colour = "green" if result.ok else ("magenta" if result.status is RunStatus.AWAITING_APPROVAL else "red")
    console.print(f"[{colour}]{result.status.value}[/]", highlight=False)
    if result.ok:
        console.print(escape(str(result.output)), highlight=False)
    elif result.status is RunStatus.AWAITING_APPROVAL:
        waiting = ", ".join(f"{p.tool} ({p.call_id})" for p in result.pending)
        console.print(f"still waiting for: {escape(waiting)}", highlight=False)
    else:
        console.print(f"[red]{escape(result.error or '')}[/]", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


def _run(run_id: str, decide: Any, agent_ref: str | None, setting: list[str] | None, as_json: bool) -> None:
    try:
        overrides = parse_settings(setting or [])
        given = load_agent(agent_ref) if agent_ref else None
    except ExecutusError as exc:
        raise fail(str(exc), EXIT_CANNOT_START) from None
    try:
        pending, decisions, result = asyncio.run(_answer(overrides, run_id, decide, given))
    except _Stop as stop:
        raise fail(str(stop), stop.code) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "pending": [p.model_dump(mode="json") for p in pending],
                    "decisions": {k: v.model_dump(mode="json") for k, v in decisions.items()},
                    "result": result.model_dump(mode="json"),
                },
                indent=2,
            )
        )
    else:
        _show(pending, decisions, result, Console(soft_wrap=True))
    ended_well = result.ok or result.status is RunStatus.AWAITING_APPROVAL
    raise typer.Exit(EXIT_OK if ended_well else EXIT_FAILED)


def _unknown(call_ids: list[str], pending: list[PendingCall]) -> None:
    known = {p.call_id for p in pending}
    unknown = [c for c in call_ids if c not in known]
    if unknown:
        listed = ", ".join(f"{p.call_id} ({p.tool})" for p in pending)
        raise _Stop(
            f"run has no pending call {', '.join(unknown)}; its pending calls: {listed}", EXIT_CANNOT_START
        )


def approve_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The paused run (a short id works).")],
    call_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[CALL_ID ...]", help="The calls to approve (default: every pending call)."),
    ] = None,
    by: ByOption = None,
    agent: AgentOption = None,
    setting: SettingOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve a paused run's pending tool calls (all of them, or those named) and continue the run.

    The approved calls run once, in this process; calls not named keep waiting.
    """
    who = _default_by(by)

    def decide(pending: list[PendingCall]) -> dict[str, Decision]:
        wanted = list(call_ids or [])
        _unknown(wanted, pending)
        chosen = wanted or [p.call_id for p in pending]
        return {call_id: Approve(by=who) for call_id in chosen}

    _run(run_id, decide, agent, setting, as_json)


def deny_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The paused run (a short id works).")],
    call_id: Annotated[str, typer.Argument(metavar="CALL_ID", help="The pending call to deny.")],
    reason: Annotated[
        str,
        typer.Option("--reason", "-r", metavar="TEXT", help="Why: the model gets it as the tool's error."),
    ],
    by: ByOption = None,
    agent: AgentOption = None,
    setting: SettingOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deny one pending tool call of a paused run and continue the run: the model gets the reason.

    The run's other pending calls keep waiting.
    """
    who = _default_by(by)

    def decide(pending: list[PendingCall]) -> dict[str, Decision]:
        _unknown([call_id], pending)
        return {call_id: Deny(reason, by=who)}

    _run(run_id, decide, agent, setting, as_json)


def register(app: typer.Typer) -> None:
    """Add ``executus approve`` and ``executus deny`` to the app."""
    app.command("approve")(approve_command)
    app.command("deny")(deny_command)
