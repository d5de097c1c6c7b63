"""The conformance suites: one per port, run by every battery of that port against its own object.

Subclass a suite in your battery's tests and provide its factory fixture; pytest collects the
subclass (name it ``Test...``) and runs every check against your implementation::

    import pytest
    from executus_core.testing.conformance import CheckpointStoreConformance

    class TestSqlCheckpointStore(CheckpointStoreConformance):
        @pytest.fixture
        def make_store(self, tmp_path):
            return lambda: SqlCheckpointStore(url=f"sqlite+aiosqlite:///{tmp_path}/cp.db")

| suite | fixture | the factory builds |
|---|---|---|
| `AuditConformance` | ``make_audit`` | an `AuditSubject` (the audit and how to read a run back) |
| `BudgetConformance` | ``make_budget`` | a `Budget` with the given ``max_runs`` / ``max_tokens`` / ``max_seconds`` / ``window_seconds`` |
| `CheckpointStoreConformance` | ``make_store`` | a `CheckpointStore` over empty storage |
| `CriticConformance` | ``make_critic`` | a `Critic` |
| `PaletteConformance` | ``make_palette`` | a `PaletteSubject` (the palette, a skill and an agent it serves) |
| `DeliveryConformance` | ``make_delivery`` | a `DeliverySubject` (the delivery, a target, optionally what arrived) |

Each test method is synchronous and runs its check in a fresh event loop with ``asyncio.run``, so
a battery needs no pytest-asyncio configuration, and the factory (sync or ``async``) is called
inside that loop, so connections it opens belong to it. Objects with ``aclose()`` are closed after
each check. Every check is also a plain ``async def check_...(factory)`` function, listed in the
suite's ``*_CHECKS`` tuple, that `run_check` runs: that is how our own tests prove each check
fails against a deliberately broken implementation.

The suites need no pytest import themselves (pytest only collects them), so importing this module
costs a host nothing.
"""

from executus_core.testing.conformance._harness import LAG_BOUND, LoopLag, make_info, run_check
from executus_core.testing.conformance.audit import AUDIT_CHECKS, AuditConformance, AuditSubject
from executus_core.testing.conformance.budget import BUDGET_CHECKS, BudgetConformance
from executus_core.testing.conformance.checkpoint import CHECKPOINT_CHECKS, CheckpointStoreConformance
from executus_core.testing.conformance.critic import CRITIC_CHECKS, CriticConformance
from executus_core.testing.conformance.delivery import DELIVERY_CHECKS, DeliveryConformance, DeliverySubject
from executus_core.testing.conformance.palette import PALETTE_CHECKS, PaletteConformance, PaletteSubject

__all__ = [
    "AUDIT_CHECKS",
    "BUDGET_CHECKS",
    "CHECKPOINT_CHECKS",
    "CRITIC_CHECKS",
    "DELIVERY_CHECKS",
    "LAG_BOUND",
    "PALETTE_CHECKS",
    "AuditConformance",
    "AuditSubject",
    "BudgetConformance",
    "CheckpointStoreConformance",
    "CriticConformance",
    "DeliveryConformance",
    "DeliverySubject",
    "LoopLag",
    "PaletteConformance",
    "PaletteSubject",
    "make_info",
    "run_check",
]
