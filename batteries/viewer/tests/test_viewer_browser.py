"""The viewer in a real browser: Debian's chromium driven by Playwright, against a host on loopback.

The host (``viewer_host.py``) runs agents with executus-audit-sql on a SQLite file and mounts the
viewer under ``/viewer``. The test starts runs, sees them appear and finish in the list without a
reload, opens a trace with a delegation and a failed tool, checks its timeline, follows a running
run's trace live, and takes the screenshots shown in docs/viewer.md (written to docs/img/viewer-*.png
with EXECUTUS_UPDATE_SCREENSHOTS=1).

Browsers cannot be downloaded here: the test uses the system's ``/usr/bin/chromium`` (Debian's
package; ``.ci/run`` installs it). Without it the test skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("EXECUTUS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HERE = Path(__file__).parent
# Screenshots go to the docs only when asked (EXECUTUS_UPDATE_SCREENSHOTS=1): a test run must not
# rewrite tracked files. Otherwise they go to a temporary folder, and are still taken and checked.
DOCS_IMG = (
    HERE.parents[2] / "docs" / "img"
    if os.environ.get("EXECUTUS_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="executus-viewer-shots-"))
)
TIMEOUT_MS = 30_000  # generous: a loaded 2-core machine; never a speed test


def _need_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    message = (
        f"no chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium) or point "
        "EXECUTUS_TEST_CHROMIUM at one"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def host(tmp_path: Path) -> Iterator[str]:
    """The host on a free loopback port; stopped (by its pid) at the end."""
    _need_chromium()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = (tmp_path / "host.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "viewer_host.py"),
            "--url",
            f"sqlite:///{tmp_path / 'audit.db'}",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the host did not start: {(tmp_path / 'host.log').read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def start_run(base: str, delay: float, caller: str = "alice") -> str:
    answer = httpx.post(base + "/start", params={"delay": delay, "caller": caller}, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["run_id"])


def test_watch_runs_live_and_read_a_trace(host: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    profile = tempfile.mkdtemp(prefix="viewer-chromium-")
    try:
        with sync_playwright() as pw:
            # A fresh profile of our own (Playwright passes it as --user-data-dir).
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 720}
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(host + "/viewer/")
                expect(page.locator("#empty")).to_be_visible()
                expect(page.locator("#live-state")).to_have_text("live")

                # A run appears and finishes without a reload.
                first = start_run(host, delay=0.3)
                row = page.locator(f"#run-{first}")
                expect(row).to_be_visible()
                expect(row.locator(".status")).to_have_text("ok")
                expect(row).to_contain_text("lead")
                expect(row).to_contain_text("alice")
                expect(page.locator("#empty")).to_be_hidden()
                # its delegated run shows up as a row of its own
                expect(page.locator("tbody#runs tr", has_text="helper")).to_have_count(1)

                # Slower runs: seen running, with what they wait for, then ok.
                slow = [start_run(host, delay=1.5, caller="bob"), start_run(host, delay=1.5, caller="carol")]
                for run_id in slow:
                    expect(page.locator(f"#run-{run_id} .status")).to_have_text("running")
                expect(page.locator(f"#run-{slow[1]} .waiting")).to_contain_text("waiting for")
                # after its first model call, the lead waits for the run it delegated to
                expect(page.locator(f"#run-{slow[1]} .waiting")).to_contain_text(
                    "waiting for a delegated run: agent__helper"
                )
                # newest first
                ids = page.locator("tbody#runs tr").evaluate_all("rows => rows.map(r => r.dataset.run)")
                assert ids.index(slow[1]) < ids.index(slow[0]) < ids.index(first)
                DOCS_IMG.mkdir(parents=True, exist_ok=True)
                # the screenshot without the fading highlight of rows that just changed
                page.evaluate(
                    "document.querySelectorAll('tr.changed').forEach(r => r.classList.remove('changed'))"
                )
                page.screenshot(path=str(DOCS_IMG / "viewer-list.png"))

                # A running run's trace fills in live and ends without a reload.
                live = browser.new_page()
                live.set_default_timeout(TIMEOUT_MS)
                live.goto(f"{host}/viewer/runs/{slow[0]}")
                expect(
                    live.locator(f'section[data-trace="{slow[0]}"] > [data-role="final"]')
                ).to_contain_text("acme has 3 payments; the charge of 5 was declined")
                expect(live.locator("#live-state")).to_contain_text("ended ok")
                live.close()
                for run_id in slow:
                    expect(page.locator(f"#run-{run_id} .status")).to_have_text("ok")

                # The first run's trace: the delegation with its child nested, the failed tool, the timeline.
                page.locator(f"#run-{first} a").first.click()
                page.wait_for_url(f"**/viewer/runs/{first}")
                trace = page.locator(f'section[data-trace="{first}"]')
                expect(trace.locator("> .prompt")).to_contain_text("Check acme and charge 5")
                delegation = trace.locator(
                    "> ol.items > .tool-call", has=page.locator("code.tool-name", has_text="agent__helper")
                ).first
                expect(delegation.locator("details.child")).to_contain_text("helper")
                expect(delegation.locator("details.child .tool-call")).to_contain_text("acme: 3 payments")
                failed = trace.locator("> ol.items > .tool-call.failed")
                expect(failed).to_have_count(1)
                expect(failed).to_contain_text("charge")
                expect(failed).to_contain_text("card declined by the bank")
                expect(failed).to_contain_text("***")  # the api_key argument, masked
                expect(failed).not_to_contain_text("sk-live-hunter2")
                timeline = trace.locator('> [data-role="timeline"]')
                expect(timeline.locator(".bar-model")).to_have_count(3)
                expect(timeline.locator(".bar-tool")).to_have_count(2)
                expect(timeline.locator(".bar-failed")).to_have_count(1)
                expect(timeline).to_contain_text("model")
                # the model's bars lie within the track and in order
                lefts = timeline.locator(".bar-model").evaluate_all(
                    "bars => bars.map(b => parseFloat(b.style.left))"
                )
                assert lefts == sorted(lefts) and all(0 <= x <= 100 for x in lefts)
                expect(trace.locator('> [data-role="final"]')).to_contain_text("declined")
                page.screenshot(path=str(DOCS_IMG / "viewer-trace.png"), full_page=True)

                # The JSON link serves the same run.
                page.locator("a.json-link").click()
                assert f'"run_id": "{first}"' in page.content()
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
