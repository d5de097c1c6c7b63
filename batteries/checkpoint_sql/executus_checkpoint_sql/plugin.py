"""The plugin executus loads through the ``executus`` entry point ``checkpoint_sql``.

It fills the checkpoint port with a `SqlCheckpointStore` built from
``[tool.executus.checkpoint_sql]`` (SQLite in the data directory when nothing is set), and adds the
``executus recover``, ``executus checkpoints list`` and ``executus db upgrade`` commands.

SQLAlchemy is imported only when a store is built, so the command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from executus_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from executus_core.config import Settings
    from executus_core.ports import CheckpointStore

__all__ = ["executus_checkpointer", "executus_register_commands"]


@hookimpl
def executus_checkpointer(settings: Settings) -> CheckpointStore | None:
    """The `SqlCheckpointStore` of these settings, or ``None`` when ``enabled = false``.

    Raises `ConfigError` for a bad setting or a URL without an async driver, so the `Executor`
    refuses to start rather than running without durable checkpoints.
    """
    from executus_checkpoint_sql.store import SqlCheckpointStore

    return SqlCheckpointStore.from_settings(settings)


@hookimpl
def executus_register_commands(cli: Any) -> None:
    """Add ``executus recover``, ``executus checkpoints list`` and this battery's ``executus db upgrade``."""
    from executus_checkpoint_sql.cli import register_commands

    register_commands(cli)
