"""Runs paused for approval: the calls they wait for, and since when.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

A paused run has status ``paused``; ``pending`` holds its waiting calls and ``paused_at`` when it
paused. Existing rows get NULLs: none of them is paused.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
RUNS = "executus_checkpoint_runs"


def upgrade() -> None:
    with op.batch_alter_table(RUNS) as batch:
        batch.add_column(sa.Column("pending", JSON, nullable=True))
        batch.add_column(sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # A paused run cannot be told apart from an interrupted one without these columns: it would be
    # handed to recover(), which pauses it again at once. Mark such runs live (released).
    op.execute(sa.text(f"UPDATE {RUNS} SET status = 'live', lease_until = NULL WHERE status = 'paused'"))
    with op.batch_alter_table(RUNS) as batch:
        batch.drop_column("paused_at")
        batch.drop_column("pending")
