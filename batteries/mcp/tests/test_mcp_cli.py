"""``executus mcp list``: each server, its state and its tools, for people and with ``--json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from executus_mcp import plugin
from mcp_helpers import SERVER_APP
from typer.testing import CliRunner

from executus_core.cli import create_app


@pytest.fixture(autouse=True)
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pyproject.toml around: the settings are the defaults plus what a test passes."""
    monkeypatch.chdir(tmp_path)


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(
        create_app(entry_points=False, plugins=[plugin]), list(args), env={"COLUMNS": "200"}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


DEMO = ["-s", f"mcp.servers.demo.command={sys.executable}", "-s", f'mcp.servers.demo.args=["{SERVER_APP}"]']
GONE = ["-s", "mcp.servers.gone.command=executus-no-such-mcp-server", "-s", "mcp.servers.gone.required=false"]


def test_list_as_json_shows_state_tools_and_errors() -> None:
    result = invoke("mcp", "list", "--json", *DEMO, *GONE)
    assert result.exit_code == 1  # a server could not start
    data = json.loads(result.stdout)
    demo, gone = data["servers"]
    assert demo["name"] == "demo" and demo["state"] == "ready" and demo["transport"] == "stdio"
    assert demo["protocol_version"] == "2026-07-28"
    assert demo["server_info"] == {"name": "executus-test", "version": "1.0"}
    add = next(tool for tool in demo["tools"] if tool["name"] == "add")
    assert add == {"name": "add", "model_name": "demo__add", "description": "Add two integers."}
    assert gone["state"] == "failed" and gone["tools"] == [] and gone["required"] is False
    assert "there is no program 'executus-no-such-mcp-server'" in gone["error"]


def test_list_for_people_draws_tables() -> None:
    result = invoke("mcp", "list", "demo", *DEMO, *GONE)
    assert result.exit_code == 0, result.output  # only demo was asked for
    out = result.stdout
    assert "executus mcp list" in out and "ready" in out and "2026-07-28" in out
    assert "demo__add" in out and "Add two integers." in out
    assert "gone" not in out


def test_unknown_server_and_no_servers() -> None:
    result = invoke("mcp", "list", "nope", *DEMO)
    assert result.exit_code == 2 and "no MCP server named nope" in result.stderr
    result = invoke("mcp", "list")
    assert result.exit_code == 0 and "No MCP servers configured" in result.stderr
    result = invoke("mcp", "list", "--json")
    assert json.loads(result.stdout)["servers"] == []


def test_bad_settings_exit_2_naming_the_key() -> None:
    result = invoke("mcp", "list", "-s", "mcp.servers.x.url=ftp://nowhere")
    assert result.exit_code == 2 and "is not an http:// or https:// URL" in result.stderr


def test_the_installed_command_reads_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f"[tool.executus.mcp.servers.demo]\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(SERVER_APP)}]\n"
    )
    executus = Path(sys.executable).with_name("executus")
    done = subprocess.run(
        [str(executus), "mcp", "list", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    (demo,) = json.loads(done.stdout)["servers"]
    assert demo["state"] == "ready" and len(demo["tools"]) > 5
    assert done.stderr == ""
