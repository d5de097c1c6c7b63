"""A minimal host for the browser tests: a Starlette app that runs agents and mounts the viewer.

    python viewer_host.py --url sqlite:///audit.db --port 8123

``POST /start?delay=0.4&caller=alice`` starts the story of `viewer_helpers` (a delegation and a
failed tool) in the background and answers its run id at once; the viewer is under ``/viewer``.
It listens on loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn
from executus_viewer import ExecutorActions, ViewerSettings, make_viewer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from viewer_helpers import ViewerDb, only_audit, story_agents

from executus_core import Executor


def make_host(db: ViewerDb) -> Starlette:
    executor = Executor(settings={"audit_sql": db.settings()}, disable=only_audit())
    tasks: set[asyncio.Task[Any]] = set()

    async def start(request: Request) -> Response:
        delay = float(request.query_params.get("delay", "0.4"))
        caller = request.query_params.get("caller", "alice")
        lead, helper = story_agents(delay)
        executor.register_agent(helper)
        run_id = uuid.uuid4().hex
        task = asyncio.create_task(
            executor.run(lead, "Check acme and charge 5", caller_id=caller, run_id=run_id)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return JSONResponse({"run_id": run_id}, status_code=202)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await executor.shutdown()

    worker = f"{socket.gethostname()}:{os.getpid()}"

    async def workers(run_ids: Sequence[str]) -> dict[str, str]:
        # One process runs every run of this host.
        return dict.fromkeys(run_ids, worker)

    viewer = make_viewer(
        db.audit(),
        settings=ViewerSettings(poll_seconds=0.25, allow_cancel=True),
        actions=ExecutorActions(executor),
        workers=workers,
    )
    return Starlette(
        routes=[
            Route("/start", start, methods=["POST"]),
            Route("/healthz", health),
            Mount("/viewer", app=viewer),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from pathlib import Path

    db = ViewerDb("host", args.url, args.schema, Path(args.data_dir))
    uvicorn.run(make_host(db), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
