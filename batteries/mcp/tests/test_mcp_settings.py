"""``[tool.executus.mcp]``: what is accepted, what is refused (and how it is said), what servers
inherit, and the names the model sees."""

from __future__ import annotations

import re
from typing import Any

import pytest
from executus_mcp import McpSettings, model_tool_name
from executus_mcp.plugin import build_toolset
from executus_mcp.settings import expand_env

from executus_core import ConfigError, load_settings


def section(table: dict[str, Any]) -> McpSettings:
    return load_settings({"mcp": table}, read_pyproject=False, environ={}).section("mcp", McpSettings)


def test_servers_inherit_the_table_s_limits_unless_they_set_their_own() -> None:
    cfg = section(
        {
            "connect_timeout": 5,
            "call_timeout": 30,
            "required": False,
            "servers": {
                "a": {"command": "mcp-a"},
                "b": {"url": "https://example.test/mcp", "call_timeout": 2, "required": True},
            },
        }
    )
    assert (cfg.connect_timeout_of("a"), cfg.call_timeout_of("a"), cfg.required_of("a")) == (5, 30, False)
    assert (cfg.connect_timeout_of("b"), cfg.call_timeout_of("b"), cfg.required_of("b")) == (5, 2, True)
    assert cfg.servers["a"].transport == "stdio" and cfg.servers["b"].transport == "http"


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ({}, "give either command .* or url .*, not neither"),
        ({"command": "x", "url": "http://h/mcp"}, "not both"),
        ({"url": "ftp://h/mcp"}, "is not an http:// or https:// URL"),
        ({"url": "http://h/mcp", "env": {"A": "1"}}, "args, env and cwd are for a command"),
        ({"command": "x", "headers": {"A": "1"}}, "headers are for a url server"),
        ({"command": "x", "call_timeout": 0}, "positive, finite number of seconds"),
        ({"command": "x", "tool_prefix": "a b"}, "letters, digits, _ or -"),
        ({"command": "x", "mode": "2024-01-01"}, "mode"),
        ({"command": "x", "comand": "typo"}, "comand"),
    ],
)
def test_a_bad_server_table_is_a_config_error_naming_the_key(server: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=r"\[tool.executus.mcp\]") as caught:
        section({"servers": {"s": server}})
    assert caught.value.args[0].count("plugin 'mcp'") == 1
    assert re.search(says, str(caught.value)), str(caught.value)


def test_server_names_and_prefixes_must_stay_apart() -> None:
    with pytest.raises(ConfigError, match="use letters, digits"):
        section({"servers": {"a/b": {"command": "x"}}})
    with pytest.raises(ConfigError, match=r"would both name their tools x__\.\.\.; give one a tool_prefix"):
        section({"servers": {"x": {"command": "a"}, "y": {"command": "b", "tool_prefix": "x"}}})


def test_unknown_keys_of_the_table_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting .*servres"):
        section({"servres": {}})


def test_environment_variables_in_values() -> None:
    env = {"TOKEN": "t0k"}
    assert expand_env("Bearer ${TOKEN}", "h", env) == "Bearer t0k"
    assert expand_env("$${TOKEN} costs $5", "h", env) == "${TOKEN} costs $5"
    with pytest.raises(ValueError, match=r"headers.X uses \$\{MISSING\}.*MISSING is not set"):
        expand_env("${MISSING}", "headers.X", env)


def test_the_names_the_model_sees() -> None:
    assert model_tool_name("github", "search_issues") == "github__search_issues"
    dotted = model_tool_name("fs", "read.file")
    assert dotted.startswith("fs__read_file_") and len(dotted) == len("fs__read_file_") + 8
    assert model_tool_name("fs", "read/file") != dotted  # changed names never collide
    long = model_tool_name("server", "x" * 100)
    assert len(long) == 64 and long.startswith("server__xxx")
    assert model_tool_name("server", "x" * 99) != long


def test_the_toolset_is_built_from_the_executor_s_settings() -> None:
    settings = load_settings(
        {
            "mcp": {
                "servers": {
                    "gh": {"command": "npx", "args": ["-y", "server-github"], "tool_prefix": "github"}
                }
            }
        },
        read_pyproject=False,
        environ={},
    )
    tools = build_toolset(settings)
    assert tools.prefix == "mcp"
    assert list(tools.servers) == ["gh"]
    assert tools.servers["gh"].target == "npx -y server-github"
    assert tools.servers["gh"].state.value == "idle"
