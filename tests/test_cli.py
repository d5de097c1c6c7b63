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
    assert result.exit_code == 2  # it cannot start: a usage error, like any other (docs/cli.md)
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
        if not body.get("tools"):
            message = {"role": "assistant", "content": "Hello! (no tools here)"}
            finish = "stop"
        elif not results:
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


# -- issue 19: the command line as a package, and what a new user meets -----------------------------


def test_batteries_import_only_the_public_helper_module() -> None:
    import ast

    for path in sorted((ROOT / "batteries").glob("*/executus_*/**/*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("executus_core.cli"):
                assert node.module == "executus_core.cli.helpers", f"{path}: from {node.module} import ..."
    from executus_core.cli import helpers

    for name in ("parse_settings", "db_upgraders", "load_agent", "fail", "print_table", "short_id"):
        assert name in helpers.__all__ and callable(getattr(helpers, name))


def _all_help_pages(app: typer.Typer) -> Iterator[tuple[str, str]]:
    root = typer.main.get_command(app)

    def walk(command: Any, path: list[str]) -> Iterator[list[str]]:
        yield path
        if isinstance(getattr(command, "commands", None), dict):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    for path in walk(root, []):
        result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        yield " ".join(path) or "executus", result.output


def test_help_text_shows_no_python_types() -> None:
    pages = dict(_all_help_pages(create_app()))  # the installed batteries' commands too
    assert {"run", "models", "plugins"} <= set(pages)
    for name, text in pages.items():
        for python in ("<bool>", "<list[", "<str>", "<int>", "<float>", "{"):
            assert python not in text, f"executus {name} --help shows {python!r}:\n{text}"
    assert "Usage: executus run [OPTIONS] [AGENT] PROMPT" in pages["run"]
    assert "--limit" in pages.get("runs list", "--limit INTEGER") and "INTEGER" in pages.get(
        "runs list", "INTEGER"
    )


def test_run_with_only_a_model_and_a_system_message(
    chat_server: ChatCompletionsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", chat_server.base_url)
    result = invoke(
        "run", "--model", "openai:gpt-4o-mini", "--system", "Be brief.", "-o", "temperature=0.5", "Hello?"
    )
    assert result.exit_code == 0, result.output
    body = chat_server.requests[0]["body"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][-1] == {"role": "user", "content": "Hello?"}
    assert body["temperature"] == 0.5 and "tools" not in body
    assert "executus · caller" in result.stderr


def test_model_settings_from_the_command_line_reach_the_request(
    chat_server: ChatCompletionsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", chat_server.base_url)
    result = invoke("run", AGENT, "What is 3 ft in cm?", "-o", "max_tokens=77", "-o", "temperature=0.25")
    assert result.exit_code == 0, result.output
    body = chat_server.requests[0]["body"]
    assert body["temperature"] == 0.25  # the agent file says 0: the command line wins
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 77
    bad = invoke("run", AGENT, "hi", "-o", "temperature")
    assert bad.exit_code == 2 and "write key=value" in bad.stderr


def test_the_prompt_can_come_from_stdin_and_an_empty_prompt_is_refused() -> None:
    result = CliRunner().invoke(
        create_app(entry_points=False),
        ["run", AGENT, "-", "--model", REPLAY, "--dry-run"],
        input="What is 3 ft in cm?\n",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["messages"][-1]["content"] == "What is 3 ft in cm?\n"
    for empty in ("", "   "):
        refused = invoke("run", AGENT, empty, "--model", REPLAY)
        assert refused.exit_code == 2 and "the prompt is empty" in refused.stderr
    piped_empty = CliRunner().invoke(
        create_app(entry_points=False), ["run", AGENT, "-", "-m", REPLAY], input=""
    )
    assert piped_empty.exit_code == 2 and "the prompt is empty" in piped_empty.stderr
    too_many = invoke("run", AGENT, "two", "words", "-m", REPLAY)
    assert too_many.exit_code == 2 and "quote the prompt" in too_many.stderr


def test_models_lists_providers_endpoints_and_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    result = invoke(
        "models",
        "--json",
        "-s",
        "models.fast=default",
        "-s",
        "models.broken=nowhere",
        "-s",
        "providers.endpoints.local.base_url=http://127.0.0.1:8080/v1",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    providers = {p["prefix"]: p for p in data["providers"]}
    assert {"openai:", "anthropic:", "scripted:"} <= set(providers)
    assert providers["openai:"]["endpoint"] == "http://127.0.0.1:9/v1"
    assert providers["openai:"]["environment"] == {"OPENAI_API_KEY": False, "OPENAI_BASE_URL": True}
    assert data["endpoints"] == [{"name": "local", "api": "openai", "base_url": "http://127.0.0.1:8080/v1"}]
    tiers = {t["tier"]: t for t in data["tiers"]}
    assert tiers["default"]["model"] == "openai:gpt-4o-mini"
    assert tiers["fast"]["chain"] == ["fast", "default", "openai:gpt-4o-mini"]
    assert tiers["broken"]["model"] is None and "unknown model or tier 'nowhere'" in tiers["broken"]["error"]
    human = invoke("models", "-s", "models.fast=default")
    assert "tiers ([tool.executus.models])" in human.stdout and "default → openai:gpt-4o-mini" in human.stdout


def test_exit_codes_agree_every_problem_before_the_run_is_2(tmp_path: Path) -> None:
    unknown_registered = tmp_path / "unknown.toml"
    unknown_registered.write_text('tools = ["no_such_registered_tool"]\n')
    result = invoke("run", str(unknown_registered), "hi", "-m", REPLAY)
    assert result.exit_code == 2 and "unknown tool 'no_such_registered_tool'" in result.stderr
    unknown_module = tmp_path / "module.toml"
    unknown_module.write_text('tools = ["no_such_module_xyz:thing"]\n')
    assert invoke("run", str(unknown_module), "hi", "-m", REPLAY).exit_code == 2
    bad_model = invoke("run", AGENT, "hi", "--model", "nosuchprovider:x")
    assert bad_model.exit_code == 2 and "no provider for 'nosuchprovider:x'" in bad_model.stderr
    tier = invoke("run", AGENT, "hi", "--model", "fast")
    assert tier.exit_code == 2
    hint = " ".join(tier.stderr.split())
    assert "unknown model or tier 'fast'" in hint
    assert '[tool.executus.models] fast = "openai:gpt-4o-mini"' in hint and "-s models.fast=" in hint
    assert invoke("run", AGENT, "hi", "-m", REPLAY, "--no-such-option").exit_code == 2
    assert "Traceback" not in tier.output


def test_load_agent_records_where_the_agent_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_agent(AGENT).source == str(Path(AGENT).resolve())
    (tmp_path / "cli_source_agents.py").write_text(
        "from executus_core import Agent\nhelper = Agent(name='helper', model='scripted:x.json')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_agent("cli_source_agents:helper")
    assert loaded.source == "cli_source_agents:helper"
    import cli_source_agents  # type: ignore[import-not-found]

    assert cli_source_agents.helper.source is None  # the module's own object is left alone
    sys.modules.pop("cli_source_agents", None)


def test_a_scripted_replay_says_the_prompt_was_not_used() -> None:
    result = invoke("run", AGENT, "What is the capital of France?", "--model", REPLAY)
    assert result.exit_code == 0
    note = " ".join(result.stderr.split())
    assert "your prompt was not sent to any model" in note


def event(type: str, data: dict[str, Any]) -> Any:
    from executus_core import RunEvent
    from executus_core.types import utcnow

    return RunEvent("r", type, data, utcnow())


def test_streamed_answer_is_not_printed_twice_on_a_terminal() -> None:
    import io

    from rich.console import Console

    from executus_core import Result, RunStats, RunStatus
    from executus_core.cli.progress import Progress
    from executus_core.cli.run import _report

    screen = io.StringIO()
    err = Console(file=screen, force_terminal=True, width=100)
    out = Console(file=screen, force_terminal=True, width=100)
    progress = Progress(err)
    for piece in ("3 ft ", "is 91.44 cm."):
        progress(event("model.delta", {"text": piece}))
    progress(event("step", {"iteration": 1}))
    progress.close()
    result = Result(
        run_id="r", status=RunStatus.OK, output="3 ft is 91.44 cm.", stats=RunStats(status=RunStatus.OK)
    )
    assert _report(result, as_json=False, err=err, out=out, progress=progress) == 0
    assert screen.getvalue().count("91.44") == 1
    # piped, the answer still goes to stdout once
    piped = io.StringIO()
    _report(result, as_json=False, err=err, out=Console(file=piped), progress=progress)
    assert piped.getvalue() == "3 ft is 91.44 cm.\n"


def test_ctrl_c_says_so_and_the_deadline_never_reads_minus_zero() -> None:
    import io
    import logging

    from rich.console import Console

    from executus_core import Result, RunStats, RunStatus
    from executus_core.cli.progress import Progress
    from executus_core.cli.run import _report

    err_file = io.StringIO()
    err = Console(file=err_file, width=200)
    cancelled = Result(
        run_id="r",
        status=RunStatus.CANCELLED,
        error="cancelled by Executor.cancel()",
        stats=RunStats(status=RunStatus.CANCELLED),
    )
    assert _report(cancelled, as_json=False, err=err, out=Console(file=io.StringIO()), interrupted=True) == 1
    assert "cancelled: you pressed Ctrl-C" in err_file.getvalue()
    assert "Executor.cancel()" not in err_file.getvalue()

    shown = io.StringIO()
    progress = Progress(Console(file=shown, width=200))
    progress(event("critic", {"deadline_in_seconds": -0.2, "reason": "progress"}))
    progress(event("critic", {"deadline_in_seconds": 29.6}))
    assert "-0" not in shown.getvalue() and "moved the deadline: now" in shown.getvalue()
    assert "30 s left" in shown.getvalue()

    # a battery's log line is a progress line of its own, not written into a streamed answer
    progress(event("model.delta", {"text": "half an answ"}))
    logger = logging.getLogger("executus.critic")
    handler = progress.log_handler()
    logger.addHandler(handler)
    try:
        logger.warning("critic: run r: cut: hung for 30 s")
    finally:
        logger.removeHandler(handler)
    lines = shown.getvalue().splitlines()
    assert "half an answ" in lines and "  warning: critic: run r: cut: hung for 30 s" in lines


def test_the_run_header_says_which_batteries_take_part_on_what_and_which_are_left_out() -> None:
    from executus_core import Executor, hookimpl
    from executus_core.cli import describe_batteries

    class Budget:
        executus_name = "my_budget"
        description = "embedded sqlite (/tmp/x/budget.db)"

        @hookimpl
        def executus_budget(self, settings: object) -> object:
            return self

        async def check(self, caller_id: str) -> None:
            return None

        async def commit(self, caller_id: str, runtime_seconds: float, usage: object) -> None:
            return None

    class Unconfigured:
        executus_name = "my_checkpoints"

        @hookimpl
        def executus_checkpointer(self, settings: object) -> object:
            return None

    class Off:
        executus_name = "my_off"

        @hookimpl
        def executus_budget(self, settings: object) -> object:
            return None

    executor = Executor(entry_points=False, plugins=[Budget(), Unconfigured(), Off()], disable=["my_off"])
    lines = describe_batteries(executor).splitlines()
    assert lines[0] == "batteries: my_budget (budget on embedded sqlite (/tmp/x/budget.db))"
    assert lines[1].startswith("left out: ")
    assert "my_checkpoints (checkpoint: not configured, its hook returned nothing)" in lines[1]
    assert "my_off (disabled" in lines[1]


def test_plugins_with_a_broken_plugin_does_not_blame_a_setting_the_user_never_set(
    broken_distribution: Callable[[str], Path], tmp_path: Path
) -> None:
    site = broken_distribution("executus-flaky")
    env = subprocess_env(PYTHONPATH=str(site), EXECUTUS_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run(
        [sys.executable, "-m", "executus_core.cli", "plugins"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "flaky" in proc.stdout and "broken" in proc.stdout
    assert "skip_broken_plugins" not in proc.stdout + proc.stderr


def test_tables_are_not_cut_when_piped() -> None:
    import io

    from rich.console import Console
    from rich.table import Table

    from executus_core.cli.helpers import print_table

    table = Table()
    for column in ("run id", "agent", "caller", "status", "steps", "tools", "tokens", "started", "duration"):
        table.add_column(column, no_wrap=True)
    table.add_row(
        "0123456789ab",
        "a-rather-long-agent-name",
        "caller-with-a-long-id@example.com",
        "budget_exceeded",
        "12",
        "34",
        "123,456",
        "11-30 04:50",
        "1 m 02 s",
    )
    piped = io.StringIO()
    print_table(table, title="runs in [a database]", console=Console(file=piped, width=80))
    text = piped.getvalue()
    assert "caller-with-a-long-id@example.com" in text and "…" not in text
    assert text.splitlines()[0] == "runs in [a database]"


def test_plugins_say_where_each_port_keeps_its_data() -> None:
    """Issue 18: `executus plugins` says which store a budget (or any port) uses, as the run header does."""
    from executus_core import Usage, hookimpl
    from executus_core.cli.plugins import inspect_plugins

    class Described:
        executus_name = "described_budget"

        @hookimpl
        def executus_budget(self, settings: object) -> object:
            return self

        def describe(self) -> str:
            return "SQLite at /tmp/x.sqlite3 (embedded: this machine only)"

        async def check(self, caller_id: str) -> None:
            return None

        async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage) -> None:
            return None

    report = inspect_plugins(entry_points=False, plugins=[Described()])
    row = next(r for r in report.plugins if r["name"] == "described_budget")
    assert row["uses"] == ["SQLite at /tmp/x.sqlite3 (embedded: this machine only)"]
