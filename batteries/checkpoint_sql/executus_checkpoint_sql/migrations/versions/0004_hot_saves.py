"""Saves that do not bloat the runs table: no index on a column a save changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Every save updates its run's row (counters, ``lease_until``, ``updated_at``). The index on
``(status, lease_until)`` made each of those updates a non-HOT update on PostgreSQL: a new index
entry and a dead tuple per save, so the table and its index grew with every step (49 KB to 229 KB
in one 500-step run) until a vacuum. The index is now ``(status, started_at)``, which no save
changes (``interrupted()`` picks live runs oldest first), and on PostgreSQL the table keeps 30% of
each page free (``fillfactor = 70``) so the new version of a row fits beside the old one: a save
is a heap-only (HOT) update, and page pruning reclaims the old versions without a vacuum.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RUNS = "executus_checkpoint_runs"
OLD_INDEX = "ix_executus_checkpoint_runs_status_lease_until"
NEW_INDEX = "ix_executus_checkpoint_runs_status_started_at"


def upgrade() -> None:
    op.drop_index(OLD_INDEX, table_name=RUNS)
    op.create_index(NEW_INDEX, RUNS, ["status", "started_at"])
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {RUNS} SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {RUNS} RESET (fillfactor)")
    op.drop_index(NEW_INDEX, table_name=RUNS)
    op.create_index(OLD_INDEX, RUNS, ["status", "lease_until"])
