"""Agents for the end-to-end tests, importable by the test process, by a child process and by
``executus recover --agent checkpoint_sql_agents:crash_agent``.

The tools leave a trace in ``$ECP_WORKDIR`` so a test can count how often each really ran:
``record`` appends its note to ``record.log``; ``wait_here`` appends the process id to ``wait.log``
and then, with ``ECP_BLOCK=1``, waits forever (a worker stuck in a long tool, until it is killed or
shut down).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from executus_core import Agent, ModelResponse, ToolCall, tool
from executus_core.testing import ScriptedModel


def workdir() -> Path:
    """Where the tools leave their traces."""
    return Path(os.environ["ECP_WORKDIR"])


def lines(name: str) -> list[str]:
    """The lines a tool left in ``name`` so far."""
    path = workdir() / name
    return path.read_text().splitlines() if path.exists() else []


@tool
def record(note: str) -> str:
    """Write a note down (one line per call: the tests count them)."""
    with (workdir() / "record.log").open("a") as out:
        out.write(note + "\n")
    return f"recorded {note}"


@tool
async def wait_here() -> str:
    """Wait: forever when ECP_BLOCK=1, else not at all."""
    with (workdir() / "wait.log").open("a") as out:
        out.write(f"{os.getpid()}\n")
    if os.environ.get("ECP_BLOCK") == "1":
        await asyncio.sleep(3600)
    return "waited"


def call(name: str, call_id: str, **arguments: object) -> ModelResponse:
    """A model response asking for one tool call."""
    return ModelResponse(tool_calls=[ToolCall(id=call_id, name=name, arguments=dict(arguments))])


SCRIPT = [
    call("record", "call-record", note="one"),
    call("wait_here", "call-wait"),
    ModelResponse(text="done"),
]

crash_agent = Agent(
    name="crash-agent",
    instructions="Note it down, then wait.",
    model=ScriptedModel(SCRIPT, per_run=True, id="scripted:crash"),
    tools=[record, wait_here],
)
"""Records a note, waits, then answers ``done``; the step is picked from the transcript
(``per_run``), so a run resumed from any checkpoint gets the right next answer."""


@tool(requires_approval=True)
def pay(to: str, amount: int) -> str:
    """Pay someone (one line per payment in ``pay.log``: the tests count them). Needs approval."""
    with (workdir() / "pay.log").open("a") as out:
        out.write(f"{to} {amount} {os.getpid()}\n")
    return f"paid {amount} to {to}"


APPROVAL_SCRIPT = [
    call("record", "call-record", note="one"),
    call("pay", "call-pay", to="bob", amount=500),
    ModelResponse(text="paid"),
]

approval_agent = Agent(
    name="approval-agent",
    instructions="Note it down, then pay.",
    model=ScriptedModel(APPROVAL_SCRIPT, per_run=True, id="scripted:approval"),
    tools=[record, pay],
)
"""Records a note, then asks to pay (a call that waits for approval), then answers ``paid``."""
