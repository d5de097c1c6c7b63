"""The conformance suite of `PaletteSource`."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

from executus_core.ports import PaletteSource
from executus_core.testing.conformance._harness import LoopLag, built, call, run_check
from executus_core.types import PaletteEntry, RunStatus

__all__ = [
    "PALETTE_CHECKS",
    "PaletteConformance",
    "PaletteSubject",
    "check_palette_concurrent_invokes_stay_apart",
    "check_palette_invokes_a_skill_by_keyword",
    "check_palette_invokes_an_agent_by_keyword",
    "check_palette_never_blocks_the_loop",
    "check_palette_resolves_by_keyword",
]

STATUSES = frozenset(status.value for status in RunStatus)


@dataclasses.dataclass
class PaletteSubject:
    """A `PaletteSource` under test, and a skill and an agent it serves (both must end ``ok``).

    Attributes:
        palette: the `PaletteSource`.
        skill: the name of a skill it resolves, and ``skill_inputs`` valid inputs for it.
        agent: the name of an agent it resolves, and ``agent_prompt`` a prompt for it.
        caller_id: the caller the suite invokes them for.
    """

    palette: PaletteSource
    skill: str
    skill_inputs: dict[str, Any]
    agent: str
    agent_prompt: str = "Say hello."
    caller_id: str = "palette-caller"

    @property
    def port(self) -> PaletteSource:
        """The port object under test; the harness closes it (``aclose``) after each check."""
        return self.palette


def _subject(made: Any) -> PaletteSubject:
    assert isinstance(made, PaletteSubject), (
        f"make_palette must build a PaletteSubject(palette, skill, skill_inputs, agent), got {type(made).__name__}"
    )
    assert isinstance(made.palette, PaletteSource), (
        f"{type(made.palette).__name__} is not a PaletteSource (resolve_skill, invoke_skill, resolve_agent, invoke_agent)"
    )
    return made


def _outcome(label: str, value: Any, parent_run_id: str | None) -> tuple[str, str, str]:
    assert isinstance(value, tuple) and len(value) == 3, (
        f"{label} returned {value!r}: return the tuple (output, run_id, status)"
    )
    output, run_id, status = value
    assert isinstance(output, str), f"{label}: the output is {type(output).__name__}, not str"
    assert isinstance(run_id, str) and run_id, f"{label}: the run id is {run_id!r}, not a non-empty string"
    assert run_id != parent_run_id, f"{label}: the child's run id is the parent's ({run_id})"
    assert status in STATUSES, f"{label}: the status {status!r} is not a RunStatus value ({sorted(STATUSES)})"
    return output, run_id, status


async def _invoke_skill(
    subject: PaletteSubject, parent_run_id: str, channel_id: str | None = None
) -> tuple[str, str, str]:
    label = f"PaletteSource.invoke_skill(name={subject.skill!r})"
    value = await call(
        label,
        subject.palette.invoke_skill,
        caller_id=subject.caller_id,
        channel_id=channel_id,
        name=subject.skill,
        inputs=dict(subject.skill_inputs),
        parent_run_id=parent_run_id,
    )
    return _outcome(label, value, parent_run_id)


async def _invoke_agent(
    subject: PaletteSubject,
    parent_run_id: str,
    *,
    on_event: Any = None,
    prompt_prepend: str | None = None,
    channel_id: str | None = None,
) -> tuple[str, str, str]:
    label = f"PaletteSource.invoke_agent(name={subject.agent!r})"
    value = await call(
        label,
        subject.palette.invoke_agent,
        caller_id=subject.caller_id,
        channel_id=channel_id,
        name=subject.agent,
        prompt=subject.agent_prompt,
        parent_run_id=parent_run_id,
        model_tier_override=None,
        prompt_prepend=prompt_prepend,
        tools_subset=None,
        on_event=on_event,
    )
    return _outcome(label, value, parent_run_id)


async def check_palette_resolves_by_keyword(factory: Any) -> None:
    """``resolve_skill``/``resolve_agent``, called with keyword arguments, return a `PaletteEntry` for
    a name they serve and ``None`` for one they do not."""
    async with built(factory) as made:
        subject = _subject(made)
        unknown = f"no-such-name-{uuid.uuid4().hex[:8]}"
        for kind, name in (("skill", subject.skill), ("agent", subject.agent)):
            method = getattr(subject.palette, f"resolve_{kind}")
            label = f"PaletteSource.resolve_{kind}"
            entry = await call(label, method, caller_id=subject.caller_id, name=name)
            assert isinstance(entry, PaletteEntry), (
                f"{label}(name={name!r}) returned {entry!r}, not a PaletteEntry"
            )
            assert entry.name == name, f"{label}(name={name!r}) resolved to an entry named {entry.name!r}"
            assert isinstance(entry.input_schema, dict) and entry.input_schema.get("type") == "object", (
                f"{label}(name={name!r}): input_schema {entry.input_schema!r} is not a JSON schema of an object"
            )
            missing = await call(label, method, caller_id=subject.caller_id, name=unknown)
            assert missing is None, (
                f"{label}(name={unknown!r}) returned {missing!r}: a name it does not serve is None"
            )


async def check_palette_invokes_a_skill_by_keyword(factory: Any) -> None:
    """``invoke_skill`` takes keyword arguments and returns ``(output, run_id, status)``, ``ok`` here."""
    async with built(factory) as made:
        subject = _subject(made)
        for channel_id in (None, "channel-7"):
            output, _, status = await _invoke_skill(subject, "parent-run-1", channel_id)
            assert status == RunStatus.OK.value, f"the skill {subject.skill!r} ended {status}: {output}"


async def check_palette_invokes_an_agent_by_keyword(factory: Any) -> None:
    """``invoke_agent`` takes keyword arguments (all nine), returns ``(output, run_id, status)``, and
    reports progress, if at all, as ``on_event(type, data)`` with a sync or an async callback."""
    async with built(factory) as made:
        subject = _subject(made)
        seen: list[tuple[Any, Any]] = []

        async def async_events(type: str, data: Mapping[str, Any]) -> None:
            await asyncio.sleep(0)
            seen.append((type, data))

        def sync_events(type: str, data: Mapping[str, Any]) -> None:
            seen.append((type, data))

        for on_event, prepend in ((None, None), (async_events, "Be brief."), (sync_events, None)):
            output, _, status = await _invoke_agent(
                subject, "parent-run-2", on_event=on_event, prompt_prepend=prepend, channel_id="channel-9"
            )
            assert status == RunStatus.OK.value, f"the agent {subject.agent!r} ended {status}: {output}"
        for type_, data in seen:
            assert isinstance(type_, str) and isinstance(data, Mapping), (
                f"on_event was called with ({type_!r}, {data!r}): call on_event(type: str, data: Mapping)"
            )


async def check_palette_concurrent_invokes_stay_apart(factory: Any) -> None:
    """Many skills and agents invoked at once all end ``ok``, each with its own run id."""
    async with built(factory) as made:
        subject = _subject(made)
        outcomes = await asyncio.gather(
            *(_invoke_skill(subject, f"parent-{i}") for i in range(15)),
            *(_invoke_agent(subject, f"parent-{i}") for i in range(15)),
        )
        failed = [o for o in outcomes if o[2] != RunStatus.OK.value]
        assert not failed, f"{len(failed)} of 30 concurrent invokes did not end ok: {failed[0]}"
        run_ids = [o[1] for o in outcomes]
        assert len(set(run_ids)) == len(run_ids), (
            f"30 concurrent invokes gave {len(set(run_ids))} distinct run ids: each child run has its own id"
        )


async def check_palette_never_blocks_the_loop(factory: Any) -> None:
    """Resolving and invoking many entries at once never stalls the event loop."""
    async with built(factory) as made:
        subject = _subject(made)

        async def one(index: int) -> None:
            await call(
                "resolve_skill",
                subject.palette.resolve_skill,
                caller_id=subject.caller_id,
                name=subject.skill,
            )
            await call(
                "resolve_agent",
                subject.palette.resolve_agent,
                caller_id=subject.caller_id,
                name=subject.agent,
            )
            await _invoke_skill(subject, f"lag-parent-{index}")
            await _invoke_agent(subject, f"lag-parent-{index}")

        async with LoopLag() as lag:
            await asyncio.gather(*(one(i) for i in range(10)))
        lag.check("resolving and invoking 10 skills and 10 agents")


PALETTE_CHECKS = (
    check_palette_resolves_by_keyword,
    check_palette_invokes_a_skill_by_keyword,
    check_palette_invokes_an_agent_by_keyword,
    check_palette_concurrent_invokes_stay_apart,
    check_palette_never_blocks_the_loop,
)


class PaletteConformance:
    """The contract every `PaletteSource` honours. Subclass it and provide ``make_palette``.

    ``make_palette`` is a fixture returning a factory (sync or ``async``) that builds a
    `PaletteSubject`: the palette and the name of a skill and an agent it serves, which end ``ok``.
    Each test runs in its own event loop (no pytest-asyncio needed)::

        class TestRemotePalette(PaletteConformance):
            @pytest.fixture
            def make_palette(self, server_url):
                return lambda: PaletteSubject(RemotePalette(server_url), skill="summarize",
                                              skill_inputs={"text": "..."}, agent="researcher")

    The contract: every method is called with keyword arguments named as in `PaletteSource`;
    ``resolve_*`` return a `PaletteEntry` or ``None``; ``invoke_*`` return ``(output, run_id,
    status)`` with a fresh run id per call and a `RunStatus` value; ``on_event`` (sync or async)
    gets ``(type, data)``; concurrent calls never mix, and nothing stalls the event loop.
    """

    def test_resolves_by_keyword(self, make_palette: Any) -> None:
        run_check(check_palette_resolves_by_keyword, make_palette)

    def test_invokes_a_skill_by_keyword(self, make_palette: Any) -> None:
        run_check(check_palette_invokes_a_skill_by_keyword, make_palette)

    def test_invokes_an_agent_by_keyword(self, make_palette: Any) -> None:
        run_check(check_palette_invokes_an_agent_by_keyword, make_palette)

    def test_concurrent_invokes_stay_apart(self, make_palette: Any) -> None:
        run_check(check_palette_concurrent_invokes_stay_apart, make_palette)

    def test_never_blocks_the_loop(self, make_palette: Any) -> None:
        run_check(check_palette_never_blocks_the_loop, make_palette)
