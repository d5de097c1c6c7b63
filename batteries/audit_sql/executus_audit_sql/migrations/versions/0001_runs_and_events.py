"""The runs table and the run events table.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("executus_audit_sql",)
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose: a migration must keep creating what it created, whatever schema.py says later.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the runs and run events tables."""
    op.create_table(
        "executus_runs",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("subject_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("caller_id", sa.Text(), nullable=False),
        sa.Column("channel_id", sa.Text(), nullable=True),
        sa.Column("parent_run_id", sa.Text(), nullable=True),
        sa.Column("inputs", JSON, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("steps", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tool_calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("runtime_seconds", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("thinking_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_executus_runs"),
    )
    op.create_index("ix_executus_runs_started_at", "executus_runs", ["started_at"])
    op.create_index("ix_executus_runs_caller_started", "executus_runs", ["caller_id", "started_at"])
    op.create_index("ix_executus_runs_status_started", "executus_runs", ["status", "started_at"])
    op.create_index("ix_executus_runs_parent_run_id", "executus_runs", ["parent_run_id"])
    op.create_table(
        "executus_run_events",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("iteration", sa.Integer(), nullable=True),
        sa.Column("call_id", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("data", JSON, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["executus_runs.run_id"],
            name="fk_executus_run_events_run_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_executus_run_events"),
    )


def downgrade() -> None:
    """Drop them (and every trail in them)."""
    op.drop_table("executus_run_events")
    op.drop_index("ix_executus_runs_parent_run_id", table_name="executus_runs")
    op.drop_index("ix_executus_runs_status_started", table_name="executus_runs")
    op.drop_index("ix_executus_runs_caller_started", table_name="executus_runs")
    op.drop_index("ix_executus_runs_started_at", table_name="executus_runs")
    op.drop_table("executus_runs")
