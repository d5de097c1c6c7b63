"""executus-mcp: tools from MCP servers for executus agents, through the official ``mcp`` SDK.

Configure servers under ``[tool.executus.mcp.servers.NAME]`` (a ``command`` spoken to over stdio,
or a ``url`` for streamable HTTP), and name them in an agent's tools::

    Agent(name="triage", model="openai:gpt-4o-mini", tools=["mcp:github", "mcp:search/web_search"])

The battery registers itself through its entry point; see `McpToolSet` for what a run gets, and
`executus_mcp.connection` for how servers are started, shared, restarted and stopped.
"""

import logging
from typing import TYPE_CHECKING

from executus_core.lazy import lazy_exports

if TYPE_CHECKING:
    from executus_mcp.connection import ServerConnection, ServerState
    from executus_mcp.errors import (
        McpCallTimeout,
        McpConnectionLost,
        McpError,
        McpNameError,
        McpServerUnavailable,
        McpToolError,
    )
    from executus_mcp.settings import McpSettings, ServerSettings
    from executus_mcp.toolset import McpToolSet, model_tool_name, result_text

# The public names are imported on first use (PEP 562): loading the plugin imports this package
# first, and a command that never touches the battery's port should not pay for its dependencies.
_LAZY = {
    "ServerConnection": "executus_mcp.connection",
    "ServerState": "executus_mcp.connection",
    "McpCallTimeout": "executus_mcp.errors",
    "McpConnectionLost": "executus_mcp.errors",
    "McpError": "executus_mcp.errors",
    "McpNameError": "executus_mcp.errors",
    "McpServerUnavailable": "executus_mcp.errors",
    "McpToolError": "executus_mcp.errors",
    "McpSettings": "executus_mcp.settings",
    "ServerSettings": "executus_mcp.settings",
    "McpToolSet": "executus_mcp.toolset",
    "model_tool_name": "executus_mcp.toolset",
    "result_text": "executus_mcp.toolset",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


__version__ = "0.1.0"

# A library logs; the host decides where it goes (no "last resort" lines on stderr by default).
logging.getLogger("executus_mcp").addHandler(logging.NullHandler())

__all__ = [
    "McpCallTimeout",
    "McpConnectionLost",
    "McpError",
    "McpNameError",
    "McpServerUnavailable",
    "McpSettings",
    "McpToolError",
    "McpToolSet",
    "ServerConnection",
    "ServerSettings",
    "ServerState",
    "model_tool_name",
    "result_text",
]
