"""The job queue: Procrastinate on the service's PostgreSQL, one job per run; and cancelling runs.

A job means "see run X to its end". The web app defers it; a worker takes it, reads the run's
checkpoint row, and:

- starts the run (``Executor.run`` with the job's run id) if the checkpoint store has never seen
  it, or if its worker died before it saved even the prompt (nothing ran);
- resumes exactly this run by id (``Executor.resume(run_id)``, which loads it from the checkpoint
  store) if it is live and its lease lapsed (the worker that held it died, or was paused past its
  lease); a tool call whose result was saved is not run again, and the call that was in flight is
  run again flagged (``ToolContext.attempt`` > 1, ``resumed``);
- if another live worker holds the run (its lease runs), ends the job with `RunNotFinished`:
  Procrastinate retries it ``busy_retry_seconds`` later, on whichever worker is free;
- returns only once the run has ended, so a job that Procrastinate marks succeeded always belongs
  to a run that ended.

A worker that dies leaves its jobs ``doing``; every worker looks for such stalled jobs (workers
whose Procrastinate heartbeat is older than ``stalled_seconds``) and retries them, so another
worker takes them up and resumes the runs. This is Procrastinate's ``retry_stalled_jobs`` pattern,
run as a loop beside the worker rather than as a periodic task, so it works at second granularity
and does not wait for a free job slot.

A cancel (``POST /runs/{id}/cancel``, or the viewer's Cancel button) is a row in
``service_cancels`` and a ``NOTIFY`` on `CANCEL_CHANNEL`. Every worker listens on the channel
(`listen_for_cancels`) and calls ``Executor.cancel(run_id)`` if it runs the run; a job checks the
row when it takes the run up, so a cancel of a run that is queued, or between workers, is not lost:
a run that never started ends ``cancelled`` without starting; an interrupted one is resumed and
cancelled at once, before any tool runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from procrastinate import App, JobContext, PsycopgConnector, RetryDecision
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy
from psycopg_pool import AsyncConnectionPool

from executus_core import Agent, Executor, Result, RunEvent, RunStatus
from executus_service.ledger import cancel_requested, record_end
from executus_service.settings import ServiceSettings

__all__ = [
    "CANCEL_CHANNEL",
    "RUN_TASK",
    "RunHost",
    "RunNotFinished",
    "listen_for_cancels",
    "make_app",
    "sweep_stalled_jobs",
]

log = logging.getLogger("executus_service.jobs")

RUN_TASK = "executus_service.run_agent"
"""The Procrastinate task name of a run job."""

CANCEL_CHANNEL = "executus_service_cancel"
"""The PostgreSQL ``NOTIFY`` channel of cancels; the payload is the run id."""

# The checkpoint statuses of a run that will not go on: ended (any way), failed for good, quarantined.
_FINAL_CHECKPOINT = {"completed", "failed", "corrupt"}


class RunNotFinished(Exception):
    """The run did not end in this job: the job is retried after ``retry_in`` seconds.

    Raised when another live worker holds the run (retried ``busy_retry_seconds`` later), when
    this worker shuts down (retried at once, on whichever worker is free), and when a resumed run
    was refused by a budget for now (retried when the budget says it may pass).
    """

    def __init__(self, message: str, retry_in: float = 0.0) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class _Backoff(BaseRetryStrategy):
    """Retry every failed run job: at once after a shutdown, else after 0.5 s, 1 s, 2 s ... at most 30 s.

    A run job is never given up on: it ends only when its run has ended (a run that cannot go on
    ends ``error`` and the job then succeeds).
    """

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, RunNotFinished):
            return RetryDecision(retry_in={"milliseconds": round(exception.retry_in * 1000)})
        return RetryDecision(retry_in={"seconds": min(30.0, 0.5 * 2 ** min(job.attempts, 6))})


def make_app(service: ServiceSettings, conninfo: str) -> App:
    """The Procrastinate app of the service, with its one task ``run_agent`` registered."""
    # Jobs touch the queue only to be fetched and finished: a few connections serve many job slots.
    app = App(connector=PsycopgConnector(conninfo=conninfo, min_size=1, max_size=service.queue_connections))

    @app.task(name=RUN_TASK, queue=service.queue, pass_context=True, retry=_Backoff())
    async def run_agent(context: JobContext, run_id: str, prompt: str, caller_id: str, agent: str) -> str:
        """Run (or resume, or wait for) run ``run_id`` until it ends; returns its status."""
        host: RunHost = context.additional_context["host"]
        return await host.drive(run_id, prompt=prompt, caller_id=caller_id, agent_name=agent)

    return app


async def sweep_stalled_jobs(app: App, service: ServiceSettings) -> None:
    """Forever: retry the run jobs of workers whose heartbeat is older than ``stalled_seconds``."""
    while True:
        await asyncio.sleep(service.sweep_seconds)
        try:
            stalled = await app.job_manager.get_stalled_jobs(
                queue=service.queue, seconds_since_heartbeat=service.stalled_seconds
            )
            for job in stalled:
                # Another worker may retry the same job at the same moment: one of the two wins,
                # the other's "not in doing status" is expected.
                try:
                    await app.job_manager.retry_job(job)
                except Exception as exc:
                    log.debug("stalled job %s was retried elsewhere: %s", job.id, exc)
                else:
                    log.warning("job %s (run %s) was stalled: retried", job.id, job.task_kwargs.get("run_id"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("looking for stalled jobs failed: %s", exc)


def _not_ours(result: Result) -> bool:
    """A result `Executor.run` gave for a run this process is already running (not an end)."""
    return result.status is RunStatus.ERROR and "is already running" in (result.error or "")


def _lease_lapsed(row: Mapping[str, Any]) -> bool:
    """The run is live and its lease lapsed (or was released): no live worker holds it."""
    if row["status"] != "live":
        return False
    lease = row.get("lease_until")
    return lease is None or float(lease) < time.time()


class RunHost:
    """What a worker process runs jobs with: one `Executor`, its agents and the ledger's pool."""

    def __init__(
        self,
        executor: Executor,
        agents: Mapping[str, Agent],
        pool: AsyncConnectionPool,
        service: ServiceSettings,
    ) -> None:
        self.executor = executor
        self.agents = dict(agents)
        self.pool = pool
        self.service = service
        checkpoints = executor.ports.checkpoints
        if checkpoints is None or not callable(getattr(checkpoints[1], "run_row", None)):
            raise RuntimeError(
                "the service needs executus-checkpoint-sql: install it and leave it enabled "
                "([tool.executus.checkpoint_sql] enabled = true), with url pointing at PostgreSQL"
            )
        self.store: Any = checkpoints[1]
        for agent in self.agents.values():
            executor.register_agent(agent)
        self.stopping = False
        self.driving: set[str] = set()
        """The runs a job of this worker is starting or resuming now (not all registered yet)."""
        self.cancel_pending: set[str] = set()
        """Cancels heard for runs in `driving` that the executor has not registered yet."""
        self.listening = asyncio.Event()
        """Set while `listen_for_cancels` listens."""
        self.started: set[str] = set()
        """The runs in `driving` that started (or resumed) here: their ``run.start`` came."""

    # -- cancels ---------------------------------------------------------------------------

    def cancel_heard(self, run_id: str) -> bool:
        """A cancel of ``run_id`` reached this worker: cancel the run if it runs here.

        A run a job of this worker is starting or resuming, and the executor has not registered
        yet, is cancelled as soon as it starts (its ``run.start`` event). Returns True when the run
        is this worker's.
        """
        if self.executor.cancel(run_id):
            log.info("run %s: cancelled, as asked", run_id)
            return True
        if run_id in self.driving:
            self.cancel_pending.add(run_id)
            return True
        return False

    def _events(self, run_id: str) -> Callable[[RunEvent], None]:
        """The run's ``on_event``: a cancel that came while the run was starting takes effect on its start."""

        def on_event(event: RunEvent) -> None:
            if event.type != "run.start":
                return
            self.started.add(run_id)
            if run_id in self.cancel_pending:
                self.cancel_pending.discard(run_id)
                self.cancel_heard(run_id)

        return on_event

    # -- the job ---------------------------------------------------------------------------

    async def drive(self, run_id: str, *, prompt: str, caller_id: str, agent_name: str) -> str:
        """See run ``run_id`` to its end: start it, resume it by id, or leave it to the worker holding it.

        Returns the run's end status. Raises `RunNotFinished` when the run goes on without this job
        (another live worker holds it, this worker is shutting down, a budget refused it for now):
        Procrastinate retries the job.
        """
        agent = self.agents.get(agent_name)
        if agent is None:
            # The web app checks names; a job for an agent this worker lacks is a deploy mismatch.
            raise LookupError(f"this worker has no agent {agent_name!r} (it has {', '.join(self.agents)})")
        busy = self.service.busy_retry_seconds
        if run_id in self.driving or run_id in self.executor.running:
            # The job was handed out again while this worker still runs it (it was paused, say).
            raise RunNotFinished(f"run {run_id} is running on this worker: retried later", retry_in=busy)
        self.driving.add(run_id)
        try:
            return await self._drive(run_id, agent, prompt, caller_id)
        finally:
            self.driving.discard(run_id)
            self.cancel_pending.discard(run_id)
            self.started.discard(run_id)

    async def _drive(self, run_id: str, agent: Agent, prompt: str, caller_id: str) -> str:
        busy = self.service.busy_retry_seconds
        row = await self.store.run_row(run_id)
        if row is not None and row["status"] in _FINAL_CHECKPOINT:
            return await self._already_ended(run_id, row)
        # Never started, or its worker died before it saved even the prompt: nothing ran (the store
        # never hands out a run with no messages), so it starts afresh under its id.
        fresh = row is None or (not row.get("message_count") and _lease_lapsed(row))
        if not fresh:
            assert row is not None
            if row["status"] == "paused":
                raise RunNotFinished(f"run {run_id} waits for approval: retried later", retry_in=10 * busy)
            if not _lease_lapsed(row):
                left = float(row["lease_until"]) - time.time() if row.get("lease_until") else 0.0
                raise RunNotFinished(
                    f"run {run_id} is held by the live worker {row.get('owner')!r} (lease: {left:.1f}s "
                    "more): retried later",
                    retry_in=busy,
                )
        if await cancel_requested(self.pool, run_id):
            if fresh:
                return await self._cancelled_before_start(run_id)
            # Interrupted: resume it only to end it, cancelled as soon as it starts (before any tool).
            self.cancel_pending.add(run_id)
        if fresh:
            result = await self.executor.run(
                agent, prompt, caller_id=caller_id, run_id=run_id, on_event=self._events(run_id)
            )
        else:
            result = await self.executor.resume(
                run_id, agents={agent.id: agent}, on_event=self._events(run_id)
            )
        if run_id not in self.started and not self.stopping:
            # It did not start here. Either another worker had it first (the resume found nothing
            # to load, the store said another worker holds it): its end, if it ended, is that
            # worker's, kept from there. Or it was refused before it started (a budget, a request
            # that cannot run): that is its end, unless it is a resumed run's refusal for now.
            row = await self.store.run_row(run_id)
            if row is not None and row["status"] in _FINAL_CHECKPOINT:
                return await self._already_ended(run_id, row)
            ours = row is None or (not row.get("message_count") and _lease_lapsed(row))
            if fresh and ours and result.status is not RunStatus.INTERRUPTED:
                log.warning(
                    "run %s ended %s before it started: %s", run_id, result.status.value, result.error
                )
                await record_end(
                    self.pool, run_id, result.status.value, result.output, result.error, produced=True
                )
                return result.status.value
            if result.status is not RunStatus.BUDGET_EXCEEDED:
                raise RunNotFinished(
                    f"run {run_id} did not start here ({result.status.value}: {result.error}): retried later",
                    retry_in=busy,
                )
        status = await self._settle(result)
        if status is not None:
            return status
        # The run goes on: this worker is stopping, another worker took it (or holds it), or a budget
        # refused the resumed run for now (its checkpoint is kept).
        if self.stopping:
            raise RunNotFinished(f"run {run_id} was interrupted by this worker's shutdown")
        if result.status is RunStatus.BUDGET_EXCEEDED:
            wait = result.retry_after if result.retry_after is not None else busy
            raise RunNotFinished(f"run {run_id} is over budget for now: {result.error}", retry_in=wait)
        raise RunNotFinished(
            f"run {run_id} goes on elsewhere ({result.status.value}: {result.error}): retried later",
            retry_in=busy,
        )

    async def _cancelled_before_start(self, run_id: str) -> str:
        """A cancel came before any worker started the run: it ends ``cancelled``; nothing runs."""
        log.info("run %s: cancelled before it started; not started", run_id)
        await record_end(
            self.pool,
            run_id,
            RunStatus.CANCELLED.value,
            None,
            "cancelled before it started: nothing ran",
            produced=True,
            once=True,
        )
        return RunStatus.CANCELLED.value

    async def _settle(self, result: Result) -> str | None:
        """Keep the end of a run this worker ran; None when the run goes on.

        A run has ended when its checkpoint says so (``completed``, ``failed``) or when it has none
        (refused before it started). ``interrupted`` is never an end; nor is a refusal of a resumed
        run, whose checkpoint the core keeps for later, nor a resume refused because another live
        worker holds the run.
        """
        if result.status is RunStatus.INTERRUPTED or _not_ours(result):
            return None
        row = await self.store.run_row(result.run_id)
        if row is not None and row["status"] not in _FINAL_CHECKPOINT:
            return None
        if result.status in (RunStatus.OK, RunStatus.CANCELLED):
            log.info("run %s ended %s", result.run_id, result.status.value)
        else:
            log.warning("run %s ended %s: %s", result.run_id, result.status.value, result.error)
        await record_end(
            self.pool, result.run_id, result.status.value, result.output, result.error, produced=True
        )
        return result.status.value

    async def _already_ended(self, run_id: str, row: Mapping[str, Any]) -> str:
        """The run ended in an earlier job (or on another worker): make sure its end is kept.

        The audit's record says how it ended. When the audit has no end (the worker died before its
        last batch reached the database, and no spill file holds it), the checkpoint says only that
        the run will not go on: a ``completed`` run whose trail ends with the model's final answer
        is kept as ``ok`` with that answer; otherwise it is kept as ``error``, saying what is known.
        """
        audit: Any = next(
            (a for _, a in self.executor.ports.audits if callable(getattr(a, "get_run", None))), None
        )
        record = await audit.get_run(run_id) if audit is not None else None
        if record is not None and record.status is not None and record.status is not RunStatus.INTERRUPTED:
            status, output, error = record.status.value, record.output, record.error
        else:
            steps = await audit.trail(run_id, kinds=["step"]) if audit is not None else []
            last = steps[-1] if steps else None
            answered = last is not None and last.text and not (last.data or {}).get("tool_calls")
            if row["status"] == "completed" and answered:
                status, output, error = RunStatus.OK.value, last.text if last else None, None
            else:
                status, output = RunStatus.ERROR.value, None
                error = (
                    f"the run will not go on (checkpoint: {row['status']}"
                    + (f", {row.get('error')}" if row.get("error") else "")
                    + "), and the audit has no record of how it ended"
                )
            log.warning("run %s: the audit has no end; kept as %s from the checkpoint", run_id, status)
        await record_end(self.pool, run_id, status, output, error, produced=False)
        return status


async def import_audit_spills(executor: Executor, service: ServiceSettings) -> None:
    """Forever: load the audit rows that could not be written in time (spill files) into the database.

    executus-audit-sql saves rows the database did not take within ``write_timeout`` to files in the
    data directory (a loaded or unreachable database); ``executus runs import`` loads them. Every
    worker does it here every ``spill_import_seconds``, so the trail becomes whole without an
    operator. Loading a file twice is harmless; a file another worker took first is skipped.
    """
    audits: list[Any] = [a for _, a in executor.ports.audits if callable(getattr(a, "import_spill", None))]
    while True:
        await asyncio.sleep(service.spill_import_seconds)
        for audit in audits:
            for path in audit.spill_files():
                try:
                    spilled = await audit.import_spill(path)
                except FileNotFoundError:
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("importing the audit spill file %s failed (kept for later): %s", path, exc)
                    break
                else:
                    log.info("imported audit rows of run %s from %s", spilled.state.info.run_id, path.name)


async def listen_for_cancels(host: RunHost, conninfo: str, *, reconnect_seconds: float = 1.0) -> None:
    """Forever: ``LISTEN`` on `CANCEL_CHANNEL` and hand each cancel to ``host.cancel_heard``.

    On its own connection (a notification needs one that stays open). Each time it (re)connects it
    also reads the cancels kept in ``service_cancels`` for the runs this worker has, so a cancel sent
    while it was not listening is not lost. ``host.listening`` is set while it listens.
    """
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                mine = sorted({*host.executor.running, *host.driving})
                if mine:
                    found = await conn.execute(
                        "SELECT run_id FROM service_cancels WHERE run_id = ANY(%s)", (mine,)
                    )
                    for (run_id,) in await found.fetchall():
                        host.cancel_heard(run_id)
                host.listening.set()
                async for note in conn.notifies():
                    if host.cancel_heard(note.payload):
                        log.info("run %s: cancel heard", note.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            host.listening.clear()
            log.warning("listening for cancels failed (%s); again in %gs", exc, reconnect_seconds)
            await asyncio.sleep(reconnect_seconds)


async def run_worker(
    app: App,
    host: RunHost,
    service: ServiceSettings,
    *,
    name: str,
    conninfo: str,
    shutdown_timeout: float = 5.0,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run one Procrastinate worker (until SIGINT or SIGTERM) with the stalled-job sweeper, the
    audit spill importer and the cancel listener beside it; ``on_ready`` once it listens for cancels."""
    listener = asyncio.create_task(listen_for_cancels(host, conninfo), name="cancel listener")
    sweeper = asyncio.create_task(sweep_stalled_jobs(app, service), name="stalled job sweeper")
    importer = asyncio.create_task(import_audit_spills(host.executor, service), name="audit spill importer")
    try:
        try:
            await asyncio.wait_for(host.listening.wait(), timeout=30)
        except TimeoutError:
            log.warning("not listening for cancels yet; starting anyway (a job still reads kept cancels)")
        if on_ready is not None:
            on_ready()
        await app.run_worker_async(
            queues=[service.queue],
            name=name,
            concurrency=service.concurrency,
            update_heartbeat_interval=service.heartbeat_seconds,
            # Jobs retried later (a run another worker holds, a stalled job) are updated, not inserted,
            # so no notification wakes the workers: they look for due jobs this often.
            fetch_job_polling_interval=min(service.busy_retry_seconds, service.sweep_seconds),
            # Procrastinate uses this only to delete old worker registrations when a worker starts. A
            # worker that was paused (SIGSTOP, a long GC, a VM migration) and is deleted meanwhile can
            # no longer fetch jobs (its id is gone) and stops; so keep registrations far longer than it
            # takes to see a worker as stalled (the sweeper's stalled_seconds).
            stalled_worker_timeout=max(300.0, 10 * service.stalled_seconds),
            shutdown_graceful_timeout=shutdown_timeout,
            additional_context={"host": host},
        )
    finally:
        host.stopping = True
        for side in (sweeper, importer, listener):
            side.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await side
