"""Entry-point discovery from real wheels installed into a fresh virtualenv.

Builds wheels of executus-core and of a demo battery (tests/fixtures/demo_battery), installs both
into a new venv with pip, and checks that a plain `Executor()` there picks the battery up: no import,
no registration, just `pip install`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pip(python: Path | str, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheels")
    wheels = work / "wheels"
    pip(
        sys.executable,
        "wheel",
        "--no-deps",
        "-w",
        str(wheels),
        str(ROOT),
        str(ROOT / "tests/fixtures/demo_battery"),
    )
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    pip(python, "install", *map(str, sorted(wheels.glob("*.whl"))))
    return env_dir


def test_installed_battery_is_discovered_and_used(venv: Path, tmp_path: Path) -> None:
    trail = tmp_path / "trail.jsonl"
    script = textwrap.dedent(
        """
        import json, sys
        from executus_core import Agent, Executor, ModelResponse, ToolCall, tool
        from executus_core.testing import ScriptedModel

        @tool
        def add(a: int, b: int) -> int:
            "Add."
            return a + b

        model = ScriptedModel([ModelResponse(tool_calls=[ToolCall(id="1", name="add", arguments={"a": 1, "b": 2})]),
                               ModelResponse(text="3")])
        with Executor(settings={"demo_audit": {"path": sys.argv[1]}}) as ex:
            result = ex.run_sync(Agent(name="a", model=model, tools=[add]), "1+2?", caller_id="u")
            records = {r.name: [r.status, r.distribution, r.ports] for r in ex.plugins}
        print(json.dumps({"status": result.status.value, "plugins": records, "audits": [n for n, _ in ex.ports.audits]}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTUS_")}
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script, str(trail)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    report = json.loads(out.stdout)
    assert report["status"] == "ok"
    assert report["plugins"]["demo_audit"] == ["enabled", "executus-demo-battery", ["audit"]]
    assert report["audits"] == ["demo_audit"]
    assert json.loads(trail.read_text()) == {
        "run_id": json.loads(trail.read_text())["run_id"],
        "status": "ok",
        "steps": 2,
        "tools": 1,
    }
