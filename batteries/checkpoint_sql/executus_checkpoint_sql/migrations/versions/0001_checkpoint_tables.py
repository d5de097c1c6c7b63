"""The runs and messages tables.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "executus_checkpoint_runs",
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("info", JSON, nullable=False),
        sa.Column("agent", JSON, nullable=False),
        sa.Column("subject_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("caller_id", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("tool_calls", sa.Integer(), nullable=False),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("boot", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("claimed_at", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_executus_checkpoint_runs"),
    )
    op.create_index(
        "ix_executus_checkpoint_runs_status_lease_until",
        "executus_checkpoint_runs",
        ["status", "lease_until"],
    )
    op.create_table(
        "executus_checkpoint_messages",
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("message", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["executus_checkpoint_runs.run_id"],
            name="fk_executus_checkpoint_messages_run_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "position", name="pk_executus_checkpoint_messages"),
    )


def downgrade() -> None:
    op.drop_table("executus_checkpoint_messages")
    op.drop_index("ix_executus_checkpoint_runs_status_lease_until", table_name="executus_checkpoint_runs")
    op.drop_table("executus_checkpoint_runs")
