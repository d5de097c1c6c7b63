"""One trail row per step and per tool call of a run: a row written twice is stored once.

A resumed run re-records the steps and tool results its checkpoint holds (those a killed worker's
last batch never wrote), and a paused worker woken after another took its run over may still write
its last batch: unique partial indexes on (run_id, iteration) for steps and (run_id, call_id) for
tool results let the writer's ``ON CONFLICT DO NOTHING`` keep the first. Duplicates an older
version stored are deleted first (the earliest row of each is kept).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENTS = "executus_run_events"
KEYS = (
    ("step", "iteration", "ux_executus_run_events_step"),
    ("tool", "call_id", "ux_executus_run_events_tool"),
)


def upgrade() -> None:
    """Delete duplicate step and tool rows (keeping each one's first), then index them uniquely."""
    for kind, column, index in KEYS:
        op.execute(
            f"DELETE FROM {EVENTS} WHERE kind = '{kind}' AND EXISTS (SELECT 1 FROM {EVENTS} AS e "
            f"WHERE e.run_id = {EVENTS}.run_id AND e.kind = '{kind}' AND e.{column} = {EVENTS}.{column} "
            f"AND e.seq < {EVENTS}.seq)"
        )
        where = sa.text(f"kind = '{kind}'")
        op.create_index(
            index, EVENTS, ["run_id", column], unique=True, postgresql_where=where, sqlite_where=where
        )


def downgrade() -> None:
    """Drop the indexes (duplicates may be stored again)."""
    for _, _, index in KEYS:
        op.drop_index(index, table_name=EVENTS)
