"""A tool argument named like a secret is stored masked in the trail (issue 16, case 9): on SQLite
and PostgreSQL, in the tool row, the step row's tool calls and the ``tool.start`` event, and nowhere
in the database in clear."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from audit_sql_helpers import Backend, other_plugins, sql_audit
from executus_audit_sql.settings import sync_url

from executus_core import Agent, Executor, ModelResponse, RunStatus, ToolCall, tool
from executus_core.testing import ScriptedModel
from executus_core.testing.conformance import make_info
from executus_core.types import RunStats

PASSWORD = "Hunter2-audit-pw"
DSN = f"postgresql://svc:{PASSWORD}@db.internal/app"


@tool
def login(user: str, password: str, dsn: str) -> str:
    """Log a user in (the test's tool: it only says who)."""
    return f"logged in {user}"


async def test_an_error_message_with_a_url_password_is_stored_masked(backend: Backend) -> None:
    audit = backend.audit(batch_size=1)
    try:
        info = make_info(caller_id="errors")
        recorder = await audit.start_run(info)
        recorder.log_error(f"tool 'query' raised OperationalError: cannot connect to {DSN}")
        await recorder.close(RunStats(status=RunStatus.ERROR))
        [entry] = [e for e in await audit.trail(info.run_id) if e.kind == "error"]
        assert entry.text == "tool 'query' raised OperationalError: cannot connect to " + (
            "postgresql://svc:***@db.internal/app"
        )
    finally:
        await audit.aclose()


async def test_a_password_argument_is_stored_masked(backend: Backend) -> None:
    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=[
                    ToolCall(
                        id="c1", name="login", arguments={"user": "ann", "password": PASSWORD, "dsn": DSN}
                    )
                ]
            ),
            ModelResponse(text="done"),
        ]
    )
    agent = Agent(name="secretive", instructions="log in", model=model, tools=[login])
    settings = {"audit_sql": backend.settings()}
    async with Executor(settings=settings, disable=other_plugins()) as executor:
        audit = sql_audit(executor)
        result = await executor.run(agent, "log ann in", caller_id="alice")
        assert result.status is RunStatus.OK, result.error
        trail = await audit.trail(result.run_id)

    masked = {"user": "ann", "password": "***", "dsn": "postgresql://svc:***@db.internal/app"}
    tool_rows = [e for e in trail if e.kind == "tool"]
    assert [e.data["arguments"] for e in tool_rows] == [masked]
    step_calls = [c for e in trail if e.kind == "step" for c in (e.data or {}).get("tool_calls", [])]
    assert [c["arguments"] for c in step_calls] == [masked]
    events: list[Any] = [e.data for e in trail if e.kind == "event" and e.name == "tool.start"]
    assert all(d["arguments"] == masked for d in events)

    # nothing in any table holds it in clear
    engine = sa.create_engine(sync_url(backend.url))
    try:
        with engine.connect() as conn:
            if backend.db_schema:
                conn.execute(sa.text(f'SET search_path TO "{backend.db_schema}"'))
            meta = sa.MetaData()
            meta.reflect(conn)
            for table in meta.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    assert PASSWORD not in repr(tuple(row)), f"{table.name} holds the password in clear"
    finally:
        engine.dispose()
