"""executus: run LLM agents inside a host service.

The public API; everything else lives in modules whose names say what they hold::

    from executus_core import Agent, Executor, tool

    @tool
    def add(a: int, b: int) -> int:
        "Add two integers."
        return a + b

    async with Executor() as executor:
        result = await executor.run(Agent(name="calc", model="openai:gpt-4o-mini", tools=[add]),
                                    "What is 2 + 40?", caller_id="user-1")
"""

from executus_core.agent import Agent
from executus_core.approval import Approve, Decision, Deny, Edit
from executus_core.config import CoreSettings, Settings, load_settings
from executus_core.delivery import WebhookVerificationError, verify_webhook
from executus_core.errors import (
    AuthenticationError,
    BudgetExceeded,
    ConfigError,
    ExecutusError,
    ExecutusWarning,
    ModelNotFound,
    PluginError,
    ProviderConnectionError,
    ProviderError,
    ProviderResponseError,
    ProviderStatusError,
    RateLimited,
    RunFailed,
    RunTakenOver,
)
from executus_core.executor import Executor
from executus_core.hookspecs import hookimpl, hookspec
from executus_core.ports import (
    Audit,
    Budget,
    Checkpointer,
    CheckpointStore,
    Critic,
    CriticHandle,
    Delivery,
    Model,
    PaletteSource,
    RunRecorder,
)
from executus_core.tools import Tally, Tool, ToolContext, ToolSet, run_status, tool
from executus_core.types import (
    Artifact,
    CheckpointState,
    DeliveryTarget,
    Interrupted,
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    PaletteEntry,
    PendingCall,
    Result,
    RunEvent,
    RunInfo,
    RunStats,
    RunStatus,
    RunTranscript,
    ToolCall,
    ToolSpec,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Approve",
    "Artifact",
    "Audit",
    "AuthenticationError",
    "Budget",
    "BudgetExceeded",
    "CheckpointState",
    "CheckpointStore",
    "Checkpointer",
    "ConfigError",
    "CoreSettings",
    "Critic",
    "CriticHandle",
    "Decision",
    "Delivery",
    "DeliveryTarget",
    "Deny",
    "Edit",
    "Executor",
    "ExecutusError",
    "ExecutusWarning",
    "Interrupted",
    "Message",
    "Model",
    "ModelNotFound",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "PaletteEntry",
    "PaletteSource",
    "PendingCall",
    "PluginError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderResponseError",
    "ProviderStatusError",
    "RateLimited",
    "Result",
    "RunEvent",
    "RunFailed",
    "RunInfo",
    "RunRecorder",
    "RunStats",
    "RunStatus",
    "RunTakenOver",
    "RunTranscript",
    "Settings",
    "Tally",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolSet",
    "ToolSpec",
    "Usage",
    "WebhookVerificationError",
    "hookimpl",
    "hookspec",
    "load_settings",
    "run_status",
    "tool",
    "verify_webhook",
]
