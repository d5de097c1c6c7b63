"""`McpToolSet`: the ``mcp:`` tool set. An agent names ``mcp:SERVER`` or ``mcp:SERVER/TOOL``::

    Agent(name="triage", model="openai:gpt-4o-mini", tools=["mcp:github", "mcp:search/web_search"])

When a run starts, the core calls ``resolve("github")`` once; it starts the server if this executor
has not yet, and returns one executus `Tool` per tool the server offers, named ``github__<tool>``
(the server's ``tool_prefix``, two underscores, the tool's name made safe for every provider: letters,
digits, ``_`` and ``-``, at most 64 characters). The model sees the server's own description and
JSON schema; the server validates the arguments.

A call goes to the server once, within ``call_timeout`` and what is left of the run's time. What
the server returns reaches the model as text: text blocks as they are, structured content as JSON
when there is no text, images, audio and binary resources as artifacts of the run (named in the text).
A result flagged ``isError``, a timeout, a lost connection, or a server that cannot start raise an
`McpToolError` (or `McpServerUnavailable`), which the core turns into the tool's error message: the
model reads it and the run goes on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from executus_core.tools import Tool, ToolContext
from executus_mcp.connection import ServerConnection
from executus_mcp.errors import McpNameError, McpServerUnavailable, McpToolError
from executus_mcp.settings import SECTION, McpSettings, tool_name_prefix

if TYPE_CHECKING:
    import mcp_types  # imported where a result is read: the SDK is not loaded with the plugin

__all__ = ["McpToolSet", "model_tool_name", "result_text", "resume_policy"]

log = logging.getLogger("executus_mcp")

MAX_TOOL_NAME = 64
"""The longest tool name every provider accepts (OpenAI's limit)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def model_tool_name(prefix: str, tool: str) -> str:
    """The name the model sees for ``tool`` of a server with ``prefix``: ``prefix__tool``, made safe.

    Characters outside ``[A-Za-z0-9_-]`` become ``_``; a name that would pass 64 characters, or that
    had to change, ends with 8 hex digits of the original's hash, so two tools never share a name.

    >>> model_tool_name("github", "search_issues"), model_tool_name("fs", "read.file")
    ('github__search_issues', 'fs__read_file_dd32cdf5')
    """
    safe = _UNSAFE.sub("_", tool)
    name = f"{prefix}__{safe}"
    if safe == tool and len(name) <= MAX_TOOL_NAME:
        return name
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    return f"{name[: MAX_TOOL_NAME - 9]}_{digest}"


def _artifact(context: ToolContext | None, name: str, data: str, media_type: str) -> str:
    """Attach base64 ``data`` to the run, and say so in the text the model reads."""
    try:
        content = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return f"[{media_type} content that was not valid base64; dropped]"
    if context is None:
        return f"[{media_type}, {len(content)} bytes; not kept: no run context]"
    context.add_artifact(name, content, media_type)
    return f"[{media_type}, {len(content)} bytes, attached to the run as {name!r}]"


def result_text(
    result: mcp_types.CallToolResult, *, context: ToolContext | None = None, label: str = ""
) -> str:
    """What the model reads for a tool result (see the module's docstring)."""
    import mcp_types

    parts: list[str] = []
    for index, block in enumerate(result.content):
        name = f"{label or 'mcp'}-{index}"
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(_artifact(context, name, block.data, block.mime_type))
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(f"[resource {resource.uri}]\n{resource.text}")
            else:
                parts.append(
                    f"[resource {resource.uri}] "
                    + _artifact(
                        context, name, resource.blob, resource.mime_type or "application/octet-stream"
                    )
                )
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(
                f"[resource link {block.uri}: {block.name}"
                + (f" - {block.description}]" if block.description else "]")
            )
        else:
            parts.append(f"[{getattr(block, 'type', type(block).__name__)} content]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return "\n".join(parts)


def resume_policy(spec: mcp_types.Tool) -> Literal["rerun", "ask"]:
    """What a recovered run does with a call of this tool that was in flight at a crash.

    ``"rerun"`` only for tools the server marks read-only or idempotent (``readOnlyHint``,
    ``idempotentHint``): running them again cannot do harm. Any other call may have taken effect,
    and the battery never sends such a call twice on its own: ``"ask"`` tells the model instead.
    """
    hints = spec.annotations
    if hints is not None and (hints.read_only_hint or hints.idempotent_hint):
        return "rerun"
    return "ask"


class McpToolSet:
    """The ``mcp:`` tool set of one executor: its configured servers, started on first use.

    Registered by the battery's plugin (``executus_register_tools``); a host can also build one and
    register it from its own plugin. `aclose` stops every server that was started.

    Args:
        config: ``[tool.executus.mcp]`` as an `McpSettings`.
    """

    prefix = SECTION

    def __init__(self, config: McpSettings) -> None:
        self.config = config
        self.servers: dict[str, ServerConnection] = {
            name: ServerConnection(name, config) for name in config.servers
        }
        self._prefixes = {name: tool_name_prefix(name, server) for name, server in config.servers.items()}
        self._built: dict[
            str, dict[str, Tool]
        ] = {}  # server -> remote tool name -> Tool, for the current list
        for name, conn in self.servers.items():
            conn.on_tools_changed(self._forget(name))

    def _forget(self, server: str) -> Callable[[], None]:
        """A listener that drops the Tools built for ``server``'s old list (rebuilt on next use)."""

        def forget() -> None:
            self._built.pop(server, None)

        return forget

    def _server(self, name: str) -> ServerConnection:
        conn = self.servers.get(name)
        if conn is None:
            configured = ", ".join(sorted(self.servers)) or "none"
            raise McpNameError(
                f"no MCP server named {name!r}: add [tool.executus.mcp.servers.{name}] with a command or a url "
                f"(configured: {configured})",
                server=name,
            )
        return conn

    async def resolve(self, name: str) -> list[Tool]:
        """The tools ``name`` stands for: ``"SERVER"`` (all of them) or ``"SERVER/TOOL"`` (one).

        Starts the server if needed. A server that cannot start raises `McpServerUnavailable` when
        it is ``required`` (the run ends as error, naming it), else gives no tools (logged).

        Raises:
            McpNameError: no such server, or the server offers no such tool.
            McpServerUnavailable: a required server could not start.
        """
        server, _, wanted = name.partition("/")
        conn = self._server(server)
        try:
            remote = await conn.tools(conn.connect_timeout)
        except McpServerUnavailable as exc:
            if conn.required:
                raise
            log.warning("%s; the run goes on without its tools (required = false)", exc)
            return []
        built = self._tools_of(conn, remote)
        if not wanted:
            return list(built.values())
        tool = built.get(wanted)
        if tool is None:
            offered = ", ".join(t.name for t in remote) or "none"
            raise McpNameError(
                f"MCP server {server!r} offers no tool named {wanted!r} (it offers: {offered})", server=server
            )
        return [tool]

    def _tools_of(self, conn: ServerConnection, remote: list[mcp_types.Tool]) -> dict[str, Tool]:
        built = self._built.get(conn.name)
        if built is None:
            prefix = self._prefixes[conn.name]
            built = {
                spec.name: self._make_tool(conn, spec, model_tool_name(prefix, spec.name)) for spec in remote
            }
            self._built[conn.name] = built
        return built

    @staticmethod
    def _make_tool(conn: ServerConnection, spec: mcp_types.Tool, name: str) -> Tool:
        remote = spec.name

        async def call(arguments: dict[str, Any], context: ToolContext | None = None) -> str:
            limit = None if context is None else context.tally.seconds_left
            result = await conn.call_tool(remote, arguments, limit=limit)
            text = result_text(
                result, context=context, label=f"{name}-{context.call_id if context else 'result'}"
            )
            if result.is_error:
                raise McpToolError(
                    text or f"{remote} failed (the server gave no message)", server=conn.name, tool=remote
                )
            return text

        schema = dict(spec.input_schema) if spec.input_schema else {"type": "object", "properties": {}}
        schema.setdefault("type", "object")
        description = (
            spec.description or spec.title or f"The {remote!r} tool of the MCP server {conn.name!r}."
        )
        return Tool(
            name=name,
            description=description,
            fn=call,
            args_model=None,
            parameters=schema,
            context_param="context",
            on_resume=resume_policy(spec),
        )

    async def aclose(self) -> None:
        """Stop every server this tool set started (concurrently; each bounded by the SDK's stop sequence)."""
        await asyncio.gather(*(conn.aclose() for conn in self.servers.values()), return_exceptions=True)
