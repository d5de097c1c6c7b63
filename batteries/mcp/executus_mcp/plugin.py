"""The plugin executus loads through the ``executus`` entry point ``mcp``.

Installed, it registers the ``mcp:`` tool set (`McpToolSet`) with every `Executor`, built from
``[tool.executus.mcp]``; no server starts until a run names one. ``disable = ["mcp"]`` (or
``EXECUTUS_DISABLE=mcp``) turns it off. It also adds ``executus mcp list``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import executus_core
from executus_core import hookimpl, hookspecs
from executus_core.config import Settings, load_settings
from executus_mcp.settings import SECTION, McpSettings
from executus_mcp.toolset import McpToolSet

__all__ = ["CORE_TAKES_TOOLSETS", "build_toolset", "executus_register_commands", "executus_register_tools"]

CORE_TAKES_TOOLSETS = hasattr(executus_core, "ToolSet")
"""Whether the installed executus-core resolves ``prefix:name`` tool sets (``register(toolset)``).
An older core takes only `Tool` objects: the plugin then registers nothing, and the tool set is
still there for a host to resolve itself (`McpToolSet.resolve`) and for ``executus mcp list``."""


def build_toolset(settings: Settings) -> McpToolSet:
    """The `McpToolSet` for ``settings`` (the hook, the CLI, and hosts that register it themselves).

    Raises `ConfigError` naming the key for bad settings, so the `Executor` refuses to start.
    """
    return McpToolSet(settings.section(SECTION, McpSettings, plugin=SECTION))


# The registration hook gets the executor's settings once the core passes them (settings= beside
# register=). Until then the settings are read as the CLI reads them: EXECUTUS_* and pyproject.toml.
if "settings" in inspect.signature(hookspecs.executus_register_tools).parameters:

    @hookimpl
    def executus_register_tools(register: Callable[..., None], settings: Settings) -> None:
        """Register the ``mcp:`` tool set, built from this executor's ``[tool.executus.mcp]``."""
        if CORE_TAKES_TOOLSETS:
            register(build_toolset(settings))

else:

    @hookimpl
    def executus_register_tools(register: Callable[..., None]) -> None:  # type: ignore[misc]
        """Register the ``mcp:`` tool set, built from ``[tool.executus.mcp]`` (EXECUTUS_* and pyproject.toml)."""
        if CORE_TAKES_TOOLSETS:
            register(build_toolset(load_settings()))


@hookimpl
def executus_register_commands(cli: Any) -> None:
    """Add ``executus mcp list``."""
    from executus_mcp.cli import register  # typer and rich only when the command line starts

    register(cli)
