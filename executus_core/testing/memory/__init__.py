"""In-memory implementations of every port: small, correct, and strict about the contract.

They are what the conformance suites are proven against, and what a host's tests (and ours) plug
into an `Executor` to see what a run did::

    audit, checkpoints = MemoryAudit(), MemoryCheckpointStore()
    async with Executor(plugins=[audit, checkpoints], entry_points=False) as executor:
        result = await executor.run(agent, "hi", caller_id="u1")
    assert audit.run(result.run_id).stats.status is RunStatus.OK

Each class is also a plugin (its hook returns the object itself), so it goes straight into
``Executor(plugins=[...])``; `PortPlugin` wraps any other port objects the same way. Nothing here
leaves the process: state lives in the object, guarded by a lock so the objects may be shared by
several executors, event loops or threads.

Where the contract leaves a choice open these implementations are strict, so a test notices when
the core misuses a port: a recorder refuses events after ``close`` and a second ``close``; a
checkpointer refuses a save that would leave a gap, and any call once its run was taken over.

One module per port, as in `executus_core.testing.conformance`: ``audit``, ``budget``,
``checkpoint``, ``critic``, ``palette``, ``delivery``, and ``plugin`` for `PortPlugin`. Every name
is importable from here.
"""

from executus_core.testing.memory.audit import MemoryAudit, MemoryRecorder, RecordedRun
from executus_core.testing.memory.budget import BudgetLimits, MemoryBudget
from executus_core.testing.memory.checkpoint import (
    MemoryCheckpointer,
    MemoryCheckpointStorage,
    MemoryCheckpointStore,
    SavedRun,
)
from executus_core.testing.memory.critic import MemoryCritic, MemoryCriticHandle
from executus_core.testing.memory.delivery import Delivered, MemoryDelivery
from executus_core.testing.memory.palette import MemoryPalette, PaletteCall
from executus_core.testing.memory.plugin import PortPlugin

__all__ = [
    "BudgetLimits",
    "Delivered",
    "MemoryAudit",
    "MemoryBudget",
    "MemoryCheckpointStorage",
    "MemoryCheckpointStore",
    "MemoryCheckpointer",
    "MemoryCritic",
    "MemoryCriticHandle",
    "MemoryDelivery",
    "MemoryPalette",
    "MemoryRecorder",
    "PaletteCall",
    "PortPlugin",
    "RecordedRun",
    "SavedRun",
]
