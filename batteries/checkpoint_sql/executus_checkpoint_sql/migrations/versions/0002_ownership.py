"""Ownership by store and epoch, resume backoff, tool-call attempts, quarantine.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

``boot`` goes: each store instance now has an owner id of its own, and the ``epoch`` column fences
writes. Runs live at the upgrade keep their owner with epoch 1; a store of the new version holds
none of them, so they are taken over once their leases lapse, as after any restart.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
RUNS = "executus_checkpoint_runs"


def upgrade() -> None:
    with op.batch_alter_table(RUNS) as batch:
        batch.add_column(sa.Column("epoch", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("held_since", sa.Float(), nullable=True))
        batch.add_column(sa.Column("not_before", sa.Float(), nullable=True))
        batch.add_column(sa.Column("resume_failures", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("attempts", JSON, nullable=True))
        batch.drop_column("boot")


def downgrade() -> None:
    with op.batch_alter_table(RUNS) as batch:
        batch.add_column(sa.Column("boot", sa.String(64), nullable=True))
        batch.drop_column("attempts")
        batch.drop_column("resume_failures")
        batch.drop_column("not_before")
        batch.drop_column("held_since")
        batch.drop_column("epoch")
