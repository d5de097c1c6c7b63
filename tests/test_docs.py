"""The documentation site builds with `mkdocs build --strict`: no broken link, nav entry or docstring."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Pages in the nav that other work streams write (providers, benchmarks). Until one exists, the build
# runs on a copy of docs/ holding a one-line stand-in for it, so everything else is still checked
# strictly; a warning in the test summary says which page is missing.
PAGES_WRITTEN_ELSEWHERE = {
    "providers.md": "Models and providers",
    "performance.md": "Performance",
}


def _config(tmp_path: Path) -> Path:
    missing = [page for page in PAGES_WRITTEN_ELSEWHERE if not (ROOT / "docs" / page).is_file()]
    if not missing:
        return ROOT / "mkdocs.yml"
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    for page in missing:
        warnings.warn(f"docs/{page} does not exist yet: built with a stand-in", stacklevel=2)
        (docs / page).write_text(f"# {PAGES_WRITTEN_ELSEWHERE[page]}\n\nThis page is being written.\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {docs}\n")
    return config


def test_the_docs_site_builds_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        message = "mkdocs and mkdocstrings are not installed (the docs dependency group: scripts/bootstrap)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    site = tmp_path / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(_config(tmp_path)),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in (
        "index.html",
        "loop/index.html",
        "tools/index.html",
        "configuration/index.html",
        "ports/index.html",
        "delegation/index.html",
        "cli/index.html",
        "decisions/index.html",
        "reference/hooks/index.html",
        "reference/api/index.html",
    ):
        assert (site / page).is_file(), f"{page} was not built"
    hooks = (site / "reference" / "hooks" / "index.html").read_text()
    # the hookspecs are rendered from executus_core/hookspecs.py, their parameters as a table
    for hook in ("executus_audit", "executus_budget", "executus_critic", "executus_register_commands"):
        assert f'id="executus_core.hookspecs.{hook}"' in hooks
    assert hooks.count("doc-section-title") >= 9 and ":param" not in hooks
