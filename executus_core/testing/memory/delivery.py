"""`MemoryDelivery`: keeps every result it is given."""

from __future__ import annotations

import dataclasses
import threading

from executus_core.config import Settings
from executus_core.hookspecs import hookimpl
from executus_core.ports import Delivery
from executus_core.types import DeliveryTarget, Result

__all__ = ["Delivered", "MemoryDelivery"]


@dataclasses.dataclass
class Delivered:
    """One delivery `MemoryDelivery` received: ``method`` is ``deliver`` or ``deliver_error``."""

    method: str
    target: DeliveryTarget
    result: Result


class MemoryDelivery:
    """A `Delivery` that keeps what it is given in ``delivered`` (the result as its JSON came back).

    Args:
        kinds: the target kinds it serves (default ``{"memory"}``).
    """

    def __init__(
        self, kinds: tuple[str, ...] | frozenset[str] = ("memory",), *, name: str = "memory_delivery"
    ):
        self.executus_name = name
        self.kinds: frozenset[str] = frozenset(kinds)
        self.delivered: list[Delivered] = []
        self._lock = threading.Lock()

    @hookimpl
    def executus_delivery(self, settings: Settings) -> Delivery:
        return self

    def _keep(self, method: str, target: DeliveryTarget, result: Result) -> None:
        if target.kind not in self.kinds:
            raise ValueError(
                f"{self.executus_name} serves {sorted(self.kinds)}, not targets of kind {target.kind!r}"
            )
        # Through JSON, as a real delivery sends it: a result that does not serialize fails here.
        copy = Result.model_validate_json(result.model_dump_json())
        with self._lock:
            self.delivered.append(Delivered(method, target.model_copy(), copy))

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        """Keep a successful run's result."""
        self._keep("deliver", target, result)

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        """Keep a failed run's result."""
        self._keep("deliver_error", target, result)

    def results(self) -> list[Result]:
        """Every result delivered so far, in order."""
        with self._lock:
            return [d.result for d in self.delivered]
