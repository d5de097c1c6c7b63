"""``python -m executus_service COMMAND``: the service's processes, and ``up`` to start them all.

::

    up           the whole service on loopback: the schema, the fake model (unless
                 service.fake_model = false), the web app and service.workers workers; restarts a
                 worker that dies; stops everything on Ctrl-C or SIGTERM
    web          the web app alone (uvicorn)
    worker       one worker process (Procrastinate, an Executor, the stalled-job sweeper)
    schema       create Procrastinate's schema and the service's tables if they are missing
    fake-model   the loopback OpenAI-compatible fake model alone

Every process reads its settings from ``examples/service/pyproject.toml`` under ``EXECUTUS_*``
variables (see `executus_service.settings`). ``up`` prints one line per process it starts
(``worker 2 pid 4242``) and one when a worker is ready (``worker 2 ready pid 4242``), then
``READY <url>`` once the web app answers and every worker is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("executus_service")

PACKAGE_DIR = Path(__file__).resolve().parent


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s",
    )
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def _serve(app: object, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=3)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    await server.serve(sockets=[sock])


# -- the single processes ----------------------------------------------------------------------


async def _create_database(conninfo: str) -> None:
    """Create the service's database if it does not exist yet (a first start needs no setup)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=5):
            return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    name = conninfo_to_dict(conninfo).get("dbname")
    if not name:
        raise SystemExit(f"database_url {conninfo!r} names no database")
    admin = make_conninfo(conninfo, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        try:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
            log.info("created database %s", name)
        except psycopg.errors.DuplicateDatabase:
            pass


async def schema_main() -> None:
    """Procrastinate's schema (once: it is not re-entrant) and the service's tables."""
    import psycopg

    from executus_service.jobs import RUN_TASK
    from executus_service.ledger import ensure_tables
    from executus_service.settings import load, plain_postgres_url

    _, service = load()
    conninfo = plain_postgres_url(service.database_url)
    await _create_database(conninfo)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        async with conn.transaction():
            # Workers and `up` may run this at once: one applies the schema, the others find it there.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('executus_service schema'))")
            found = await (
                await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            ).fetchone()
            if not (found and found[0]):
                from procrastinate import schema

                await conn.execute(schema.SchemaManager.get_schema())
                log.info("applied Procrastinate's schema to %s", conn.info.dbname)
            await conn.execute(
                "CREATE INDEX IF NOT EXISTS executus_service_jobs_run_id "
                "ON procrastinate_jobs ((args->>'run_id')) WHERE task_name = '" + RUN_TASK + "'"
            )
        await ensure_tables(conn)


async def worker_main() -> None:
    from psycopg_pool import AsyncConnectionPool

    from executus_core import Executor
    from executus_service.jobs import RunHost, make_app, run_worker
    from executus_service.ledger import build_agents, worker_name
    from executus_service.settings import load, plain_postgres_url

    settings, service = load()
    conninfo = plain_postgres_url(service.database_url)
    pool = AsyncConnectionPool(conninfo, min_size=1, max_size=service.ledger_connections, open=False)
    await pool.open()
    try:
        agents = build_agents(pool, model=service.model, tool_seconds=service.tool_seconds)
        app = make_app(service, conninfo)
        async with Executor(settings=settings) as executor, app.open_async():
            host = RunHost(executor, agents, pool, service)
            stall = os.environ.get(STALL_AFTER_REGISTER)
            if stall:
                _stall_after_register(host, Path(stall))
            log.info("worker %s: %d job slots on queue %s", worker_name(), service.concurrency, service.queue)
            await run_worker(
                app,
                host,
                service,
                name=worker_name(),
                conninfo=conninfo,
                on_ready=lambda: print("READY", flush=True),  # `up` tells when each worker is ready
            )
    finally:
        await pool.close()


STALL_AFTER_REGISTER = "EXECUTUS_TEST_SERVICE_STALL_AFTER_REGISTER"
"""Fault injection for the tests: a path. The first run a worker registers while no file is there
stalls right after its checkpoint row is written and before its prompt is saved; the worker writes
``<run_id> <pid>`` to the file, so a test can kill it at exactly that point."""


def _stall_after_register(host: object, marker: Path) -> None:
    store: Any = getattr(host, "store")  # noqa: B009 - RunHost, imported late
    register = store.for_run

    async def for_run(info: Any, agent: Any) -> Any:
        made = await register(info, agent)
        try:
            with marker.open("x") as out:
                out.write(f"{info.run_id} {os.getpid()}\n")
        except FileExistsError:
            return made
        log.warning(
            "run %s: stalled after its checkpoint row was written (%s)", info.run_id, STALL_AFTER_REGISTER
        )
        await asyncio.Event().wait()  # until the test kills this worker
        return made

    store.for_run = for_run


async def web_main(port: int | None) -> None:
    from psycopg_pool import AsyncConnectionPool

    from executus_service.jobs import make_app
    from executus_service.ledger import build_agents
    from executus_service.settings import load, plain_postgres_url
    from executus_service.web import make_web_app

    settings, service = load()
    conninfo = plain_postgres_url(service.database_url)
    # The agents' names only: the web app never runs a tool (the pool is never opened).
    names = list(build_agents(AsyncConnectionPool(conninfo, open=False), model=service.model, tool_seconds=0))
    app = make_web_app(settings, service, make_app(service, conninfo), names)
    sock = _listen(service.host, service.port if port is None else port)
    print(f"LISTENING http://{service.host}:{sock.getsockname()[1]}", flush=True)
    await _serve(app, sock)


async def fake_model_main(port: int) -> None:
    from executus_service.fake_model import make_app

    sock = _listen("127.0.0.1", port)
    print(f"READY http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    await _serve(make_app(), sock)


# -- up: the supervisor ------------------------------------------------------------------------


class _Child:
    def __init__(self, label: str, args: list[str], env: dict[str, str]) -> None:
        self.label, self.args, self.env = label, args, env
        self.process: subprocess.Popen[str] | None = None
        self.ready = threading.Event()

    def start(self, *, capture: bool = False, announce_ready: bool = False) -> subprocess.Popen[str]:
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "executus_service", *self.args],
            env=self.env,
            stdout=subprocess.PIPE if capture or announce_ready else subprocess.DEVNULL,
            text=True,
        )
        _say(f"{self.label} pid {self.process.pid}")
        if announce_ready:
            threading.Thread(target=self._watch, args=(self.process, self.ready), daemon=True).start()
        return self.process

    def _watch(self, process: subprocess.Popen[str], ready: threading.Event) -> None:
        """Print ``<label> ready pid N`` when the process says READY; drain its stdout after."""
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == "READY" and not ready.is_set():
                ready.set()
                _say(f"{self.label} ready pid {process.pid}")


_OUT = threading.Lock()


def _say(line: str) -> None:
    """One whole line to stdout: the launcher's threads print at once, and print() writes the text
    and its newline separately, so two lines could run together ("...ready pid 7READY http://...")."""
    with _OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _first_line(process: subprocess.Popen[str], prefix: str, label: str, timeout: float = 120.0) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(
                f"up: {label} exited with {process.wait()} before it was ready (see its log above)"
            )
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise SystemExit(f"up: {label} was not ready within {timeout:g}s")


def _wait_healthy(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"up: the web app at {url} did not answer /healthz within {timeout:g}s")
        time.sleep(0.1)


def up_main(workers: int | None, port: int | None) -> int:
    from executus_service.settings import load

    _, service = load()
    count = workers or service.workers
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
    children: list[_Child] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    try:
        done = subprocess.run([sys.executable, "-m", "executus_service", "schema"], env=env, check=False)
        if done.returncode != 0:
            print(
                "up: applying the schema failed (see above); is PostgreSQL at database_url?", file=sys.stderr
            )
            return 1
        if service.fake_model:
            model = _Child("model", ["fake-model", "--port", str(service.fake_model_port)], env)
            children.append(model)
            base_url = _first_line(model.start(capture=True), "READY ", "the fake model")
            endpoints = json.loads(env.get("EXECUTUS_PROVIDERS__ENDPOINTS") or "{}")
            endpoints["fake"] = {"api": "openai", "base_url": base_url}
            env["EXECUTUS_PROVIDERS__ENDPOINTS"] = json.dumps(endpoints)
            _say(f"model {base_url}")
        web = _Child("web", ["web", *(["--port", str(port)] if port is not None else [])], env)
        children.append(web)
        url = _first_line(web.start(capture=True), "LISTENING ", "the web app")
        pool = [_Child(f"worker {index}", ["worker"], env) for index in range(1, count + 1)]
        children.extend(pool)
        for child in pool:
            child.start(announce_ready=True)
        _wait_healthy(url)
        deadline = time.monotonic() + 120.0
        for child in pool:
            if not child.ready.wait(max(0.0, deadline - time.monotonic())):
                print(f"up: {child.label} was not ready within 120s (see its log above)", file=sys.stderr)
                return 1
        _say(f"READY {url}")
        while not stopping:
            time.sleep(0.2)
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is None or stopping:
                    continue
                if child in pool:
                    # What a process manager does: a worker that died is replaced; its runs are resumed
                    # by whichever worker takes their jobs (this one or another).
                    _say(f"{child.label} pid {child.process.pid} exited with {code}; starting a new one")
                    child.start(announce_ready=True)
                else:
                    print(
                        f"up: {child.label} exited with {code}; stopping the service",
                        file=sys.stderr,
                        flush=True,
                    )
                    stopping = True
        return 0
    finally:
        _stop_all(children)


def _stop_all(children: Sequence[_Child], timeout: float = 15.0) -> None:
    running = [c.process for c in children if c.process is not None and c.process.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a paused worker must be able to hear SIGTERM
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m executus_service", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the whole service on loopback")
    up.add_argument("--workers", type=int, default=None, help="worker processes (default: service.workers)")
    up.add_argument("--port", type=int, default=None, help="the web app's port (default: service.port)")
    web = commands.add_parser("web", help="the web app alone")
    web.add_argument("--port", type=int, default=None)
    commands.add_parser("worker", help="one worker process")
    commands.add_parser("schema", help="create the queue's schema and the service's tables")
    fake = commands.add_parser("fake-model", help="the loopback fake model alone")
    fake.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _setup_logging()
    if args.command == "up":
        return up_main(args.workers, args.port)
    runner = {
        "web": lambda: web_main(args.port),
        "worker": worker_main,
        "schema": schema_main,
        "fake-model": lambda: fake_model_main(args.port),
    }[args.command]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner())
    return 0


if __name__ == "__main__":
    sys.exit(main())
