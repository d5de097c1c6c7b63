"""The conformance suite of `Delivery`."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from executus_core.ports import Delivery
from executus_core.testing.conformance._harness import LoopLag, built, call, run_check
from executus_core.types import Artifact, DeliveryTarget, Message, Result, RunStats, RunStatus

__all__ = [
    "DELIVERY_CHECKS",
    "DeliveryConformance",
    "DeliverySubject",
    "check_delivery_concurrent_deliveries_arrive_once",
    "check_delivery_delivers_ok_and_failed_runs",
    "check_delivery_names_its_kinds",
    "check_delivery_never_blocks_the_loop",
]


@dataclasses.dataclass
class DeliverySubject:
    """A `Delivery` under test, a target it serves, and (optionally) what arrived.

    Attributes:
        delivery: the `Delivery`.
        target: a `DeliveryTarget` whose ``kind`` it serves (pointing at a test receiver).
        received: ``received()`` (sync or async) returns every `Result` that arrived so far, as the
            receiver read it back; ``None`` when the suite cannot look (it then checks only that
            delivering succeeds).
    """

    delivery: Delivery
    target: DeliveryTarget
    received: Callable[[], list[Result] | Awaitable[list[Result]]] | None = None

    @property
    def port(self) -> Delivery:
        """The port object under test; the harness closes it (``aclose``) after each check."""
        return self.delivery


def _subject(made: Any) -> DeliverySubject:
    assert isinstance(made, DeliverySubject), (
        f"make_delivery must build a DeliverySubject(delivery, target), got {type(made).__name__}"
    )
    assert isinstance(made.delivery, Delivery), (
        f"{type(made.delivery).__name__} is not a Delivery (kinds, deliver, deliver_error)"
    )
    return made


def _result(status: RunStatus = RunStatus.OK, tag: str = "") -> Result:
    ok = status is RunStatus.OK
    return Result(
        run_id=f"delivery-{tag or 'run'}-{uuid.uuid4().hex[:8]}",
        status=status,
        output=f"the answer ✓ {tag}" if ok else None,
        error=None if ok else f"model failed: 500 {tag}",
        stats=RunStats(
            status=status, steps=2, tool_calls=1, runtime_seconds=0.5, input_tokens=10, output_tokens=3
        ),
        messages=[Message.user(f"question {tag}"), Message.assistant(f"the answer ✓ {tag}")],
        artifacts=[
            Artifact(name="report.bin", content=bytes(range(256)), media_type="application/octet-stream")
        ],
    )


async def _received(subject: DeliverySubject) -> list[Result] | None:
    if subject.received is None:
        return None
    got = await call("received", subject.received)
    assert isinstance(got, list) and all(isinstance(r, Result) for r in got), (
        f"received() returned {got!r}, not a list of Result"
    )
    return got


async def _deliver(subject: DeliverySubject, result: Result) -> None:
    method = "deliver" if result.status is RunStatus.OK else "deliver_error"
    answer = await call(f"Delivery.{method}", getattr(subject.delivery, method), subject.target, result)
    assert answer is None, f"Delivery.{method} returned {answer!r}, not None"


async def check_delivery_names_its_kinds(factory: Any) -> None:
    """``kinds`` is a set of strings that holds the target's kind."""
    async with built(factory) as made:
        subject = _subject(made)
        kinds = subject.delivery.kinds
        assert isinstance(kinds, frozenset | set) and kinds, (
            f"Delivery.kinds is {kinds!r}: make it a non-empty frozenset of target kinds, e.g. frozenset({{'webhook'}})"
        )
        assert all(isinstance(kind, str) and kind for kind in kinds), (
            f"Delivery.kinds holds non-strings: {kinds!r}"
        )
        assert subject.target.kind in kinds, (
            f"the target's kind {subject.target.kind!r} is not in kinds {sorted(kinds)}"
        )


async def check_delivery_delivers_ok_and_failed_runs(factory: Any) -> None:
    """``deliver`` takes an ok run, ``deliver_error`` a failed one (artifacts, unicode and all);
    what arrives is the result that was sent."""
    async with built(factory) as made:
        subject = _subject(made)
        sent = [
            _result(RunStatus.OK, "ok"),
            _result(RunStatus.ERROR, "error"),
            _result(RunStatus.TIMEOUT, "timeout"),
        ]
        for result in sent:
            await _deliver(subject, result)
        got = await _received(subject)
        if got is None:
            return
        by_id = {r.run_id: r for r in got}
        for result in sent:
            arrived = by_id.get(result.run_id)
            assert arrived is not None, (
                f"the {result.status.value} result of run {result.run_id} never arrived"
            )
            for field in ("status", "output", "error"):
                assert getattr(arrived, field) == getattr(result, field), (
                    f"run {result.run_id}: {field} arrived as {getattr(arrived, field)!r}, sent {getattr(result, field)!r}"
                )
            assert [a.content for a in arrived.artifacts] == [a.content for a in result.artifacts], (
                f"run {result.run_id}: the artifacts' bytes did not arrive intact"
            )


async def check_delivery_concurrent_deliveries_arrive_once(factory: Any) -> None:
    """30 deliveries at once each arrive exactly once."""
    async with built(factory) as made:
        subject = _subject(made)
        sent = [_result(RunStatus.OK if i % 3 else RunStatus.ERROR, str(i)) for i in range(30)]
        await asyncio.gather(*(_deliver(subject, result) for result in sent))
        got = await _received(subject)
        if got is None:
            return
        ids = [r.run_id for r in got]
        for result in sent:
            count = ids.count(result.run_id)
            assert count == 1, f"run {result.run_id} arrived {count} times out of 30 concurrent deliveries"


async def check_delivery_never_blocks_the_loop(factory: Any) -> None:
    """Delivering many results at once never stalls the event loop."""
    async with built(factory) as made:
        subject = _subject(made)
        async with LoopLag() as lag:
            await asyncio.gather(*(_deliver(subject, _result(RunStatus.OK, f"lag{i}")) for i in range(20)))
            await _received(subject)
        lag.check("delivering 20 results")


DELIVERY_CHECKS = (
    check_delivery_names_its_kinds,
    check_delivery_delivers_ok_and_failed_runs,
    check_delivery_concurrent_deliveries_arrive_once,
    check_delivery_never_blocks_the_loop,
)


class DeliveryConformance:
    """The contract every `Delivery` honours. Subclass it and provide ``make_delivery``.

    ``make_delivery`` is a fixture returning a factory (sync or ``async``) that builds a
    `DeliverySubject`: the delivery, a target it serves, and optionally ``received()`` to read back
    what arrived. Each test runs in its own event loop (no pytest-asyncio needed)::

        class TestFileDelivery(DeliveryConformance):
            @pytest.fixture
            def make_delivery(self, tmp_path):
                return lambda: DeliverySubject(FileDelivery(), DeliveryTarget(kind="file", path=str(tmp_path)),
                                               received=lambda: read_results(tmp_path))

    The contract: ``kinds`` is a non-empty set of strings; ``deliver`` (ok runs) and
    ``deliver_error`` (failed runs) take the target and the `Result` and return ``None``; each
    result arrives once, as sent, even when many are delivered at once; nothing stalls the loop.
    """

    def test_names_its_kinds(self, make_delivery: Any) -> None:
        run_check(check_delivery_names_its_kinds, make_delivery)

    def test_delivers_ok_and_failed_runs(self, make_delivery: Any) -> None:
        run_check(check_delivery_delivers_ok_and_failed_runs, make_delivery)

    def test_concurrent_deliveries_arrive_once(self, make_delivery: Any) -> None:
        run_check(check_delivery_concurrent_deliveries_arrive_once, make_delivery)

    def test_never_blocks_the_loop(self, make_delivery: Any) -> None:
        run_check(check_delivery_never_blocks_the_loop, make_delivery)
