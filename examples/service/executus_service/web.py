"""The web app: take run requests, stream their progress, answer their status and result.

====================================  ===========================================================
``POST /runs``                        ``{"prompt": ..., "caller_id": ..., "agent": "ledger"}``:
                                      defer a run job; ``202`` with the run id and its links
``GET /runs/{run_id}``                the run's status (from the audit trail; ``queued`` before a
                                      worker took it)
``GET /runs/{run_id}/result``         ``200`` with status, output, error and stats once it ended;
                                      ``202`` with the status while it goes on; ``404`` unknown
``GET /runs/{run_id}/events``         server-sent events: every trail row as it is written (steps,
                                      tool calls, run events, errors; the SSE id is the row's
                                      ``seq``, so a client reconnects with ``Last-Event-ID``), then
                                      ``event: end`` with the final status
``POST /runs/{run_id}/cancel``        ask the worker that runs it to cancel it (``202``); a run
                                      not started yet, or between workers, is cancelled when a
                                      worker takes it up; ``409`` once it ended, ``404`` unknown
``GET /healthz``                      ``{"ok": true}`` once the queue's database answers
``/viewer/``                          the runs viewer (executus-viewer): the runs live, each
                                      run's trace, and its Cancel button (``allow_cancel``)
====================================  ===========================================================

Runs happen in the worker processes; the web app reads everything back from the audit battery
(`executus_audit_sql`), which every worker writes to, so any web process can answer for any run. A
cancel goes to the workers through PostgreSQL: a row in ``service_cancels`` and a ``NOTIFY`` that
every worker listens for (`executus_service.jobs.listen_for_cancels`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from executus_audit_sql.audit import SqlAudit
from executus_audit_sql.plugin import build_audit
from executus_audit_sql.trail import RunRecord, TrailEntry
from executus_viewer import make_viewer
from executus_viewer.actions import ActionOutcome
from procrastinate import App
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from executus_core.config import Settings
from executus_service.jobs import CANCEL_CHANNEL, RUN_TASK
from executus_service.ledger import REQUEST_CANCEL
from executus_service.settings import ServiceSettings

__all__ = ["ServiceActions", "make_web_app", "run_document"]

log = logging.getLogger("executus_service.web")

KEEPALIVE_SECONDS = 15.0
_ENDED = frozenset({"ok", "error", "timeout", "budget_exceeded", "cancelled", "dry_run"})
_RESULT = "SELECT status, output, error FROM service_results WHERE run_id = %(run_id)s"
_JOB_STATUS = """
SELECT status FROM procrastinate_jobs
 WHERE task_name = %(task)s AND args->>'run_id' = %(run_id)s
 ORDER BY id DESC LIMIT 1
"""


def run_document(record: RunRecord) -> dict[str, Any]:
    """A run as the API shows it (JSON-ready)."""
    return {
        "run_id": record.run_id,
        "agent": record.name,
        "caller_id": record.caller_id,
        "status": record.shown_status,
        "attempts": record.attempts,
        "steps": record.steps,
        "tool_calls": record.tool_calls,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "output": record.output,
        "error": record.error,
        "started_at": record.started_at.isoformat(),
        "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        "duration_seconds": round(record.duration_seconds, 3),
    }


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    payload = json.dumps(data, default=str, ensure_ascii=False)
    return f"{head}event: {event}\ndata: {payload}\n\n".encode()


def _trail_event(entry: TrailEntry) -> tuple[str, dict[str, Any]]:
    """The SSE event name and data of a trail row: run events by their type (``run.start``, ``step``,
    ``tool.start``, ...), the audit's own rows as ``trail.step``, ``trail.tool`` and ``trail.error``."""
    data = entry.model_dump(mode="json", exclude_none=True)
    if entry.kind == "event" and entry.name:
        return entry.name, data
    return f"trail.{entry.kind}", data


class _Service:
    def __init__(self, settings: Settings, service: ServiceSettings, queue: App, agents: list[str]) -> None:
        self.settings = settings
        self.service = service
        self.queue = queue
        self.agents = agents
        self.audit: SqlAudit = build_audit(settings)

    async def status(self, run_id: str) -> dict[str, Any] | None:
        record = await self.audit.get_run(run_id)
        found = run_document(record) if record is not None else None
        if found is not None and found["status"] in _ENDED:
            return found
        # How the run ended as its worker saw it: the same as the audit's once that is closed, and the
        # only record of a run refused before it started (budget_exceeded) or one whose trail stopped.
        ends = await self.queue.connector.execute_query_all_async(_RESULT, run_id=run_id)
        if ends:
            return {**(found or {"run_id": run_id}), **ends[0]}
        if found is not None:
            return found
        jobs = await self.queue.connector.execute_query_all_async(_JOB_STATUS, task=RUN_TASK, run_id=run_id)
        if not jobs:
            return None
        job = jobs[0]
        # A job with no audit row yet: waiting for a worker (or just taken by one).
        return {"run_id": run_id, "status": "queued", "job": job["status"]}

    async def cancel(self, run_id: str) -> tuple[int, dict[str, Any]]:
        """Ask for ``run_id`` to be cancelled: ``(HTTP status, answer)``.

        The cancel is kept in ``service_cancels`` and sent to every worker with ``NOTIFY``: the one
        running the run cancels it (`Executor.cancel`); a run no worker runs now (queued, or between
        workers after a crash) is cancelled when a worker takes its job up.
        """
        found = await self.status(run_id)
        if found is None:
            return 404, {"error": f"no run {run_id!r} (neither queued nor recorded)"}
        if found["status"] in _ENDED:
            return 409, {**found, "error": f"run {run_id} already ended {found['status']}: nothing to cancel"}
        await self.queue.connector.execute_query_async(REQUEST_CANCEL, run_id=run_id, channel=CANCEL_CHANNEL)
        log.info("run %s: cancel asked", run_id)
        return 202, {
            "run_id": run_id,
            "status": "cancelling",
            "was": found["status"],
            "links": {"status": f"/runs/{run_id}", "result": f"/runs/{run_id}/result"},
        }

    # -- endpoints ------------------------------------------------------------------------

    async def post_cancel(self, request: Request) -> Response:
        status, answer = await self.cancel(request.path_params["run_id"])
        return JSONResponse(answer, status_code=status)

    async def submit(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, 'the body must be JSON: {"prompt": ..., "caller_id": ...}')
        if not isinstance(body, dict):
            return _problem(400, 'the body must be a JSON object: {"prompt": ..., "caller_id": ...}')
        prompt, caller_id = body.get("prompt"), body.get("caller_id")
        agent = body.get("agent") or self.service.agent
        if not isinstance(prompt, str) or not prompt.strip():
            return _problem(422, "prompt must be a non-empty string")
        if not isinstance(caller_id, str) or not caller_id.strip():
            return _problem(
                422, "caller_id must be a non-empty string (who the run is for: budgets count by it)"
            )
        if agent not in self.agents:
            return _problem(422, f"unknown agent {agent!r}; this service runs: {', '.join(self.agents)}")
        run_id = uuid.uuid4().hex
        job_id = await self.queue.tasks[RUN_TASK].defer_async(
            run_id=run_id, prompt=prompt, caller_id=caller_id, agent=agent
        )
        base = f"/runs/{run_id}"
        return JSONResponse(
            {
                "run_id": run_id,
                "job_id": job_id,
                "status": "queued",
                "links": {"status": base, "result": f"{base}/result", "events": f"{base}/events"},
            },
            status_code=202,
            headers={"Location": base},
        )

    async def get_status(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        found = await self.status(run_id)
        if found is None:
            return _problem(404, f"no run {run_id!r} (neither queued nor recorded)")
        return JSONResponse(found)

    async def get_result(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        found = await self.status(run_id)
        if found is None:
            return _problem(404, f"no run {run_id!r} (neither queued nor recorded)")
        if found["status"] not in _ENDED:
            return JSONResponse(found, status_code=202)
        return JSONResponse(found)

    async def events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if await self.status(run_id) is None:
            return _problem(404, f"no run {run_id!r} (neither queued nor recorded)")
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        try:
            after = int(raw)
        except ValueError:
            return _problem(400, f"Last-Event-ID must be a trail seq (a whole number), got {raw!r}")
        return StreamingResponse(
            self._stream(run_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, run_id: str, after: int) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        shown: str | None = None
        while True:
            found = await self.status(run_id)
            status = found["status"] if found else None
            if status != shown and status in ("queued", None):
                yield _sse("status", found)
            shown = status
            ended = status in _ENDED
            # Read the rows after the status: once the status says ended, the rows are all written.
            for entry in await self.audit.trail(run_id, after=after):
                if entry.seq > after:
                    after = entry.seq
                    name, data = _trail_event(entry)
                    yield _sse(name, data, entry.seq)
                    quiet_since = loop.time()
            if ended:
                yield _sse("end", found)
                return
            if loop.time() - quiet_since > KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                quiet_since = loop.time()
            await asyncio.sleep(self.service.poll_seconds)

    async def workers(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The worker that holds (or last held) each run: its checkpoint's owner (the viewer's worker column)."""
        schema = self.settings.get("checkpoint_sql", {}).get("db_schema")
        table = f'"{schema}".executus_checkpoint_runs' if schema else "executus_checkpoint_runs"
        rows = await self.queue.connector.execute_query_all_async(
            f"SELECT run_id, owner FROM {table} WHERE run_id = ANY(%(ids)s)", ids=list(run_ids)
        )
        return {row["run_id"]: row["owner"] for row in rows if row["owner"]}

    async def health(self, request: Request) -> Response:
        await self.queue.connector.execute_query_one_async("SELECT 1 AS ok")
        return JSONResponse({"ok": True})


class ServiceActions:
    """The viewer's actions in this service: Cancel, sent to whichever worker runs the run."""

    def __init__(self, service: _Service) -> None:
        self._service = service

    async def cancel(self, run_id: str) -> ActionOutcome:
        """Ask the workers to cancel ``run_id`` (as ``POST /runs/{id}/cancel`` does)."""
        status, answer = await self._service.cancel(run_id)
        if status == 202:
            return ActionOutcome(True, f"run {run_id} is being cancelled (it was {answer['was']})")
        return ActionOutcome(False, str(answer.get("error")))


def make_web_app(settings: Settings, service: ServiceSettings, queue: App, agents: list[str]) -> Starlette:
    """The service's ASGI app; it opens the queue's connection pool at startup and closes it at shutdown."""
    state = _Service(settings, service, queue, agents)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with queue.open_async():
            try:
                yield
            finally:
                await state.audit.aclose()

    return Starlette(
        routes=[
            Route("/runs", state.submit, methods=["POST"]),
            Route("/runs/{run_id}", state.get_status, methods=["GET"]),
            Route("/runs/{run_id}/result", state.get_result, methods=["GET"]),
            Route("/runs/{run_id}/events", state.events, methods=["GET"]),
            Route("/runs/{run_id}/cancel", state.post_cancel, methods=["POST"]),
            Route("/healthz", state.health, methods=["GET"]),
            # The viewer reads the same audit trail; its Cancel goes to the workers as POST .../cancel
            # does (allow_cancel in [tool.executus.viewer]). This example has no auth: loopback only.
            Mount(
                "/viewer",
                app=make_viewer(
                    state.audit,
                    executus_settings=settings,
                    workers=state.workers,
                    actions=ServiceActions(state),
                ),
            ),
        ],
        lifespan=lifespan,
    )
