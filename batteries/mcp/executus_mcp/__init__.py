"""executus-mcp: tools from MCP servers for executus agents, through the official ``mcp`` SDK.

Configure servers under ``[tool.executus.mcp.servers.NAME]`` (a ``command`` spoken to over stdio,
or a ``url`` for streamable HTTP), and name them in an agent's tools::

    Agent(name="triage", model="openai:gpt-4o-mini", tools=["mcp:github", "mcp:search/web_search"])

The battery registers itself through its entry point; see `McpToolSet` for what a run gets, and
`executus_mcp.connection` for how servers are started, shared, restarted and stopped.
"""

import logging

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
