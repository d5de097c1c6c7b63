"""``[tool.executus.mcp]``: the MCP servers an executor may start, and how long it waits for them.

::

    [tool.executus.mcp]
    connect_timeout = 15     # start a server and finish the handshake (and its tool list) within this
    call_timeout = 60        # one tool call; never past the run's own deadline either
    required = true          # a server that cannot start ends the run as error (false: go on without it)

    [tool.executus.mcp.servers.github]           # a command: spoken to over stdin/stdout
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-github"]
    env = { GITHUB_PERSONAL_ACCESS_TOKEN = "${GITHUB_TOKEN}" }

    [tool.executus.mcp.servers.search]           # a URL: streamable HTTP
    url = "https://mcp.example.com/mcp"
    headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }
    call_timeout = 20                            # this server's own limits win over the table's
    required = false

``${NAME}`` in ``env``, ``headers``, ``args`` and ``url`` is replaced by the host's environment
variable ``NAME`` when the server starts (``$${`` for a literal ``${``), so secrets stay out of
pyproject.toml; a variable that is not set is an error naming it. The same table in the
environment: ``EXECUTUS_MCP__SERVERS='{"github": {"command": "npx", ...}}'`` (JSON); in code,
``McpToolSet(McpSettings.model_validate({...}))`` (see the plugin module for why not ``settings=``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["SECTION", "McpSettings", "ServerSettings", "expand_env", "tool_name_prefix"]

SECTION = "mcp"
"""The settings table (``[tool.executus.mcp]``), the plugin's name, and the ``ToolSet`` prefix."""

_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Mode = Literal["auto", "legacy", "2026-07-28"]


def expand_env(value: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${NAME}`` with the environment variable ``NAME`` (``$${`` stays a literal ``${``).

    Raises `ValueError` naming ``where`` and the variable when it is not set.
    """
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "${"
        if name not in env:
            raise ValueError(
                f"{where} uses ${{{name}}}, and the environment variable {name} is not set; set it, "
                "or write $${ for a literal ${"
            )
        return env[name]

    return _VARIABLE.sub(substitute, value)


def _positive_seconds(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ValueError("must be a positive, finite number of seconds")
    return value


class ServerSettings(BaseModel):
    """``[tool.executus.mcp.servers.NAME]``: one MCP server, as a ``command`` or a ``url``.

    Unset limits (``connect_timeout``, ``call_timeout``, ``required``) come from ``[tool.executus.mcp]``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | None = Field(None, description="The program to start; spoken to over stdin/stdout.")
    args: list[str] = Field(default_factory=list, description="The command's arguments.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables for the command, over the SDK's safe default set (HOME, PATH, USER, ...).",
    )
    cwd: str | None = Field(None, description="The command's working directory.")
    url: str | None = Field(None, description="A streamable HTTP endpoint (http:// or https://).")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP headers sent with every request.")
    connect_timeout: float | None = Field(None, description="Seconds to start and greet the server.")
    call_timeout: float | None = Field(None, description="Seconds one tool call may take.")
    required: bool | None = Field(
        None, description="True: a run naming this server ends as error when it cannot start."
    )
    tool_prefix: str | None = Field(
        None, description="What the tools' names start with (default: the server's name): PREFIX__tool."
    )
    mode: Mode = Field(
        "auto",
        description='Protocol era: "auto" probes server/discover and falls back to initialize; '
        '"legacy" forces the initialize handshake; "2026-07-28" adopts that version directly.',
    )

    @field_validator("connect_timeout", "call_timeout")
    @classmethod
    def _seconds(cls, value: float | None) -> float | None:
        return _positive_seconds(value)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://", "${")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL (for a program, use command)")
        return value

    @field_validator("tool_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not _PREFIX.match(value):
            raise ValueError(
                f"{value!r} must be 1 to 40 letters, digits, _ or - (the model sees it in tool names)"
            )
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> ServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                "give either command (a program spoken to over stdio) or url (streamable HTTP), not "
                + ("both" if self.command is not None else "neither")
            )
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("args, env and cwd are for a command; a url server takes headers")
        if self.command is not None and self.headers:
            raise ValueError("headers are for a url server; a command takes env")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        """``"stdio"`` for a command, ``"http"`` for a URL."""
        return "stdio" if self.command is not None else "http"


class McpSettings(BaseModel):
    """``[tool.executus.mcp]``: the servers, and the limits each server inherits unless it sets its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: dict[str, ServerSettings] = Field(
        default_factory=dict, description="The MCP servers agents may name as mcp:NAME."
    )
    connect_timeout: float = Field(
        15.0, description="Seconds to start a server, greet it and read its tool list."
    )
    call_timeout: float = Field(
        60.0, description="Seconds one tool call may take (and never past the run's deadline)."
    )
    required: bool = Field(
        True,
        description="True: a run naming a server that cannot start ends as error, naming it; false: the run "
        "goes on without that server's tools (a warning is logged).",
    )

    @field_validator("connect_timeout", "call_timeout")
    @classmethod
    def _seconds(cls, value: float) -> float:
        checked = _positive_seconds(value)
        assert checked is not None
        return checked

    @field_validator("servers")
    @classmethod
    def _names(cls, value: dict[str, ServerSettings]) -> dict[str, ServerSettings]:
        for name in value:
            if not _SERVER_NAME.match(name) or "/" in name:
                raise ValueError(
                    f"server name {name!r}: use letters, digits, _, - and . (agents write mcp:{name}/TOOL)"
                )
        prefixes: dict[str, str] = {}
        for name, server in value.items():
            prefix = tool_name_prefix(name, server)
            if prefix in prefixes:
                raise ValueError(
                    f"servers {prefixes[prefix]!r} and {name!r} would both name their tools {prefix}__...; "
                    "give one a tool_prefix"
                )
            prefixes[prefix] = name
        return value

    def connect_timeout_of(self, name: str) -> float:
        """The connect timeout in force for server ``name``."""
        own = self.servers[name].connect_timeout
        return own if own is not None else self.connect_timeout

    def call_timeout_of(self, name: str) -> float:
        """The per-call timeout in force for server ``name``."""
        own = self.servers[name].call_timeout
        return own if own is not None else self.call_timeout

    def required_of(self, name: str) -> bool:
        """Whether a run naming server ``name`` must end as error when it cannot start."""
        own = self.servers[name].required
        return own if own is not None else self.required


def tool_name_prefix(name: str, server: ServerSettings) -> str:
    """What the server's tools are named after: ``tool_prefix``, else the server's name made safe."""
    if server.tool_prefix is not None:
        return server.tool_prefix
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40]
