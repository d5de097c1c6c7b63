"""Helpers for testing hosts and batteries: `ScriptedModel`, in-memory ports, and the conformance suites.

``from executus_core.testing import ScriptedModel`` gives a model that replays responses::

    model = ScriptedModel([
        ModelResponse(tool_calls=[ToolCall(id="1", name="add", arguments={"a": 1, "b": 2})]),
        ModelResponse(text="3"),
    ])
    result = await executor.run(Agent(name="t", model=model, tools=[add]), "1+2?", caller_id="test")
    assert model.requests[1].messages[-1].content == "3"

The in-memory ports (`MemoryAudit`, `MemoryBudget`, `MemoryCheckpointStore`, `MemoryCritic`,
`MemoryPalette`, `MemoryDelivery`) are real, small implementations of each port that are plugins
too, so a test plugs them straight in and then looks at what the run did::

    audit = MemoryAudit()
    async with Executor(plugins=[audit], entry_points=False) as executor:
        result = await executor.run(agent, "hi", caller_id="u1")
    assert audit.run(result.run_id).event_types()[0] == "run.start"

The conformance suites every battery runs live in `executus_core.testing.conformance`; their
classes are importable from here too.
"""

from executus_core.providers.scripted import ScriptedModel
from executus_core.testing.conformance import (
    AuditConformance,
    AuditSubject,
    BudgetConformance,
    CheckpointStoreConformance,
    CriticConformance,
    DeliveryConformance,
    DeliverySubject,
    PaletteConformance,
    PaletteSubject,
    run_check,
)
from executus_core.testing.memory import (
    BudgetLimits,
    Delivered,
    MemoryAudit,
    MemoryBudget,
    MemoryCheckpointer,
    MemoryCheckpointStorage,
    MemoryCheckpointStore,
    MemoryCritic,
    MemoryCriticHandle,
    MemoryDelivery,
    MemoryPalette,
    MemoryRecorder,
    PaletteCall,
    PortPlugin,
    RecordedRun,
    SavedRun,
)

__all__ = [
    "AuditConformance",
    "AuditSubject",
    "BudgetConformance",
    "BudgetLimits",
    "CheckpointStoreConformance",
    "CriticConformance",
    "Delivered",
    "DeliveryConformance",
    "DeliverySubject",
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
    "PaletteConformance",
    "PaletteSubject",
    "PortPlugin",
    "RecordedRun",
    "SavedRun",
    "ScriptedModel",
    "run_check",
]
