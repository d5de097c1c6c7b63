"""`SqlRecorder`: records one run by appending to a buffer; the audit's writer does the I/O.

``on_step``, ``on_tool``, ``log_event`` and ``log_error`` are on the per-step path: each builds one
row tuple and appends it — no I/O, no await, nothing that grows with the transcript. The batch writer
(`executus_audit_sql.writer`) takes the buffered rows of every recorder every ``flush_interval``
seconds, or as soon as ``batch_size`` rows are waiting, and writes them in one transaction.

Tool arguments, event payloads and error messages are stored masked (`executus_core.secrets`): a
field named ``password``, ``api_key``, ``token``... is kept as ``***``, and a URL's password too.

``close(stats)`` waits for the writer's batch in flight, writes what is left with the roll-up in one
transaction, and — if the database will not take them within ``write_timeout`` — saves them to a
spill file and raises `AuditWriteError` naming it: nothing accepted is dropped silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from executus_audit_sql.errors import AuditWriteError, describe_error
from executus_audit_sql.state import EventKind, Row, RunState
from executus_core.secrets import mask_text, mask_value
from executus_core.types import Message, ModelResponse, RunInfo, RunStats, ToolCall, utcnow

if TYPE_CHECKING:
    from executus_audit_sql.audit import SqlAudit
    from executus_audit_sql.writer import BatchWriter

__all__ = ["SqlRecorder"]

ABORT_WAIT = 0.5
"""Longest a close that ran out of time waits for the write it aborts to end, before saving its rows
(at most a quarter of ``write_timeout``), in seconds."""


class SqlRecorder:
    """The `RunRecorder` of `SqlAudit` for one run.

    The live tally is ``recorder.steps``, ``tool_calls``, ``input_tokens``, ``output_tokens`` and
    ``thinking_tokens`` (what this recorder saw), also written to the run's row with each batch, so
    ``executus runs list`` shows running runs as they go.
    """

    def __init__(self, audit: SqlAudit, writer: BatchWriter, info: RunInfo) -> None:
        self.run_id = info.run_id
        self.state = RunState(info)
        self._audit = audit
        self._writer = writer
        self._skip = audit.skip_events
        self._rows: list[Row] = []
        self._local = 0  # the local seq of the last row
        self._inflight = 0  # rows the writer is writing now
        self._idle = asyncio.Event()
        self._idle.set()
        self._messages: list[Message] | None = None  # the transcript, once on_transcript gave it
        self.closing = False
        self.closed = False

    # -- the live tally ----------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Model calls so far (the highest iteration seen)."""
        return self.state.steps

    @property
    def tool_calls(self) -> int:
        """Tool calls recorded by this recorder."""
        return self.state.tool_calls

    @property
    def input_tokens(self) -> int:
        """Input tokens of the steps recorded."""
        return self.state.input_tokens

    @property
    def output_tokens(self) -> int:
        """Output tokens of the steps recorded."""
        return self.state.output_tokens

    @property
    def thinking_tokens(self) -> int:
        """Thinking tokens of the steps recorded."""
        return self.state.thinking_tokens

    @property
    def waiting(self) -> int:
        """Rows buffered and not yet handed to the writer."""
        return len(self._rows)

    @property
    def buffered(self) -> int:
        """Rows waiting to be written (the batch in flight included)."""
        return len(self._rows) + self._inflight

    # -- the per-step path: append only -------------------------------------------------------

    def _append(
        self,
        kind: str,
        name: str | None,
        iteration: int | None,
        call_id: str | None,
        text: str | None,
        data: Any,
    ) -> None:
        if self.closing:
            raise RuntimeError(f"audit_sql recorder of run {self.run_id}: an event arrived after close()")
        self._local += 1
        self._rows.append((self._local, kind, name, iteration, call_id, text, data, utcnow()))
        self._writer.added(self)

    def on_step(self, iteration: int, response: ModelResponse) -> None:
        """Record a finished model call: its text, tool calls and usage."""
        usage = response.usage
        state = self.state
        if iteration > state.steps:
            state.steps = iteration
        state.input_tokens += usage.input_tokens
        state.output_tokens += usage.output_tokens
        state.thinking_tokens += usage.thinking_tokens
        data: dict[str, Any] = {
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "thinking_tokens": usage.thinking_tokens,
                "cached_input_tokens": usage.cached_input_tokens,
            }
        }
        if response.tool_calls:
            data["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": mask_value(c.arguments)}
                for c in response.tool_calls
            ]
        if response.finish_reason is not None:
            data["finish_reason"] = response.finish_reason
        if response.model is not None:
            data["model"] = response.model
        self._append(EventKind.STEP, None, iteration, None, response.text, data)

    def on_tool(self, call: ToolCall, result: str) -> None:
        """Record a finished tool call: its name, id, arguments and the result sent to the model."""
        self.state.tool_calls += 1
        arguments = mask_value(call.arguments)
        self._append(EventKind.TOOL, call.name, None, call.id, result, {"arguments": arguments})

    def on_resume(self, messages: Sequence[Message], iteration: int) -> None:
        """A resumed run's saved transcript: record its steps and tool results that an earlier
        attempt saved but whose batch never reached the database (the worker died first).

        The rows are marked ``replayed`` (no usage: the roll-up has the run's tokens); the database
        keeps one step row per iteration and one tool row per call id, so only those the trail
        lacks are stored, and a run resumed after a clean stop gets none.
        """
        steps = [index for index, m in enumerate(messages) if m.role == "assistant"]
        mine = steps[len(steps) - iteration :] if 0 < iteration <= len(steps) else []
        if not mine:
            return
        calls: dict[str, ToolCall] = {}
        number = 0
        for message in messages[mine[0] :]:
            if message.role == "assistant":
                number += 1
                data: dict[str, Any] = {"replayed": True}
                if message.tool_calls:
                    calls.update((c.id, c) for c in message.tool_calls)
                    data["tool_calls"] = [
                        {"id": c.id, "name": c.name, "arguments": mask_value(c.arguments)}
                        for c in message.tool_calls
                    ]
                self._append(EventKind.STEP, None, number, None, message.content, data)
            elif message.role == "tool" and message.tool_call_id:
                call = calls.get(message.tool_call_id)
                arguments = mask_value(call.arguments) if call is not None else None
                self._append(
                    EventKind.TOOL,
                    message.name,
                    None,
                    message.tool_call_id,
                    message.content,
                    {"arguments": arguments, "replayed": True},
                )

    def log_event(self, type: str, payload: Mapping[str, Any]) -> None:
        """Record a run event (types listed in ``skip_events`` are not stored)."""
        if type in self._skip:
            return
        # Copied: the caller may reuse its dict before the writer serialises this one.
        self._append(EventKind.EVENT, type, None, None, None, mask_value(dict(payload)))

    def log_error(self, message: str) -> None:
        """Record an error the run survived, or the one that ended it."""
        self._append(EventKind.ERROR, None, None, None, mask_text(message), None)

    def on_transcript(self, messages: list[Message]) -> None:
        """Keep the messages the run ended with: ``close`` writes them with the roll-up, masked like
        the trail; `SqlAudit.transcript` gives them back to ``continue_run``. Called once, at the
        run's end; returns at once (the messages are serialized in ``close``, off the event loop)."""
        if self.closing:
            raise RuntimeError(f"audit_sql recorder of run {self.run_id}: on_transcript after close()")
        self._messages = messages

    # -- the writer's side --------------------------------------------------------------------

    def take(self, limit: int) -> list[Row]:
        """Hand up to ``limit`` buffered rows to the writer (they are in flight until `settle`)."""
        rows = self._rows[:limit]
        del self._rows[:limit]
        self._inflight += len(rows)
        self._idle.clear()
        return rows

    def settle(self, rows: list[Row], *, written: bool) -> None:
        """The writer is done with ``rows``: written, or handed back to be written again."""
        if not written:
            self._rows[:0] = rows  # back in front: the local seq keeps their order anyway
        self._inflight -= len(rows)
        if self._inflight == 0:
            self._idle.set()

    # -- the end ------------------------------------------------------------------------------

    async def close(self, stats: RunStats) -> None:
        """Write what is buffered and the roll-up; on failure save them to a spill file and raise.

        The writer writes them with its next transaction, at once (runs that end together share it).
        When many runs close at once, each waits its turn as long as the writer keeps finishing writes
        (at most ``close_timeout`` of the audit, under the core's ``port_timeout``).

        Raises:
            AuditWriteError: the database did not take the rows (no write finished within
                ``write_timeout``, or the write failed); the message names the spill file that holds them.
        """
        if self.closing:
            raise RuntimeError(f"audit_sql recorder of run {self.run_id}: close() called twice")
        self.closing = True
        audit, writer = self._audit, self._writer
        writer.forget(self)
        loop = asyncio.get_running_loop()
        limit = loop.time() + audit.close_timeout  # the core stops waiting at port_timeout: answer before
        ended_at = utcnow()
        final = None
        try:
            if self._messages is not None:
                # Serializing and masking a long transcript is milliseconds of CPU: not on the loop.
                self.state.transcript = await asyncio.to_thread(_as_json, self._messages)
                self._messages = None
            if not self._idle.is_set():
                # The writer's batch holding our rows must end first: if it fails, they come back.
                # (The writer gives up a write after write_timeout itself.)
                try:
                    async with asyncio.timeout_at(min(limit, loop.time() + audit.write_timeout)):
                        await self._idle.wait()
                except TimeoutError:
                    await writer.abort_inflight(min(ABORT_WAIT, audit.write_timeout / 4))
            final = writer.submit_final(self.state, list(self._rows), stats, ended_at)
            submitted = loop.time()
            while True:
                # Back-pressure: while the writer keeps finishing writes, this close waits its turn
                # (a thousand runs ending at once queue up); it gives up when no write has finished
                # for write_timeout (the database does not answer), or at its limit.
                stalled_at = max(writer.progress_at, submitted) + audit.write_timeout
                try:
                    async with asyncio.timeout_at(min(limit, stalled_at)):
                        await asyncio.shield(final.done)
                    break
                except TimeoutError:
                    if final.done.done():
                        final.done.result()  # written, or the write's own error
                        break
                    now = loop.time()
                    if now < limit and now < max(writer.progress_at, submitted) + audit.write_timeout:
                        continue  # a write finished meanwhile: the queue moves
                    await writer.withdraw(final, min(ABORT_WAIT, audit.write_timeout / 4))
                    if not final.done.done() or final.done.cancelled() or final.done.exception() is not None:
                        raise TimeoutError from None
                    break
            self._rows.clear()
        except asyncio.CancelledError as exc:
            if final is not None:
                writer.withdraw_now(final)
            self._spill_and_raise(exc, stats, ended_at)
        except Exception as exc:
            self._spill_and_raise(exc, stats, ended_at)
        finally:
            self.closed = True

    def _spill_and_raise(self, exc: BaseException, stats: RunStats, ended_at: Any) -> None:
        audit = self._audit
        rows = list(self._rows)
        reason = (
            f"no answer within {audit.write_timeout:g}s"
            if isinstance(exc, TimeoutError)
            else describe_error(exc)
        )
        where = audit.describe_database()
        try:
            path = audit.spill(self.state, rows, stats, ended_at)
        except Exception as spill_exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise AuditWriteError(
                f"run {self.run_id}: {len(rows)} trail rows and the roll-up could not be written to {where} "
                f"({reason}), and saving them to a file failed too ({type(spill_exc).__name__}: {spill_exc}); "
                "they are lost",
                run_id=self.run_id,
                rows=len(rows),
                spill_path=None,
            ) from exc
        if isinstance(exc, asyncio.CancelledError):
            raise exc  # saved; let the cancellation go on
        raise AuditWriteError(
            f"run {self.run_id}: {len(rows)} trail rows and the roll-up could not be written to {where} "
            f"({reason}); they were saved to {path}: load them with `executus runs import` once the "
            "database is back",
            run_id=self.run_id,
            rows=len(rows),
            spill_path=path,
        ) from exc


def _as_json(messages: list[Message]) -> list[Any]:
    """A transcript as stored: each message's JSON form (defaults left out), secrets masked."""
    return list(mask_value([m.model_dump(mode="json", exclude_defaults=True) for m in messages]))
