"""The executus plugin of executus-critic: registered under the ``executus`` entry-point group as
``critic``, so installing the distribution is all it takes (``EXECUTUS_DISABLE=critic`` or
``[tool.executus.critic] enabled = false`` turns it off)."""

from __future__ import annotations

from typing import Any

from executus_core import Settings, hookimpl
from executus_critic.critic import RunCritic
from executus_critic.settings import SECTION, CriticSettings

__all__ = ["executus_critic", "executus_register_commands"]


@hookimpl
def executus_critic(settings: Settings) -> RunCritic | None:
    """The critic for this executor, or ``None`` when ``enabled = false``.

    Bad settings raise `ConfigError` (naming the key), so the `Executor` refuses to start rather than
    run unwatched.
    """
    cfg = settings.section(SECTION, CriticSettings, plugin="critic")
    if not cfg.enabled:
        return None
    return RunCritic(cfg, deadline_poll=settings.core.deadline_poll)


@hookimpl
def executus_register_commands(cli: Any) -> None:
    """Add ``executus critic policy``."""
    from executus_critic.cli import register  # typer and rich only when the command line starts

    register(cli)
