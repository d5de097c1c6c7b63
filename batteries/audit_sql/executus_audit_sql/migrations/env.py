"""Alembic's environment for this battery's migrations: always run in code, on a given connection.

`executus_audit_sql.migrate` builds the `alembic.config.Config` (no ``alembic.ini``) and puts the
open connection in ``config.attributes["connection"]``; the version is kept in this battery's own
version table, so the host's own Alembic history in the same database is never touched.
"""

from __future__ import annotations

from alembic import context
from executus_audit_sql.schema import VERSION_TABLE, Base

config = context.config

if context.is_offline_mode():
    raise RuntimeError(
        "executus-audit-sql's migrations run online only: use `executus db upgrade`, or "
        "executus_audit_sql.migrate.upgrade(url)"
    )

connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "executus-audit-sql's migrations need a connection in config.attributes['connection']: run them "
        "with `executus db upgrade` or executus_audit_sql.migrate.upgrade(url), not with the alembic command"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    version_table_schema=config.attributes.get("db_schema"),
    # SQLite alters tables by copying them: later migrations that change columns need batch mode.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)

with context.begin_transaction():
    context.run_migrations()
