"""The `executus` command: the example agent end to end, JSON for scripts, plugins, and clean errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from executus_core import hookimpl
from executus_core.cli import AgentFileError, create_app, load_agent, parse_settings
from executus_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
AGENT = str(ROOT / "examples" / "assistant.toml")
REPLAY = "scripted:" + str(ROOT / "examples" / "assistant.replay.json")
PROMPT = "I run 10 km at 6 minutes per mile. How many miles is that, and how long will it take?"
KEYS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
EXECUTUS = Path(sys.executable).with_name("executus")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No API keys and no EXECUTUS_* settings from the machine; embedded defaults write under tmp."""
    for name in list(os.environ):
        if name in KEYS or (name.startswith("EXECUTUS_") and not name.startswith("EXECUTUS_TEST_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EXECUTUS_DATA_DIR", str(tmp_path / "data"))
    # Agent files put their folder on sys.path (for their tool modules): undo it after each test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("tools", None)


def invoke(*args: str, app: typer.Typer | None = None) -> object:
    result = CliRunner().invoke(app or create_app(entry_points=False), list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update(extra)
    return env


# -- the example agent ----------------------------------------------------------------------------


def test_the_example_runs_offline_calls_its_tools_and_prints_the_answer() -> None:
    result = invoke("run", AGENT, PROMPT, "--model", REPLAY)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "10 km is about 6.21 miles. At 6 minutes per mile it takes about 37.3 minutes (roughly 37 min 17 s)."
    )
    progress = result.stderr
    assert "scripted replay, offline: no model is called" in progress
    # the tools really ran: their results are computed, not in the replay file
    assert '→ convert_units(value=10, from_unit="km", to_unit="mi")' in progress
    assert "6.21371192237}" in progress and "✓ calculate" in progress and "37.2822715342" in progress
    assert "✓ run_status" in progress
    assert "ok · 3 steps · 3 tool calls" in progress


def test_json_prints_the_result_and_nothing_else() -> None:
    result = invoke("run", AGENT, PROMPT, "--model", REPLAY, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["status"] == "ok" and data["stats"]["tool_calls"] == 3
    tool_results = {m["name"]: m["content"] for m in data["messages"] if m["role"] == "tool"}
    assert json.loads(tool_results["convert_units"])["result"] == 6.21371192237
    assert tool_results["calculate"] == "37.2822715342"
    assert json.loads(tool_results["run_status"])["steps"] == 2
    assert "step 1" not in result.stderr  # no live progress in JSON mode


def test_the_installed_command_runs_the_example_in_a_subprocess(tmp_path: Path) -> None:
    if not EXECUTUS.exists():
        pytest.skip(f"no executus script beside {sys.executable}: install the project (scripts/bootstrap)")
    proc = subprocess.run(
        [
            str(EXECUTUS),
            "run",
            "examples/assistant.toml",
            PROMPT,
            "-m",
            "scripted:examples/assistant.replay.json",
        ],
        cwd=ROOT,
        env=subprocess_env(EXECUTUS_DATA_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "about 6.21 miles" in proc.stdout and "scripted replay" not in proc.stdout
    assert "scripted replay, offline: no model is called" in proc.stderr
    assert "ok · 3 steps · 3 tool calls" in proc.stderr


def test_with_no_key_and_no_model_it_says_what_to_set() -> None:
    result = invoke("run", AGENT, PROMPT)
    assert result.exit_code == 1
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    assert "error: model 'default': no model to run: set OPENAI_API_KEY" in message
    assert "OPENAI_BASE_URL" in message and "ANTHROPIC_API_KEY" in message
    assert "--model scripted:examples/assistant.replay.json" in message
    assert "Traceback" not in result.output


def test_a_failed_run_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    # the example with room for only two model calls: the replay needs three
    agent = tmp_path / "short.toml"
    agent.write_text(Path(AGENT).read_text().replace("max_steps = 8", "max_steps = 2"))
    (tmp_path / "tools.py").write_text((ROOT / "examples" / "tools.py").read_text())
    result = invoke("run", str(agent), PROMPT, "--model", REPLAY, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["status"] == "error" and "step limit reached" in data["error"]
    human = invoke("run", str(agent), PROMPT, "-m", REPLAY)
    assert human.exit_code == 1 and human.stdout == ""
    assert "error: step limit reached: 2 model calls" in human.stderr
    assert "error · 2 steps · 3 tool calls" in human.stderr


def test_dry_run_prints_the_first_request() -> None:
    result = invoke("run", AGENT, "What is 3 ft in cm?", "--model", REPLAY, "--dry-run")
    assert result.exit_code == 0
    request = json.loads(result.stdout)
    assert request["messages"][-1] == {"role": "user", "content": "What is 3 ft in cm?"}
    assert [t["name"] for t in request["tools"]] == ["run_status", "calculate", "convert_units"]
    assert "not sent" in result.stderr


def test_a_module_attribute_agent_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cli_demo_agents.py").write_text(
        textwrap.dedent(
            """
            from executus_core import Agent, ModelResponse
            from executus_core.testing import ScriptedModel

            helper = Agent(name="helper", model=ScriptedModel([ModelResponse(text="hello from a module")]))
            not_an_agent = 42
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("run", "cli_demo_agents:helper", "hi", "--caller", "alice")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "hello from a module"
    assert "caller alice" in result.stderr and "scripted replay, offline" in result.stderr
    wrong = invoke("run", "cli_demo_agents:not_an_agent", "hi")
    assert wrong.exit_code == 2 and "is int, not an executus Agent" in wrong.stderr


class ChatCompletionsServer(ThreadingHTTPServer):
    """A loopback OpenAI-compatible server: asks for convert_units(3 ft -> cm), then answers with its result."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ChatCompletionsHandler)
        self.requests: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ChatCompletionsHandler(BaseHTTPRequestHandler):
    server: ChatCompletionsServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests.append({"path": self.path, "body": body})
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        usage = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
        if not results:
            arguments = json.dumps({"value": 3, "from_unit": "ft", "to_unit": "cm"})
            call = {
                "id": "call_a",
                "type": "function",
                "function": {"name": "convert_units", "arguments": arguments},
            }
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": f"3 ft is {json.loads(results[0])['result']} cm."}
            finish = "stop"
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            if finish == "stop":  # the answer in word-sized pieces, as a model streams it
                deltas = [{"content": piece} for piece in re.findall(r"\S+\s*", message["content"])]
            else:
                deltas = [{"role": "assistant", "tool_calls": [dict(message["tool_calls"][0], index=0)]}]
            chunks = [{"choices": [{"index": 0, "delta": d}]} for d in deltas]
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage})
            for chunk in chunks:
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            return
        out = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def chat_server() -> Iterator[ChatCompletionsServer]:
    server = ChatCompletionsServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_example_runs_against_an_openai_compatible_server(
    chat_server: ChatCompletionsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", chat_server.base_url)
    result = invoke("run", AGENT, "What is 3 ft in cm?")
    assert result.exit_code == 0, result.output
    assert result.stdout == "3 ft is 91.44 cm.\n"
    assert f"model: openai:gpt-4o-mini (tier 'default') at {chat_server.base_url}" in result.stderr
    assert "scripted" not in result.stderr
    assert "✓ convert_units" in result.stderr
    assert "ok · 2 steps · 1 tool call · 104 tokens (80 in, 24 out)" in result.stderr
    first = chat_server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["body"]["model"] == "gpt-4o-mini"
    assert first["body"]["temperature"] == 0  # [model_settings] of the agent file
    assert {t["function"]["name"] for t in first["body"]["tools"]} == {
        "run_status",
        "calculate",
        "convert_units",
    }


def test_streamed_text_is_shown_as_it_comes(
    chat_server: ChatCompletionsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", chat_server.base_url)
    result = invoke("run", AGENT, "What is 3 ft in cm?", "--stream", "--model", "openai:some-local-model")
    assert result.exit_code == 0, result.output
    assert result.stdout == "3 ft is 91.44 cm.\n"
    assert all(request["body"]["stream"] is True for request in chat_server.requests)
    assert chat_server.requests[0]["body"]["model"] == "some-local-model"
    # the streamed text reaches stderr before the step it belongs to is reported
    assert result.stderr.index("3 ft is 91.44 cm.") < result.stderr.index("step 2 answered")


# -- agent files and settings -----------------------------------------------------------------------


def test_agent_file_errors_are_clean_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmodle = "default"\n')
    result = invoke("run", str(bad), "hi")
    assert result.exit_code == 2
    assert "modle: Extra inputs are not permitted" in result.stderr and "Traceback" not in result.output
    missing = invoke("run", str(tmp_path / "nope.toml"), "hi")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "tools_bad.toml").write_text('tools = ["no_such_module_xyz:thing"]\n')
    with pytest.raises(AgentFileError, match="cannot import module 'no_such_module_xyz'"):
        load_agent(str(tmp_path / "tools_bad.toml"))


def test_agent_file_defaults_and_tools() -> None:
    agent = load_agent(AGENT)
    assert agent.name == "assistant" and agent.model == "default" and agent.max_steps == 8
    assert agent.tools[0] == "run_status"
    assert [t.name for t in agent.tool_objects()] == ["calculate", "convert_units"]
    assert agent.model_settings.temperature == 0


def test_bad_settings_exit_2_without_a_traceback() -> None:
    result = invoke("run", AGENT, PROMPT, "-m", REPLAY, "--setting", "max_steps=0")
    assert result.exit_code == 2
    assert "max_steps" in result.stderr and "Traceback" not in result.output
    malformed = invoke("run", AGENT, PROMPT, "--setting", "max_steps")
    assert malformed.exit_code == 2 and "write key=value" in malformed.stderr


def test_settings_from_the_command_line() -> None:
    assert parse_settings(["max_steps=5", "models.fast=openai:gpt-4o-mini", "disable=a,b", "x.y=true"]) == {
        "max_steps": 5,
        "models": {"fast": "openai:gpt-4o-mini"},
        "disable": ["a", "b"],
        "x": {"y": True},
    }
    with pytest.raises(ConfigError, match="both as a value and as a table"):
        parse_settings(["a=1", "a.b=2"])


# -- plugins ----------------------------------------------------------------------------------------


def test_plugins_lists_the_builtins() -> None:
    result = invoke("plugins")
    assert result.exit_code == 0
    for name in ("models", "tools", "delivery", "palette"):
        assert name in result.stdout
    assert "executus-core" in result.stdout and "enabled" in result.stdout
    data = json.loads(invoke("plugins", "--json").stdout)
    rows = {row["name"]: row for row in data["plugins"]}
    assert {"models", "tools", "delivery", "palette"} <= set(rows)
    assert all(rows[n]["status"] == "enabled" for n in ("models", "tools", "delivery", "palette"))
    assert rows["models"]["provides"] == ["scripted:"] or "scripted:" in rows["models"]["provides"]
    assert "run_status" in rows["tools"]["provides"]
    assert rows["delivery"]["ports"] == ["delivery"] and rows["palette"]["ports"] == ["palette"]


class CommandPlugin:
    executus_name = "greeter"

    @hookimpl
    def executus_register_commands(self, cli: typer.Typer) -> None:
        @cli.command("hello")
        def hello(name: str = "world") -> None:
            """Say hello (added by a plugin)."""
            typer.echo(f"hello {name}")


class BrokenCommandPlugin:
    executus_name = "broken_commands"

    @hookimpl
    def executus_register_commands(self, cli: typer.Typer) -> None:
        raise RuntimeError("cannot build my commands")


class BadPortPlugin:
    executus_name = "bad_port"

    @hookimpl
    def executus_budget(self, settings: object) -> object:
        return "not a budget"


def test_plugins_add_commands_and_a_broken_one_never_takes_the_cli_down() -> None:
    app = create_app(entry_points=False, plugins=[CommandPlugin(), BrokenCommandPlugin(), BadPortPlugin()])
    assert invoke("hello", "--name", "executus", app=app).stdout == "hello executus\n"
    listing = json.loads(invoke("plugins", "--json", app=app).stdout)
    rows = {row["name"]: row for row in listing["plugins"]}
    assert rows["greeter"]["status"] == "enabled" and rows["greeter"]["ports"] == ["commands"]
    assert rows["broken_commands"]["status"] == "broken"
    assert (
        "executus_register_commands: RuntimeError: cannot build my commands"
        in rows["broken_commands"]["error"]
    )
    assert rows["bad_port"]["status"] == "broken" and "not a Budget" in rows["bad_port"]["error"]
    # `run` refuses, naming the plugin whose hook fails at Executor() time
    run = invoke("run", AGENT, PROMPT, "-m", REPLAY, app=app)
    assert run.exit_code == 2 and "'bad_port'" in run.stderr and "Traceback" not in run.output


@pytest.fixture
def broken_distribution(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Make a folder holding an installed-looking distribution whose entry point cannot be imported."""

    def make(dist: str) -> Path:
        site = tmp_path / "site"
        info = site / f"{dist.replace('-', '_')}-0.3.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
        (info / "entry_points.txt").write_text("[executus]\nflaky = flaky_battery_plugin\n")
        (site / "flaky_battery_plugin.py").write_text("import a_dependency_that_is_not_installed\n")
        return site

    yield make
    sys.modules.pop("flaky_battery_plugin", None)


def test_a_broken_installed_plugin_is_listed_and_run_refuses_naming_it(
    broken_distribution: Callable[[str], Path], tmp_path: Path
) -> None:
    if not EXECUTUS.exists():
        pytest.skip(f"no executus script beside {sys.executable}: install the project (scripts/bootstrap)")
    site = broken_distribution("executus-flaky")
    env = subprocess_env(PYTHONPATH=str(site), EXECUTUS_DATA_DIR=str(tmp_path / "data"))

    def executus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(EXECUTUS), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    listing = executus("plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)["plugins"]}
    flaky = rows["flaky"]
    assert (flaky["status"], flaky["distribution"], flaky["version"]) == ("broken", "executus-flaky", "0.3.0")
    assert "No module named 'a_dependency_that_is_not_installed'" in flaky["error"]
    assert rows["models"]["status"] == "enabled"

    table = executus("plugins")
    assert table.returncode == 0 and "flaky" in table.stdout and "broken" in table.stdout

    run = executus("run", "examples/assistant.toml", PROMPT, "-m", "scripted:examples/assistant.replay.json")
    assert run.returncode == 2
    assert "flaky (distribution executus-flaky)" in run.stderr
    assert "a_dependency_that_is_not_installed" in run.stderr and "EXECUTUS_DISABLE" in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""

    # disabling it is the way out that the message names
    disabled = executus(
        "run",
        "examples/assistant.toml",
        PROMPT,
        "-m",
        "scripted:examples/assistant.replay.json",
        "--setting",
        "disable=flaky",
    )
    assert disabled.returncode == 0, disabled.stderr


# -- the example's tools ---------------------------------------------------------------------------


async def test_the_example_calculator_is_safe() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from tools import calculate, convert_units  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert await calculate({"expression": "0.1 + 0.2"}) == 0.3
    assert await calculate({"expression": "2 ** 10 - sqrt(16)"}) == 1020
    for expression, problem in [
        ("__import__('os').system('true')", "is not allowed"),
        ("9 ** 9 ** 9", "too large"),
        ("1 / 0", "divides by zero"),
        ("(1).__class__", "is not allowed"),
        ("2 +", "is not an arithmetic expression"),
    ]:
        with pytest.raises(ValueError, match=problem):
            await calculate({"expression": expression})
    assert (await convert_units({"value": 212, "from_unit": "F", "to_unit": "celsius"}))["result"] == 100
    with pytest.raises(ValueError, match="cannot convert length"):
        await convert_units({"value": 1, "from_unit": "km", "to_unit": "kg"})


class HijackingPlugin:
    executus_name = "hijacker"

    @hookimpl
    def executus_register_commands(self, cli: typer.Typer) -> None:
        @cli.command("run")
        def run() -> None:
            """Pretend to be the core's run."""
            typer.echo("hijacked")


class UnbuildableCommandPlugin:
    executus_name = "unbuildable"

    @hookimpl
    def executus_register_commands(self, cli: typer.Typer) -> None:
        @cli.command("odd")
        def odd(value: int | str) -> None:  # typer cannot make a parameter of a union
            """A command typer cannot build."""


def test_commands_that_clash_or_do_not_build_are_removed_and_their_plugin_marked_broken() -> None:
    app = create_app(
        entry_points=False, plugins=[HijackingPlugin(), UnbuildableCommandPlugin(), CommandPlugin()]
    )
    run = invoke("run", AGENT, PROMPT, "-m", REPLAY, app=app)
    assert run.exit_code == 0 and "hijacked" not in run.stdout and "6.21 miles" in run.stdout
    assert invoke("hello", app=app).stdout == "hello world\n"
    rows = {row["name"]: row for row in json.loads(invoke("plugins", "--json", app=app).stdout)["plugins"]}
    assert (
        rows["hijacker"]["status"] == "broken"
        and "adds command run, which exists already" in rows["hijacker"]["error"]
    )
    assert rows["unbuildable"]["status"] == "broken" and rows["unbuildable"]["error"].startswith(
        "executus_register_commands: AssertionError: Typer currently doesn't support Union types"
    )
    assert rows["greeter"]["status"] == "enabled"


def test_version_and_help() -> None:
    from executus_core import __version__

    assert invoke("--version").stdout == f"executus-core {__version__}\n"
    help_text = invoke("--help").stdout
    assert "run" in help_text and "plugins" in help_text


def test_the_run_header_names_the_batteries_taking_part() -> None:
    from executus_core import Executor, hookimpl
    from executus_core.cli import describe_batteries

    class Budget:
        executus_name = "my_budget"

        @hookimpl
        def executus_budget(self, settings: object) -> object:
            return self

        async def check(self, caller_id: str) -> None:
            return None

        async def commit(self, caller_id: str, runtime_seconds: float, usage: object) -> None:
            return None

    assert describe_batteries(Executor(entry_points=False)) == ""
    assert (
        describe_batteries(Executor(entry_points=False, plugins=[Budget()]))
        == "batteries: my_budget (budget)"
    )
