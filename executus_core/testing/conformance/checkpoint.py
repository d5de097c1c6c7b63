"""The conformance suite of `CheckpointStore` / `Checkpointer`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from executus_core.ports import Checkpointer, CheckpointStore
from executus_core.testing.conformance._harness import (
    LoopLag,
    built,
    call,
    make_info,
    maybe_await,
    run_check,
)
from executus_core.types import Agent, CheckpointState, Interrupted, Message, RunInfo, ToolCall, Usage, utcnow

__all__ = [
    "CHECKPOINT_CHECKS",
    "CheckpointStoreConformance",
    "check_checkpoint_complete_and_fail_clear_the_run",
    "check_checkpoint_concurrent_runs_stay_apart",
    "check_checkpoint_hands_each_run_out_once",
    "check_checkpoint_lists_oldest_first",
    "check_checkpoint_never_blocks_the_loop",
    "check_checkpoint_resumed_run_continues",
    "check_checkpoint_round_trips_a_transcript",
    "check_checkpoint_saves_append_at_their_offset",
]

AGENT = Agent(
    name="conformance",
    instructions="Be brief.",
    model="openai:gpt-4o-mini",
    tools=["run_status"],
    max_steps=7,
    soft_timeout=30,
)

TRANSCRIPT = [
    Message.system("Be brief."),
    Message.user("What is the weather in Zürich? ☀"),
    Message.assistant(
        None,
        [
            ToolCall(
                id="call-1", name="weather", arguments={"city": "Zürich", "days": [1, 2], "metric": True}
            ),
            ToolCall(id="call-2", name="clock", arguments={}),
        ],
    ),
    Message.tool("call-1", '{"temp": 21.5, "sky": "clear"}', name="weather"),
    Message.tool("call-2", "error: clock failed: TimeoutError", name="clock", is_error=True),
    Message(
        role="assistant",
        content="Sunny, 21.5 °C.",
        provider_data={"thinking": [{"type": "thinking", "signature": "c2lnbmF0dXJl"}]},
    ),
]


def _store(made: Any) -> CheckpointStore:
    assert isinstance(made, CheckpointStore), (
        f"make_store built {type(made).__name__}, not a CheckpointStore (async for_run(info, agent), "
        "async interrupted())"
    )
    return made


async def _checkpointer(store: CheckpointStore, info: RunInfo, agent: Agent = AGENT) -> Checkpointer:
    found = await call("CheckpointStore.for_run", store.for_run, info, agent)
    assert isinstance(found, Checkpointer), (
        f"CheckpointStore.for_run returned {type(found).__name__}, not a Checkpointer (save, complete, fail)"
    )
    return found


async def _save(
    checkpointer: Checkpointer,
    run_id: str,
    offset: int,
    messages: list[Message],
    *,
    iteration: int = 0,
    usage: Usage | None = None,
    tool_calls: int = 0,
) -> None:
    state = CheckpointState(
        run_id=run_id,
        iteration=iteration,
        offset=offset,
        messages=messages,
        usage=usage or Usage(),
        tool_calls=tool_calls,
    )
    answer = await call(f"Checkpointer.save (offset {offset})", checkpointer.save, state)
    assert answer is None, f"Checkpointer.save returned {answer!r}, not None"


async def _interrupted(store: CheckpointStore, ours: Iterable[str]) -> list[Interrupted]:
    """What ``interrupted()`` hands out, restricted to the runs this check made, in the order given."""
    found = await call("CheckpointStore.interrupted", store.interrupted)
    assert isinstance(found, list), f"CheckpointStore.interrupted returned {type(found).__name__}, not a list"
    for item in found:
        assert isinstance(item, Interrupted), (
            f"interrupted() listed {type(item).__name__}, not an Interrupted"
        )
    wanted = set(ours)
    return [item for item in found if item.info.run_id in wanted]


def _one(found: list[Interrupted], run_id: str) -> Interrupted | None:
    assert len(found) <= 1, f"interrupted() listed run {run_id} {len(found)} times in one answer"
    return found[0] if found else None


def _dumps(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json") for m in messages]


def _transcript_of(item: Interrupted) -> list[dict[str, Any]]:
    return _dumps(item.messages)


async def check_checkpoint_round_trips_a_transcript(factory: Any) -> None:
    """Saves in three parts come back as one transcript, with the last save's counters, the run's
    info and the agent's spec."""
    async with built(factory) as made:
        store = _store(made)
        info = make_info(caller_id="checkpoint-caller", channel_id="chan-1", inputs={"city": "Zürich"})
        checkpointer = await _checkpointer(store, info)
        await _save(checkpointer, info.run_id, 0, TRANSCRIPT[:2])
        await _save(
            checkpointer,
            info.run_id,
            2,
            TRANSCRIPT[2:5],
            iteration=1,
            usage=Usage(input_tokens=50, output_tokens=9),
            tool_calls=2,
        )
        last_usage = Usage(input_tokens=130, output_tokens=20, thinking_tokens=5)
        await _save(checkpointer, info.run_id, 5, TRANSCRIPT[5:], iteration=2, usage=last_usage, tool_calls=2)

        item = _one(await _interrupted(store, [info.run_id]), info.run_id)
        assert item is not None, (
            f"interrupted() does not list run {info.run_id}, which was saved and never ended"
        )
        assert _transcript_of(item) == _dumps(TRANSCRIPT), (
            "the transcript handed back is not the saved messages in order: each save's messages go after "
            f"the `offset` already saved\n got: {_transcript_of(item)}\nwant: {_dumps(TRANSCRIPT)}"
        )
        assert (item.iteration, item.tool_calls) == (2, 2), (
            f"iteration/tool_calls are {item.iteration}/{item.tool_calls}, the last save had 2/2"
        )
        assert item.usage.model_dump() == last_usage.model_dump(), (
            f"usage is {item.usage!r}, last saved {last_usage!r}"
        )
        got = item.info
        assert (got.run_id, got.caller_id, got.channel_id, got.subject_id, got.inputs) == (
            info.run_id,
            info.caller_id,
            info.channel_id,
            info.subject_id,
            info.inputs,
        ), f"the run info handed back {got!r} is not the one given to for_run {info!r}"
        assert abs((got.started_at - info.started_at).total_seconds()) < 1, (
            f"started_at came back as {got.started_at}, was {info.started_at}"
        )
        spec = AGENT.spec()
        for key in ("name", "instructions", "model", "tools", "max_steps", "soft_timeout"):
            assert item.agent.get(key) == spec[key], (
                f"the agent handed back has {key}={item.agent.get(key)!r}, for_run was given {spec[key]!r}: "
                "store agent.spec()"
            )


async def check_checkpoint_saves_append_at_their_offset(factory: Any) -> None:
    """A save writes its messages at its ``offset``: new ones append, a retried save does not
    duplicate, and a save past the end (a lost save) is refused."""
    async with built(factory) as made:
        store = _store(made)
        info = make_info(caller_id="offset-caller")
        checkpointer = await _checkpointer(store, info)
        a, b, c, c2, d = (Message.user(text) for text in ("a", "b", "c", "c again", "d"))
        await _save(checkpointer, info.run_id, 0, [a, b])
        await _save(checkpointer, info.run_id, 2, [c])
        await _save(checkpointer, info.run_id, 2, [c])  # the same save retried
        refused = False
        try:
            await maybe_await(
                checkpointer.save(CheckpointState(run_id=info.run_id, iteration=0, offset=10, messages=[d]))
            )
        except Exception:
            refused = True
        assert refused, (
            "a save at offset 10 with 3 messages saved was accepted: it would leave a hole in the "
            "transcript; raise instead"
        )
        item = _one(await _interrupted(store, [info.run_id]), info.run_id)
        assert item is not None, f"run {info.run_id} is not listed by interrupted()"
        assert [m.content for m in item.messages] == ["a", "b", "c"], (
            f"after saves at offsets 0, 2 and 2 again the transcript is {[m.content for m in item.messages]}, "
            "not ['a', 'b', 'c']: write each save at its offset (a retry overwrites, it does not append again)"
        )
        # Resume it and retry a save that reached the store although its caller saw it fail.
        checkpointer = await _checkpointer(store, info)
        await _save(checkpointer, info.run_id, 2, [c2, d])
        item = _one(await _interrupted(store, [info.run_id]), info.run_id)
        assert item is not None and [m.content for m in item.messages] == ["a", "b", "c again", "d"], (
            "a save at offset 2 must replace what followed offset 2: got "
            f"{None if item is None else [m.content for m in item.messages]}"
        )


async def check_checkpoint_complete_and_fail_clear_the_run(factory: Any) -> None:
    """``complete()`` and ``fail(error)`` drop a run: only the run left open is interrupted."""
    async with built(factory) as made:
        store = _store(made)
        infos = [make_info(i, caller_id="clear-caller") for i in range(3)]
        checkpointers = [await _checkpointer(store, info) for info in infos]
        for info, checkpointer in zip(infos, checkpointers, strict=True):
            await _save(checkpointer, info.run_id, 0, TRANSCRIPT[:2])
            await _save(checkpointer, info.run_id, 2, TRANSCRIPT[2:4], iteration=1, tool_calls=1)
        assert await call("Checkpointer.complete", checkpointers[0].complete) is None
        assert await call("Checkpointer.fail", checkpointers[1].fail, "model openai:x failed: 500") is None
        found = await _interrupted(store, [i.run_id for i in infos])
        assert [item.info.run_id for item in found] == [infos[2].run_id], (
            f"interrupted() lists {[item.info.run_id for item in found]}; of {[i.run_id for i in infos]} the "
            "first completed and the second failed, so only the third is interrupted"
        )


async def check_checkpoint_hands_each_run_out_once(factory: Any) -> None:
    """Two ``interrupted()`` calls at once share the runs between them (none twice), and a later
    call hands out none of them again."""
    async with built(factory) as made:
        store = _store(made)
        infos = [make_info(i, caller_id="once-caller") for i in range(10)]
        for info in infos:
            checkpointer = await _checkpointer(store, info)
            await _save(checkpointer, info.run_id, 0, TRANSCRIPT[:2])
        ours = [i.run_id for i in infos]
        first, second = await asyncio.gather(_interrupted(store, ours), _interrupted(store, ours))
        got_first = [item.info.run_id for item in first]
        got_second = [item.info.run_id for item in second]
        both = set(got_first) & set(got_second)
        assert not both, (
            f"runs {sorted(both)} were handed out by two interrupted() calls: each goes to one caller"
        )
        assert sorted(got_first + got_second) == sorted(ours), (
            f"two interrupted() calls handed out {len(got_first) + len(got_second)} of the 10 open runs"
        )
        again = await _interrupted(store, ours)
        assert not again, f"runs {[i.info.run_id for i in again]} were handed out again"


async def check_checkpoint_lists_oldest_first(factory: Any) -> None:
    """``interrupted()`` lists runs oldest first (by ``RunInfo.started_at``)."""
    async with built(factory) as made:
        store = _store(made)
        now = utcnow()
        infos = [
            make_info(i, caller_id="order-caller", started_at=now - timedelta(minutes=10 - i))
            for i in range(6)
        ]
        shuffled = infos[:]
        random.Random(7).shuffle(shuffled)
        for info in shuffled:
            checkpointer = await _checkpointer(store, info)
            await _save(checkpointer, info.run_id, 0, TRANSCRIPT[:2])
        found = await _interrupted(store, [i.run_id for i in infos])
        assert [item.info.run_id for item in found] == [i.run_id for i in infos], (
            "interrupted() must list runs oldest first (by started_at), not in the order they were saved"
        )


async def check_checkpoint_resumed_run_continues(factory: Any) -> None:
    """A run handed out and resumed (``for_run`` again) keeps its transcript and appends to it; if it is
    interrupted again it is listed again with everything; once completed it is gone."""
    async with built(factory) as made:
        store = _store(made)
        info = make_info(caller_id="resume-caller")
        checkpointer = await _checkpointer(store, info)
        await _save(checkpointer, info.run_id, 0, TRANSCRIPT[:2])
        await _save(checkpointer, info.run_id, 2, TRANSCRIPT[2:5], iteration=1, tool_calls=2)
        item = _one(await _interrupted(store, [info.run_id]), info.run_id)
        assert item is not None, f"run {info.run_id} is not listed by interrupted()"

        resumed = await _checkpointer(store, item.info)
        await _save(resumed, info.run_id, 5, TRANSCRIPT[5:], iteration=2, tool_calls=2)
        again = _one(await _interrupted(store, [info.run_id]), info.run_id)
        assert again is not None, (
            f"run {info.run_id} was resumed and interrupted again, but interrupted() does not list it"
        )
        assert _transcript_of(again) == _dumps(TRANSCRIPT), (
            "after a resume the transcript must hold what was saved before and after it: got "
            f"{[m.content for m in again.messages]}"
        )
        resumed = await _checkpointer(store, again.info)
        assert await call("Checkpointer.complete", resumed.complete) is None
        assert not await _interrupted(store, [info.run_id]), (
            "a completed run is still listed by interrupted()"
        )


async def check_checkpoint_concurrent_runs_stay_apart(factory: Any) -> None:
    """Many runs saving at once: each run's transcript holds its own messages, in order."""
    runs, saves = 25, 6
    async with built(factory) as made:
        store = _store(made)

        async def one(index: int) -> RunInfo:
            info = make_info(index, caller_id=f"caller-{index % 3}")
            checkpointer = await _checkpointer(store, info)
            for k in range(saves):
                messages = [
                    Message.user(f"run {index} message {2 * k}"),
                    Message.user(f"run {index} message {2 * k + 1}"),
                ]
                await _save(checkpointer, info.run_id, 2 * k, messages, iteration=k, tool_calls=k)
                await asyncio.sleep(0)
            return info

        infos = await asyncio.gather(*(one(i) for i in range(runs)))
        found = {item.info.run_id: item for item in await _interrupted(store, [i.run_id for i in infos])}
        for index, info in enumerate(infos):
            item = found.get(info.run_id)
            assert item is not None, f"run {index} ({info.run_id}) is not listed by interrupted()"
            want = [f"run {index} message {n}" for n in range(2 * saves)]
            assert [m.content for m in item.messages] == want, (
                f"run {index}'s transcript is not its own {2 * saves} messages in order: "
                f"{[m.content for m in item.messages]}"
            )
            assert item.iteration == saves - 1, (
                f"run {index}: iteration {item.iteration}, last saved {saves - 1}"
            )


async def check_checkpoint_never_blocks_the_loop(factory: Any) -> None:
    """Saving, completing and listing many runs never stalls the event loop."""
    async with built(factory) as made:
        store = _store(made)

        async def one(index: int) -> str:
            info = make_info(index, caller_id="lag-caller")
            checkpointer = await _checkpointer(store, info)
            for k in range(20):
                await _save(checkpointer, info.run_id, k, [Message.user("x" * 500)], iteration=k)
            if index % 2:
                await call("Checkpointer.complete", checkpointer.complete)
            return info.run_id

        async with LoopLag() as lag:
            ours = await asyncio.gather(*(one(i) for i in range(10)))
            found = await _interrupted(store, ours)
        lag.check("saving 10 runs of 20 checkpoints")
        assert len(found) == 5, f"{len(found)} runs are interrupted; 5 of 10 were left open"


CHECKPOINT_CHECKS = (
    check_checkpoint_round_trips_a_transcript,
    check_checkpoint_saves_append_at_their_offset,
    check_checkpoint_complete_and_fail_clear_the_run,
    check_checkpoint_hands_each_run_out_once,
    check_checkpoint_lists_oldest_first,
    check_checkpoint_resumed_run_continues,
    check_checkpoint_concurrent_runs_stay_apart,
    check_checkpoint_never_blocks_the_loop,
)


class CheckpointStoreConformance:
    """The contract every `CheckpointStore` battery honours. Subclass it and provide ``make_store``.

    ``make_store`` is a fixture returning a factory (sync or ``async``) that builds a store over
    empty storage, inside the test's own event loop (no pytest-asyncio needed; ``aclose()`` is
    called if the store has one)::

        class TestSqlStore(CheckpointStoreConformance):
            @pytest.fixture
            def make_store(self, tmp_path):
                return lambda: SqlCheckpointStore(url=f"sqlite+aiosqlite:///{tmp_path}/cp.db")

    The contract it checks:

    - ``save(state)`` writes ``state.messages`` at ``state.offset``: new messages append, a retried
      save at the same offset overwrites instead of duplicating, and a save past the end (a save
      was lost) raises;
    - ``interrupted()`` lists the runs saved and neither completed nor failed, oldest first by
      ``started_at``, each with its whole transcript, the last save's ``iteration``, ``usage`` and
      ``tool_calls``, its `RunInfo` and its agent's ``spec()``; each run is handed out once, even to
      two concurrent callers, until ``for_run`` takes it again;
    - ``for_run`` on a run still open resumes it: the transcript is kept and later saves append;
    - ``complete()`` and ``fail(error)`` drop the run;
    - many runs at once never mix, and no call stalls the event loop.
    """

    def test_round_trips_a_transcript(self, make_store: Any) -> None:
        run_check(check_checkpoint_round_trips_a_transcript, make_store)

    def test_saves_append_at_their_offset(self, make_store: Any) -> None:
        run_check(check_checkpoint_saves_append_at_their_offset, make_store)

    def test_complete_and_fail_clear_the_run(self, make_store: Any) -> None:
        run_check(check_checkpoint_complete_and_fail_clear_the_run, make_store)

    def test_hands_each_run_out_once(self, make_store: Any) -> None:
        run_check(check_checkpoint_hands_each_run_out_once, make_store)

    def test_lists_oldest_first(self, make_store: Any) -> None:
        run_check(check_checkpoint_lists_oldest_first, make_store)

    def test_resumed_run_continues(self, make_store: Any) -> None:
        run_check(check_checkpoint_resumed_run_continues, make_store)

    def test_concurrent_runs_stay_apart(self, make_store: Any) -> None:
        run_check(check_checkpoint_concurrent_runs_stay_apart, make_store)

    def test_never_blocks_the_loop(self, make_store: Any) -> None:
        run_check(check_checkpoint_never_blocks_the_loop, make_store)
