"""The viewer's pages, JSON and actions over a real audit database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from executus_audit_sql import SqlAudit
from executus_viewer import ActionOutcome, ExecutorActions, ViewerSettings, make_viewer
from starlette.applications import Starlette
from starlette.routing import Mount
from viewer_helpers import SECRET, ViewerDb, answer, call, only_audit, record_story

from executus_core import Agent, Executor, ToolContext, tool
from executus_core.testing import ScriptedModel
from executus_core.types import RunInfo


def host(audit: SqlAudit, **kwargs: Any) -> Starlette:
    """A host app that mounts the viewer under /viewer, as a real host would."""
    return Starlette(routes=[Mount("/viewer", app=make_viewer(audit, **kwargs))])


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_list_shows_runs_newest_first_with_their_numbers(db: ViewerDb) -> None:
    # PostgreSQL's schema is shared by the session's tests: callers of this test's own
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    first = await record_story(db, caller_id=alice)
    second = await record_story(db, caller_id=bob)
    audit = db.audit()
    try:
        async with client(host(audit, settings=ViewerSettings())) as http:
            page = await http.get("/viewer/")
            assert page.status_code == 200
            html = page.text
            # newest first: bob's lead run, its child, then alice's
            assert html.index(f'id="run-{second}"') < html.index(f'id="run-{first}"')
            assert 'href="/viewer/runs/' + first + '"' in html  # links carry the mount path
            assert 'href="/viewer/static/viewer.css"' in html
            row = html[html.index(f'id="run-{first}"') :].split("</tr>")[0]
            assert "lead" in row and alice in row and "status-ok" in row
            assert '<td class="num">3</td>' in row  # steps
            assert '<td class="num">2</td>' in row  # tool calls
            filtered = (await http.get("/viewer/", params={"caller": bob})).text
            assert f"run-{second}" in filtered and f"run-{first}" not in filtered
            helpers = (await http.get("/viewer/", params={"agent": "helper", "caller": alice})).text
            assert helpers.count('<tr id="run-') == 1 and f"run-{first}" not in helpers
            bad = await http.get("/viewer/", params={"status": "sleeping"})
            assert bad.status_code == 400 and "status must be one of" in bad.text
    finally:
        await audit.aclose()


async def test_trace_has_delegation_failed_tool_timeline_and_masks_secrets(db: ViewerDb) -> None:
    run_id = await record_story(db)
    audit = db.audit()
    try:
        async with client(host(audit, settings=ViewerSettings())) as http:
            page = await http.get(f"/viewer/runs/{run_id}")
            assert page.status_code == 200
            html = page.text
            assert "Check acme and charge 5" in html  # the prompt
            assert html.count('class="item model-call"') == 3 + 2  # the lead's, and its child's nested
            # the delegation, with the child run nested under it, and the child's own tool call
            assert '<code class="tool-name">agent__helper</code>' in html
            assert 'class="child"' in html and '<code class="tool-name">lookup</code>' in html
            assert "acme: 3 payments" in html
            # the failed tool, its error, and the secret argument masked
            assert 'class="item tool-call failed"' in html
            assert "card declined by the bank" in html
            assert SECRET not in html and "***" in html
            # the timeline and the output
            assert 'data-role="timeline"' in html and "bar bar-tool bar-failed" in html
            assert "acme has 3 payments; the charge of 5 was declined" in html
            assert f'href="/viewer/runs/{run_id}.json"' in html
            document = (await http.get(f"/viewer/runs/{run_id}.json")).json()
            assert document["run"]["status"] == "ok" and len(document["children"]) == 1
            assert SECRET not in json.dumps(document)
            kinds = {row["kind"] for row in document["trail"]}
            assert kinds >= {"step", "tool", "event"}
            missing = await http.get("/viewer/runs/nope")
            assert missing.status_code == 404
    finally:
        await audit.aclose()


async def test_a_running_run_says_what_it_waits_for(db: ViewerDb) -> None:
    audit = db.audit()
    try:
        run_id = f"waiting-{uuid.uuid4().hex[:8]}"
        info = RunInfo(run_id=run_id, subject_id="slow", name="slow", caller_id="carol")
        recorder = await audit.start_run(info)
        recorder.log_event("run.start", {"agent": "slow", "prompt": "go"})
        recorder.log_event("tool.start", {"name": "fetch_report", "call_id": "t1", "arguments": {}})
        await audit.flush()
        tails = await audit.tails([run_id, "no-such-run"], last=1)
        assert [(e.kind, e.name) for e in tails[run_id]] == [("event", "tool.start")]
        assert tails["no-such-run"] == []
        async with client(host(audit, settings=ViewerSettings())) as http:
            html = (await http.get("/viewer/", params={"status": "running"})).text
            row = html[html.index(f'id="run-{run_id}"') :].split("</tr>")[0]
            assert "waiting for tool fetch_report" in row and "data-since=" in row
            trace = (await http.get(f"/viewer/runs/{run_id}")).text
            assert "waiting for tool fetch_report" in trace
            assert f'data-live-url="/viewer/runs/{run_id}/events' in trace
        recorder.log_event("tool.end", {"name": "fetch_report", "call_id": "t1", "ok": True, "seconds": 0.1})
        await audit.flush()
        async with client(host(audit, settings=ViewerSettings())) as http:
            html = (await http.get("/viewer/", params={"status": "running"})).text
            row = html[html.index(f'id="run-{run_id}"') :].split("</tr>")[0]
            assert "waiting for the model" in row
    finally:
        await audit.aclose()


async def test_list_paging_uses_a_cursor(db: ViewerDb) -> None:
    caller = f"pager-{uuid.uuid4().hex[:6]}"
    await record_story(db, caller_id=caller)
    await record_story(db, caller_id=caller)
    audit = db.audit()
    try:
        async with client(host(audit, settings=ViewerSettings(page_size=3))) as http:
            first = (await http.get("/viewer/", params={"caller": caller})).text
            assert first.count('<tr id="run-') == 3 and 'id="older"' in first
            link = first.split('id="older"')[0].rsplit('href="', 1)[1].split('"')[0]
            second = (await http.get(link.replace("&amp;", "&"))).text
            assert second.count('<tr id="run-') == 1
            ids = lambda html: {p.split('"')[0] for p in html.split('<tr id="run-')[1:]}  # noqa: E731
            assert not ids(first) & ids(second)
    finally:
        await audit.aclose()


class Recorded:
    """Actions that record what the page asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def cancel(self, run_id: str) -> ActionOutcome:
        self.asked.append(("cancel", run_id))
        return ActionOutcome(True, f"cancelling {run_id}")


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_actions_are_off_by_default_and_need_the_header(
    db: ViewerDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = db.audit()
    try:
        info = RunInfo(run_id="running0001", subject_id="slow", name="slow", caller_id="carol")
        recorder = await audit.start_run(info)
        recorder.log_event("run.start", {"agent": "slow", "prompt": "go"})
        await audit.flush()
        actions = Recorded()
        headers = {"X-Executus-Viewer": "1"}
        async with client(host(audit, settings=ViewerSettings(), actions=actions)) as http:
            page = (await http.get("/viewer/runs/running0001")).text
            assert 'data-action="cancel"' not in page
            off = await http.post("/viewer/runs/running0001/cancel", headers=headers)
            assert off.status_code == 403 and "allow_cancel" in off.json()["message"]
        async with client(host(audit, settings=ViewerSettings(allow_cancel=True), actions=actions)) as http:
            page = (await http.get("/viewer/runs/running0001")).text
            assert 'data-action="cancel"' in page
            forged = await http.post("/viewer/runs/running0001/cancel")
            assert forged.status_code == 403 and actions.asked == []
            done = await http.post("/viewer/runs/running0001/cancel", headers=headers)
            assert done.status_code == 200 and done.json() == {
                "ok": True,
                "message": "cancelling running0001",
            }
            assert actions.asked == [("cancel", "running0001")]
            no_resume = await http.post("/viewer/runs/running0001/resume", headers=headers)
            assert no_resume.status_code == 403
        settings = ViewerSettings(allow_approval=True)
        async with client(host(audit, settings=settings, actions=actions)) as http:
            answer = await http.post(
                "/viewer/runs/running0001/approval", headers=headers, json={"decisions": {"c1": "approve"}}
            )
            # allowed, but the host's actions have no answer(): said so, nothing done
            assert answer.status_code == 501 and "actions.answer()" in answer.json()["message"]
            monkeypatch.setattr("executus_viewer.app.approval_available", lambda: False)
            answer = await http.post(
                "/viewer/runs/running0001/approval", headers=headers, json={"decisions": {"c1": "approve"}}
            )
            # an executus without Executor.resume(run_id, decisions=...): not available
            assert answer.status_code == 501 and "not available" in answer.json()["message"]
    finally:
        await audit.aclose()


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_run_events_stream_changes_then_end(db: ViewerDb) -> None:
    run_id = await record_story(db)
    audit = db.audit()
    try:
        app = make_viewer(audit, settings=ViewerSettings(poll_seconds=0.05))
        state = app.state.viewer
        chunks = [chunk async for chunk in state._run_stream(run_id, 0)]
        text = b"".join(chunks).decode()
        assert "event: changed" in text and text.rstrip().endswith('data: {"status": "ok"}')
    finally:
        await audit.aclose()


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_behind_the_hosts_auth_middleware_as_the_docs_show(db: ViewerDb) -> None:
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import Response

    class RequireOperator(BaseHTTPMiddleware):
        async def dispatch(self, request: Any, call_next: Any) -> Response:
            if request.headers.get("x-operator") != "yes":
                return Response("operators only", status_code=403)
            return await call_next(request)  # type: ignore[no-any-return]

    audit = db.audit()
    try:
        viewer = make_viewer(audit, settings=ViewerSettings())
        app = Starlette(routes=[Mount("/viewer", app=viewer, middleware=[Middleware(RequireOperator)])])
        async with client(app) as http:
            assert (await http.get("/viewer/")).status_code == 403
            assert (await http.get("/viewer/static/viewer.js")).status_code == 403
            allowed = await http.get("/viewer/", headers={"x-operator": "yes"})
            assert allowed.status_code == 200 and "executus runs" in allowed.text
    finally:
        await audit.aclose()


@tool(requires_approval=True)
async def refund(amount: int) -> str:
    """Refund an amount (a person approves it first)."""
    return f"refunded {amount}"


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_a_pending_approval_is_answered_from_the_page(db: ViewerDb) -> None:
    agent = Agent(
        name="clerk",
        model=ScriptedModel([call("refund", "r1", amount=30), answer("refunded 30")], per_run=True),
        tools=[refund],
    )
    audit = db.audit()
    try:
        async with Executor(settings={"audit_sql": db.settings()}, disable=only_audit()) as executor:
            paused = await executor.run(agent, "refund 30 to dana", caller_id="dana")
            assert paused.status.value == "awaiting_approval", paused.error
            app = host(audit, settings=ViewerSettings(allow_approval=True), actions=ExecutorActions(executor))
            async with client(app) as http:
                page = (await http.get(f"/viewer/runs/{paused.run_id}")).text
                assert '<form class="approval"' in page and 'data-call="r1"' in page
                assert "waiting for an approval of refund" in page
                listed = (await http.get("/viewer/", params={"caller": "dana"})).text
                assert "waiting for an approval of refund" in listed
                bad = await http.post(
                    f"/viewer/runs/{paused.run_id}/approval",
                    headers={"X-Executus-Viewer": "1"},
                    json={"decisions": {"r1": {"kind": "maybe"}}},
                )
                assert bad.status_code == 409 and "approve, deny or edit" in bad.json()["message"]
                sent = await http.post(
                    f"/viewer/runs/{paused.run_id}/approval",
                    headers={"X-Executus-Viewer": "1"},
                    json={"decisions": {"r1": {"kind": "approve", "by": "dana"}}},
                )
                assert sent.status_code == 200, sent.text
                for _ in range(200):
                    record = await audit.get_run(paused.run_id)
                    if record is not None and record.shown_status == "ok":
                        break
                    await asyncio.sleep(0.05)
                assert record is not None and record.shown_status == "ok" and record.output == "refunded 30"
                trace = (await http.get(f"/viewer/runs/{paused.run_id}")).text
                assert "refund (r1): approve by dana" in trace and '<form class="approval"' not in trace
    finally:
        await audit.aclose()


@tool
async def wait_long(seconds: float) -> str:
    """Wait (a stand-in for a slow API)."""
    await asyncio.sleep(seconds)
    return "waited"


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_cancel_from_the_page_stops_a_run_of_this_process(db: ViewerDb) -> None:
    agent = Agent(
        name="sleeper",
        model=ScriptedModel([call("wait_long", "w1", seconds=60), answer("woke")], per_run=True),
        tools=[wait_long],
    )
    audit = db.audit()
    try:
        async with Executor(settings={"audit_sql": db.settings()}, disable=only_audit()) as executor:
            task = asyncio.create_task(executor.run(agent, "sleep", caller_id="fay", run_id="sleeper00001"))
            settings = ViewerSettings(allow_cancel=True)
            async with client(host(audit, settings=settings, actions=ExecutorActions(executor))) as http:
                for _ in range(200):  # until the audit shows it waiting for its tool
                    page = (await http.get("/viewer/runs/sleeper00001")).text
                    if "waiting for tool wait_long" in page:
                        break
                    await asyncio.sleep(0.05)
                assert 'data-action="cancel"' in page
                done = await http.post("/viewer/runs/sleeper00001/cancel", headers={"X-Executus-Viewer": "1"})
                assert done.status_code == 200 and done.json()["ok"], done.text
                result = await asyncio.wait_for(task, 10)
                assert result.status.value == "cancelled"
                again = await http.post(
                    "/viewer/runs/sleeper00001/cancel", headers={"X-Executus-Viewer": "1"}
                )
                assert again.status_code == 409 and "not running in this process" in again.json()["message"]
    finally:
        await audit.aclose()


@tool
async def slow_once(context: ToolContext) -> str:
    """Hang on the first attempt (the worker is stopped meanwhile); answer at once when run again."""
    if context.attempt == 1:
        await asyncio.sleep(60)
    return f"done on attempt {context.attempt}"


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_resume_from_the_page_and_the_rerun_call_is_flagged(db: ViewerDb, tmp_path: Path) -> None:
    agent = Agent(
        name="patient",
        model=ScriptedModel([call("slow_once", "s1"), answer("finished")], per_run=True),
        tools=[slow_once],
    )
    settings = {
        "audit_sql": db.settings(),
        "checkpoint_sql": {"url": f"sqlite+aiosqlite:///{tmp_path / 'checkpoints.db'}"},
    }
    keep = {"audit_sql", "checkpoint_sql"}
    disable = [name for name in only_audit() if name not in keep]
    audit = db.audit()
    try:
        first = Executor(settings=settings, disable=disable)
        task = asyncio.create_task(first.run(agent, "be patient", caller_id="gus", run_id="patient0001"))
        for _ in range(200):
            found = await audit.tails(["patient0001"], last=1)
            if found["patient0001"] and found["patient0001"][-1].name == "tool.start":
                break
            await asyncio.sleep(0.05)
        await first.shutdown()  # the host stops: the run ends interrupted, its checkpoint kept
        assert (await task).status.value == "interrupted"
        async with Executor(settings=settings, disable=disable) as second:
            second.register_agent(agent)
            viewer = ViewerSettings(allow_resume=True)
            async with client(host(audit, settings=viewer, actions=ExecutorActions(second))) as http:
                page = (await http.get("/viewer/runs/patient0001")).text
                assert "waiting for a resume" in page and 'data-action="resume"' in page
                sent = await http.post("/viewer/runs/patient0001/resume", headers={"X-Executus-Viewer": "1"})
                assert sent.status_code == 200, sent.text
                for _ in range(200):
                    record = await audit.get_run("patient0001")
                    if record is not None and record.shown_status == "ok":
                        break
                    await asyncio.sleep(0.05)
                assert record is not None and record.shown_status == "ok" and record.attempts == 2
                trace = (await http.get("/viewer/runs/patient0001")).text
                assert "attempt 2: resumed from its checkpoint" in trace
                assert "attempt 2, resumed" in trace and "done on attempt 2" in trace
    finally:
        await audit.aclose()
