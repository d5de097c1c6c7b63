"""Message templates (issue 16, case 5): a template that could fail mid-run is refused when the
settings are read — so `Executor()` refuses to start — and a template that reaches a run anyway
(built without validation) never makes the critic raise into the core: the default text is used,
with a warning."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from critic_helpers import FakeClock
from executus_critic import CriticMessages, CriticSettings, RunCritic

from executus_core import ConfigError, Executor, PluginError, Settings
from executus_core.testing.conformance import make_info


def section(messages: dict[str, str]) -> CriticSettings:
    return Settings({"critic": {"messages": messages}}).section("critic", CriticSettings, plugin="critic")


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        # formats with the sample tool name "search", fails on a tool named "ls"
        ({"repeat": "stop calling {tool[4]}"}, "placeholder {tool[4]} indexes or looks up an attribute"),
        ({"repeat": "{tool.upper}"}, "placeholder {tool.upper} indexes"),
        ({"wrap_up": "{elapsed.real}"}, "placeholder {elapsed.real} indexes"),
        ({"stall": "{steps[0]}"}, "placeholder {steps[0]} indexes"),
        ({"repeat": "{tool:>{count}}"}, "has a placeholder in its format spec"),
        ({"repeat": "{tool:d}"}, "does not format (ValueError"),
        ({"repeat": "{nope}"}, "unknown placeholder {nope}"),
        ({"repeat": "{tool!x}"}, "does not format"),
    ],
)
def test_a_template_that_could_fail_mid_run_is_refused(messages: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as info:
        section(messages)
    assert says in str(info.value), str(info.value)
    assert "[tool.executus.critic] messages." in str(info.value)


def test_bare_placeholders_with_specs_and_conversions_are_accepted() -> None:
    cfg = section({"repeat": "{tool!r:>12} x{count:03d} {arguments:.20}", "wrap_up": "{elapsed:.1f}s"})
    assert cfg.messages.repeat.format(tool="ls", count=2, arguments="") == "        'ls' x002 "


def test_the_executor_refuses_to_start_with_such_a_template(make_executor: Callable[..., Executor]) -> None:
    with pytest.raises((PluginError, ConfigError)) as info:
        make_executor(messages={"repeat": "you called {tool[4]} again"})
    assert "messages.repeat" in str(info.value) and "{tool[4]}" in str(info.value)


async def test_a_template_that_fails_at_run_time_never_escapes_the_handle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # built without validation, the way a host could hand the critic anything
    bad = CriticMessages.model_construct(repeat="{tool[4]}", wrap_up="{elapsed.nope}", stall="{steps[9]}")
    settings = CriticSettings(loop_threshold=2, stall_steps=2, messages=bad)
    clock = FakeClock()
    critic = RunCritic(settings, clock=clock)
    handle = await critic.monitor(make_info(), 10.0)
    said: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="executus.critic"):
        handle.record_step(1)
        handle.record_tool_start("ls", {"path": "."})
        handle.record_tool_start("ls", {"path": "."})  # a loop: the repeat template is formatted
        said += handle.steer()
        clock.advance(11)  # past the soft timeout: the wrap-up template is formatted
        said += handle.steer()
    texts = [m.content or "" for m in said]
    assert any("You have called ls with the same arguments 2 times" in t for t in texts), texts
    assert any("longer than planned" in t for t in texts), texts
    warned = [r.getMessage() for r in caplog.records if "does not format" in r.getMessage()]
    assert any("repeat" in w and "IndexError" in w for w in warned)
    assert any("wrap_up" in w and "AttributeError" in w for w in warned)
    handle.stop()
