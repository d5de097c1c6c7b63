"""Helpers of the executus-viewer tests (a module name of their own: every battery's tests share one
pytest session): the story the tests record — a run that delegates to another agent and has a tool
fail — and the database it goes to."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path
from typing import Any

from executus_audit_sql import SqlAudit
from executus_audit_sql.settings import AuditSqlSettings

from executus_core import Agent, Executor, ModelResponse, ToolCall, Usage, tool
from executus_core.testing import ScriptedModel

SECRET = "sk-live-hunter2-secret"


@dataclasses.dataclass
class ViewerDb:
    """The audit database under test: SQLite in tmp_path, or a PostgreSQL schema of its own."""

    name: str
    url: str
    db_schema: str | None
    data_dir: Path

    def settings(self) -> dict[str, Any]:
        table: dict[str, Any] = {"url": self.url, "flush_interval": 0.05}
        if self.db_schema:
            table["db_schema"] = self.db_schema
        return table

    def audit(self) -> SqlAudit:
        return SqlAudit(AuditSqlSettings(**self.settings()), data_dir=self.data_dir)


def only_audit() -> list[str]:
    """Every installed executus plugin but audit_sql (and the viewer, which fills no port): disabled."""
    return sorted(
        {ep.name for ep in importlib.metadata.entry_points(group="executus")} - {"audit_sql", "viewer"}
    )


def call(name: str, call_id: str, **arguments: Any) -> ModelResponse:
    return ModelResponse(
        tool_calls=[ToolCall(id=call_id, name=name, arguments=arguments)],
        usage=Usage(input_tokens=420, output_tokens=36),
    )


def answer(text: str) -> ModelResponse:
    return ModelResponse(text=text, usage=Usage(input_tokens=510, output_tokens=24))


@tool
async def lookup(account: str) -> str:
    """How many payments an account has."""
    return f"{account}: 3 payments"


@tool
async def charge(amount: int, api_key: str) -> str:
    """Charge the account (always declined here)."""
    raise RuntimeError("card declined by the bank")


def story_agents(delay: float = 0.0) -> tuple[Agent, Agent]:
    """``lead`` asks ``helper`` (a delegation, whose run calls ``lookup``), then calls ``charge``, which
    fails, then answers. ``delay`` seconds per model call make the runs last long enough to watch."""
    helper = Agent(
        name="helper",
        model=ScriptedModel(
            [call("lookup", "h1", account="acme"), answer("acme has 3 payments")], per_run=True, delay=delay
        ),
        tools=[lookup],
    )
    lead = Agent(
        name="lead",
        model=ScriptedModel(
            [
                call("agent__helper", "d1", prompt="How many payments does acme have?"),
                call("charge", "c1", amount=5, api_key=SECRET),
                answer("acme has 3 payments; the charge of 5 was declined"),
            ],
            per_run=True,
            delay=delay,
        ),
        tools=[charge],
        subagent_palette=["helper"],
    )
    return lead, helper


async def record_story(db: ViewerDb, *, caller_id: str = "alice", delay: float = 0.0) -> str:
    """Run the story once against ``db``; returns the lead run's id."""
    lead, helper = story_agents(delay)
    async with Executor(settings={"audit_sql": db.settings()}, disable=only_audit()) as executor:
        executor.register_agent(helper)
        result = await executor.run(lead, "Check acme and charge 5", caller_id=caller_id)
    assert result.status.value == "ok", result.error
    return result.run_id
