"""The conformance suite of `CheckpointStore` / `Checkpointer`, ownership included.

Every check builds its stores with the battery's factory; every store built in one check is a
**worker** of its own (an owner) on the **same storage**, as processes share one database. A
worker that simply stops calling plays a dead process: built with a short ``lease_seconds``, its
runs are free once that has passed. That is how the checks interrupt runs, and how the ownership
checks (after LangGraph's checkpoint-conformance ``write_ownership`` module) make a writer stale:

- a stale writer is refused with `executus_core.RunTakenOver`, its write never lands, and it stays
  refused (the refusal is not one-shot);
- a takeover is seen: the stale writer can neither complete nor fail the run it lost, and the new
  owner carries on;
- two stores in one process share nothing: neither hands out, nor starts, a run the other runs;
- a live store adopts the runs of a dead owner (lease lapsed) and runs released by their owner,
  never a run it holds itself;
- a claim that is never resumed lapses, and the run is handed out again;
- a resume released with an error backs off, and a run that keeps failing is given up;
- a corrupt checkpoint is quarantined and the healthy ones are still handed out;
- a run paused for approval is kept but never handed out by ``interrupted()``; ``load(run_id)``
  claims it (or an interrupted run) for `Executor.resume`, with ``paused_at``, once.

Optional capabilities are detected, as LangGraph's suite detects an overridden method: a
``Checkpointer.release(error=None)`` method (``release``), ``interrupted(limit=...)``
(``limit``), and ``Checkpointer.pause(pending)`` with ``CheckpointStore.load(run_id)``
(``pause``). A check of a capability the store lacks is skipped, naming it; a store that has it
must pass it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import unittest
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any

from executus_core.errors import RunTakenOver
from executus_core.ports import Checkpointer, CheckpointStore
from executus_core.testing.conformance._harness import LoopLag, call, make_info, maybe_await, run_check
from executus_core.types import (
    Agent,
    CheckpointState,
    Interrupted,
    Message,
    PendingCall,
    RunInfo,
    ToolCall,
    Usage,
    utcnow,
)

__all__ = [
    "CHECKPOINT_CHECKS",
    "CHECKPOINT_OWNERSHIP_CHECKS",
    "LEASE",
    "CheckpointStoreConformance",
    "Damage",
    "capabilities",
    "check_checkpoint_a_claim_never_resumed_lapses",
    "check_checkpoint_a_stale_writer_is_refused",
    "check_checkpoint_a_takeover_is_seen",
    "check_checkpoint_adopts_dead_owners_runs_never_its_own",
    "check_checkpoint_complete_and_fail_clear_the_run",
    "check_checkpoint_concurrent_runs_stay_apart",
    "check_checkpoint_hands_each_run_out_once",
    "check_checkpoint_interleaved_saves_land_in_order",
    "check_checkpoint_interrupted_takes_a_limit",
    "check_checkpoint_keeps_tool_call_attempts",
    "check_checkpoint_lists_oldest_first",
    "check_checkpoint_never_blocks_the_loop",
    "check_checkpoint_paused_run_waits_for_load",
    "check_checkpoint_quarantines_a_corrupt_checkpoint",
    "check_checkpoint_release_with_error_backs_off",
    "check_checkpoint_resumed_run_continues",
    "check_checkpoint_round_trips_a_transcript",
    "check_checkpoint_saves_append_at_their_offset",
    "check_checkpoint_stores_share_nothing",
]

LEASE = 0.4
"""Seconds a dead worker's lease lasts in these checks (``factory(lease_seconds=LEASE)``)."""

_SETTLE = 0.25  # seconds beyond a lease or backoff before relying on its end (clocks, rounding)

BACKOFF = 0.5
"""The ``resume_backoff_seconds`` the backoff check gives its stores (with ``max_resume_attempts=2``)."""

Damage = Callable[[str, str], Awaitable[None] | None]
"""``damage(run_id, part)``: make the saved checkpoint of ``run_id`` unreadable. ``part`` is
``"message"`` (a message row that is not a `Message`) or ``"info"`` (run info that is not a
`RunInfo`)."""

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


# --- building workers -------------------------------------------------------------------------


class _Workers:
    """The stores one check builds: each a worker of its own on the check's storage."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.made: list[Any] = []

    async def new(self, **options: Any) -> CheckpointStore:
        """A new worker; ``options`` (``lease_seconds``, ...) go to the battery's factory."""
        factory = await maybe_await(self.factory)
        try:
            made = await maybe_await(factory(**options))
        except TypeError as exc:
            if not options:
                raise
            raise AssertionError(
                f"the make_store factory does not take {sorted(options)} ({exc}): the ownership checks build "
                "workers with factory(lease_seconds=...), and the backoff check with "
                "factory(max_resume_attempts=..., resume_backoff_seconds=...)"
            ) from exc
        self.made.append(made)
        assert isinstance(made, CheckpointStore), (
            f"make_store built {type(made).__name__}, not a CheckpointStore (async for_run(info, agent), "
            "async interrupted())"
        )
        return made

    async def dead(self, **options: Any) -> CheckpointStore:
        """A worker whose runs are free once it has been silent for `LEASE` seconds."""
        return await self.new(lease_seconds=LEASE, **options)

    async def aclose(self) -> None:
        for made in reversed(self.made):
            close = getattr(made, "aclose", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    await maybe_await(close())


@contextlib.asynccontextmanager
async def _workers(factory: Any) -> AsyncIterator[_Workers]:
    workers = _Workers(factory)
    try:
        yield workers
    finally:
        await workers.aclose()


async def _warm(store: CheckpointStore) -> CheckpointStore:
    """Make a store's first call (connections, schema checks) now, before a check times anything."""
    await call("CheckpointStore.interrupted", store.interrupted)
    return store


async def _lapse(seconds: float = LEASE) -> None:
    """Wait until leases (or backoffs) of ``seconds`` given now have surely run out."""
    await asyncio.sleep(seconds + _SETTLE)


def capabilities(store: Any, checkpointer: Any = None) -> frozenset[str]:
    """The optional capabilities a store has: ``release`` (``Checkpointer.release(error=None)``),
    ``limit`` (``interrupted(limit=...)``) and ``pause`` (``Checkpointer.pause(pending)`` and
    ``CheckpointStore.load(run_id)``, for runs that wait for approval)."""
    found = set()
    if callable(getattr(checkpointer, "pause", None)) and callable(getattr(store, "load", None)):
        found.add("pause")
    release = getattr(checkpointer, "release", None)
    if callable(release):
        with contextlib.suppress(TypeError, ValueError):
            if "error" in inspect.signature(release).parameters:
                found.add("release")
    interrupted = getattr(store, "interrupted", None)
    if callable(interrupted):
        with contextlib.suppress(TypeError, ValueError):
            if "limit" in inspect.signature(interrupted).parameters:
                found.add("limit")
    return frozenset(found)


def _release_of(checkpointer: Checkpointer) -> Callable[..., Any]:
    """The optional ``release`` method (check the capability first)."""
    release: Callable[..., Any] = getattr(checkpointer, "release")  # noqa: B009 - not on the Protocol
    return release


def _skip(capability: str, why: str) -> None:
    raise unittest.SkipTest(f"the store has no {capability} capability ({why}); this check needs it")


# --- calling the port, with clear failures ------------------------------------------------------


async def _checkpointer(store: CheckpointStore, info: RunInfo, agent: Agent = AGENT) -> Checkpointer:
    found = await call("CheckpointStore.for_run", store.for_run, info, agent)
    assert isinstance(found, Checkpointer), (
        f"CheckpointStore.for_run returned {type(found).__name__}, not a Checkpointer (save, complete, fail)"
    )
    return found


def _state(
    run_id: str,
    offset: int,
    messages: list[Message],
    *,
    iteration: int = 0,
    usage: Usage | None = None,
    tool_calls: int = 0,
    attempts: dict[str, int] | None = None,
) -> CheckpointState:
    return CheckpointState(
        run_id=run_id,
        iteration=iteration,
        offset=offset,
        messages=messages,
        usage=usage or Usage(),
        tool_calls=tool_calls,
        attempts=attempts or {},
    )


async def _save(
    checkpointer: Checkpointer, run_id: str, offset: int, messages: list[Message], **kw: Any
) -> None:
    answer = await call(
        f"Checkpointer.save (offset {offset})", checkpointer.save, _state(run_id, offset, messages, **kw)
    )
    assert answer is None, f"Checkpointer.save returned {answer!r}, not None"


async def _interrupted(store: CheckpointStore, ours: Iterable[str], **kw: Any) -> list[Interrupted]:
    """What ``interrupted()`` hands out, restricted to the runs this check made, in the order given."""
    found = await call("CheckpointStore.interrupted", store.interrupted, **kw)
    assert isinstance(found, list), f"CheckpointStore.interrupted returned {type(found).__name__}, not a list"
    for item in found:
        assert isinstance(item, Interrupted), (
            f"interrupted() listed {type(item).__name__}, not an Interrupted"
        )
    wanted = set(ours)
    return [item for item in found if item.info.run_id in wanted]


def _ids(found: list[Interrupted]) -> list[str]:
    return [item.info.run_id for item in found]


def _one(found: list[Interrupted], run_id: str) -> Interrupted | None:
    assert len(found) <= 1, f"interrupted() listed run {run_id} {len(found)} times in one answer"
    return found[0] if found else None


def _dumps(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json") for m in messages]


def _texts(item: Interrupted | None) -> list[str | None] | None:
    return None if item is None else [m.content for m in item.messages]


async def _refused(what: str, run_id: str, fn: Callable[..., Any], *args: Any) -> RunTakenOver:
    """Call a method of a checkpointer that lost its run: it must raise `RunTakenOver` naming it."""
    try:
        answer = await maybe_await(fn(*args))
    except RunTakenOver as exc:
        assert exc.run_id == run_id, (
            f"{what} raised RunTakenOver with run_id={exc.run_id!r}; it must name the run, {run_id!r}"
        )
        return exc
    except Exception as exc:
        raise AssertionError(
            f"{what} from a checkpointer whose run was taken over raised {type(exc).__name__}: {exc}; raise "
            "executus_core.RunTakenOver(message, run_id=..., owner=...) so the loop stops the run at once"
        ) from exc
    raise AssertionError(
        f"{what} from a checkpointer whose run was taken over returned {answer!r}: a refusal the loser "
        "never hears of lets it run more tools and end the run with a second output; raise RunTakenOver"
    )


async def _interrupt(workers: _Workers, infos: list[RunInfo], saves: list[list[Message]]) -> None:
    """Save each run with a worker that then dies, and wait for its leases to lapse."""
    dead = await workers.dead()
    for info, messages in zip(infos, saves, strict=True):
        checkpointer = await _checkpointer(dead, info)
        await _save(checkpointer, info.run_id, 0, messages)
    await _lapse()


# --- the base checks -----------------------------------------------------------------------------


async def check_checkpoint_round_trips_a_transcript(factory: Any) -> None:
    """Saves in three parts come back, to another worker, as one transcript with the last save's
    counters, the run's info and the agent's spec."""
    async with _workers(factory) as workers:
        writer = await workers.dead()
        info = make_info(caller_id="checkpoint-caller", channel_id="chan-1", inputs={"city": "Zürich"})
        checkpointer = await _checkpointer(writer, info)
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
        await _lapse()

        item = _one(await _interrupted(await workers.new(), [info.run_id]), info.run_id)
        assert item is not None, (
            f"interrupted() does not list run {info.run_id}, which was saved and never ended, and whose "
            "owner is gone (its lease lapsed)"
        )
        assert _dumps(item.messages) == _dumps(TRANSCRIPT), (
            "the transcript handed back is not the saved messages in order: each save's messages go after "
            f"the `offset` already saved\n got: {_dumps(item.messages)}\nwant: {_dumps(TRANSCRIPT)}"
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
    async with _workers(factory) as workers:
        writer = await workers.dead()
        info = make_info(caller_id="offset-caller")
        checkpointer = await _checkpointer(writer, info)
        a, b, c, c2, d = (Message.user(text) for text in ("a", "b", "c", "c again", "d"))
        await _save(checkpointer, info.run_id, 0, [a, b])
        await _save(checkpointer, info.run_id, 2, [c])
        await _save(checkpointer, info.run_id, 2, [c])  # the same save retried
        refused = False
        try:
            await maybe_await(checkpointer.save(_state(info.run_id, 10, [d])))
        except Exception:
            refused = True
        assert refused, (
            "a save at offset 10 with 3 messages saved was accepted: it would leave a hole in the "
            "transcript; raise instead"
        )
        await _lapse()
        resumer = await workers.dead()
        item = _one(await _interrupted(resumer, [info.run_id]), info.run_id)
        assert item is not None, f"run {info.run_id} is not listed by interrupted()"
        assert _texts(item) == ["a", "b", "c"], (
            f"after saves at offsets 0, 2 and 2 again the transcript is {_texts(item)}, not ['a', 'b', 'c']: "
            "write each save at its offset (a retry overwrites, it does not append again)"
        )
        # Resume it and retry a save that reached the store although its caller saw it fail.
        checkpointer = await _checkpointer(resumer, item.info)
        await _save(checkpointer, info.run_id, 2, [c2, d])
        await _lapse()
        item = _one(await _interrupted(await workers.new(), [info.run_id]), info.run_id)
        assert _texts(item) == ["a", "b", "c again", "d"], (
            f"a save at offset 2 must replace what followed offset 2: got {_texts(item)}"
        )


async def check_checkpoint_interleaved_saves_land_in_order(factory: Any) -> None:
    """The loop saves each tool result as soon as it returns: saves of parallel results, called one
    after another without waiting (each at the next offset), land in order; so does a save that
    overlaps one still in flight (sent again from an earlier offset)."""
    async with _workers(factory) as workers:
        writer = await workers.dead()
        info = make_info(caller_id="interleave-caller")
        checkpointer = await _checkpointer(writer, info)
        run_id = info.run_id
        await _save(checkpointer, run_id, 0, TRANSCRIPT[:3], iteration=1)
        results = [Message.tool(f"call-{n}", f"result {n}", name="work") for n in range(4)]
        await asyncio.gather(
            *(
                _save(checkpointer, run_id, 3 + n, [result], iteration=1, tool_calls=n + 1)
                for n, result in enumerate(results)
            )
        )
        final = Message.assistant("all four done")
        await asyncio.gather(
            _save(checkpointer, run_id, 7, [final], iteration=2, tool_calls=4),
            _save(checkpointer, run_id, 7, [final, Message.user("and now?")], iteration=2, tool_calls=4),
        )
        await _lapse()
        item = _one(await _interrupted(await workers.new(), [run_id]), run_id)
        want = _dumps([*TRANSCRIPT[:3], *results, final, Message.user("and now?")])
        assert item is not None and _dumps(item.messages) == want, (
            "saves at offsets 3, 4, 5, 6 called without waiting for each other (then two at 7) did not land "
            f"in order: got {_texts(item)}; run one checkpointer's saves one at a time, in call order"
        )
        assert (item.iteration, item.tool_calls) == (2, 4)


async def check_checkpoint_keeps_tool_call_attempts(factory: Any) -> None:
    """``CheckpointState.attempts`` is kept, the latest count per call id merged over the saves and
    across a resume, and handed back in ``Interrupted.attempts``."""
    async with _workers(factory) as workers:
        writer = await workers.dead()
        info = make_info(caller_id="attempts-caller")
        checkpointer = await _checkpointer(writer, info)
        run_id = info.run_id
        await _save(checkpointer, run_id, 0, TRANSCRIPT[:3], attempts={"call-1": 2})
        await _save(checkpointer, run_id, 3, TRANSCRIPT[3:4], attempts={"call-2": 2})
        await _save(checkpointer, run_id, 4, [], attempts={"call-1": 3})
        await _save(checkpointer, run_id, 4, TRANSCRIPT[4:5])
        await _lapse()
        resumer = await workers.dead()
        item = _one(await _interrupted(resumer, [run_id]), run_id)
        assert item is not None and item.attempts == {"call-1": 3, "call-2": 2}, (
            f"attempts handed back: {None if item is None else item.attempts}; saved {{'call-1': 2}}, then "
            "{'call-2': 2}, then {'call-1': 3}: keep the latest count per call id"
        )
        checkpointer = await _checkpointer(resumer, item.info)
        await _save(checkpointer, run_id, 5, TRANSCRIPT[5:], attempts={"call-3": 2})
        await _lapse()
        item = _one(await _interrupted(await workers.new(), [run_id]), run_id)
        assert item is not None and item.attempts == {"call-1": 3, "call-2": 2, "call-3": 2}, (
            f"after a resume the attempts are {None if item is None else item.attempts}: the counts saved "
            "before the resume must be kept beside the new one"
        )


async def check_checkpoint_complete_and_fail_clear_the_run(factory: Any) -> None:
    """``complete()`` and ``fail(error)`` drop a run: only the run left open is interrupted."""
    async with _workers(factory) as workers:
        writer = await workers.dead()
        infos = [make_info(i, caller_id="clear-caller") for i in range(3)]
        checkpointers = [await _checkpointer(writer, info) for info in infos]
        for info, checkpointer in zip(infos, checkpointers, strict=True):
            await _save(checkpointer, info.run_id, 0, TRANSCRIPT[:2])
            await _save(checkpointer, info.run_id, 2, TRANSCRIPT[2:4], iteration=1, tool_calls=1)
        assert await call("Checkpointer.complete", checkpointers[0].complete) is None
        assert await call("Checkpointer.fail", checkpointers[1].fail, "model openai:x failed: 500") is None
        await _lapse()
        found = await _interrupted(await workers.new(), [i.run_id for i in infos])
        assert _ids(found) == [infos[2].run_id], (
            f"interrupted() lists {_ids(found)}; of {[i.run_id for i in infos]} the first completed and the "
            "second failed, so only the third is interrupted"
        )


async def check_checkpoint_hands_each_run_out_once(factory: Any) -> None:
    """Two workers asking ``interrupted()`` at once share the runs between them (none twice), and a
    third hands out none of them again while their claims last."""
    async with _workers(factory) as workers:
        infos = [make_info(i, caller_id="once-caller") for i in range(10)]
        await _interrupt(workers, infos, [TRANSCRIPT[:2]] * len(infos))
        ours = [i.run_id for i in infos]
        first, second = await workers.new(), await workers.new()
        got_first, got_second = (
            _ids(found)
            for found in await asyncio.gather(_interrupted(first, ours), _interrupted(second, ours))
        )
        both = set(got_first) & set(got_second)
        assert not both, (
            f"runs {sorted(both)} were handed out by two interrupted() calls: each goes to one caller"
        )
        assert sorted(got_first + got_second) == sorted(ours), (
            f"two interrupted() calls handed out {len(got_first) + len(got_second)} of the 10 open runs"
        )
        again = await _interrupted(await workers.new(), ours)
        assert not again, f"runs {_ids(again)} were handed out again while their claimers live"
        assert not await _interrupted(first, ours), "a worker handed out again runs it had itself claimed"


async def check_checkpoint_lists_oldest_first(factory: Any) -> None:
    """``interrupted()`` lists runs oldest first (by ``RunInfo.started_at``)."""
    async with _workers(factory) as workers:
        now = utcnow()
        infos = [
            make_info(i, caller_id="order-caller", started_at=now - timedelta(minutes=10 - i))
            for i in range(6)
        ]
        shuffled = infos[:]
        random.Random(7).shuffle(shuffled)
        await _interrupt(workers, shuffled, [TRANSCRIPT[:2]] * len(infos))
        found = await _interrupted(await workers.new(), [i.run_id for i in infos])
        assert _ids(found) == [i.run_id for i in infos], (
            "interrupted() must list runs oldest first (by started_at), not in the order they were saved"
        )


async def check_checkpoint_resumed_run_continues(factory: Any) -> None:
    """A run handed out and resumed (``for_run`` again) keeps its transcript and appends to it; if its
    new worker dies too it is handed out again with everything; once completed it is gone."""
    async with _workers(factory) as workers:
        info = make_info(caller_id="resume-caller")
        writer = await workers.dead()
        checkpointer = await _checkpointer(writer, info)
        await _save(checkpointer, info.run_id, 0, TRANSCRIPT[:2])
        await _save(checkpointer, info.run_id, 2, TRANSCRIPT[2:5], iteration=1, tool_calls=2)
        await _lapse()
        resumer = await workers.dead()
        item = _one(await _interrupted(resumer, [info.run_id]), info.run_id)
        assert item is not None, f"run {info.run_id} is not listed by interrupted()"

        resumed = await _checkpointer(resumer, item.info)
        await _save(resumed, info.run_id, 5, TRANSCRIPT[5:], iteration=2, tool_calls=2)
        await _lapse()
        last = await workers.new()
        again = _one(await _interrupted(last, [info.run_id]), info.run_id)
        assert again is not None, (
            f"run {info.run_id} was resumed and its new worker died too, but interrupted() does not list it"
        )
        assert _dumps(again.messages) == _dumps(TRANSCRIPT), (
            f"after a resume the transcript must hold what was saved before and after it: got {_texts(again)}"
        )
        resumed = await _checkpointer(last, again.info)
        assert await call("Checkpointer.complete", resumed.complete) is None
        await _lapse(0)
        assert not await _interrupted(await workers.new(), [info.run_id]), (
            "a completed run is still handed out"
        )


async def check_checkpoint_concurrent_runs_stay_apart(factory: Any) -> None:
    """Many runs saving at once: each run's transcript holds its own messages, in order."""
    runs, saves = 25, 6
    async with _workers(factory) as workers:
        writer = await workers.dead()

        async def one(index: int) -> RunInfo:
            info = make_info(index, caller_id=f"caller-{index % 3}")
            checkpointer = await _checkpointer(writer, info)
            for k in range(saves):
                messages = [
                    Message.user(f"run {index} message {2 * k}"),
                    Message.user(f"run {index} message {2 * k + 1}"),
                ]
                await _save(checkpointer, info.run_id, 2 * k, messages, iteration=k, tool_calls=k)
                await asyncio.sleep(0)
            return info

        infos = await asyncio.gather(*(one(i) for i in range(runs)))
        await _lapse()
        found = {
            item.info.run_id: item
            for item in await _interrupted(await workers.new(), [i.run_id for i in infos])
        }
        for index, info in enumerate(infos):
            item = found.get(info.run_id)
            assert item is not None, f"run {index} ({info.run_id}) is not listed by interrupted()"
            want = [f"run {index} message {n}" for n in range(2 * saves)]
            assert _texts(item) == want, (
                f"run {index}'s transcript is not its own {2 * saves} messages in order: {_texts(item)}"
            )
            assert item.iteration == saves - 1, (
                f"run {index}: iteration {item.iteration}, last saved {saves - 1}"
            )


async def check_checkpoint_never_blocks_the_loop(factory: Any) -> None:
    """Saving, completing and listing many runs never stalls the event loop (once each store has
    made its first call, which may create its tables)."""
    async with _workers(factory) as workers:
        writer = await _warm(await workers.dead())
        reader = await _warm(await workers.new())

        async def one(index: int) -> str:
            info = make_info(index, caller_id="lag-caller")
            checkpointer = await _checkpointer(writer, info)
            for k in range(20):
                await _save(checkpointer, info.run_id, k, [Message.user("x" * 500)], iteration=k)
            if index % 2:
                await call("Checkpointer.complete", checkpointer.complete)
            return info.run_id

        async with LoopLag() as lag:
            ours = await asyncio.gather(*(one(i) for i in range(10)))
        lag.check("saving 10 runs of 20 checkpoints")
        await _lapse()  # not timed: a wait is no work, and a long window only measures the machine
        async with LoopLag() as lag:
            found = await _interrupted(reader, ours)
        lag.check("claiming 5 interrupted runs of 20 messages")
        assert len(found) == 5, f"{len(found)} runs are interrupted; 5 of 10 were left open"


async def check_checkpoint_interrupted_takes_a_limit(factory: Any) -> None:
    """``interrupted(limit=n)`` (capability ``limit``) hands out at most ``n`` runs, the oldest; the
    next call the next ones, so a recovery can claim in batches what it will start now."""
    async with _workers(factory) as workers:
        reader = await workers.new()
        if "limit" not in capabilities(reader):
            _skip("limit", "interrupted() takes no limit")
        now = utcnow()
        infos = [
            make_info(i, caller_id="limit-caller", started_at=now - timedelta(minutes=10 - i))
            for i in range(5)
        ]
        await _interrupt(workers, infos, [TRANSCRIPT[:2]] * len(infos))
        ours = [i.run_id for i in infos]
        first = await _interrupted(reader, ours, limit=2)
        assert _ids(first) == ours[:2], (
            f"interrupted(limit=2) handed out {_ids(first)}, not the two oldest runs"
        )
        rest = await _interrupted(await workers.new(), ours, limit=10)
        assert _ids(rest) == ours[2:], (
            f"the next interrupted(limit=10) handed out {_ids(rest)}, not the other three"
        )
        assert await _interrupted(reader, ours, limit=0) == [], "interrupted(limit=0) handed out runs"


# --- ownership -----------------------------------------------------------------------------------


async def check_checkpoint_a_stale_writer_is_refused(factory: Any) -> None:
    """A worker whose lease lapsed while it was paused, and whose run another worker took over, is
    refused with `RunTakenOver` on its next save; its write never lands, and it stays refused."""
    async with _workers(factory) as workers:
        paused = await workers.dead()
        info = make_info(caller_id="stale-caller")
        run_id = info.run_id
        stale = await _checkpointer(paused, info)
        await _save(stale, run_id, 0, TRANSCRIPT[:2])
        await _lapse()
        rescuer = await workers.dead()
        item = _one(await _interrupted(rescuer, [run_id]), run_id)
        assert item is not None, f"run {run_id}, whose owner went silent past its lease, was not handed out"
        current = await _checkpointer(rescuer, item.info)
        await _save(current, run_id, 2, [Message.user("the new owner's")])

        await _refused("a save", run_id, stale.save, _state(run_id, 2, [Message.user("the stale writer's")]))
        await _refused("a second save", run_id, stale.save, _state(run_id, 2, [Message.user("stale again")]))
        await _lapse()
        item = _one(await _interrupted(await workers.new(), [run_id]), run_id)
        assert _texts(item) == [TRANSCRIPT[0].content, TRANSCRIPT[1].content, "the new owner's"], (
            f"a refused save from the stale writer changed the transcript: {_texts(item)}"
        )


async def check_checkpoint_a_takeover_is_seen(factory: Any) -> None:
    """The worker that lost its run can neither complete, fail nor release it (each raises
    `RunTakenOver`), and the new owner's run goes on: it saves and completes."""
    async with _workers(factory) as workers:
        paused = await workers.dead()
        info = make_info(caller_id="takeover-caller")
        run_id = info.run_id
        stale = await _checkpointer(paused, info)
        await _save(stale, run_id, 0, TRANSCRIPT[:2])
        await _lapse()
        rescuer = await workers.new()
        item = _one(await _interrupted(rescuer, [run_id]), run_id)
        assert item is not None, f"run {run_id}, whose owner went silent past its lease, was not handed out"
        current = await _checkpointer(rescuer, item.info)

        taken = await _refused("complete()", run_id, stale.complete)
        await _refused("fail()", run_id, stale.fail, "the stale worker's error")
        if "release" in capabilities(paused, stale):
            await _refused("release()", run_id, _release_of(stale))
        assert taken.owner is None or isinstance(taken.owner, str), (
            f"RunTakenOver.owner is {taken.owner!r}: the new owner's id, or None when unknown"
        )
        await _save(current, run_id, 2, TRANSCRIPT[2:5], iteration=1, tool_calls=2)
        assert await call("Checkpointer.complete (the new owner)", current.complete) is None
        assert not await _interrupted(await workers.new(), [run_id]), (
            "the run the new owner completed is handed out"
        )


async def check_checkpoint_stores_share_nothing(factory: Any) -> None:
    """Two stores in one process (two executors) are two owners: neither hands out a run the other
    is running, nor starts one (``for_run`` raises `RunTakenOver`), and the holder goes on saving."""
    async with _workers(factory) as workers:
        first, second = await workers.new(), await workers.new()
        one, two = make_info(1, caller_id="apart-caller"), make_info(2, caller_id="apart-caller")
        first_cp = await _checkpointer(first, one)
        second_cp = await _checkpointer(second, two)
        await _save(first_cp, one.run_id, 0, TRANSCRIPT[:2])
        await _save(second_cp, two.run_id, 0, TRANSCRIPT[:2])
        ours = [one.run_id, two.run_id]
        for store, name in ((first, "the first"), (second, "the second")):
            found = await _interrupted(store, ours)
            assert not found, (
                f"{name} store handed out {_ids(found)} while both stores are running their runs: a store "
                "must know its own owner (one per store instance, not per process) and take only runs whose "
                "owner is gone"
            )
        try:
            await maybe_await(second.for_run(one, AGENT))
        except RunTakenOver:
            pass
        except Exception as exc:
            raise AssertionError(
                f"for_run of a run another store is running raised {type(exc).__name__}: {exc}; raise "
                "RunTakenOver, so the loop stops instead of running it twice"
            ) from exc
        else:
            raise AssertionError(
                "the second store's for_run took over a run the first store is running (its lease is alive): "
                "the run would go on in two places and run its tools twice"
            )
        await _save(first_cp, one.run_id, 2, TRANSCRIPT[2:4], iteration=1, tool_calls=1)
        assert await call("Checkpointer.complete", first_cp.complete) is None
        assert await call("Checkpointer.complete", second_cp.complete) is None


async def check_checkpoint_adopts_dead_owners_runs_never_its_own(factory: Any) -> None:
    """A live store's ``interrupted()`` hands out the runs of a dead owner (lease lapsed) and those
    released by their owner, never a run it holds itself, even one whose lease lapsed."""
    async with _workers(factory) as workers:
        live = await workers.new()
        own, dead_run, released_run, silent_run = (make_info(i, caller_id="adopt-caller") for i in range(4))
        own_cp = await _checkpointer(live, own)
        await _save(own_cp, own.run_id, 0, TRANSCRIPT[:2])

        leaving = await workers.new()
        leaving_cp = await _checkpointer(leaving, released_run)
        await _save(leaving_cp, released_run.run_id, 0, TRANSCRIPT[:2])
        ours = [own.run_id, dead_run.run_id, released_run.run_id]
        if "release" in capabilities(leaving, leaving_cp):
            await call("Checkpointer.release", _release_of(leaving_cp))
            early = _ids(await _interrupted(live, ours))
            assert early == [released_run.run_id], (
                f"interrupted() handed out {early}: the run its owner released, {released_run.run_id}, is "
                "free at once, and nothing else is"
            )

        dead = await workers.dead()
        await _save(await _checkpointer(dead, dead_run), dead_run.run_id, 0, TRANSCRIPT[:2])
        await _lapse()
        found = _ids(await _interrupted(live, ours))
        assert found == [dead_run.run_id], (
            f"a live store's interrupted() handed out {found}; want the dead owner's {dead_run.run_id}, never "
            f"its own running {own.run_id}"
        )
        await _save(own_cp, own.run_id, 2, TRANSCRIPT[2:4], iteration=1, tool_calls=1)

        silent = await workers.dead()  # alive, but its lease lapsed while it ran a long tool
        await _save(await _checkpointer(silent, silent_run), silent_run.run_id, 0, TRANSCRIPT[:2])
        await _lapse()
        assert not await _interrupted(silent, [silent_run.run_id]), (
            "a store handed out its own run, whose lease had lapsed while it ran: it holds the run until it "
            "ends or releases it; only other stores may take it over"
        )
        assert _ids(await _interrupted(live, [silent_run.run_id])) == [silent_run.run_id], (
            "another store did not take over a run whose lease lapsed"
        )


async def check_checkpoint_a_claim_never_resumed_lapses(factory: Any) -> None:
    """A worker that claims a run and then neither resumes (``for_run``) nor releases it holds it only
    for its lease: the claim is not renewed forever, and another worker gets the run."""
    async with _workers(factory) as workers:
        info = make_info(caller_id="claim-caller")
        claimer, observer = await _warm(await workers.dead()), await _warm(await workers.new())
        await _interrupt(workers, [info], [TRANSCRIPT[:2]])
        assert _ids(await _interrupted(claimer, [info.run_id])) == [info.run_id]
        assert not await _interrupted(observer, [info.run_id]), "a fresh claim was handed out again"
        await _lapse()
        later = _ids(await _interrupted(await workers.new(), [info.run_id]))
        assert later == [info.run_id], (
            "a run claimed and never resumed nor released is stuck: once its claim's lease lapsed another worker "
            f"must get it (got {later})"
        )


async def check_checkpoint_release_with_error_backs_off(factory: Any) -> None:
    """A resume that failed is released with its error (capability ``release``): the run is not
    handed out again at once but after a backoff; after ``max_resume_attempts`` failures it is never
    handed out again. The released checkpointer is done: it is refused from then on."""
    options = {"max_resume_attempts": 2, "resume_backoff_seconds": BACKOFF}
    async with _workers(factory) as workers:
        info = make_info(caller_id="backoff-caller")
        run_id = info.run_id
        await _interrupt(workers, [info], [TRANSCRIPT[:2]])
        first = await workers.new(**options)
        item = _one(await _interrupted(first, [run_id]), run_id)
        assert item is not None, f"run {run_id} was not handed out"
        failing = await _checkpointer(first, item.info)
        if "release" not in capabilities(first, failing):
            _skip("release", "its Checkpointer has no release(error=None)")
        other = await _warm(await workers.new(**options))
        await call(
            "Checkpointer.release(error)", _release_of(failing), "agent names unknown tool 'calculate'"
        )
        await _refused(
            "a save after release", run_id, failing.save, _state(run_id, 2, [Message.user("late")])
        )
        soon = _ids(await _interrupted(other, [run_id]))
        assert soon == [], (
            f"a run whose resume just failed was handed out again at once ({soon}): back off, or a worker "
            "that cannot run it takes it again and again"
        )
        await _lapse(BACKOFF)
        item = _one(await _interrupted(other, [run_id]), run_id)
        assert item is not None, f"after its backoff ({BACKOFF:g}s) the run was not handed out again"
        again = await _checkpointer(other, item.info)
        await call("Checkpointer.release(error)", _release_of(again), "agent names unknown tool 'calculate'")
        await _lapse(4 * BACKOFF)
        given_up = _ids(await _interrupted(await workers.new(**options), [run_id]))
        assert given_up == [], (
            "a run whose resume failed max_resume_attempts=2 times was handed out again: give it up (mark it "
            "failed, keeping the error) so it cannot stay claimed and failing for ever"
        )


async def check_checkpoint_quarantines_a_corrupt_checkpoint(
    factory: Any, damage: Damage | None = None
) -> None:
    """A run whose checkpoint does not read back (a bad message, bad run info) is quarantined: never
    handed out, never raised from ``interrupted()``; the healthy run beside it is handed out."""
    if damage is None:
        raise unittest.SkipTest(
            "no damage_checkpoint fixture: provide one (damage(run_id, part) makes a saved checkpoint "
            "unreadable) to check quarantine"
        )
    async with _workers(factory) as workers:
        good, bad_message, bad_info = (make_info(i, caller_id="corrupt-caller") for i in range(3))
        await _interrupt(workers, [good, bad_message, bad_info], [TRANSCRIPT[:3]] * 3)
        await maybe_await(damage(bad_message.run_id, "message"))
        await maybe_await(damage(bad_info.run_id, "info"))
        ours = [good.run_id, bad_message.run_id, bad_info.run_id]
        found = _ids(await _interrupted(await workers.new(), ours))
        assert found == [good.run_id], (
            f"with one healthy and two corrupt checkpoints, interrupted() handed out {found}: hand out the "
            "healthy run, and quarantine the corrupt ones (keep them, with the error, for a person)"
        )
        await _lapse(0)
        later = _ids(await _interrupted(await workers.new(), ours))
        assert later == [], f"quarantined runs were handed out later: {later}"


async def check_checkpoint_paused_run_waits_for_load(factory: Any) -> None:
    """A run paused for approval (capability ``pause``) is kept and given up, but never handed out
    by ``interrupted()``, even long after its lease; ``load(run_id)`` claims it with its transcript,
    its attempts and ``paused_at``, once (a second worker's ``load`` is refused while the first
    holds it); the loader resumes it with ``for_run``. ``load`` also claims an interrupted run
    (without ``paused_at``), refuses a run a live worker holds, and returns ``None`` for a run it
    does not hold or that ended."""
    async with _workers(factory) as workers:
        info = make_info(caller_id="pause-caller")
        run_id = info.run_id
        writer = await workers.dead()
        checkpointer = await _checkpointer(writer, info)
        if "pause" not in capabilities(writer, checkpointer):
            _skip("pause", "its Checkpointer has no pause(pending) or the store no load(run_id)")
        load: Callable[..., Any] = getattr(writer, "load")  # noqa: B009 - not on the Protocol
        pause: Callable[..., Any] = getattr(checkpointer, "pause")  # noqa: B009
        waiting = ToolCall(id="call-9", name="transfer", arguments={"to": "bob", "amount": 500})
        transcript = [*TRANSCRIPT[:2], Message.assistant(None, [waiting])]
        before = utcnow()
        await _save(checkpointer, run_id, 0, transcript, iteration=1, attempts={"call-9": 0})
        pending = [PendingCall(call_id="call-9", tool="transfer", arguments=dict(waiting.arguments))]
        assert await call("Checkpointer.pause", pause, pending) is None
        await _refused(
            "a save after pause", run_id, checkpointer.save, _state(run_id, 3, [Message.user("late")])
        )
        await _lapse()
        others = await _interrupted(await workers.new(), [run_id])
        assert others == [], (
            "interrupted() handed out a run paused for approval: it waits for Executor.resume "
            "(load), not for recover(), which would pause it again at once"
        )
        assert await call("CheckpointStore.load", load, f"no-such-run-{run_id}") is None, (
            "load() of a run id the store never saw must return None"
        )
        loader = await workers.new()
        item = await call("CheckpointStore.load", getattr(loader, "load"), run_id)  # noqa: B009
        assert isinstance(item, Interrupted), f"load() of a paused run returned {item!r}, not an Interrupted"
        assert _dumps(item.messages) == _dumps(transcript), f"load() lost the transcript: {_texts(item)}"
        assert item.attempts.get("call-9") == 0, (
            f"load() must hand back the saved attempts (the waiting call never started: 0); got {item.attempts}"
        )
        assert item.iteration == 1 and item.info.run_id == run_id
        assert item.paused_at is not None, "load() of a paused run must say since when it waits (paused_at)"
        paused_at = item.paused_at if item.paused_at.tzinfo else item.paused_at.replace(tzinfo=before.tzinfo)
        assert before - timedelta(seconds=5) <= paused_at <= utcnow() + timedelta(seconds=5), (
            f"paused_at {item.paused_at} is not when the run paused (about {before})"
        )
        rival = await workers.new()
        try:
            again = await maybe_await(getattr(rival, "load")(run_id))  # noqa: B009
        except RunTakenOver:
            again = None
        assert again is None, "a paused run was loaded twice: once loaded, it is the loader's"
        resumed = await _checkpointer(loader, item.info)
        await _save(
            resumed, run_id, 3, [Message.tool("call-9", "sent 500 to bob", name="transfer")], iteration=1
        )
        await _refused(
            "load() of a run another worker runs",
            run_id,
            getattr(rival, "load"),  # noqa: B009
            run_id,
        )
        assert await call("Checkpointer.complete", resumed.complete) is None
        assert await call("CheckpointStore.load", getattr(rival, "load"), run_id) is None, (  # noqa: B009
            "load() of a completed run must return None"
        )

        lost = make_info(1, caller_id="pause-caller")
        await _interrupt(workers, [lost], [TRANSCRIPT[:2]])
        found = await call("CheckpointStore.load", getattr(rival, "load"), lost.run_id)  # noqa: B009
        assert isinstance(found, Interrupted) and _dumps(found.messages) == _dumps(TRANSCRIPT[:2]), (
            f"load() of an interrupted run (its lease lapsed) must claim it with its transcript; got {found!r}"
        )
        assert found.paused_at is None, "an interrupted run never paused: paused_at must be None"
        assert not await _interrupted(await workers.new(), [lost.run_id]), (
            "a run claimed by load() was handed out again by interrupted()"
        )


CHECKPOINT_OWNERSHIP_CHECKS: tuple[Callable[..., Awaitable[None]], ...] = (
    check_checkpoint_a_stale_writer_is_refused,
    check_checkpoint_a_takeover_is_seen,
    check_checkpoint_stores_share_nothing,
    check_checkpoint_adopts_dead_owners_runs_never_its_own,
    check_checkpoint_a_claim_never_resumed_lapses,
    check_checkpoint_release_with_error_backs_off,
    check_checkpoint_quarantines_a_corrupt_checkpoint,
)


CHECKPOINT_CHECKS: tuple[Callable[..., Awaitable[None]], ...] = (
    check_checkpoint_round_trips_a_transcript,
    check_checkpoint_saves_append_at_their_offset,
    check_checkpoint_interleaved_saves_land_in_order,
    check_checkpoint_keeps_tool_call_attempts,
    check_checkpoint_complete_and_fail_clear_the_run,
    check_checkpoint_hands_each_run_out_once,
    check_checkpoint_lists_oldest_first,
    check_checkpoint_resumed_run_continues,
    check_checkpoint_concurrent_runs_stay_apart,
    check_checkpoint_never_blocks_the_loop,
    check_checkpoint_interrupted_takes_a_limit,
    check_checkpoint_paused_run_waits_for_load,
    *CHECKPOINT_OWNERSHIP_CHECKS,
)
"""Every check of the suite, one test each; the ownership checks last."""


class CheckpointStoreConformance:
    """The contract every `CheckpointStore` battery honours. Subclass it and provide ``make_store``.

    ``make_store`` is a fixture returning a factory (sync or ``async``), called inside the test's
    own event loop (no pytest-asyncio needed; ``aclose()`` is called on what it built). Each call
    builds a new **worker**: a store with an owner of its own, on the test's storage, which is
    empty when the test starts and shared by every store the test builds. The factory takes
    keyword options, which it passes on to the store:

    - ``lease_seconds``: how long the store holds a run after its last call. A store built with it
      must not renew its leases in the background (no heartbeat), so a store that goes silent plays
      a dead or paused process.
    - ``max_resume_attempts`` and ``resume_backoff_seconds`` (the backoff check).

    ::

        class TestSqlStore(CheckpointStoreConformance):
            @pytest.fixture
            def make_store(self, tmp_path):
                url = f"sqlite+aiosqlite:///{tmp_path}/cp.db"
                return lambda **options: SqlCheckpointStore(url=url, heartbeat_seconds=0, **options)

            @pytest.fixture
            def damage_checkpoint(self, tmp_path):  # optional; without it the quarantine check skips
                ...  # return damage(run_id, part): make a saved checkpoint unreadable

    The contract it checks:

    - ``save(state)`` writes ``state.messages`` at ``state.offset``: new messages append, a retried
      save at the same offset overwrites instead of duplicating, and a save past the end (a save
      was lost) raises; one checkpointer's saves called without waiting land in call order;
      ``state.attempts`` is merged per call id and handed back in ``Interrupted.attempts``;
    - ``interrupted()`` hands out the runs saved and neither completed nor failed whose owner is
      gone, oldest first by ``started_at``, each with its whole transcript, the last save's counters,
      its `RunInfo` and its agent's ``spec()``; each run goes to one caller, even to concurrent ones;
      with the ``limit`` capability, at most ``limit`` runs;
    - with the ``pause`` capability: a paused run is never handed out by ``interrupted()``, and
      ``load(run_id)`` claims a paused or interrupted run once, with ``paused_at`` for a paused one;
    - ``for_run`` on a run whose owner is gone resumes it: the transcript is kept and saves append;
    - ``complete()`` and ``fail(error)`` drop the run;
    - ownership (see the module docstring): stale writers are refused with `RunTakenOver`, stores
      share nothing, a live store adopts dead owners' runs and never its own, claims lapse, a failed
      resume backs off and is given up after ``max_resume_attempts``, corrupt checkpoints are
      quarantined;
    - many runs at once never mix, and no call stalls the event loop.
    """

    def test_round_trips_a_transcript(self, make_store: Any) -> None:
        run_check(check_checkpoint_round_trips_a_transcript, make_store)

    def test_saves_append_at_their_offset(self, make_store: Any) -> None:
        run_check(check_checkpoint_saves_append_at_their_offset, make_store)

    def test_interleaved_saves_land_in_order(self, make_store: Any) -> None:
        run_check(check_checkpoint_interleaved_saves_land_in_order, make_store)

    def test_keeps_tool_call_attempts(self, make_store: Any) -> None:
        run_check(check_checkpoint_keeps_tool_call_attempts, make_store)

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

    def test_interrupted_takes_a_limit(self, make_store: Any) -> None:
        run_check(check_checkpoint_interrupted_takes_a_limit, make_store)

    def test_paused_run_waits_for_load(self, make_store: Any) -> None:
        run_check(check_checkpoint_paused_run_waits_for_load, make_store)

    def test_a_stale_writer_is_refused(self, make_store: Any) -> None:
        run_check(check_checkpoint_a_stale_writer_is_refused, make_store)

    def test_a_takeover_is_seen(self, make_store: Any) -> None:
        run_check(check_checkpoint_a_takeover_is_seen, make_store)

    def test_stores_share_nothing(self, make_store: Any) -> None:
        run_check(check_checkpoint_stores_share_nothing, make_store)

    def test_adopts_dead_owners_runs_never_its_own(self, make_store: Any) -> None:
        run_check(check_checkpoint_adopts_dead_owners_runs_never_its_own, make_store)

    def test_a_claim_never_resumed_lapses(self, make_store: Any) -> None:
        run_check(check_checkpoint_a_claim_never_resumed_lapses, make_store)

    def test_release_with_error_backs_off(self, make_store: Any) -> None:
        run_check(check_checkpoint_release_with_error_backs_off, make_store)

    def test_quarantines_a_corrupt_checkpoint(self, make_store: Any, request: Any) -> None:
        # The damage_checkpoint fixture is optional: looked up by name, as the suite imports no pytest.
        try:
            damage = request.getfixturevalue("damage_checkpoint")
        except Exception:
            damage = None

        async def check(factory: Any) -> None:
            await check_checkpoint_quarantines_a_corrupt_checkpoint(factory, damage)

        check.__name__ = check_checkpoint_quarantines_a_corrupt_checkpoint.__name__
        run_check(check, make_store)
