"""The conformance suite of tool sets: objects registered with ``register(toolset)`` that resolve
``"<prefix>:<name>"`` in ``Agent.tools`` into `Tool` objects when a run starts (MCP servers, say).

It checks the contract by duck typing (a ``prefix`` and ``async resolve(name)``), so it runs on any
core. Subclass `ToolSetConformance` in the battery's tests and provide ``make_toolset``::

    class TestMcpToolSet(ToolSetConformance):
        @pytest.fixture
        def make_toolset(self):
            return lambda: ToolSetSubject(
                toolset=McpToolSet(settings), name="demo", unknown="nope",
                call=ToolSetCall(tool="demo__add", arguments={"a": 1, "b": 2}, expect="3"),
            )
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
from typing import Any

from executus_core.testing.conformance._harness import LoopLag, built, call, make_info, run_check
from executus_core.tools import Tally, Tool, ToolContext, tool_result_text

__all__ = [
    "TOOLSET_CHECKS",
    "ToolSetCall",
    "ToolSetConformance",
    "ToolSetSubject",
    "check_toolset_calls_a_tool",
    "check_toolset_concurrent_resolves_agree",
    "check_toolset_has_a_prefix",
    "check_toolset_never_blocks_the_loop",
    "check_toolset_refuses_unknown_names",
    "check_toolset_resolves_to_tools",
]

SAFE_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What every provider accepts as a tool name (OpenAI's rule is the strictest)."""


@dataclasses.dataclass
class ToolSetCall:
    """A call the suite makes through a resolved tool: ``tool`` (the name the model sees) with
    ``arguments``; the text the model would read must equal ``expect`` (when given)."""

    tool: str
    arguments: dict[str, Any]
    expect: str | None = None


@dataclasses.dataclass
class ToolSetSubject:
    """A tool set under test and what to ask of it.

    Attributes:
        toolset: the tool set.
        name: a name it resolves (the part after ``prefix:``), to at least one tool.
        unknown: a name it must refuse (resolve raises, naming it).
        call: a call that must succeed through the resolved tools, or ``None``.
    """

    toolset: Any
    name: str
    unknown: str
    call: ToolSetCall | None = None

    @property
    def port(self) -> Any:
        """The object under test; the harness closes it (``aclose``) after each check."""
        return self.toolset


def _subject(made: Any) -> ToolSetSubject:
    assert isinstance(made, ToolSetSubject), (
        f"make_toolset must build a ToolSetSubject(toolset, name, unknown), got {type(made).__name__}"
    )
    return made


def _context() -> ToolContext:
    return ToolContext(
        info=make_info(),
        tally=Tally(),
        call_id="conformance-call",
        idempotency_key="conformance",
        artifacts=[],
    )


async def _resolve(subject: ToolSetSubject, name: str | None = None) -> list[Tool]:
    wanted = subject.name if name is None else name
    tools = await call(f"resolve({wanted!r})", subject.toolset.resolve, wanted)
    assert isinstance(tools, list) and all(isinstance(t, Tool) for t in tools), (
        f"resolve({wanted!r}) returned {tools!r}: return a list of executus_core.Tool"
    )
    return tools


async def check_toolset_has_a_prefix(factory: Any) -> None:
    """``prefix`` is a non-empty string without ``:``, and ``resolve`` is a coroutine function."""
    async with built(factory) as made:
        toolset = _subject(made).toolset
        prefix = getattr(toolset, "prefix", None)
        assert isinstance(prefix, str) and prefix and ":" not in prefix, (
            f"prefix is {prefix!r}: give the tool set a short name agents write before ':' (e.g. 'mcp')"
        )
        assert inspect.iscoroutinefunction(getattr(toolset, "resolve", None)), (
            "resolve must be `async def resolve(self, name: str) -> list[Tool]`"
        )


async def check_toolset_resolves_to_tools(factory: Any) -> None:
    """``resolve(name)`` gives Tools with distinct, provider-safe names and object schemas, and the
    same names when asked again."""
    async with built(factory) as made:
        subject = _subject(made)
        tools = await _resolve(subject)
        assert tools, f"resolve({subject.name!r}) gave no tools"
        names = [t.name for t in tools]
        assert len(set(names)) == len(names), f"resolve({subject.name!r}) gave duplicate names: {names}"
        for tool in tools:
            assert SAFE_TOOL_NAME.match(tool.name), (
                f"tool name {tool.name!r} is not [A-Za-z0-9_-]{{1,64}}: some providers refuse it"
            )
            schema = tool.spec.parameters
            assert isinstance(schema, dict) and schema.get("type") == "object", (
                f"tool {tool.name!r}: its parameters must be a JSON schema of type object, got {schema!r}"
            )
            assert isinstance(tool.description, str), f"tool {tool.name!r}: description is not a string"
        again = [t.name for t in await _resolve(subject)]
        assert again == names, f"resolving {subject.name!r} twice gave different tools: {names} then {again}"


async def check_toolset_refuses_unknown_names(factory: Any) -> None:
    """``resolve`` of a name it does not know raises (the core ends the run with the message),
    naming it; it never answers with an empty list as if all were well."""
    async with built(factory) as made:
        subject = _subject(made)
        try:
            got = await subject.toolset.resolve(subject.unknown)
        except Exception as exc:
            assert subject.unknown.split("/")[0] in str(exc), (
                f"resolve({subject.unknown!r}) raised {type(exc).__name__}: {exc!s} - name what was not found"
            )
            return
        raise AssertionError(f"resolve({subject.unknown!r}) returned {got!r}: raise an error naming it")


async def check_toolset_calls_a_tool(factory: Any) -> None:
    """A resolved tool runs through `Tool.__call__` (as the core calls it), and gives the expected text."""
    async with built(factory) as made:
        subject = _subject(made)
        if subject.call is None:
            return
        tools = {t.name: t for t in await _resolve(subject)}
        tool = tools.get(subject.call.tool)
        assert tool is not None, (
            f"resolve({subject.name!r}) has no tool {subject.call.tool!r}: {sorted(tools)}"
        )
        value = await call(f"{tool.name}(...)", tool, subject.call.arguments, _context())
        text = tool_result_text(value)
        if subject.call.expect is not None:
            assert text == subject.call.expect, (
                f"{tool.name} answered {text!r}, expected {subject.call.expect!r}"
            )


async def check_toolset_concurrent_resolves_agree(factory: Any) -> None:
    """20 runs starting at once (20 concurrent resolves, then a call each) all get the same tools."""
    async with built(factory) as made:
        subject = _subject(made)
        results = await asyncio.gather(*(_resolve(subject) for _ in range(20)))
        first = [t.name for t in results[0]]
        assert all([t.name for t in tools] == first for tools in results), (
            "concurrent resolves gave different tool lists"
        )
        if subject.call is not None:
            spec = subject.call
            tools = [next(t for t in found if t.name == spec.tool) for found in results]
            answers = await asyncio.gather(*(call(t.name, t, spec.arguments, _context()) for t in tools))
            if spec.expect is not None:
                assert all(tool_result_text(a) == spec.expect for a in answers), (
                    f"concurrent calls answered {answers!r}"
                )


async def check_toolset_never_blocks_the_loop(factory: Any) -> None:
    """Resolving and calling never stall the event loop (start servers and talk to them asynchronously)."""
    async with built(factory) as made:
        subject = _subject(made)
        async with LoopLag() as lag:
            tools = {t.name: t for t in await _resolve(subject)}
            if subject.call is not None:
                await call(subject.call.tool, tools[subject.call.tool], subject.call.arguments, _context())
        lag.check("resolving and calling tools")


TOOLSET_CHECKS = (
    check_toolset_has_a_prefix,
    check_toolset_resolves_to_tools,
    check_toolset_refuses_unknown_names,
    check_toolset_calls_a_tool,
    check_toolset_concurrent_resolves_agree,
    check_toolset_never_blocks_the_loop,
)


class ToolSetConformance:
    """The contract every tool set honours. Subclass it and provide ``make_toolset``.

    ``make_toolset`` is a fixture returning a factory (sync or ``async``) that builds a
    `ToolSetSubject`. Each test runs in its own event loop; the tool set is closed (``aclose``)
    after each. The contract: a ``prefix`` string; ``async resolve(name)`` returning `Tool` objects
    with distinct, provider-safe names and object schemas, the same on every call and under
    concurrency; an unknown name raises, naming it; tools run through `Tool.__call__`; nothing stalls
    the loop.
    """

    def test_has_a_prefix(self, make_toolset: Any) -> None:
        run_check(check_toolset_has_a_prefix, make_toolset)

    def test_resolves_to_tools(self, make_toolset: Any) -> None:
        run_check(check_toolset_resolves_to_tools, make_toolset)

    def test_refuses_unknown_names(self, make_toolset: Any) -> None:
        run_check(check_toolset_refuses_unknown_names, make_toolset)

    def test_calls_a_tool(self, make_toolset: Any) -> None:
        run_check(check_toolset_calls_a_tool, make_toolset)

    def test_concurrent_resolves_agree(self, make_toolset: Any) -> None:
        run_check(check_toolset_concurrent_resolves_agree, make_toolset)

    def test_never_blocks_the_loop(self, make_toolset: Any) -> None:
        run_check(check_toolset_never_blocks_the_loop, make_toolset)
