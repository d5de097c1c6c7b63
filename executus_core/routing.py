"""Delivery routing: which `Delivery` gets a finished run's result, for each target the caller gave.

Targets are validated here (never echoed: a target may hold a webhook secret), matched to the first
`Delivery` whose ``kinds`` serve them, and sent through the guarded call with the delivery timeout.
A target that is invalid, unserved or fails becomes a warning; the run's status never changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from executus_core.guard import Failure, guarded
from executus_core.ports import Delivery
from executus_core.types import DeliveryTarget, Result, RunStatus

__all__ = ["deliver", "kinds_of"]


def kinds_of(delivery: Any) -> frozenset[str]:
    """The target kinds a `Delivery` serves; a malformed ``kinds`` serves none (a lone str is one kind)."""
    kinds = getattr(delivery, "kinds", None)
    if isinstance(kinds, str):
        return frozenset({kinds})
    if isinstance(kinds, set | frozenset | list | tuple):
        return frozenset(k for k in kinds if isinstance(k, str))
    return frozenset()


def _target(raw: Any, warn: Callable[[str], None]) -> DeliveryTarget | None:
    try:
        return raw if isinstance(raw, DeliveryTarget) else DeliveryTarget.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'target'}: {e['msg']}" for e in exc.errors())
        warn(f"a delivery target is not valid: {problems}")
    except Exception as exc:
        warn(f"a delivery target is not valid: {type(exc).__name__}")
    return None


async def deliver(
    deliveries: Sequence[tuple[str, Delivery]],
    targets: Any,
    result: Result,
    warn: Callable[[str], None],
    timeout: float,
) -> None:
    """Send ``result`` to each of ``targets`` (one target or a list): ``deliver``, or ``deliver_error``."""
    for raw in targets if isinstance(targets, list | tuple) else [targets]:
        target = _target(raw, warn)
        if target is None:
            continue
        served = next(((n, d) for n, d in deliveries if target.kind in kinds_of(d)), None)
        if served is None:
            kinds = sorted({k for _, d in deliveries for k in kinds_of(d)})
            warn(f"no delivery serves targets of kind {target.kind!r}; installed kinds: {', '.join(kinds)}")
            continue
        name, delivery = served
        method = "deliver" if result.status is RunStatus.OK else "deliver_error"
        label = f"delivery {name!r}: {method} to {target.kind}"
        value = await guarded(label, getattr(delivery, method), target, result, timeout=timeout)
        if isinstance(value, Failure):
            warn(str(value))
        elif value is not None:
            warn(f"{label} returned {type(value).__name__}, not None (ignored)")
