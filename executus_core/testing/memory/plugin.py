"""`PortPlugin`: any port objects handed to an `Executor` as a plugin."""

from __future__ import annotations

from typing import Any

from executus_core.config import Settings
from executus_core.hookspecs import hookimpl

__all__ = ["PortPlugin"]


class PortPlugin:
    """A plugin that hands an `Executor` the port objects it is given.

    For port objects that are not plugins themselves (a battery's object built by hand, a wrapper
    in a test)::

        Executor(plugins=[PortPlugin(budget=my_budget, audit=my_audit)], entry_points=False)
    """

    def __init__(
        self,
        name: str = "test_ports",
        *,
        audit: Any = None,
        budget: Any = None,
        critic: Any = None,
        checkpoints: Any = None,
        palette: Any = None,
        delivery: Any = None,
    ) -> None:
        self.executus_name = name
        self.audit, self.budget, self.critic = audit, budget, critic
        self.checkpoints, self.palette, self.delivery = checkpoints, palette, delivery

    @hookimpl
    def executus_audit(self, settings: Settings) -> Any:
        return self.audit

    @hookimpl
    def executus_budget(self, settings: Settings) -> Any:
        return self.budget

    @hookimpl
    def executus_critic(self, settings: Settings) -> Any:
        return self.critic

    @hookimpl
    def executus_checkpointer(self, settings: Settings) -> Any:
        return self.checkpoints

    @hookimpl
    def executus_palette(self, settings: Settings) -> Any:
        return self.palette

    @hookimpl
    def executus_delivery(self, settings: Settings) -> Any:
        return self.delivery
