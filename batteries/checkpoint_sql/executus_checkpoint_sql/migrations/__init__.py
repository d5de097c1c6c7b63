"""The Alembic migrations of executus-checkpoint-sql, run by `executus_checkpoint_sql.migrate`.

They keep their own version table (``executus_checkpoint_sql_version``), so they live beside a
host's own Alembic history in the same database without touching it.
"""
