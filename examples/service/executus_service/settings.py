"""``[tool.executus.service]``: where the service keeps its queue and ledger, and how it runs.

The service reads its own table beside the batteries' tables, through the same settings loader as
an `Executor` (explicit values, then ``EXECUTUS_*`` variables, then ``[tool.executus]`` in the
nearest ``pyproject.toml``)::

    [tool.executus.service]
    database_url = "postgresql://127.0.0.1:5432/executus_service"   # Procrastinate and the ledger
    host = "127.0.0.1"
    port = 8765
    workers = 3
    concurrency = 20

The same from the environment: ``EXECUTUS_SERVICE__DATABASE_URL=...``, ``EXECUTUS_SERVICE__WORKERS=3``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from executus_core.config import Settings, load_settings

__all__ = ["SECTION", "ServiceSettings", "load", "plain_postgres_url"]

SECTION = "service"
"""The settings table of the example service: ``[tool.executus.service]``."""

HERE = Path(__file__).resolve().parent.parent
"""``examples/service``: its ``pyproject.toml`` holds the demo's settings."""


class ServiceSettings(BaseModel):
    """The example service's own settings. Durations are seconds."""

    model_config = ConfigDict(extra="forbid")

    database_url: str = Field(
        "postgresql://127.0.0.1:5432/executus_service",
        description="PostgreSQL for the job queue (Procrastinate's tables) and the ledger the tools "
        "append to; the batteries' own urls may point at the same database.",
    )
    host: str = Field("127.0.0.1", description="Where the web app listens.")
    port: int = Field(8765, ge=0, le=65535, description="The web app's port (0: any free port).")
    workers: int = Field(2, ge=1, description="Worker processes `run` starts.")
    concurrency: int = Field(20, ge=1, description="Jobs (runs) one worker process runs at once.")
    queue_connections: int = Field(
        4, ge=2, description="Connections a process keeps to the queue's database (Procrastinate's pool)."
    )
    ledger_connections: int = Field(
        4, ge=1, description="Connections a worker keeps for the ledger tool (each call holds one briefly)."
    )
    queue: str = Field("executus_runs", min_length=1, description="The Procrastinate queue of run jobs.")
    agent: str = Field("ledger", description="The agent a run request gets when it names none.")
    model: str = Field(
        "default", description="The model the agents use: a model id or a tier from [tool.executus.models]."
    )
    fake_model: bool = Field(
        True,
        description="`run` starts the loopback OpenAI-compatible fake model (scripted tool calls) and "
        "points the `fake` endpoint at it; set false to use a real server configured in "
        "[tool.executus.providers].",
    )
    fake_model_port: int = Field(0, ge=0, le=65535, description="The fake model's port (0: any free port).")
    tool_seconds: float = Field(
        0.2, ge=0, description="How long each ledger tool call takes (a stand-in for a slow external API)."
    )
    heartbeat_seconds: float = Field(
        1.0, gt=0, description="How often a worker tells Procrastinate it is alive."
    )
    stalled_seconds: float = Field(
        5.0,
        gt=0,
        description="A worker silent for this long is stalled: its jobs are retried on other workers.",
    )
    sweep_seconds: float = Field(
        1.0,
        gt=0,
        description="How often each worker looks for stalled jobs (the retry_stalled_jobs pattern).",
    )
    busy_retry_seconds: float = Field(
        1.0,
        gt=0,
        description="When a run's job arrives while another worker still holds the run, retry the job this "
        "much later.",
    )
    error_retries: int = Field(
        10, ge=0, description="Retries of a job that failed with an unexpected error before it is failed."
    )
    spill_import_seconds: float = Field(
        10.0, gt=0, description="How often each worker loads audit rows that were saved to spill files."
    )
    poll_seconds: float = Field(
        0.2, gt=0, description="How often the event stream reads new trail rows from the audit."
    )

    @model_validator(mode="after")
    def _heartbeat_inside_stall(self) -> ServiceSettings:
        if self.heartbeat_seconds * 2 > self.stalled_seconds:
            raise ValueError(
                f"stalled_seconds ({self.stalled_seconds:g}) must be at least twice heartbeat_seconds "
                f"({self.heartbeat_seconds:g}), or a live worker is taken for a stalled one"
            )
        return self


def load(explicit: Mapping[str, Any] | None = None) -> tuple[Settings, ServiceSettings]:
    """The merged settings (``examples/service/pyproject.toml`` under the environment) and the service's table.

    The service always reads its own ``pyproject.toml`` (not the one of the current directory), so
    it behaves the same wherever it is started from.
    """
    settings = load_settings(explicit, project_dir=HERE)
    return settings, settings.section(SECTION, ServiceSettings, plugin="examples/service")


def plain_postgres_url(url: str) -> str:
    """``url`` as libpq takes it: ``postgresql+psycopg://...`` becomes ``postgresql://...``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}; example: postgresql://127.0.0.1:5432/app")
    base = scheme.split("+", 1)[0]
    if base not in {"postgresql", "postgres"}:
        raise ValueError(f"the service needs PostgreSQL, got a {base!r} URL ({url!r})")
    return f"postgresql://{rest}"
