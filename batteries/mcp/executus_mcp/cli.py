"""``executus mcp list``: each configured MCP server, whether it starts, and the tools it offers.

::

    $ executus mcp list                      # every server under [tool.executus.mcp.servers]
    $ executus mcp list github --json        # one server, JSON for scripts
    $ executus mcp list -s mcp.servers.fs.command=mcp-server-filesystem -s 'mcp.servers.fs.args=["/tmp"]'

The command starts each server as a run would (same settings, same limits), reads its tool list,
and stops it again; servers are started concurrently, so the command takes about as long as the
slowest one. It exits 1 when a server could not start (after listing all of them), 2 for bad
settings or an unknown server name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from executus_core.cli.helpers import (
    EXIT_CANNOT_START,
    EXIT_FAILED,
    JsonOption,
    SettingOption,
    fail,
    print_table,
    settings_from_options,
    stderr,
    stdout,
)
from executus_core.errors import ConfigError
from executus_mcp.connection import ServerConnection, ServerState
from executus_mcp.errors import McpServerUnavailable
from executus_mcp.plugin import build_toolset
from executus_mcp.toolset import McpToolSet, model_tool_name

__all__ = ["describe_server", "mcp_app", "register"]

mcp_app = typer.Typer(
    name="mcp", help="The MCP battery: the servers agents name as mcp:SERVER.", no_args_is_help=True
)


def describe_server(tools: McpToolSet, conn: ServerConnection) -> dict[str, Any]:
    """One server as ``--json`` prints it (and the table shows it)."""
    prefix = tools._prefixes[conn.name]
    info = conn.server_info
    return {
        "name": conn.name,
        "transport": conn.settings.transport,
        "target": conn.target,
        "required": conn.required,
        "state": conn.state.value,
        "error": conn.last_error,
        "protocol_version": conn.protocol_version,
        "server_info": None if info is None else {"name": info.name, "version": info.version},
        "connect_timeout": conn.connect_timeout,
        "call_timeout": conn.call_timeout,
        "tools": [
            {
                "name": tool.name,
                "model_name": model_tool_name(prefix, tool.name),
                "description": tool.description or tool.title or "",
            }
            for tool in conn.cached_tools or []
        ],
    }


async def _collect(tools: McpToolSet, names: list[str]) -> list[dict[str, Any]]:
    """Start the servers concurrently, describe them as they stand, then stop them."""

    async def start(conn: ServerConnection) -> None:
        with contextlib.suppress(McpServerUnavailable):  # the state and the error are on the connection
            await conn.tools()

    try:
        await asyncio.gather(*(start(tools.servers[name]) for name in names))
        return [describe_server(tools, tools.servers[name]) for name in names]
    finally:
        await tools.aclose()


def _first_line(text: str, width: int = 90) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


@mcp_app.command("list")
def list_command(
    servers: Annotated[list[str] | None, typer.Argument(help="Servers to show (default: all).")] = None,
    setting: SettingOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start each MCP server, show its state and its tools, and stop it again."""
    settings = settings_from_options(setting)
    try:
        tools = build_toolset(settings)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CANNOT_START) from None
    names = list(servers or tools.servers)
    unknown = [name for name in names if name not in tools.servers]
    if unknown:
        configured = ", ".join(sorted(tools.servers)) or "none"
        raise fail(
            f"no MCP server named {', '.join(unknown)} (configured in {settings.source}: {configured})",
            EXIT_CANNOT_START,
        )
    if not names:
        if as_json:
            typer.echo(json.dumps({"settings_source": settings.source, "servers": []}, indent=2))
        else:
            stderr().print(
                f"No MCP servers configured ({escape(settings.source)}). Add one under "
                "[tool.executus.mcp.servers.NAME] with a command or a url.",
                highlight=False,
            )
        return
    if as_json:
        described = asyncio.run(_collect(tools, names))
    else:
        with stderr().status(f"starting {len(names)} MCP server{'s' if len(names) > 1 else ''}..."):
            described = asyncio.run(_collect(tools, names))
    failed = [item for item in described if item["state"] == ServerState.FAILED.value]
    if as_json:
        typer.echo(json.dumps({"settings_source": settings.source, "servers": described}, indent=2))
    else:
        _print(described, settings.source)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _print(described: list[dict[str, Any]], source: str) -> None:
    table = Table()
    for column in ("server", "transport", "target", "state", "protocol", "tools"):
        table.add_column(column)
    for item in described:
        ok = item["state"] != ServerState.FAILED.value
        table.add_row(
            escape(item["name"]),
            item["transport"],
            escape(item["target"]),
            item["state"] if ok else "[red]failed[/]",
            escape(item["protocol_version"] or "-"),
            str(len(item["tools"])) if ok else "-",
        )
    print_table(table, title=f"executus mcp list (settings: {source})")
    out = stdout()
    for item in described:
        if item["error"]:
            out.print(f"[red]{escape(item['name'])}:[/] {escape(item['error'])}", highlight=False)
            continue
        tools = Table(show_edge=False)
        tools.add_column("tool")
        tools.add_column("description")
        for tool in item["tools"]:
            tools.add_row(escape(tool["model_name"]), escape(_first_line(tool["description"])))
        print_table(tools, title=f"{item['name']}: the model sees")


def register(cli: typer.Typer) -> None:
    """Add ``executus mcp ...`` to the root app."""
    cli.add_typer(mcp_app, name="mcp")
