"""Issue 17, found case 5: on PostgreSQL each save's UPDATE of the run row left a dead tuple and a
new index entry (the ``(status, lease_until)`` index held a column every save changes, so no HOT
update): the runs table grew from 49 KB to 229 KB in one 500-step run. Now no column a save changes
is indexed and the table keeps room on each page (fillfactor 70): a save is a heap-only (HOT)
update, and page pruning reclaims the old versions without a vacuum.

How much the table grows also depends on the whole server: page pruning may only reclaim a version
older than every snapshot open on it, and on a shared test server other sessions' transactions hold
that back. So the size is checked on a PostgreSQL of this test's own (started from the installed
server's binaries, stopped by PID); on the shared server, that the saves are HOT updates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from checkpoint_sql_helpers import driver_url
from executus_checkpoint_sql import SqlCheckpointStore
from executus_checkpoint_sql.schema import RUNS_TABLE
from sqlalchemy import text

from executus_core import Agent, CheckpointState, Message
from executus_core.testing.conformance import make_info

pytestmark = pytest.mark.postgres


def _server_binaries() -> Path | None:
    pg_config = shutil.which("pg_config")
    candidates = []
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(found.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """A PostgreSQL server of this test's own on a free loopback port: nobody else's transactions."""
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    as_user: list[str] = []
    # Not under pytest's tmp_path: as root, the server runs as postgres, which cannot enter it.
    folder = Path(tempfile.mkdtemp(prefix="ecp-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start a PostgreSQL server")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run(
        [*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [
            *as_user,
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)  # smart shutdown: the server ends once its clients are gone
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)


def _table_stats(pg_url: str, schema: str) -> tuple[int, int, int]:
    """(pages of the runs table, its updates, how many of them were HOT) as the server counts them."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for _ in range(50):  # the writer's statistics reach the server when its connection closes
            conn.execute("SELECT pg_stat_clear_snapshot()")
            found = conn.execute(
                "SELECT pg_relation_size(relid), n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE schemaname = %s AND relname = %s",
                (schema, RUNS_TABLE),
            ).fetchone()
            if found is not None and found[1] >= 1000:
                return found[0] // 8192, found[1], found[2]
            time.sleep(0.1)
    raise AssertionError(f"the server counted no updates of {schema}.{RUNS_TABLE}: {found}")


async def _pages(store: SqlCheckpointStore) -> int:
    async with store._transaction() as conn:
        size = await conn.execute(text(f"SELECT pg_relation_size('{RUNS_TABLE}')"))
        return int(size.scalar_one()) // 8192


async def _a_500_step_run(pg_url: str, schema: str) -> tuple[int, int]:
    """Run 500 steps after 20 short runs; the runs table's pages before and after the long run."""
    store = SqlCheckpointStore(driver_url(pg_url), db_schema=schema, worker_id="long", heartbeat_seconds=0)
    agent = Agent(name="long", model="scripted:none")
    try:
        # Neighbours on the page, as in a real table: runs that ended before this one.
        for n in range(20):
            done = await store.for_run(make_info(n, caller_id="neighbour"), agent)
            await done.save(
                CheckpointState(run_id=done.run_id, iteration=1, offset=0, messages=[Message.user("x")])
            )
            await done.complete()
        before = await _pages(store)
        info = make_info(99, caller_id="long")
        checkpointer = await store.for_run(info, agent)
        offset = 0
        for step in range(500):  # two saves per step: the model's call, then the tool's result
            for message in (
                Message.assistant(f"step {step}: calling the tool"),
                Message.tool(f"c{step}", "42"),
            ):
                await checkpointer.save(
                    CheckpointState(run_id=info.run_id, iteration=step + 1, offset=offset, messages=[message])
                )
                offset += 1
        return before, await _pages(store)
    finally:
        await store.aclose()


async def test_a_500_step_run_leaves_the_runs_table_at_one_page(own_postgres: str) -> None:
    before, after = await _a_500_step_run(own_postgres, "long_run")
    _pages, updates, hot = _table_stats(own_postgres, "long_run")
    # before the fix: none of the updates was HOT, and the table grew by a page every ~100 saves
    assert hot >= 0.95 * updates, f"{hot} of {updates} updates were HOT"
    assert after - before <= 1, f"the runs table grew from {before} to {after} pages"


async def test_saves_are_hot_updates_on_the_shared_server(pg_url: str, pg_schema: str) -> None:
    await _a_500_step_run(pg_url, pg_schema)
    _pages, updates, hot = _table_stats(pg_url, pg_schema)
    # Other sessions' snapshots may keep a page from being pruned, and a save that then finds no room
    # on its page is not HOT: most still are (none were before).
    assert hot >= 0.5 * updates, f"{hot} of {updates} updates were HOT"
