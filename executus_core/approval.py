"""Human approval: the decisions a person gives for tool calls a run paused on.

A tool declared ``@tool(requires_approval=True)`` (or with a predicate on its arguments) does not
run when the model calls it: the run ends ``awaiting_approval``, `Result.pending` lists the calls,
and the checkpoint keeps the paused run. `Executor.resume` continues it — in this process or any
other that shares the checkpoint store, after a restart too — with one decision per call::

    result = await executor.resume(run_id, decisions={
        "call_1": Approve(by="alice"),
        "call_2": Deny("not this account", by="alice"),
        "call_3": Edit({"amount": 50}, by="bob"),
    })
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["Approve", "Decision", "Deny", "Edit"]


class Approve(BaseModel):
    """Run the call as the model asked. ``by`` names who decided (kept in the audit trail)."""

    kind: Literal["approve"] = "approve"
    by: str | None = None


class Deny(BaseModel):
    """Do not run the call: the model gets a tool error with ``reason``."""

    kind: Literal["deny"] = "deny"
    reason: str = "denied"
    by: str | None = None

    def __init__(self, reason: str | None = None, /, **data: Any) -> None:
        if reason is not None:
            data["reason"] = reason
        super().__init__(**data)


class Edit(BaseModel):
    """Run the call with ``arguments`` instead of the model's (validated against the tool's schema)."""

    kind: Literal["edit"] = "edit"
    arguments: dict[str, Any] = Field(default_factory=dict)
    by: str | None = None

    def __init__(self, arguments: dict[str, Any] | None = None, /, **data: Any) -> None:
        if arguments is not None:
            data["arguments"] = arguments
        super().__init__(**data)


Decision = Approve | Deny | Edit
"""One decision for one pending call."""
