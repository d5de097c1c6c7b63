"""`ViewerSettings`: what the page shows and which actions it allows (``[tool.executus.viewer]``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SECTION", "ViewerSettings"]

SECTION = "viewer"


class ViewerSettings(BaseModel):
    """The viewer's settings. Every action is off unless a setting turns it on.

    In ``pyproject.toml``::

        [tool.executus.viewer]
        allow_cancel = true

    or in code: ``make_viewer(settings=ViewerSettings(allow_cancel=True), actions=...)``.
    """

    model_config = ConfigDict(extra="forbid")

    title: str = Field("executus runs", description="The pages' title.")
    page_size: int = Field(50, ge=1, le=500, description="Runs per page of the list.")
    poll_seconds: float = Field(
        1.0, gt=0, description="How often a live page reads the audit database for changes."
    )
    child_depth: int = Field(3, ge=0, le=10, description="How deep delegated runs are nested inside a trace.")
    allow_cancel: bool = Field(False, description="Show a Cancel button on running runs.")
    allow_resume: bool = Field(False, description="Show a Resume button on interrupted runs.")
    allow_approval: bool = Field(
        False, description="Let the page answer a run's pending approval (needs Executor.resume)."
    )
