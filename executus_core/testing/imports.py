"""What a piece of code imports, seen from a fresh interpreter: for tests that keep a battery's
heavy dependencies (Alembic, an SDK, an exporter) off the path of every command and `Executor()`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["imported_after"]


def imported_after(code: str, watched: list[str], data_dir: str | Path) -> list[str]:
    """Run ``code`` in a fresh interpreter and return which of the ``watched`` modules it imported.

    A fresh interpreter, so nothing an earlier test imported can hide an import. ``EXECUTUS_*``
    variables are left out, the data dir is ``data_dir`` (also the working directory).
    """
    probe = (
        "import json, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"{code}\n"
        f"print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTUS_")}
    env["EXECUTUS_DATA_DIR"] = str(data_dir)
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=data_dir,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found
