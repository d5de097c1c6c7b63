"""The tool-set conformance suite (`executus_core.testing.conformance.toolset`), run against
`McpToolSet` on a real stdio server, and shown to fail against tool sets that break the contract."""

from __future__ import annotations

from typing import Any

import pytest
from mcp_helpers import stdio_server, toolset

from executus_core import Tool, tool
from executus_core.testing.conformance import run_check
from executus_core.testing.conformance.toolset import (
    ToolSetCall,
    ToolSetConformance,
    ToolSetSubject,
    check_toolset_refuses_unknown_names,
    check_toolset_resolves_to_tools,
)


class TestMcpToolSet(ToolSetConformance):
    @pytest.fixture
    def make_toolset(self) -> Any:
        return lambda: ToolSetSubject(
            toolset=toolset({"demo": stdio_server()}),
            name="demo",
            unknown="no-such-server",
            call=ToolSetCall(tool="demo__add", arguments={"a": 40, "b": 2}, expect="42"),
        )


class TestMcpToolSetOneTool(ToolSetConformance):
    @pytest.fixture
    def make_toolset(self) -> Any:
        return lambda: ToolSetSubject(
            toolset=toolset({"demo": stdio_server(mode="legacy")}),
            name="demo/echo",
            unknown="demo/no-such-tool",
            call=ToolSetCall(tool="demo__echo", arguments={"text": "ok ✓"}, expect="ok ✓"),
        )


@tool
def ping() -> str:
    """Answer pong."""
    return "pong"


class _Broken:
    prefix = "broken"

    def __init__(self, tools: list[Tool]) -> None:
        self.tools = tools

    async def resolve(self, name: str) -> list[Tool]:
        return self.tools  # whatever the name: unknown names pass silently


def test_the_suite_catches_a_tool_set_that_breaks_the_contract() -> None:
    duplicates = _Broken([ping, ping])
    with pytest.raises(AssertionError, match="duplicate names"):
        run_check(check_toolset_resolves_to_tools, lambda: ToolSetSubject(duplicates, "x", "y"))
    silent = _Broken([ping])
    with pytest.raises(AssertionError, match="raise an error naming it"):
        run_check(check_toolset_refuses_unknown_names, lambda: ToolSetSubject(silent, "x", "nope"))
    unsafe = _Broken([Tool(name="a.b", description="", fn=ping.fn, args_model=ping.args_model)])
    with pytest.raises(AssertionError, match="some providers refuse it"):
        run_check(check_toolset_resolves_to_tools, lambda: ToolSetSubject(unsafe, "x", "y"))
