"""The viewer's ASGI app: the runs list, each run's trace, their live updates, JSON and actions.

========================================  ==========================================================
``GET /``                                 the runs list, newest first; ``?status=&agent=&caller=``
                                          filter it, ``?before=`` pages it (keyset: as fast deep
                                          as on top)
``GET /events``                           server-sent events for the list's first page: ``rows``
                                          with the rows that changed (as HTML) and the page's order
``GET /runs/{run_id}``                    the run's trace
``GET /runs/{run_id}/trace``              the trace's body alone (what a live page swaps in)
``GET /runs/{run_id}/events``             server-sent events: ``changed`` when the trail grows or
                                          the status changes, ``end`` when the run ended
``GET /runs/{run_id}.json``               the run, its waiting state and its trail as JSON
``POST /runs/{run_id}/cancel|resume``     an action, if its setting allows it (``403`` otherwise)
``POST /runs/{run_id}/approval``          ``{"decisions": {call_id: {"decision": "approve"}}}``
``/static/...``                           the CSS and JavaScript (shipped in the package)
========================================  ==========================================================

Every read goes through `executus_audit_sql.SqlAudit` (``list_runs``, ``get_run``, ``trail``), on
SQLite or PostgreSQL. Actions are POSTs that must carry the header ``X-Executus-Viewer: 1``, which a
form on another site cannot send: a cross-site request cannot act on a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
from executus_audit_sql import RunRecord, SqlAudit
from executus_audit_sql.trail import RUNNING
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from executus_core.config import Settings, load_settings
from executus_core.secrets import mask_text, mask_value
from executus_core.types import RunStatus
from executus_viewer.actions import APPROVAL_UNAVAILABLE, ActionOutcome, approval_available
from executus_viewer.settings import SECTION, ViewerSettings
from executus_viewer.trace import Trace, Waiting, build_trace, waiting_for

__all__ = ["WorkerLookup", "make_viewer"]

log = logging.getLogger("executus.viewer")

WorkerLookup = Callable[[Sequence[str]], Awaitable[Mapping[str, str]]]
"""An async callable the host may pass: run ids in, ``{run_id: worker}`` out (for the list's worker
column); the audit trail does not know which process ran a run."""

STATUSES = [RUNNING, *(s.value for s in RunStatus)]
TAIL_ROWS = 20
"""Trail rows read per running run to tell what it waits for."""
KEEPALIVE_SECONDS = 15.0
_PAUSED = frozenset({"interrupted", "awaiting_approval"})
"""Statuses a run leaves again (resumed): a trace page keeps following them."""


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("executus_viewer", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["duration"] = _duration
    env.filters["pretty"] = _json
    env.filters["iso"] = lambda d: d.isoformat() if isinstance(d, datetime) else ""
    env.filters["clock"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S") if isinstance(d, datetime) else ""
    env.filters["short"] = lambda s: (s or "")[:12]
    return env


class _Viewer:
    def __init__(
        self,
        audit: SqlAudit,
        settings: ViewerSettings,
        actions: Any,
        workers: WorkerLookup | None,
    ) -> None:
        self.audit = audit
        self.settings = settings
        self.actions = actions
        self.workers = workers
        self.env = _environment()

    # -- reading ---------------------------------------------------------------------------------

    async def page(
        self, filters: Mapping[str, str | None], before: tuple[datetime, str] | None
    ) -> list[RunRecord]:
        return await self.audit.list_runs(
            status=filters.get("status") or None,
            name=filters.get("agent") or None,
            caller_id=filters.get("caller") or None,
            limit=self.settings.page_size,
            before=before,
        )

    async def waiting(self, records: Sequence[RunRecord]) -> dict[str, Waiting]:
        # The last rows of every run that has not ended, in one statement.
        going = [r.run_id for r in records if r.status is None or r.shown_status == "awaiting_approval"]
        tails = await self.audit.tails(going, last=TAIL_ROWS) if going else {}
        found: dict[str, Waiting] = {}
        for record in records:
            waiting = waiting_for(record, tails.get(record.run_id, []))
            if waiting is not None:
                found[record.run_id] = waiting
        return found

    async def worker_names(self, records: Sequence[RunRecord]) -> Mapping[str, str]:
        if self.workers is None or not records:
            return {}
        try:
            return await self.workers([r.run_id for r in records])
        except Exception as exc:  # a lookup that fails must not take the page down
            log.warning("viewer: the worker lookup failed: %s", mask_text(str(exc)))
            return {}

    async def trace(self, run_id: str, depth: int) -> Trace | None:
        record = await self.audit.get_run(run_id)
        if record is None:
            return None
        trail = await self.audit.trail(run_id)
        trace = build_trace(record, trail)
        if depth > 0:
            await self._attach_children(trace, depth - 1)
        return trace

    async def _attach_children(self, trace: Trace, depth: int) -> None:
        children = await self.audit.list_runs(parent_run_id=trace.record.run_id, limit=200)
        if not children:
            return
        calls = trace.tool_calls()
        by_id = {cid: call for call in calls for cid in call.child_run_ids}
        for child in sorted(children, key=lambda r: r.started_at):
            sub = await self.trace(child.run_id, depth) if depth >= 0 else None
            if sub is None:
                continue
            owner = by_id.get(child.run_id)
            if owner is None:
                # No child event stored: the delegating call whose time covers the child's start.
                covering = [
                    c
                    for c in calls
                    if c.delegation
                    and c.started_at <= child.started_at
                    and (c.ended_at is None or child.started_at <= c.ended_at)
                ]
                owner = covering[-1] if covering else None
            if owner is not None:
                owner.children.append(sub)
            else:
                trace.other_children.append(sub)

    # -- rendering -------------------------------------------------------------------------------

    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def render(self, template: str, request: Request, **context: Any) -> str:
        return self.env.get_template(template).render(
            base=self.base(request),
            settings=self.settings,
            statuses=STATUSES,
            **context,
        )

    def row_html(
        self, request: Request, record: RunRecord, waiting: Waiting | None, worker: str | None
    ) -> str:
        return self.render("_row.html", request, run=record, waiting=waiting, worker=worker)

    # -- endpoints -------------------------------------------------------------------------------

    def _filters(self, request: Request) -> dict[str, str]:
        query = request.query_params
        found = {key: query.get(key, "").strip() for key in ("status", "agent", "caller")}
        if found["status"] and found["status"] not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {found['status']!r}")
        return found

    @staticmethod
    def _cursor(raw: str | None) -> tuple[datetime, str] | None:
        if not raw:
            return None
        at, sep, run_id = raw.partition("|")
        if not sep:
            raise ValueError(
                f"before must be STARTED_AT|RUN_ID (the link under the list makes it), got {raw!r}"
            )
        when = datetime.fromisoformat(at)
        return when, run_id

    async def list_page(self, request: Request) -> Response:
        try:
            filters = self._filters(request)
            before = self._cursor(request.query_params.get("before"))
        except ValueError as exc:
            return HTMLResponse(self.render("error.html", request, message=str(exc)), status_code=400)
        records = await self.page(filters, before)
        waiting = await self.waiting(records)
        workers = await self.worker_names(records)
        rows = [self.row_html(request, r, waiting.get(r.run_id), workers.get(r.run_id)) for r in records]
        next_link = None
        if len(records) == self.settings.page_size:
            last = records[-1]
            query = {k: v for k, v in filters.items() if v}
            query["before"] = f"{last.started_at.isoformat()}|{last.run_id}"
            next_link = "?" + urlencode(query)
        live_query = urlencode({k: v for k, v in filters.items() if v})
        return HTMLResponse(
            self.render(
                "list.html",
                request,
                rows=rows,
                filters=filters,
                next_link=next_link,
                live=before is None,
                live_query=live_query,
                paged=before is not None,
            )
        )

    async def list_events(self, request: Request) -> Response:
        try:
            filters = self._filters(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(
            self._list_stream(request, filters),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _list_stream(self, request: Request, filters: Mapping[str, str]) -> AsyncIterator[bytes]:
        sent: dict[str, str] = {}
        order: list[str] = []
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        yield b"retry: 2000\n\n"
        while True:
            try:
                records = await self.page(filters, None)
                waiting = await self.waiting(records)
                workers = await self.worker_names(records)
            except Exception as exc:
                log.warning("viewer: reading the runs failed: %s", mask_text(str(exc)))
                yield _sse("problem", {"error": f"reading the runs failed: {mask_text(str(exc))}"})
                await asyncio.sleep(self.settings.poll_seconds * 5)
                continue
            changed = []
            for record in records:
                html = self.row_html(request, record, waiting.get(record.run_id), workers.get(record.run_id))
                if sent.get(record.run_id) != html:
                    sent[record.run_id] = html
                    changed.append({"run_id": record.run_id, "html": html})
            new_order = [r.run_id for r in records]
            if changed or new_order != order:
                order = new_order
                for gone in set(sent) - set(order):
                    del sent[gone]
                yield _sse("rows", {"rows": changed, "order": order})
                quiet_since = loop.time()
            elif loop.time() - quiet_since > KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                quiet_since = loop.time()
            await asyncio.sleep(self.settings.poll_seconds)

    async def trace_page(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        trace = await self.trace(run_id, self.settings.child_depth)
        if trace is None:
            return HTMLResponse(
                self.render("error.html", request, message=f"no run {run_id!r} in the audit trail"),
                status_code=404,
            )
        return HTMLResponse(
            self.render(
                "trace.html",
                request,
                trace=trace,
                body=self.trace_body(request, trace),
                actions=self.available_actions(trace.record),
            )
        )

    def trace_body(self, request: Request, trace: Trace) -> str:
        return self.render("_trace.html", request, trace=trace, depth=0)

    async def trace_fragment(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        trace = await self.trace(run_id, self.settings.child_depth)
        if trace is None:
            return HTMLResponse(f"no run {run_id!r}", status_code=404)
        return HTMLResponse(self.trace_body(request, trace))

    async def run_json(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        record = await self.audit.get_run(run_id)
        if record is None:
            return JSONResponse({"error": f"no run {run_id!r} in the audit trail"}, status_code=404)
        trail = await self.audit.trail(run_id)
        children = await self.audit.list_runs(parent_run_id=run_id, limit=200)
        waiting = waiting_for(record, trail[-TAIL_ROWS:])
        run = record.model_dump(mode="json")
        run["status"] = record.shown_status
        for key in ("output", "error"):
            run[key] = mask_text(run[key]) if run[key] else run[key]
        run["inputs"] = mask_value(run["inputs"])
        entries = []
        for entry in trail:
            row = entry.model_dump(mode="json", exclude_none=True)
            if "text" in row:
                row["text"] = mask_text(row["text"])
            if "data" in row:
                row["data"] = mask_value(row["data"])
            entries.append(row)
        document = {
            "run": run,
            "waiting": {"for": waiting.what, "since": waiting.since.isoformat()} if waiting else None,
            "children": [c.run_id for c in children],
            "trail": entries,
        }
        return Response(
            json.dumps(document, ensure_ascii=False, indent=2, default=str),
            media_type="application/json",
        )

    async def run_events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if await self.audit.get_run(run_id) is None:
            return JSONResponse({"error": f"no run {run_id!r} in the audit trail"}, status_code=404)
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        try:
            after = int(raw)
        except ValueError:
            return JSONResponse(
                {"error": f"after must be a trail seq (a whole number), got {raw!r}"}, status_code=400
            )
        return StreamingResponse(
            self._run_stream(run_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _run_stream(self, run_id: str, after: int) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        shown: tuple[str, int] | None = None
        yield b"retry: 2000\n\n"
        while True:
            record = await self.audit.get_run(run_id)
            if record is None:
                yield _sse("end", {"status": None, "error": "the run is no longer in the audit trail"})
                return
            # Read the rows after the status: once the status says ended, the rows are all written.
            new = await self.audit.trail(run_id, after=after)
            if new:
                after = new[-1].seq
            state = (record.shown_status, after)
            if state != shown:
                shown = state
                yield _sse("changed", {"status": record.shown_status, "seq": after}, after)
                quiet_since = loop.time()
            if record.status is not None and record.shown_status not in _PAUSED:
                yield _sse("end", {"status": record.shown_status})
                return
            if loop.time() - quiet_since > KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                quiet_since = loop.time()
            await asyncio.sleep(self.settings.poll_seconds)

    # -- actions -----------------------------------------------------------------------------------

    def available_actions(self, record: RunRecord) -> list[dict[str, str]]:
        """The buttons to show for this run: allowed by a setting, offered by the host, fitting its status."""
        shown: list[dict[str, str]] = []
        status = record.shown_status
        if self.settings.allow_cancel and self._has("cancel") and status == RUNNING:
            shown.append({"action": "cancel", "label": "Cancel run"})
        if self.settings.allow_resume and self._has("resume") and status == "interrupted":
            shown.append({"action": "resume", "label": "Resume run"})
        if self.settings.allow_approval and status == "awaiting_approval":
            if self._has("answer") and approval_available():
                shown.append({"action": "approval", "label": "Answer the approval"})
            else:
                shown.append({"action": "", "label": "Approval: not available", "note": APPROVAL_UNAVAILABLE})
        return shown

    def _has(self, method: str) -> bool:
        return self.actions is not None and callable(getattr(self.actions, method, None))

    async def act(self, request: Request) -> Response:
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        setting = {"cancel": "allow_cancel", "resume": "allow_resume", "approval": "allow_approval"}.get(
            action
        )
        if setting is None:
            return JSONResponse({"ok": False, "message": f"no action {action!r}"}, status_code=404)
        if request.headers.get("x-executus-viewer") != "1":
            return JSONResponse(
                {"ok": False, "message": "actions need the header X-Executus-Viewer: 1 (the page sends it)"},
                status_code=403,
            )
        if not getattr(self.settings, setting):
            return JSONResponse(
                {
                    "ok": False,
                    "message": f"{action} is off: set {setting} = true under [tool.executus.viewer]",
                },
                status_code=403,
            )
        method = "answer" if action == "approval" else action
        if action == "approval" and not approval_available():
            return JSONResponse({"ok": False, "message": APPROVAL_UNAVAILABLE}, status_code=501)
        if not self._has(method):
            return JSONResponse(
                {"ok": False, "message": f"{action} is allowed, but the host passed no actions.{method}()"},
                status_code=501,
            )
        record = await self.audit.get_run(run_id)
        if record is None:
            return JSONResponse({"ok": False, "message": f"no run {run_id!r}"}, status_code=404)
        args: list[Any] = [run_id]
        if action == "approval":
            try:
                body = await request.json()
                decisions = body["decisions"]
                if not isinstance(decisions, dict):
                    raise TypeError("decisions must be an object")
            except Exception as exc:
                return JSONResponse(
                    {"ok": False, "message": f'the body must be {{"decisions": {{call_id: ...}}}}: {exc}'},
                    status_code=422,
                )
            args.append(decisions)
        try:
            outcome = await getattr(self.actions, method)(*args)
        except Exception as exc:
            log.warning("viewer: %s of run %s failed: %s", action, run_id, exc)
            return JSONResponse(
                {"ok": False, "message": f"{action} failed: {mask_text(str(exc))}"}, status_code=500
            )
        if not isinstance(outcome, ActionOutcome):
            outcome = ActionOutcome(bool(outcome), f"{action}: {outcome!r}")
        return JSONResponse(
            {"ok": outcome.ok, "message": outcome.message}, status_code=200 if outcome.ok else 409
        )


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    payload = json.dumps(data, default=str, ensure_ascii=False)
    return f"{head}event: {event}\ndata: {payload}\n\n".encode()


def make_viewer(
    audit: SqlAudit | None = None,
    *,
    settings: ViewerSettings | None = None,
    executus_settings: Settings | None = None,
    actions: Any = None,
    workers: WorkerLookup | None = None,
) -> Starlette:
    """The viewer as an ASGI app, to mount under a path of the host's app.

    ::

        from starlette.routing import Mount
        from executus_viewer import make_viewer

        app = Starlette(routes=[..., Mount("/runs-viewer", app=make_viewer())])

    Args:
        audit: the `SqlAudit` to read; default: built from ``executus_settings`` (``[tool.executus.audit_sql]``).
        settings: the viewer's settings; default: ``[tool.executus.viewer]`` of ``executus_settings``.
        executus_settings: the executus `Settings` (default: loaded as `Executor` does).
        actions: an object with ``cancel``/``resume``/``answer`` (see `executus_viewer.actions`);
            each is used only if its setting allows it.
        workers: an async ``run_ids -> {run_id: worker}`` for the list's worker column.

    The app has no authentication of its own: mount it behind the host's (see docs/viewer.md).
    An audit it built itself is closed when the app shuts down (its lifespan; a host that mounts
    it closes it with ``app.state.viewer_audit.aclose()`` if its own lifespan does not run mounted ones).
    """
    owns_audit = audit is None
    if audit is None or settings is None:
        executus_settings = executus_settings or load_settings()
    if audit is None:
        from executus_audit_sql.plugin import build_audit

        assert executus_settings is not None
        audit = build_audit(executus_settings)
    if settings is None:
        assert executus_settings is not None
        settings = executus_settings.section(SECTION, ViewerSettings, plugin=SECTION)
    state = _Viewer(audit, settings, actions, workers)
    static = resources.files("executus_viewer") / "static"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns_audit:
                await state.audit.aclose()

    app = Starlette(
        routes=[
            Route("/", state.list_page, methods=["GET"]),
            Route("/events", state.list_events, methods=["GET"]),
            Route("/runs/{run_id}.json", state.run_json, methods=["GET"]),
            Route("/runs/{run_id}", state.trace_page, methods=["GET"]),
            Route("/runs/{run_id}/trace", state.trace_fragment, methods=["GET"]),
            Route("/runs/{run_id}/events", state.run_events, methods=["GET"]),
            Route("/runs/{run_id}/{action}", state.act, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=str(static)), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.viewer_audit = audit
    app.state.viewer = state
    return app
