"""Loading the plugin (what every `executus` command and `Executor()` do) imports the OTLP exporter only on first use.

Issue 17, found case 3: every cold command paid for the batteries' heavy dependencies. Each check
runs in a fresh interpreter, so what an earlier test imported cannot hide an import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _imported_after(code: str, watched: list[str], tmp_path) -> list[str]:
    probe = (
        "import json, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"{code}\n"
        f"print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTUS_")}
    env["EXECUTUS_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_loading_the_plugin_imports_no_otlp_exporter(tmp_path) -> None:
    found = _imported_after(
        "import executus_otel.plugin", ["opentelemetry.exporter.otlp.proto.http.trace_exporter"], tmp_path
    )
    assert found == []


def test_the_package_still_offers_its_names(tmp_path) -> None:
    code = "import executus_otel as o; assert all(getattr(o, n) is not None for n in o.__all__)"
    assert _imported_after(code, [], tmp_path) == []
