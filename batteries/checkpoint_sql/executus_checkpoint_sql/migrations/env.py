"""Alembic environment: run the migrations on the connection `executus_checkpoint_sql.migrate` hands in.

There is no alembic.ini: the `Config` is built in code, with the open connection in
``config.attributes["connection"]``, and the version table is this battery's own.
"""

from __future__ import annotations

from alembic import context

from executus_checkpoint_sql.migrate import VERSION_TABLE
from executus_checkpoint_sql.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "executus-checkpoint-sql migrations run through `executus db upgrade` or "
        "executus_checkpoint_sql.migrate.upgrade(), which pass the connection in; not through alembic's CLI"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
