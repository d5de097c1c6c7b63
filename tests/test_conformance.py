"""The conformance suites pass against the reference implementations and fail against broken ones.

Each suite runs in full against the in-memory port (and, for palette and delivery, against the
core's built-in ones). Then, for each suite, deliberately broken implementations are run through
the check that must catch them, which has to fail with an `AssertionError`: a suite that cannot
fail proves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from executus_core import Agent, DeliveryTarget, Executor, Result
from executus_core.delivery import FileDelivery
from executus_core.errors import BudgetExceeded, RunTakenOver
from executus_core.testing import (
    AuditConformance,
    AuditSubject,
    BudgetConformance,
    CheckpointStoreConformance,
    CriticConformance,
    DeliveryConformance,
    DeliverySubject,
    MemoryAudit,
    MemoryBudget,
    MemoryCheckpointStore,
    MemoryCritic,
    MemoryDelivery,
    MemoryPalette,
    PaletteConformance,
    PaletteSubject,
    RecordedRun,
    ScriptedModel,
    run_check,
)
from executus_core.testing.conformance import audit, budget, checkpoint, critic, delivery, palette
from executus_core.testing.memory import (
    MemoryCheckpointer,
    MemoryCheckpointStorage,
    MemoryCriticHandle,
    MemoryRecorder,
)
from executus_core.types import (
    CheckpointState,
    Message,
    ModelResponse,
    RunInfo,
    RunStats,
    RunStatus,
    RunTranscript,
    Usage,
)

# --- the reference implementations pass ---------------------------------------------------------


def memory_audit_subject() -> AuditSubject:
    made = MemoryAudit()
    return AuditSubject(made, read=made.run)


class TestMemoryAudit(AuditConformance):
    @pytest.fixture
    def make_audit(self) -> Callable[[], AuditSubject]:
        return memory_audit_subject


class TestMemoryBudget(BudgetConformance):
    @pytest.fixture
    def make_budget(self) -> Any:
        return MemoryBudget


def damage_memory(storage: MemoryCheckpointStorage) -> Callable[[str, str], None]:
    """Make a saved checkpoint unreadable, as a bad row in a database would be."""

    def damage(run_id: str, part: str) -> None:
        with storage.lock:
            saved = storage.runs[run_id]
            if part == "message":
                saved.messages[1] = {"role": "nobody", "content": 42}
            else:
                saved.info = {"run_id": run_id, "started_at": "not a time"}

    return damage


class TestMemoryCheckpointStore(CheckpointStoreConformance):
    @pytest.fixture
    def storage(self) -> MemoryCheckpointStorage:
        return MemoryCheckpointStorage()

    @pytest.fixture
    def make_store(self, storage: MemoryCheckpointStorage) -> Any:
        async def make(
            **options: Any,
        ) -> MemoryCheckpointStore:  # an async factory works as well as a sync one
            return MemoryCheckpointStore(storage=storage, **options)

        return make

    @pytest.fixture
    def damage_checkpoint(self, storage: MemoryCheckpointStorage) -> Callable[[str, str], None]:
        return damage_memory(storage)


class TestMemoryCritic(CriticConformance):
    @pytest.fixture
    def make_critic(self) -> Any:
        return lambda: MemoryCritic(hard_timeout=60, idle_timeout=5, max_runtime=600)


class TestMemoryCriticWithoutDeadline(CriticConformance):
    """A critic that only steers (``deadline()`` is None) is within the contract too."""

    @pytest.fixture
    def make_critic(self) -> Any:
        return MemoryCritic


def memory_palette_subject() -> PaletteSubject:
    made = MemoryPalette()

    async def shout(inputs: dict[str, Any]) -> str:
        await asyncio.sleep(0.001)
        return str(inputs["text"]).upper()

    made.add_skill(
        "shout", shout, input_schema={"type": "object", "properties": {"text": {"type": "string"}}}
    )
    made.add_agent("echo", lambda prompt: f"echo: {prompt}")
    return PaletteSubject(made, skill="shout", skill_inputs={"text": "hi"}, agent="echo")


class TestMemoryPalette(PaletteConformance):
    @pytest.fixture
    def make_palette(self) -> Any:
        return memory_palette_subject


class TestInProcessPalette(PaletteConformance):
    """The core's built-in palette: registered agents and skills run as child runs of an executor."""

    @pytest.fixture
    def make_palette(self) -> Any:
        def make() -> PaletteSubject:
            executor = Executor(entry_points=False)
            helper = Agent(
                name="helper", model=ScriptedModel([ModelResponse(text="hello")] * 4, per_run=True)
            )
            executor.register_agent(helper)
            executor.register_skill("greet", helper, prompt="Greet {name}.")
            return PaletteSubject(
                executor.palette, skill="greet", skill_inputs={"name": "Ada"}, agent="helper"
            )

        return make


class TestMemoryDelivery(DeliveryConformance):
    @pytest.fixture
    def make_delivery(self) -> Any:
        def make() -> DeliverySubject:
            made = MemoryDelivery()
            return DeliverySubject(made, DeliveryTarget(kind="memory"), received=made.results)

        return make


class TestFileDelivery(DeliveryConformance):
    """The core's built-in file delivery, reading back the result.json files it wrote."""

    @pytest.fixture
    def make_delivery(self, tmp_path: Path) -> Any:
        def received() -> list[Result]:
            return [
                Result.model_validate_json(p.read_bytes()) for p in sorted(tmp_path.glob("*/result.json"))
            ]

        return lambda: DeliverySubject(
            FileDelivery(), DeliveryTarget(kind="file", path=str(tmp_path)), received
        )


def test_every_suite_lists_each_of_its_checks_as_a_test() -> None:
    suites = [
        (AuditConformance, audit.AUDIT_CHECKS),
        (BudgetConformance, budget.BUDGET_CHECKS),
        (CheckpointStoreConformance, checkpoint.CHECKPOINT_CHECKS),
        (CriticConformance, critic.CRITIC_CHECKS),
        (PaletteConformance, palette.PALETTE_CHECKS),
        (DeliveryConformance, delivery.DELIVERY_CHECKS),
    ]
    for suite, checks in suites:
        tests = [name for name in vars(suite) if name.startswith("test_")]
        assert len(tests) == len(checks), f"{suite.__name__} runs {len(tests)} tests for {len(checks)} checks"
        for check in checks:
            assert check.__doc__, f"{check.__name__} has no docstring"


# --- broken implementations are caught ----------------------------------------------------------


class StallOnce:
    """A synchronous 0.25 s stall of the event loop (a blocking driver call), once, on the call after
    the first ``after`` calls (a suite may warm a port up before it starts the clock)."""

    def __init__(self, after: int = 0) -> None:
        self.done = False
        self.calls = 0
        self.after = after

    def __call__(self) -> None:
        self.calls += 1
        if not self.done and self.calls > self.after:
            self.done = True
            time.sleep(0.25)


def assert_catches(check: Any, factory: Any, *words: str) -> None:
    """``check`` fails on ``factory``'s broken object with an AssertionError saying ``words``."""
    with pytest.raises(AssertionError) as caught:
        run_check(check, factory, timeout=20)
    message = str(caught.value)
    for word in words:
        assert word in message, f"{check.__name__} failed, but its message does not say {word!r}: {message}"


# Audit


class ForgetfulRecorder(MemoryRecorder):
    """Buffers events and writes them in batches of 64, but close() forgets the last partial batch."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.buffer: list[tuple[str, dict[str, Any]]] = []

    def log_event(self, type: str, payload: Any) -> None:
        self.buffer.append((type, dict(payload)))
        if len(self.buffer) == 64:
            self.record.events.extend(self.buffer)
            self.buffer = []


class ForgetfulAudit(MemoryAudit):
    async def start_run(self, info: RunInfo) -> MemoryRecorder:
        record = self.runs[info.run_id] = RecordedRun(run_id=info.run_id, info=info)
        return ForgetfulRecorder(record, self._lock)


class SharedTrailAudit(MemoryAudit):
    """Every recorder appends to one shared trail: runs see each other's events."""

    shared: RecordedRun | None = None

    async def start_run(self, info: RunInfo) -> MemoryRecorder:
        if self.shared is None:
            self.shared = RecordedRun(run_id="shared")
        view = RecordedRun(run_id=info.run_id, info=info)
        # The run's record shares the lists of the one trail.
        view.events, view.steps, view.tool_calls, view.errors = (
            self.shared.events,
            self.shared.steps,
            self.shared.tool_calls,
            self.shared.errors,
        )
        self.runs[info.run_id] = view
        return MemoryRecorder(view, self._lock)


class BlockingRecorder(MemoryRecorder):
    stall: StallOnce

    async def close(self, stats: RunStats) -> None:
        self.stall()  # a synchronous database write on the event loop
        await super().close(stats)


class BlockingAudit(MemoryAudit):
    async def start_run(self, info: RunInfo) -> MemoryRecorder:
        recorder = await super().start_run(info)
        made = BlockingRecorder(recorder.record, self._lock)
        made.stall = self.stall
        return made

    def __init__(self) -> None:
        super().__init__()
        self.stall = StallOnce(after=1)  # the suite's warm-up run closes first


class EarlyRollupRecorder(MemoryRecorder):
    def log_event(self, type: str, payload: Any) -> None:
        super().log_event(type, payload)
        self.record.stats = RunStats(status="ok")  # a roll-up written before the run ended


class EarlyRollupAudit(MemoryAudit):
    async def start_run(self, info: RunInfo) -> MemoryRecorder:
        recorder = await super().start_run(info)
        return EarlyRollupRecorder(recorder.record, self._lock)


class ToolLessTranscriptAudit(MemoryAudit):
    """Keeps transcripts, but drops the tool messages (as a transcript rebuilt from a trail might)."""

    async def transcript(self, run_id: str) -> RunTranscript | None:
        found = await super().transcript(run_id)
        if found is not None:
            found.messages = [m for m in found.messages if m.role != "tool"]
        return found


class EndlessTranscriptAudit(MemoryAudit):
    """Shows a transcript's run as ended before its recorder was closed."""

    async def transcript(self, run_id: str) -> RunTranscript | None:
        found = await super().transcript(run_id)
        if found is not None and found.status is None:
            found.status = RunStatus.OK
        return found


def subject_of(made: MemoryAudit) -> Callable[[], AuditSubject]:
    return lambda: AuditSubject(made, read=made.run)


@pytest.mark.parametrize(
    ("make", "check", "words"),
    [
        (ForgetfulAudit, audit.check_audit_flushes_everything_at_close, ("missing", "close() must write")),
        (SharedTrailAudit, audit.check_audit_concurrent_runs_stay_apart, ("not its own",)),
        (BlockingAudit, audit.check_audit_never_blocks_the_loop, ("blocked the event loop",)),
        (EarlyRollupAudit, audit.check_audit_rollup_is_written_by_close, ("before close() was called",)),
        (
            ToolLessTranscriptAudit,
            audit.check_audit_keeps_transcripts,
            ("not the messages on_transcript got",),
        ),
        (EndlessTranscriptAudit, audit.check_audit_keeps_transcripts, ("a run not closed has not ended",)),
    ],
    ids=[
        "forgets-buffered-events",
        "shares-one-trail",
        "blocks-the-loop",
        "rollup-before-close",
        "transcript-loses-messages",
        "transcript-ended-before-close",
    ],
)
def test_audit_suite_catches(make: type[MemoryAudit], check: Any, words: tuple[str, ...]) -> None:
    assert_catches(check, subject_of(make()), *words)


def test_audit_suite_catches_an_audit_without_recorders() -> None:
    class NoRecorder(MemoryAudit):
        async def start_run(self, info: RunInfo) -> Any:
            return "recorder"

    assert_catches(audit.check_audit_records_a_run, subject_of(NoRecorder()), "not a RunRecorder")


# Budget


class NeverRefuses(MemoryBudget):
    async def check(self, caller_id: str) -> None:
        return None


class OneCounterForEveryone(MemoryBudget):
    """Counts every caller's usage against one key."""

    async def check(self, caller_id: str) -> None:
        await super().check("everyone")

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage) -> None:
        await super().commit("everyone", runtime_seconds, usage)


class RacyBudget:
    """Reads its counters, awaits its (pretend) store, then writes: concurrent calls lose updates."""

    def __init__(self, max_runs: int | None = None, max_tokens: int | None = None, **_: Any) -> None:
        self.max_runs, self.max_tokens = max_runs, max_tokens
        self.runs: dict[str, int] = {}
        self.tokens: dict[str, int] = {}

    async def check(self, caller_id: str) -> None:
        runs, tokens = self.runs.get(caller_id, 0), self.tokens.get(caller_id, 0)
        await asyncio.sleep(0.001)  # the round trip to the store
        if self.max_runs is not None and runs >= self.max_runs:
            raise BudgetExceeded("too many runs")
        if self.max_tokens is not None and tokens >= self.max_tokens:
            raise BudgetExceeded("too many tokens")
        self.runs[caller_id] = runs + 1

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage) -> None:
        tokens = self.tokens.get(caller_id, 0)
        await asyncio.sleep(0.001)
        self.tokens[caller_id] = tokens + usage.total_tokens


class NoRetryAfter(MemoryBudget):
    async def check(self, caller_id: str) -> None:
        try:
            await super().check(caller_id)
        except BudgetExceeded as exc:
            raise BudgetExceeded(exc.reason) from None


class RefusesWithValueError(MemoryBudget):
    async def check(self, caller_id: str) -> None:
        try:
            await super().check(caller_id)
        except BudgetExceeded as exc:
            raise ValueError(exc.reason) from None


class BlockingBudget(MemoryBudget):
    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self.stall = StallOnce()

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Usage) -> None:
        self.stall()
        await super().commit(caller_id, runtime_seconds, usage)


@pytest.mark.parametrize(
    ("make", "check", "words"),
    [
        (NeverRefuses, budget.check_budget_limits_runs_per_caller, ("never refused",)),
        (NeverRefuses, budget.check_budget_limits_tokens_per_caller, ("was not refused",)),
        (OneCounterForEveryone, budget.check_budget_limits_runs_per_caller, ("limits are per caller",)),
        (RacyBudget, budget.check_budget_concurrent_commits_all_count, ("concurrent commits were lost",)),
        (RacyBudget, budget.check_budget_concurrent_checks_admit_at_most_the_limit, ("atomic",)),
        (NoRetryAfter, budget.check_budget_window_says_when_to_retry, ("retry_after",)),
        (RefusesWithValueError, budget.check_budget_limits_runs_per_caller, ("refuse with BudgetExceeded",)),
        (BlockingBudget, budget.check_budget_never_blocks_the_loop, ("blocked the event loop",)),
    ],
    ids=[
        "never-refuses-runs",
        "never-refuses-tokens",
        "one-counter-for-all-callers",
        "racy-commits",
        "racy-checks",
        "no-retry-after",
        "refuses-with-value-error",
        "blocks-the-loop",
    ],
)
def test_budget_suite_catches(make: Any, check: Any, words: tuple[str, ...]) -> None:
    assert_catches(check, make, *words)


# Checkpoints


def shared(store: type[MemoryCheckpointStore], **fixed: Any) -> Callable[..., MemoryCheckpointStore]:
    """A factory of stores (workers) on one storage of their own, as the suite expects."""
    storage = MemoryCheckpointStorage()

    def make(**options: Any) -> MemoryCheckpointStore:
        return store(storage=storage, **{**options, **fixed})

    make.storage = storage  # type: ignore[attr-defined]  # for a check that damages it
    return make


class RewritingCheckpointer(MemoryCheckpointer):
    """Treats every save as the whole transcript: what was saved before is lost."""

    async def save(self, state: CheckpointState) -> None:
        await super().save(state.model_copy(update={"offset": 0}))


class AppendingCheckpointer(MemoryCheckpointer):
    """Appends every save whatever its offset: a retried save duplicates, a gap goes unnoticed."""

    async def save(self, state: CheckpointState) -> None:
        with self.store._lock:
            length = len(self.store.runs[self.run_id].messages)
        await super().save(state.model_copy(update={"offset": length}))


class NeverClears(MemoryCheckpointer):
    async def complete(self) -> None:
        pass

    async def fail(self, error: str) -> None:
        pass


class RacingSaves(MemoryCheckpointer):
    """Lets saves overtake each other: a later offset may be written before an earlier one."""

    async def save(self, state: CheckpointState) -> None:
        await asyncio.sleep(0.005 * max(0, 10 - state.offset))
        await super().save(state)


class ForgetsAttempts(MemoryCheckpointer):
    async def save(self, state: CheckpointState) -> None:
        await super().save(state.model_copy(update={"attempts": {}}))


class SilentWhenTakenOver(MemoryCheckpointer):
    """Swallows the refusal: the stale worker never hears it lost the run."""

    async def save(self, state: CheckpointState) -> None:
        with contextlib.suppress(RunTakenOver):
            await super().save(state)


class WrongRefusal(MemoryCheckpointer):
    async def save(self, state: CheckpointState) -> None:
        try:
            await super().save(state)
        except RunTakenOver as exc:
            raise RuntimeError(str(exc)) from None


class ReleasesWithoutBackoff(MemoryCheckpointer):
    async def release(self, error: str | None = None) -> None:
        await super().release()


def store_with(checkpointer: type[MemoryCheckpointer]) -> Callable[..., MemoryCheckpointStore]:
    class Store(MemoryCheckpointStore):
        async def for_run(self, info: RunInfo, agent: Agent) -> MemoryCheckpointer:
            made = await super().for_run(info, agent)
            return checkpointer(self, info.run_id, made.epoch)

    return shared(Store)


class HandsOutTwice(MemoryCheckpointStore):
    async def interrupted(self, limit: int | None = None) -> list[Any]:
        found = await super().interrupted(limit)
        for item in found:
            self.runs[item.info.run_id].held = False
        return found


class NewestFirst(MemoryCheckpointStore):
    async def interrupted(self, limit: int | None = None) -> list[Any]:
        return list(reversed(await super().interrupted(limit)))


class IgnoresLimit(MemoryCheckpointStore):
    async def interrupted(self, limit: int | None = None) -> list[Any]:
        return await super().interrupted()


class ForgetsOnResume(MemoryCheckpointStore):
    async def for_run(self, info: RunInfo, agent: Agent) -> MemoryCheckpointer:
        self.runs.pop(info.run_id, None)  # a resume starts from nothing
        return await super().for_run(info, agent)


class ForgetsTheAgent(MemoryCheckpointStore):
    async def for_run(self, info: RunInfo, agent: Agent) -> MemoryCheckpointer:
        return await super().for_run(info, agent.model_copy(update={"name": "someone else"}))


class BlockingStore(MemoryCheckpointStore):
    async def interrupted(self, limit: int | None = None) -> list[Any]:
        StallOnce()()
        return await super().interrupted(limit)


class OneOwnerPerProcess(MemoryCheckpointStore):
    """Found case 2: every store of the process passes for the same owner (hostname:pid)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.owner = "host:4242"


class TakesLiveRuns(MemoryCheckpointStore):
    """Hands out every open run not handed out yet, live or not (the old boot rule)."""

    async def interrupted(self, limit: int | None = None) -> list[Any]:
        with self._lock:
            for saved in self.runs.values():
                if saved.state == "open" and not saved.claimed:
                    saved.held = False
        return await super().interrupted(limit)


class TakesItsOwnLapsedRuns(MemoryCheckpointStore):
    async def interrupted(self, limit: int | None = None) -> list[Any]:
        now = self.storage.clock()
        with self._lock:
            for saved in self.runs.values():
                if saved.owner == self.owner and saved.lease_until is not None and saved.lease_until < now:
                    saved.held = False
        return await super().interrupted(limit)


class ClaimsForever(MemoryCheckpointStore):
    """Found case 4: a claim is renewed for ever, even when the run is never resumed."""

    async def interrupted(self, limit: int | None = None) -> list[Any]:
        found = await super().interrupted(limit)
        with self._lock:
            for item in found:
                self.runs[item.info.run_id].lease_until = None
        return found


class NeverGivesUp(MemoryCheckpointStore):
    def __init__(self, **options: Any) -> None:
        super().__init__(**{**options, "max_resume_attempts": 1_000_000})


class RaisesOnCorrupt(MemoryCheckpointStore):
    """Found case 5: one unreadable checkpoint makes interrupted() raise for every run."""

    async def interrupted(self, limit: int | None = None) -> list[Any]:
        found = await super().interrupted(limit)
        with self._lock:
            corrupt = [run_id for run_id, saved in self.runs.items() if saved.state == "corrupt"]
        if corrupt:
            raise ValueError(f"cannot read run {corrupt[0]}")
        return found


def test_memory_store_quarantine_keeps_the_error_and_the_rows() -> None:
    storage = MemoryCheckpointStorage()
    store = MemoryCheckpointStore(storage=storage)

    async def main() -> None:
        info = RunInfo(run_id="q1", subject_id="a", name="a", caller_id="u1")
        checkpointer = await store.for_run(info, Agent(name="a", model="scripted:none"))
        await checkpointer.save(
            CheckpointState(run_id="q1", iteration=0, offset=0, messages=[Message.user("hi")])
        )
        await checkpointer.release()
        storage.runs["q1"].messages[0] = {"role": "nobody"}
        assert await store.peer().interrupted() == []

    asyncio.run(main())
    saved = storage.runs["q1"]
    assert saved.state == "corrupt" and saved.messages == [{"role": "nobody"}]
    assert saved.error is not None and saved.error.startswith(
        "corrupt checkpoint: message 0 does not read back"
    )


RAISES_ON_CORRUPT = shared(RaisesOnCorrupt)


async def check_quarantine_of_raises_on_corrupt(factory: Any) -> None:
    storage = RAISES_ON_CORRUPT.storage  # type: ignore[attr-defined]
    await checkpoint.check_checkpoint_quarantines_a_corrupt_checkpoint(factory, damage_memory(storage))


@pytest.mark.parametrize(
    ("make", "check", "words"),
    [
        (
            store_with(RewritingCheckpointer),
            checkpoint.check_checkpoint_round_trips_a_transcript,
            ("offset",),
        ),
        (
            store_with(AppendingCheckpointer),
            checkpoint.check_checkpoint_saves_append_at_their_offset,
            ("hole",),
        ),
        (
            store_with(RacingSaves),
            checkpoint.check_checkpoint_interleaved_saves_land_in_order,
            ("save (offset",),
        ),
        (
            store_with(ForgetsAttempts),
            checkpoint.check_checkpoint_keeps_tool_call_attempts,
            ("latest count",),
        ),
        (
            store_with(NeverClears),
            checkpoint.check_checkpoint_complete_and_fail_clear_the_run,
            ("completed",),
        ),
        (shared(HandsOutTwice), checkpoint.check_checkpoint_hands_each_run_out_once, ("handed out",)),
        (shared(NewestFirst), checkpoint.check_checkpoint_lists_oldest_first, ("oldest first",)),
        (shared(IgnoresLimit), checkpoint.check_checkpoint_interrupted_takes_a_limit, ("limit=2",)),
        (
            shared(ForgetsOnResume),
            checkpoint.check_checkpoint_resumed_run_continues,
            ("save (offset 5) raised",),
        ),
        (shared(ForgetsTheAgent), checkpoint.check_checkpoint_round_trips_a_transcript, ("agent.spec()",)),
        (
            shared(BlockingStore),
            checkpoint.check_checkpoint_never_blocks_the_loop,
            ("blocked the event loop",),
        ),
        (
            store_with(SilentWhenTakenOver),
            checkpoint.check_checkpoint_a_stale_writer_is_refused,
            ("returned None",),
        ),
        (
            store_with(WrongRefusal),
            checkpoint.check_checkpoint_a_stale_writer_is_refused,
            ("raised RuntimeError",),
        ),
        (store_with(NeverClears), checkpoint.check_checkpoint_a_takeover_is_seen, ("complete()",)),
        (shared(OneOwnerPerProcess), checkpoint.check_checkpoint_stores_share_nothing, ("took over a run",)),
        (shared(TakesLiveRuns), checkpoint.check_checkpoint_stores_share_nothing, ("handed out",)),
        (
            shared(TakesItsOwnLapsedRuns),
            checkpoint.check_checkpoint_adopts_dead_owners_runs_never_its_own,
            ("its own run",),
        ),
        (shared(ClaimsForever), checkpoint.check_checkpoint_a_claim_never_resumed_lapses, ("stuck",)),
        (
            store_with(ReleasesWithoutBackoff),
            checkpoint.check_checkpoint_release_with_error_backs_off,
            ("at once",),
        ),
        (shared(NeverGivesUp), checkpoint.check_checkpoint_release_with_error_backs_off, ("give it up",)),
        (RAISES_ON_CORRUPT, check_quarantine_of_raises_on_corrupt, ("CheckpointStore.interrupted raised",)),
    ],
    ids=[
        "rewrites-everything",
        "ignores-offsets",
        "racing-saves",
        "forgets-attempts",
        "never-clears",
        "hands-out-twice",
        "newest-first",
        "ignores-limit",
        "forgets-on-resume",
        "forgets-the-agent",
        "blocks-the-loop",
        "silent-when-taken-over",
        "wrong-refusal",
        "stale-complete-ends-the-run",
        "one-owner-per-process",
        "takes-live-runs",
        "takes-its-own-lapsed-runs",
        "claims-forever",
        "no-backoff",
        "never-gives-up",
        "raises-on-corrupt",
    ],
)
def test_checkpoint_suite_catches(make: Any, check: Any, words: tuple[str, ...]) -> None:
    assert_catches(check, make, *words)


# Critic


class NaiveHandle(MemoryCriticHandle):
    def deadline(self) -> Any:
        found = super().deadline()
        return None if found is None else found.replace(tzinfo=None)


class StickyHandle(MemoryCriticHandle):
    def steer(self) -> list[Message]:
        return [Message.user("wrap up")]  # never drained


class BlockingHandle(MemoryCriticHandle):
    def record_step(self, iteration: int) -> None:
        if iteration == 7 and self.info.run_id.startswith("conformance-3-"):
            time.sleep(0.25)
        super().record_step(iteration)


class UnsafeHandle(MemoryCriticHandle):
    """deadline() iterates over state record_* mutates, with no lock."""

    def record_tool_start(self, name: str, arguments: Any) -> None:
        self.tools.append((name, dict(arguments)))
        if len(self.tools) % 7 == 0:
            raise RuntimeError("list changed during iteration")


class AsyncHandle(MemoryCriticHandle):
    async def steer(self) -> list[Message]:  # type: ignore[override]
        return []


class GlobalStop(MemoryCriticHandle):
    stopped_all = False

    def stop(self) -> None:
        GlobalStop.stopped_all = True

    def deadline(self) -> Any:
        return None if GlobalStop.stopped_all else super().deadline()


def critic_with(handle: type[MemoryCriticHandle]) -> Callable[[], MemoryCritic]:
    class Critic(MemoryCritic):
        async def monitor(self, info: RunInfo, soft_timeout: float) -> MemoryCriticHandle:
            made = self.handles[info.run_id] = handle(self, info, soft_timeout)
            return made

    return lambda: Critic(hard_timeout=60, idle_timeout=5)


@pytest.mark.parametrize(
    ("make", "check", "words"),
    [
        (critic_with(NaiveHandle), critic.check_critic_monitors_a_run, ("timezone-aware",)),
        (critic_with(StickyHandle), critic.check_critic_steer_drains, ("returned once",)),
        (critic_with(BlockingHandle), critic.check_critic_never_blocks_the_loop, ("blocked the event loop",)),
        (
            critic_with(UnsafeHandle),
            critic.check_critic_handle_is_safe_from_two_tasks_and_a_thread,
            ("raised",),
        ),
        (critic_with(AsyncHandle), critic.check_critic_monitors_a_run, ("synchronous",)),
        (critic_with(GlobalStop), critic.check_critic_runs_stay_apart, ("share state",)),
    ],
    ids=[
        "naive-deadline",
        "sticky-steer",
        "blocks-the-loop",
        "raises-under-use",
        "async-steer",
        "global-stop",
    ],
)
def test_critic_suite_catches(make: Any, check: Any, words: tuple[str, ...]) -> None:
    GlobalStop.stopped_all = False
    assert_catches(check, make, *words)


# Palette


class PositionalPalette(MemoryPalette):
    async def invoke_skill(self, caller_id, channel_id, name, inputs, parent_id, /):  # type: ignore[no-untyped-def,override]
        return await super().invoke_skill(caller_id, channel_id, name, inputs, parent_id)


class DictPalette(MemoryPalette):
    async def invoke_agent(self, **kwargs: Any) -> Any:  # type: ignore[override]
        output, run_id, status = await super().invoke_agent(**kwargs)
        return {"output": output, "run_id": run_id, "status": status}


class OneRunIdPalette(MemoryPalette):
    async def invoke_skill(self, **kwargs: Any) -> Any:  # type: ignore[override]
        output, _, status = await super().invoke_skill(**kwargs)
        return output, "run-1", status


class MadeUpStatusPalette(MemoryPalette):
    async def invoke_skill(self, **kwargs: Any) -> Any:  # type: ignore[override]
        output, run_id, _ = await super().invoke_skill(**kwargs)
        return output, run_id, "done"


class ResolvesEverything(MemoryPalette):
    async def resolve_skill(self, caller_id: str, name: str) -> Any:
        return await super().resolve_skill(caller_id, "shout")


class BlockingPalette(MemoryPalette):
    def __init__(self) -> None:
        super().__init__()
        self.stall = StallOnce()

    async def resolve_agent(self, caller_id: str, name: str) -> Any:
        self.stall()
        return await super().resolve_agent(caller_id, name)


def palette_of(make: type[MemoryPalette]) -> Callable[[], PaletteSubject]:
    def build() -> PaletteSubject:
        subject = memory_palette_subject()
        made = make()
        made.skills, made.agents = subject.palette.skills, subject.palette.agents  # type: ignore[attr-defined]
        subject.palette = made
        return subject

    return build


@pytest.mark.parametrize(
    ("make", "check", "words"),
    [
        (PositionalPalette, palette.check_palette_invokes_a_skill_by_keyword, ("TypeError",)),
        (DictPalette, palette.check_palette_invokes_an_agent_by_keyword, ("(output, run_id, status)",)),
        (OneRunIdPalette, palette.check_palette_concurrent_invokes_stay_apart, ("distinct run ids",)),
        (MadeUpStatusPalette, palette.check_palette_invokes_a_skill_by_keyword, ("RunStatus",)),
        (ResolvesEverything, palette.check_palette_resolves_by_keyword, ("does not serve",)),
        (BlockingPalette, palette.check_palette_never_blocks_the_loop, ("blocked the event loop",)),
    ],
    ids=[
        "positional-only",
        "returns-a-dict",
        "one-run-id",
        "made-up-status",
        "resolves-everything",
        "blocks",
    ],
)
def test_palette_suite_catches(make: type[MemoryPalette], check: Any, words: tuple[str, ...]) -> None:
    assert_catches(check, palette_of(make), *words)


# Delivery


class StringKinds(MemoryDelivery):
    def __init__(self) -> None:
        super().__init__()
        self.kinds = "memory"  # type: ignore[assignment]  # `"mem" in "memory"` is True: a str is not a set


class DropsErrors(MemoryDelivery):
    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        pass


class DeliversTwice(MemoryDelivery):
    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        await super().deliver(target, result)
        if int(result.run_id.split("-")[1]) % 2:
            await super().deliver(target, result)


class LosesArtifacts(MemoryDelivery):
    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        await super().deliver(target, result.model_copy(update={"artifacts": []}))


class BlockingDelivery(MemoryDelivery):
    def __init__(self) -> None:
        super().__init__()
        self.stall = StallOnce()

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        self.stall()
        await super().deliver(target, result)


def delivery_of(make: type[MemoryDelivery]) -> Callable[[], DeliverySubject]:
    def build() -> DeliverySubject:
        made = make()
        return DeliverySubject(made, DeliveryTarget(kind="memory"), received=made.results)

    return build


@pytest.mark.parametrize(
    ("make", "check", "words"),
    [
        (StringKinds, delivery.check_delivery_names_its_kinds, ("frozenset",)),
        (DropsErrors, delivery.check_delivery_delivers_ok_and_failed_runs, ("never arrived",)),
        (DeliversTwice, delivery.check_delivery_concurrent_deliveries_arrive_once, ("arrived 2 times",)),
        (LosesArtifacts, delivery.check_delivery_delivers_ok_and_failed_runs, ("artifacts",)),
        (BlockingDelivery, delivery.check_delivery_never_blocks_the_loop, ("blocked the event loop",)),
    ],
    ids=["string-kinds", "drops-errors", "delivers-twice", "loses-artifacts", "blocks-the-loop"],
)
def test_delivery_suite_catches(make: type[MemoryDelivery], check: Any, words: tuple[str, ...]) -> None:
    assert_catches(check, delivery_of(make), *words)


# --- the reference implementations' own behaviour -------------------------------------------------


async def test_memory_budget_windows_and_per_caller_limits() -> None:
    now = [1000.0]
    budget = MemoryBudget(
        max_runs=2, window_seconds=60, limits={"vip": budget_limits(max_runs=5)}, clock=lambda: now[0]
    )
    await budget.check("u")
    now[0] += 10
    await budget.check("u")
    with pytest.raises(BudgetExceeded) as refused:
        await budget.check("u")
    assert refused.value.retry_after == pytest.approx(50.0)
    assert "caller 'u' used 2 runs in the last 60s; the limit is 2" in refused.value.reason
    for _ in range(5):
        await budget.check("vip")
    now[0] += 50.5  # the first run left the window
    await budget.check("u")
    assert budget.used("u") == (2, 0, 0.0)


def budget_limits(**kwargs: Any) -> Any:
    from executus_core.testing import BudgetLimits

    return BudgetLimits(**kwargs)


async def test_memory_recorder_is_strict_about_close() -> None:
    made = MemoryAudit()
    info = RunInfo(run_id="r", subject_id="a", name="a", caller_id="u")
    recorder = await made.start_run(info)
    await recorder.close(RunStats(status="ok"))
    with pytest.raises(RuntimeError, match="close called twice"):
        await recorder.close(RunStats(status="ok"))
    with pytest.raises(RuntimeError, match="log_event called after close"):
        recorder.log_event("step", {})


async def test_memory_checkpointer_refuses_other_runs_and_ended_runs() -> None:
    store = MemoryCheckpointStore()
    info = RunInfo(run_id="r", subject_id="a", name="a", caller_id="u")
    saver = await store.for_run(info, Agent(name="a"))
    with pytest.raises(ValueError, match="given a state of run other"):
        await saver.save(CheckpointState(run_id="other", iteration=0, offset=0, messages=[]))
    await saver.save(CheckpointState(run_id="r", iteration=0, offset=0, messages=[Message.user("hi")]))
    await saver.fail("boom")
    assert store.runs["r"].state == "failed" and store.runs["r"].error == "boom"
    with pytest.raises(RunTakenOver, match="already failed"):
        await saver.complete()


def test_memory_critic_extends_its_deadline_while_the_run_is_active() -> None:
    made = MemoryCritic(hard_timeout=1, idle_timeout=30, max_runtime=100)
    handle = asyncio.run(made.monitor(RunInfo(run_id="r", subject_id="a", name="a", caller_id="u"), 0.5))
    first = handle.deadline()
    assert first is not None
    # idle_timeout pushes the deadline past hard_timeout...
    assert (first - handle.started).total_seconds() == pytest.approx(30, abs=0.5)
    # ...but never past max_runtime: a run that started 200 s ago and is still active is cut at 100 s
    handle.started -= timedelta(seconds=200)
    handle.record_step(7)
    capped = handle.deadline()
    assert capped is not None and (capped - handle.started).total_seconds() == pytest.approx(100)
    handle.stop()
    assert handle.deadline() is None and handle.steer() == []


def test_file_delivery_reads_back(tmp_path: Path) -> None:
    # FileDelivery's layout as the conformance fixture above reads it.
    result = Result(run_id="x", status="ok", output="hi", stats=RunStats(status="ok"))
    asyncio.run(FileDelivery().deliver(DeliveryTarget(kind="file", path=str(tmp_path)), result))
    assert json.loads((tmp_path / "x" / "result.json").read_text())["output"] == "hi"


async def test_memory_store_pauses_a_run_for_approval_and_loads_it_for_another_executor() -> None:
    from executus_core import Approve, ToolCall, tool

    ledger: list[int] = []

    @tool(requires_approval=True)
    def pay(amount: int) -> str:
        """Pay."""
        ledger.append(amount)
        return f"paid {amount}"

    model = ScriptedModel(
        [
            ModelResponse(tool_calls=[ToolCall(id="p1", name="pay", arguments={"amount": 7})]),
            ModelResponse(text="ok"),
        ],
        per_run=True,
    )
    agent = Agent(name="payer", model=model, tools=[pay])
    store = MemoryCheckpointStore()
    async with Executor(plugins=[store], entry_points=False) as first:
        paused = await first.run(agent, "pay", caller_id="u1")
    assert paused.status.value == "awaiting_approval" and store.runs[paused.run_id].state == "paused"
    assert await store.peer().interrupted() == []  # waits for a decision, not for recovery
    async with Executor(plugins=[store.peer()], entry_points=False) as second:
        second.register_agent(agent)
        done = await second.resume(paused.run_id, decisions={"p1": Approve()})
    assert done.status.value == "ok" and ledger == [7], done.error
    assert store.runs[paused.run_id].state == "completed"
    assert await store.load(paused.run_id) is None
