"""Every exception executus-mcp raises, in one place.

The tree::

    ExecutusError (executus_core)
    └── McpError                    anything that went wrong with an MCP server
        ├── McpServerUnavailable    a server could not start or be reached (names it, says why)
        ├── McpNameError            an agent named a server or tool that is not configured / offered
        └── McpToolError            a tool call failed; the message goes back to the model
            ├── McpCallTimeout      the call did not answer within its limit and was cancelled
            └── McpConnectionLost   the server died or dropped its session during the call

Where they surface: `McpToolSet.resolve` raises `McpServerUnavailable` (for a ``required`` server)
and `McpNameError`, and the core ends the run as ``error`` with the message. A tool raises
`McpToolError` and its kinds, and the core hands the message to the model as the tool's error, so
the model can try something else; the run goes on.
"""

from __future__ import annotations

from executus_core.errors import ExecutusError

__all__ = [
    "McpCallTimeout",
    "McpConnectionLost",
    "McpError",
    "McpNameError",
    "McpServerUnavailable",
    "McpToolError",
]


class McpError(ExecutusError):
    """Base class of the MCP battery's errors.

    Attributes:
        server: the server's name under ``[tool.executus.mcp.servers]``, when one is concerned.
    """

    def __init__(self, message: str, *, server: str | None = None) -> None:
        super().__init__(message)
        self.server = server


class McpServerUnavailable(McpError):
    """A server could not be started or reached, or did not finish its handshake in time.

    The message names the server, what was started (the command or the URL), why it failed, and the
    last lines the server wrote to stderr when there are any.
    """


class McpNameError(McpError, LookupError):
    """An agent named an MCP server or tool that does not exist; the message lists what does."""


class McpToolError(McpError):
    """A tool call failed: the server answered with an error, or refused the call.

    Attributes:
        tool: the tool's name on its server.
    """

    def __init__(self, message: str, *, server: str | None = None, tool: str | None = None) -> None:
        super().__init__(message, server=server)
        self.tool = tool


class McpCallTimeout(McpToolError):
    """The call did not answer within its limit (``call_timeout``, or what was left of the run's
    time); it was cancelled on the server, which may have done part of the work."""


class McpConnectionLost(McpToolError):
    """The server exited, or dropped its session, while the call was in flight. The call was not
    sent again (it may or may not have taken effect); the next call starts a new session."""
