"""The proof: runs survive workers that are killed and paused at random, and every promise still holds.

Three worker processes share one PostgreSQL and one Redis. 64 runs of the ledger agent (each
appending 4-8 entries through a real tool, one second per call, the loopback fake model deciding
the calls) are submitted over HTTP while, in seeded random rounds, a worker is killed with SIGKILL
(the supervisor starts a new one) or paused with SIGSTOP and continued with SIGCONT (some pauses
outlast the checkpoint lease, so another worker takes the runs over; some do not). Then:

- every run ends ``ok`` exactly once, with the one output its request calls for;
- no completed tool call runs twice (the audit saw each call's result once) and no worker ran a
  call the run never saved (each run executed exactly the calls it needed); a worker paused past
  the core's last ownership check is refused by the ledger's fence (``ToolContext.attempt``);
- every call that ran more than once was flagged on each re-run (``ToolContext.attempt`` > 1,
  ``resumed``), and the ledger holds each entry once;
- each caller's budget counted each of its runs once, across the processes, and charged between
  what the runs' audit records and what the model really served; the next run is refused;
- every run's audit trail is whole: each of its model steps and each of its tool results once, and
  ``run.end`` with status ``ok`` (at least once, and no other).

The chaos is seeded (``EXECUTUS_SERVICE_PROOF_SEED`` picks another); what the rounds did is printed
with the failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from executus_audit_sql.audit import SqlAudit
from executus_audit_sql.settings import AuditSqlSettings
from executus_budget_redis.budget import RedisBudget
from executus_budget_redis.settings import BudgetRedisSettings
from executus_service.fake_model import expected_output
from service_helpers import Service, service_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

WORKERS = 3
CALLERS = 4
RUNS_PER_CALLER = 16
SEED = int(os.environ.get("EXECUTUS_SERVICE_PROOF_SEED", "20261130"))
SUBMIT_SECONDS = 24.0
END_TIMEOUT = 100.0


TRAILS_SHOWN = 8


def _trails(
    run_ids: list[str],
    trails: dict[str, Any],
    by_key: dict[tuple[str, str], list[tuple[int, bool, str, bool]]],
) -> list[str]:
    """The audit trails of the runs with problems, a row a line, with each call's executions in the ledger
    (attempt, resumed, worker, finished): what to look at first when the proof fails."""
    lines = []
    for run_id in run_ids:
        lines.append(f"trail of run {run_id} (seq kind name iteration call_id | ledger executions):")
        for entry in trails.get(run_id, []):
            data = entry.data if isinstance(entry.data, dict) else {}
            extra = data.get("status") or data.get("resumed") or ""
            calls = by_key.get((run_id, entry.call_id or ""), []) if entry.kind == "tool" else ""
            lines.append(
                f"  {entry.seq:>4} {entry.at:%H:%M:%S.%f} {entry.kind:<5} {entry.name or '':<10} "
                f"{entry.iteration if entry.iteration is not None else '':>3} {entry.call_id or ''} {extra} {calls}"
            )
    return lines


class Chaos:
    """Seeded rounds of SIGKILL and SIGSTOP/SIGCONT against the service's workers."""

    def __init__(self, service: Service, rng: random.Random) -> None:
        self.service = service
        self.rng = rng
        self.log: list[str] = []
        self.stopped: dict[int, threading.Timer] = {}
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f}s {text}")

    def round(self) -> None:
        index = self.rng.randint(1, WORKERS)
        pid = self.service.pid(f"worker {index}")
        if pid in self.stopped or self.service.pids.get(f"worker {index} ready") != pid:
            # Paused, or a new worker still starting (it has no runs yet): try the others.
            ready = [
                i
                for i in range(1, WORKERS + 1)
                if self.service.pids.get(f"worker {i} ready") == self.service.pid(f"worker {i}")
                and self.service.pid(f"worker {i}") not in self.stopped
            ]
            if not ready:
                self.note("no worker is ready: round skipped")
                return
            index = self.rng.choice(ready)
            pid = self.service.pid(f"worker {index}")
        if self.rng.random() < 0.5:
            os.kill(pid, signal.SIGKILL)
            self.note(f"SIGKILL worker {index} (pid {pid})")
            return
        # Longer than the lease (3 s) and the stall timeout (3 s): another worker takes the runs over.
        pause = self.rng.choice([1.0, 5.0, 6.5, 8.0])
        os.kill(pid, signal.SIGSTOP)
        self.note(f"SIGSTOP worker {index} (pid {pid}) for {pause:g}s")
        timer = threading.Timer(pause, self._continue, args=(index, pid))
        self.stopped[pid] = timer
        timer.start()

    def _continue(self, index: int, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.stopped.pop(pid, None)
        self.note(f"SIGCONT worker {index} (pid {pid})")

    def release_all(self) -> None:
        for pid, timer in list(self.stopped.items()):
            timer.cancel()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped.clear()


def _submit_with_chaos(
    client: httpx2.Client, base: str, chaos: Chaos, rng: random.Random
) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    total = CALLERS * RUNS_PER_CALLER
    gap = SUBMIT_SECONDS / total
    next_round = time.monotonic() + rng.uniform(1.0, 2.5)
    for index in range(total):
        entries, account, caller = rng.randint(4, 8), f"acct-{index:03d}", f"caller-{index % CALLERS}"
        answer = client.post(
            f"{base}/runs",
            json={"prompt": f"Record {entries} payments for account {account}", "caller_id": caller},
        )
        assert answer.status_code == 202, answer.text
        runs[answer.json()["run_id"]] = {"entries": entries, "account": account, "caller": caller}
        if time.monotonic() >= next_round:
            chaos.round()
            next_round = time.monotonic() + rng.uniform(1.5, 3.0)
        time.sleep(gap)
    # Two more rounds once everything is in flight.
    for _ in range(2):
        time.sleep(rng.uniform(1.0, 2.5))
        chaos.round()
    return runs


def _wait_all(client: httpx2.Client, base: str, runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ended: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + END_TIMEOUT
    while len(ended) < len(runs) and time.monotonic() < deadline:
        for run_id in runs:
            if run_id not in ended:
                answer = client.get(f"{base}/runs/{run_id}/result")
                if answer.status_code == 200:
                    ended[run_id] = answer.json()
        time.sleep(0.5)
    return ended


async def _audit_and_budget(
    database_url: str, env: dict[str, str], runs: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    audit = SqlAudit(
        AuditSqlSettings(
            url=database_url.replace("postgresql://", "postgresql+psycopg://", 1), db_schema="executus"
        )
    )
    budget = RedisBudget(
        BudgetRedisSettings(
            url=env["EXECUTUS_BUDGET_REDIS__URL"], key_prefix=env["EXECUTUS_BUDGET_REDIS__KEY_PREFIX"]
        )
    )
    try:
        records = {run_id: await audit.get_run(run_id) for run_id in runs}
        trails = {run_id: await audit.trail(run_id) for run_id in runs}
        usage = {f"caller-{c}": await budget.usage(f"caller-{c}") for c in range(CALLERS)}
    finally:
        await audit.aclose()
        await budget.aclose()
    return records, trails, usage


def test_durable_runs_across_killed_and_paused_workers(
    service_database: str, service_redis: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    env = service_env(
        service_database,
        service_redis,
        tmp_path,
        EXECUTUS_SERVICE__CONCURRENCY="10",
        EXECUTUS_SERVICE__QUEUE_CONNECTIONS="3",
        EXECUTUS_SERVICE__LEDGER_CONNECTIONS="3",
        EXECUTUS_SERVICE__TOOL_SECONDS="1.0",
        EXECUTUS_SERVICE__HEARTBEAT_SECONDS="1",
        EXECUTUS_SERVICE__STALLED_SECONDS="3",
        EXECUTUS_SERVICE__SWEEP_SECONDS="0.5",
        EXECUTUS_SERVICE__BUSY_RETRY_SECONDS="0.5",
        EXECUTUS_SERVICE__SPILL_IMPORT_SECONDS="2",
        EXECUTUS_CHECKPOINT_SQL__LEASE_SECONDS="3",
        EXECUTUS_CHECKPOINT_SQL__HEARTBEAT_SECONDS="1",
        EXECUTUS_BUDGET_REDIS__MAX_RUNS=str(RUNS_PER_CALLER),
        # On a loaded machine (the CI box runs other suites' processes too) Redis answers can take
        # seconds; budgets fail closed, and a run refused for that is not what this test is about.
        EXECUTUS_BUDGET_REDIS__TIMEOUT="5",
    )
    service = Service(env, "--workers", str(WORKERS), log_path=tmp_path / "service.log")
    chaos = Chaos(service, rng)
    problems: list[str] = []
    kinds: Counter[str] = Counter()

    problem_runs: list[str] = []

    def problem(kind: str, text: str) -> None:
        kinds[kind] += 1
        problems.append(text)
        named = re.search(r"run ([0-9a-f]{32})", text)
        if named is not None and named.group(1) not in problem_runs:
            problem_runs.append(named.group(1))

    try:
        base = service.wait_ready()
        model_url = next(line.split()[1] for line in service.lines if line.startswith("model http"))
        with httpx2.Client(timeout=30) as client:
            try:
                runs = _submit_with_chaos(client, base, chaos, rng)
            finally:
                time.sleep(max(0.0, max((t.interval for t in chaos.stopped.values()), default=0.0)))
                chaos.release_all()
            ended = _wait_all(client, base, runs)
            served = client.get(f"{model_url}/stats").json()

            # Every run ends ok, with the output its request calls for.
            for run_id, asked in runs.items():
                result = ended.get(run_id)
                want = expected_output(asked["entries"], asked["account"])
                if result is None:
                    problem(
                        "did not end",
                        f"run {run_id} ({asked['account']}) did not end within {END_TIMEOUT:g}s",
                    )
                elif result["status"] != "ok" or result["output"] != want:
                    problem(
                        "ended wrong",
                        f"run {run_id} ({asked['account']}) ended {result['status']}: "
                        f"{result['output'] or result['error']!r}",
                    )

            # The budget is shared by every process: each caller's next run is refused.
            if len(ended) == len(runs):
                extra = client.post(
                    f"{base}/runs",
                    json={"prompt": "Record 1 payment for account over", "caller_id": "caller-0"},
                )
                over = client.get(f"{base}/runs/{extra.json()['run_id']}/result")
                deadline = time.monotonic() + 30
                while over.status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.3)
                    over = client.get(f"{base}/runs/{extra.json()['run_id']}/result")
                if over.json().get("status") != "budget_exceeded":
                    problem(
                        "next run not refused",
                        f"caller-0's run past max_runs={RUNS_PER_CALLER} was not refused: {over.json()}",
                    )

        # Audit rows the database did not take in time were saved to spill files; the workers load them.
        spills = tmp_path / "audit_sql-unwritten"
        deadline = time.monotonic() + 30
        while any(spills.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.5)
        if any(spills.glob("*")):
            problem(
                "audit spill files left",
                f"audit rows left in spill files: {sorted(p.name for p in spills.glob('*'))}",
            )
        records, trails, usage = asyncio.run(_audit_and_budget(service_database, env, runs))
        with psycopg.connect(service_database) as conn:
            calls = conn.execute(
                "SELECT run_id, call_id, attempt, resumed, worker, amount, finished_at IS NOT NULL, fenced "
                "FROM service_ledger_calls ORDER BY id"
            ).fetchall()
            entries = conn.execute("SELECT run_id, amount FROM service_ledger_entries").fetchall()
            ends = {r: (s, n) for r, s, n in conn.execute("SELECT run_id, status, ends FROM service_results")}
            # Where each run that did not end is stuck: its checkpoint row and its job.
            for run_id in set(runs) - set(ended):
                row = conn.execute(
                    "SELECT status, owner, round((lease_until - extract(epoch FROM clock_timestamp()))::numeric, 1), "
                    "claimed_at IS NOT NULL, message_count, error FROM executus.executus_checkpoint_runs "
                    "WHERE run_id = %s",
                    (run_id,),
                ).fetchone()
                job = conn.execute(
                    "SELECT id, status::text, worker_id, attempts FROM procrastinate_jobs WHERE args->>'run_id' = %s",
                    (run_id,),
                ).fetchone()
                problem(
                    "stuck",
                    f"run {run_id} is stuck: checkpoint (status, owner, lease left, claimed, messages, error) "
                    f"{row}; job (id, status, worker, attempts) {job}",
                )
            jobs = Counter(
                status
                for (status,) in conn.execute(
                    "SELECT status::text FROM procrastinate_jobs WHERE task_name = 'executus_service.run_agent'"
                )
            )
    finally:
        chaos.release_all()
        code = service.stop()

    # One output per run: one worker ended each run (none, if it died before keeping the end).
    for run_id in runs:
        status, count = ends.get(run_id, (None, 0))
        if run_id not in ends or count > 1:
            problem("ended more than once", f"run {run_id}: {count} workers ended it (the first {status})")

    # The ledger: each entry once; each call executed once unflagged, re-runs flagged; no stray calls.
    # An execution the ledger fenced off (a paused worker that woke after another took its run over
    # and started the call again with a higher attempt) wrote nothing: it is counted, not judged.
    by_key: dict[tuple[str, str], list[tuple[int, bool, str, bool]]] = defaultdict(list)
    fenced = 0
    for run_id, call_id, attempt, resumed, worker, _amount, finished, refused in calls:
        if refused:
            fenced += 1
        else:
            by_key[(run_id, call_id)].append((attempt, resumed, worker, finished))
    flagged = 0
    for (run_id, call_id), executions in by_key.items():
        # The first execution the ledger saw may itself be flagged: the core counts a start before the
        # tool runs, so an attempt killed before the tool logged anything still makes the next one 2.
        # Executions are taken in attempt order, not in the order the ledger logged them: a worker
        # paused (SIGSTOP) while its tool was already running logs that attempt when it is continued,
        # after the flagged re-run of the worker that took the run over (docs/durability.md, "Where
        # the store's guarantees stop": a tool already running when its worker was paused finishes).
        executions = sorted(executions, key=lambda e: e[0])
        plain = [e for e in executions if e[0] == 1 and not e[1]]
        again = executions[1:]
        flagged += sum(1 for e in executions if e[0] > 1 and e[1])
        attempts = [e[0] for e in executions]
        if len(plain) > 1 or any(not (e[0] > 1 and e[1]) for e in again) or attempts != sorted(set(attempts)):
            problem(
                "re-run not flagged",
                f"run {run_id} call {call_id} ran {len(executions)} times as (attempt, resumed, worker, finished) "
                f"{executions}: each re-run must be flagged (resumed, attempt counting up)",
            )
    amounts: dict[str, Counter[int]] = defaultdict(Counter)
    for run_id, amount in entries:
        amounts[run_id][amount] += 1
    executed: dict[str, set[str]] = defaultdict(set)
    for run_id, call_id in by_key:
        executed[run_id].add(call_id)
    for run_id, asked in runs.items():
        want = Counter(range(1, asked["entries"] + 1))
        if amounts[run_id] != want:
            problem(
                "ledger entries wrong",
                f"run {run_id}: ledger entries {dict(amounts[run_id])}, want each of 1..{asked['entries']} once",
            )
        if len(executed[run_id]) != asked["entries"]:
            problem(
                "stray tool calls",
                f"run {run_id}: {len(executed[run_id])} distinct tool calls executed for {asked['entries']} entries "
                "(a worker ran calls the run never saved)",
            )

    # The audit trail of every run is whole; no tool result was recorded twice.
    resumed_runs = 0
    for run_id in runs:
        record, trail = records.get(run_id), trails.get(run_id, [])
        if record is None:
            problem("no audit record", f"run {run_id}: no audit record")
            continue
        resumed_runs += record.attempts > 1
        ends = [e.data.get("status") for e in trail if e.kind == "event" and e.name == "run.end"]
        # At least once: a worker paused between recording its end and completing the checkpoint
        # leaves the run to the one that takes it over, which ends it again with the saved answer.
        if not ends or set(ends) != {"ok"}:
            problem(
                "run.end statuses wrong",
                f"run {run_id}: run.end statuses in its trail {ends}, want ok (only)",
            )
        steps = {e.iteration for e in trail if e.kind == "step"}
        if record.steps and steps != set(range(1, record.steps + 1)):
            problem(
                "trail steps missing",
                f"run {run_id}: trail has steps {sorted(s for s in steps if s)} of {record.steps}",
            )
        tools = Counter(e.call_id for e in trail if e.kind == "tool")
        twice = [c for c, n in tools.items() if n > 1]
        if twice:
            problem(
                "completed call re-run",
                f"run {run_id}: tool results recorded more than once (completed calls re-run): {twice}",
            )
        missing = executed[run_id] - set(tools)
        if missing:
            problem(
                "tool result missing in trail",
                f"run {run_id}: executed calls with no tool result in the trail (attempt, resumed, worker, "
                f"finished): { {c: by_key[(run_id, c)] for c in sorted(missing)} }",
            )

    # Each caller's budget: every run counted once; charged between what was recorded and what was served.
    for caller, found in usage.items():
        mine = [r for r, a in runs.items() if a["caller"] == caller]
        window = found.windows[0]
        recorded = sum(records[r].input_tokens + records[r].output_tokens for r in mine if records.get(r))
        model = sum(served.get(runs[r]["account"], {}).get("tokens", 0) for r in mine)
        # the refused extra run of caller-0 counts nothing
        if window.runs != len(mine):
            problem("budget run count", f"{caller}: the budget counted {window.runs} runs for {len(mine)}")
        if not recorded <= window.tokens <= model:
            problem(
                "budget tokens",
                f"{caller}: the budget charged {window.tokens} tokens; the runs recorded {recorded} and the "
                f"model served {model}",
            )

    if jobs.get("failed"):
        problem("jobs failed", f"procrastinate jobs: {dict(jobs)}")
    if resumed_runs == 0 or flagged == 0:
        problem(
            "chaos did not exercise recovery",
            f"the chaos resumed {resumed_runs} runs and flagged {flagged} re-runs: it must exercise recovery",
        )

    report = "\n".join(
        [
            f"{len(runs)} runs, {resumed_runs} resumed, {flagged} flagged re-runs, {fenced} fenced off; "
            f"{len(problems)} problems (seed {SEED}): "
            + ", ".join(f"{kind}: {count}" for kind, count in kinds.most_common()),
            *problems[:60],
            *_trails(problem_runs[:TRAILS_SHOWN], trails, by_key),
            "chaos:",
            *chaos.log,
            f"jobs: {dict(jobs)}",
        ]
    )
    print(report)
    (tmp_path / "proof-report.txt").write_text(
        "\n".join([report, "all problems:", *problems, "", "service log tail:", service.tail(200)])
    )
    assert code == 0, f"the service did not stop cleanly ({code}):\n{service.tail()}"
    assert not problems, report
    print(
        json.dumps(
            {"runs": len(runs), "resumed_runs": resumed_runs, "flagged_reruns": flagged, "fenced": fenced}
        )
    )
