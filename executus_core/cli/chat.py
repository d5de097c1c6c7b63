"""``executus chat``: talk with an agent turn by turn; each turn is a run of one conversation.

::

    executus chat examples/assistant.toml
    executus chat --model openai:gpt-4o-mini --system "Be brief."
    executus chat agent.toml --continue 3f2a9c01b7de     # go on with an earlier run's conversation

Each line you type is the prompt of a new run that continues from the last turn that ended ``ok``
(its messages are the next run's ``history=``), and every turn carries the conversation's id, so an
audit links them (``executus runs show RUN_ID`` shows the thread). A turn that fails is not part of
the conversation: the next one continues from the last answer. ``exit``, ``quit`` or end of input
(Ctrl-D) leaves; Ctrl-C stops the turn that is running (a second Ctrl-C leaves), and at the prompt
it leaves. Lines come from stdin, so a script can drive a chat: ``printf 'hi\\nexit\\n' | executus
chat -m scripted:replay.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from executus_core.cli.header import describe_batteries, describe_model
from executus_core.cli.helpers import parse_settings, short_id, stderr
from executus_core.cli.options import EXIT_CANNOT_START, EXIT_INTERRUPTED, EXIT_OK
from executus_core.cli.plugins import CommandState
from executus_core.cli.progress import Progress
from executus_core.cli.run import RunRequest, _check_can_start, _default_caller, build_agent, resolve_run_id
from executus_core.errors import ConfigError, ExecutusError, PluginError
from executus_core.types import Agent, Message, Result, RunStatus, RunTranscript

__all__ = ["LEAVE_WORDS", "chat_command"]

LEAVE_WORDS = frozenset({"exit", "quit"})
"""A line that is one of these (spaces and case aside) ends the chat."""


def chat_command(request: RunRequest, state: CommandState) -> int:
    """Run ``executus chat`` as asked (``request.prompt`` is unused); return its exit code."""
    err = stderr()
    try:
        agent = build_agent(request)
        overrides = parse_settings(request.settings)
    except ExecutusError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_CANNOT_START
    return asyncio.run(
        _chat(
            agent,
            caller=request.caller or _default_caller(),
            settings=overrides,
            continue_run=request.continue_run,
            progress=not request.quiet,
            err=err,
            state=state,
        )
    )


async def _read_line(prompt: str | None) -> str | None:
    """The next line of stdin without its newline, or ``None`` at its end.

    Read in a daemon thread of its own, so the loop stays free (Ctrl-C is handled there) and a
    chat left at the prompt never waits for the read to finish.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def settle(value: str | None) -> None:
        if not future.done():
            future.set_result(value)

    def read() -> None:
        value: str | None
        try:
            if prompt is not None:
                value = input(prompt)
            else:
                raw = sys.stdin.readline()
                value = raw.rstrip("\r\n") if raw else None
        except (EOFError, OSError, ValueError):
            value = None
        with contextlib.suppress(RuntimeError):  # the loop is gone: the chat has ended
            loop.call_soon_threadsafe(settle, value)

    threading.Thread(target=read, name="executus chat input", daemon=True).start()
    return await future


async def _conversation_of(executor: Any, run_id: str) -> RunTranscript | None:
    """The earlier run as the first audit that keeps transcripts has it (for the chat's header)."""
    for _, audit in executor.ports.audits:
        read = getattr(audit, "transcript", None)
        if callable(read):
            with contextlib.suppress(Exception):
                found = await read(run_id)
                if found is not None:
                    return found if isinstance(found, RunTranscript) else RunTranscript.model_validate(found)
    return None


def _show(result: Result, out: Console, err: Console, progress: Progress | None) -> None:
    """A turn's answer on stdout; its warnings and error on stderr."""
    if result.ok and result.output is not None:
        text = result.output if isinstance(result.output, str) else (result.text or str(result.output))
        shown = progress is not None and progress.answer_was_shown(text)
        if out.is_terminal and err.is_terminal and shown:
            pass  # streamed on this terminal already
        elif out.is_terminal:
            from rich.markdown import Markdown

            out.print(Markdown(text))
        else:
            out.file.write(text + "\n")
            out.file.flush()
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if not result.ok:
        label = "error" if result.status is RunStatus.ERROR else result.status.value
        err.print(f"[bold red]{label}:[/] {escape(result.error or result.status.value)}", highlight=False)
        err.print(
            "[dim]this turn is not part of the conversation: the next one continues from the last answer[/]",
            highlight=False,
        )


async def _chat(
    agent: Agent,
    *,
    caller: str,
    settings: Mapping[str, Any],
    continue_run: str | None,
    progress: bool,
    err: Console,
    state: CommandState,
) -> int:
    from executus_core.executor import Executor

    try:
        executor = Executor(settings=settings, entry_points=state.entry_points, plugins=state.plugins)
    except (ConfigError, PluginError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_CANNOT_START
    problem = _check_can_start(executor, agent)
    if problem is not None:
        await executor.shutdown()
        err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
        return EXIT_CANNOT_START

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    running: str | None = None  # the run id of the turn going on, if any
    presses = 0  # Ctrl-C presses during this turn
    reading: asyncio.Task[str | None] | None = None

    def on_interrupt() -> None:
        nonlocal presses
        if running is None:
            if reading is not None:
                reading.cancel()  # at the prompt: leave
            return
        presses += 1
        if presses == 1 and executor.cancel(running):
            err.print("[yellow]stopping this turn (Ctrl-C again to leave the chat)[/]")
        elif main_task is not None:
            main_task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    out = Console()
    try:
        async with executor:
            conversation = uuid.uuid4().hex
            pending_continue: str | None = None
            history: list[Message] | None = None
            if continue_run is not None:
                try:
                    pending_continue = await resolve_run_id(executor, continue_run)
                except ConfigError as exc:
                    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
                    return EXIT_CANNOT_START
                # the core's own checks, with nothing sent: a run that cannot be continued stops here
                check = await executor.run(
                    agent,
                    "(checking --continue)",
                    caller_id=caller,
                    continue_run=pending_continue,
                    dry_run=True,
                )
                if check.status is not RunStatus.DRY_RUN:
                    err.print(
                        f"[bold red]error:[/] {escape(check.error or check.status.value)}", highlight=False
                    )
                    return EXIT_CANNOT_START
                earlier = await _conversation_of(executor, pending_continue)
                if earlier is not None:
                    conversation = earlier.info.conversation_id or earlier.info.run_id
            header = f"[bold]{escape(agent.name)}[/] · caller {escape(caller)} · conversation {escape(conversation)}"
            if pending_continue is not None:
                header += f" · continues {short_id(pending_continue)}"
            model_line = describe_model(executor, agent)
            err.print(header + (f"\n[dim]{escape(model_line)}[/]" if model_line else ""), highlight=False)
            if batteries := describe_batteries(executor):
                err.print(f"[dim]{escape(batteries)}[/]", highlight=False)
            err.print(
                "[dim]type a message; exit, quit or Ctrl-D leaves; Ctrl-C stops a turn[/]", highlight=False
            )
            prompt = "> " if sys.stdin is not None and sys.stdin.isatty() else None
            first_id: str | None = conversation if pending_continue is None else None
            last_run: str | None = None
            while True:
                reading = asyncio.ensure_future(_read_line(prompt))
                try:
                    line = await reading
                except asyncio.CancelledError:
                    if main_task is not None and main_task.cancelling():
                        raise
                    err.print()
                    break
                finally:
                    reading = None
                if line is None or line.strip().lower() in LEAVE_WORDS:
                    break
                if not line.strip():
                    continue
                run_id = first_id or uuid.uuid4().hex
                first_id = None
                show = Progress(err) if progress else None
                running, presses = run_id, 0
                if show is not None:
                    show.start()
                try:
                    result = await executor.run(
                        agent,
                        line,
                        caller_id=caller,
                        run_id=run_id,
                        conversation_id=conversation,
                        on_event=show,
                        history=history if pending_continue is None else None,
                        continue_run=pending_continue,
                    )
                finally:
                    running = None
                    if show is not None:
                        show.close()
                _show(result, out, err, show)
                last_run = run_id
                if result.ok:
                    history, pending_continue = result.messages, None
    except asyncio.CancelledError:
        err.print("[bold red]interrupted[/]")
        return EXIT_INTERRUPTED
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
    if last_run is not None:
        err.print(
            f"[dim]conversation {escape(conversation)} · `executus runs show {short_id(last_run)}` shows its "
            f"thread; `executus chat --continue {short_id(last_run)}` goes on with it[/]",
            highlight=False,
        )
    return EXIT_OK
