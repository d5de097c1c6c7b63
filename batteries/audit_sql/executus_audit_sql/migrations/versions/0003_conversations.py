"""Conversations: each run's conversation id (indexed, for a conversation's thread) and the
transcript it ended with (what ``Executor.run(..., continue_run=run_id)`` reads).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose: a migration must keep creating what it created, whatever schema.py says later.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Add ``executus_runs.conversation_id`` with its index, and the transcripts table."""
    op.add_column("executus_runs", sa.Column("conversation_id", sa.Text(), nullable=True))
    op.create_index(
        "ix_executus_runs_conversation_started", "executus_runs", ["conversation_id", "started_at"]
    )
    op.create_table(
        "executus_run_transcripts",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("messages", JSON, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["executus_runs.run_id"],
            name="fk_executus_run_transcripts_run_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", name="pk_executus_run_transcripts"),
    )


def downgrade() -> None:
    """Drop them (and every transcript kept)."""
    op.drop_table("executus_run_transcripts")
    op.drop_index("ix_executus_runs_conversation_started", table_name="executus_runs")
    op.drop_column("executus_runs", "conversation_id")
