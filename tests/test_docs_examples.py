"""Every code block in README.md and docs/ is executed, so what a reader copies works.

How each fenced block is checked, by its language:

- ``python`` in README.md and docs/index.md: each block is a whole program, run as a script of its
  own (``python block.py``) in a fresh directory, exactly as a reader pastes it into a file.
- ``python`` in the guide pages: the blocks of one page run in order in one interpreter and one
  namespace, as a reader follows the page (a block may use what an earlier one defined), each in a
  fresh directory's process per page. A block may ``await`` at top level, as in ``python -m
  asyncio``: the guides show code that lives inside a host's async functions. A block whose first
  line is ``# path/to/file.py`` is that file: it is written there (later blocks import it), and a
  ``test_*.py`` file is run with pytest once the page's blocks have run.
- Models are served by a loopback server that speaks both the OpenAI Chat Completions and the
  Anthropic Messages API (``OPENAI_BASE_URL`` and ``ANTHROPIC_BASE_URL`` point at it): asked with
  tools, it calls the first tool with arguments made from its schema, then answers with the tool's
  result, so a block's tools really run.
- ``bash``: run with ``bash -euo pipefail`` from the repository's root, ``.venv/bin`` first on
  ``PATH``, the same loopback server as the model, and a fresh ``HOME`` and data directory.
- The services a page uses are the reader's own: ``REDIS_URL`` and ``DATABASE_URL`` point at the
  test Redis and PostgreSQL (``EXECUTUS_TEST_*``), which CI has.
- ``toml``: parsed; an agent file is validated as one (`AgentFile`), a ``[tool.executus]`` table
  is loaded as settings (every battery's section checked by its own model).
- ``json``: parsed.
- ``text``, ``console`` and blocks with no language are output shown to the reader, not code.

A block that cannot run here says so where the reader sees it, on the line right before it::

    <!-- not-run: needs a real OpenAI key -->

The reason is required; a marker on a block that could run is a bug to fix, not a convention.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)[^\n]*$")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->")
OUTPUT_LANGUAGES = {"", "text", "console", "output"}
RUN_LANGUAGES = {"python", "bash", "toml", "json"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown page, with the line each starts on."""
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        indent, fence, lang = match["indent"], match["fence"], match["lang"].lower()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            index += 1
        index += 1
        previous = lines[start - 1].strip() if start else ""
        marker = NOT_RUN.search(previous)
        yield Block(page, start + 1, lang, "\n".join(body) + "\n", marker["reason"] if marker else None)


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def runnable(lang: str) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.lang == lang]


WHOLE_PROGRAM_PAGES = {ROOT / "README.md", ROOT / "docs" / "index.md"}
"""Pages whose Python blocks are complete programs a reader copies as they are."""

GUIDE_PAGES = sorted({b.page for b in ALL_BLOCKS if b.lang == "python" and b.page not in WHOLE_PROGRAM_PAGES})

# Runs a page's blocks in order in one namespace; says which block failed, with its traceback.
SESSION = r"""
import ast, asyncio, inspect, json, pathlib, re, subprocess, sys, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
loop = asyncio.new_event_loop()
tests = []
for block in blocks:
    # A block that opens with "# path/to/file.py" is that file: it is written where later blocks
    # can import it, and a test file is run with pytest once the page is done.
    named = re.match(r"#\s*([\w./-]+\.py)\s*$", block["code"].partition("\n")[0])
    if named:
        path = pathlib.Path(named.group(1))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block["code"])
        if path.name.startswith("test_"):
            tests.append(str(path))
            continue
    try:
        code = compile(block["code"], block["id"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        value = eval(code, namespace)
        if inspect.iscoroutine(value):
            loop.run_until_complete(value)
    except BaseException:
        print("--- " + block["id"] + " failed:", block["code"], sep="\n", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
loop.close()
if tests:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto", *tests]
    sys.exit(subprocess.run(command).returncode)
"""


# -- the loopback model ----------------------------------------------------------------------------


def _example(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    return {"integer": 2, "number": 2.5, "boolean": True, "array": [], "object": {}}.get(str(kind), "example")


def _arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    properties = parameters.get("properties") or {}
    return {name: _example(schema) for name, schema in properties.items()}


class DocsModel(ThreadingHTTPServer):
    """Answers any OpenAI or Anthropic request: first a call of the first tool, then a text answer."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _DocsModelHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _DocsModelHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        reply = self._anthropic(body) if self.path.endswith("/messages") else self._openai(body)
        if body.get("stream"):
            self._stream(reply, anthropic=self.path.endswith("/messages"))
            return
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _openai(self, body: dict[str, Any]) -> dict[str, Any]:
        tools = body.get("tools") or []
        results = [m.get("content") for m in body.get("messages", []) if m.get("role") == "tool"]
        usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
        if tools and not results:
            function = tools[0]["function"]
            call = {
                "id": "call_docs_1",
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": json.dumps(_arguments(function.get("parameters") or {})),
                },
            }
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        else:
            text = f"The tool said {results[-1]}." if results else "Hello from the docs model."
            message, finish = {"role": "assistant", "content": text}, "stop"
        return {
            "id": "chatcmpl-docs",
            "object": "chat.completion",
            "model": body.get("model", "docs"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }

    def _anthropic(self, body: dict[str, Any]) -> dict[str, Any]:
        tools = body.get("tools") or []
        results = [
            part.get("content")
            for m in body.get("messages", [])
            if isinstance(m.get("content"), list)
            for part in m["content"]
            if part.get("type") == "tool_result"
        ]
        if tools and not results:
            content = [
                {
                    "type": "tool_use",
                    "id": "toolu_docs_1",
                    "name": tools[0]["name"],
                    "input": _arguments(tools[0].get("input_schema") or {}),
                }
            ]
            stop = "tool_use"
        else:
            text = f"The tool said {results[-1]}." if results else "Hello from the docs model."
            content, stop = [{"type": "text", "text": text}], "end_turn"
        return {
            "id": "msg_docs",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "docs"),
            "content": content,
            "stop_reason": stop,
            "usage": {"input_tokens": 20, "output_tokens": 5},
        }

    def _stream(self, reply: dict[str, Any], *, anthropic: bool) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        events: list[tuple[str | None, dict[str, Any]]] = []
        if anthropic:
            start = dict(reply, content=[])
            events.append(("message_start", {"type": "message_start", "message": start}))
            for index, part in enumerate(reply["content"]):
                if part["type"] == "text":
                    block = {"type": "text", "text": ""}
                    delta = {"type": "text_delta", "text": part["text"]}
                else:
                    block = {"type": "tool_use", "id": part["id"], "name": part["name"], "input": {}}
                    delta = {"type": "input_json_delta", "partial_json": json.dumps(part["input"])}
                events.append(
                    (
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": block},
                    )
                )
                events.append(
                    ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                )
                events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
            events.append(
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": reply["stop_reason"]},
                        "usage": {"output_tokens": 5},
                    },
                )
            )
            events.append(("message_stop", {"type": "message_stop"}))
        else:
            choice = reply["choices"][0]
            message = choice["message"]
            delta: dict[str, Any] = {"role": "assistant"}
            if message.get("content"):
                delta["content"] = message["content"]
            if message.get("tool_calls"):
                delta["tool_calls"] = [dict(call, index=i) for i, call in enumerate(message["tool_calls"])]
            events.append((None, {"choices": [{"index": 0, "delta": delta}]}))
            events.append(
                (
                    None,
                    {
                        "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}],
                        "usage": reply["usage"],
                    },
                )
            )
        for name, data in events:
            if name:
                self.wfile.write(f"event: {name}\n".encode())
            self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
        if not anthropic:
            self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def docs_model() -> Iterator[DocsModel]:
    server = DocsModel()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def reader_env(tmp_path: Path, model: DocsModel) -> dict[str, str]:
    """A reader's shell: no keys or settings of ours, a fresh home, the loopback model."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("EXECUTUS_") and not k.startswith("EXECUTUS_TEST_"))
        and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")
    }
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        EXECUTUS_DATA_DIR=str(tmp_path / "data"),
        OPENAI_BASE_URL=model.url + "/v1",
        ANTHROPIC_BASE_URL=model.url,
        ANTHROPIC_API_KEY="docs-test-key",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT / "examples"),
        NO_COLOR="1",
        # the services the pages use, as a reader's own (CI has them; tests elsewhere skip without)
        REDIS_URL=os.environ.get("EXECUTUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        DATABASE_URL=_fresh_database(),
    )
    return env


_DATABASE: list[str] = []


def _fresh_database() -> str:
    """A PostgreSQL database of this test run's own (created once, dropped at exit), so what a page
    creates never meets what another branch's migrations left in the shared ``test`` database."""
    base = os.environ.get("EXECUTUS_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
    if _DATABASE:
        return _DATABASE[0]
    try:
        import psycopg

        name = f"executus_docs_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception:
        return base  # no server: the page's own skip/fail rules apply, as for any reader
    url = base.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with (
            contextlib.suppress(Exception),
            psycopg.connect(base, autocommit=True, connect_timeout=5) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    _DATABASE.append(url)
    return url


def _skip_if_marked(block: Block) -> None:
    if block.not_run is not None:
        pytest.skip(f"not-run: {block.not_run}")


# -- the checks -----------------------------------------------------------------------------------


def test_every_code_block_has_a_known_language_or_a_marker() -> None:
    unknown = [
        b.id for b in ALL_BLOCKS if b.lang not in RUN_LANGUAGES | OUTPUT_LANGUAGES and b.not_run is None
    ]
    assert not unknown, f"code blocks in a language this test cannot check: {unknown}"
    markers = [b for b in ALL_BLOCKS if b.not_run is not None]
    assert all(b.lang in RUN_LANGUAGES for b in markers), "a not-run marker on an output block"
    assert len([b for b in ALL_BLOCKS if b.lang == "python"]) >= 20  # the parser found the blocks


@pytest.mark.parametrize(
    "block", [b for b in runnable("python") if b.page in WHOLE_PROGRAM_PAGES], ids=lambda b: b.id
)
def test_whole_program_runs_as_copied(block: Block, tmp_path: Path, docs_model: DocsModel) -> None:
    _skip_if_marked(block)
    script = tmp_path / "block.py"
    script.write_text(block.code)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=reader_env(tmp_path, docs_model),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"{block.id} failed:\n{block.code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_guide_page_python_runs_in_order(page: Path, tmp_path: Path, docs_model: DocsModel) -> None:
    run = [
        {"id": b.id, "code": b.code}
        for b in ALL_BLOCKS
        if b.page == page and b.lang == "python" and b.not_run is None
    ]
    if not run:
        pytest.skip("every Python block of this page is marked not-run")
    listing = tmp_path / "blocks.json"
    listing.write_text(json.dumps(run))
    proc = subprocess.run(
        [sys.executable, "-c", SESSION, str(listing)],
        cwd=tmp_path,
        env=reader_env(tmp_path, docs_model),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.mark.parametrize("block", runnable("bash"), ids=lambda b: b.id)
def test_bash_block_runs(block: Block, tmp_path: Path, docs_model: DocsModel) -> None:
    _skip_if_marked(block)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=ROOT,
        env=reader_env(tmp_path, docs_model),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"{block.id} failed:\n{block.code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )


@pytest.mark.parametrize("block", runnable("toml"), ids=lambda b: b.id)
def test_toml_block_is_valid(block: Block) -> None:
    _skip_if_marked(block)
    data = tomllib.loads(block.code)
    tool = data.get("tool", {}).get("executus")
    if tool is not None:
        _check_settings(block, tool)
    elif "project" in data:  # a package's pyproject.toml
        assert data["project"].get("name") and data["project"].get("version"), block.id
    else:
        from executus_core.cli.helpers import AgentFile

        AgentFile.model_validate(data)  # anything else shown in TOML here is an agent file


def _check_settings(block: Block, table: dict[str, Any]) -> None:
    from executus_core import Executor

    # Building an executor validates [tool.executus] and lets every installed battery check its
    # section; blocks that configure servers are checked for shape, not connected to.
    executor = Executor(settings=table)
    executor.close()


@pytest.mark.parametrize("block", runnable("json"), ids=lambda b: b.id)
def test_json_block_is_valid(block: Block) -> None:
    _skip_if_marked(block)
    json.loads(block.code)


def test_wide_code_blocks_and_tables_scroll() -> None:
    """The site's extra CSS keeps wide terminal output and tables inside the page, scrolling."""
    config = (ROOT / "mkdocs.yml").read_text()
    listed = re.search(r"^extra_css:\n((?:\s+- .+\n)+)", config, re.M)
    assert listed is not None, "mkdocs.yml lists no extra_css"
    sheets = [line.split("- ", 1)[1].split("#")[0].strip() for line in listed.group(1).splitlines()]
    css = "".join((ROOT / "docs" / sheet).read_text() for sheet in sheets)
    compact = re.sub(r"\s+", " ", css)
    assert re.search(r"\.md-typeset pre > code \{[^}]*overflow-x: auto", compact), compact
    assert re.search(r"\.md-typeset__table \{[^}]*overflow-x: auto", compact), compact
