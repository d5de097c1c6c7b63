"""An index on the agent name, for the runs list filtered by agent (the viewer, `executus runs list --agent`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Index the runs by agent name, newest first within a name (the list's order)."""
    op.create_index("ix_executus_runs_name_started", "executus_runs", ["name", "started_at"])


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_executus_runs_name_started", table_name="executus_runs")
