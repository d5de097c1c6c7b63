"""Delivery through `Executor.run(..., delivery=...)`: webhooks against a real HTTP server on loopback,
file targets on disk, and the settings that shape both."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from executus_core import (
    Agent,
    Budget,
    BudgetExceeded,
    ConfigError,
    DeliveryTarget,
    Executor,
    PluginError,
    Result,
    RunStatus,
    ToolContext,
    hookimpl,
    tool,
)
from executus_core.delivery import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BuiltinDeliveries,
    DeliveryFailed,
    DeliverySettings,
    FileDelivery,
    WebhookDelivery,
    WebhookTarget,
    WebhookVerificationError,
    _artifact_names,
    _retry_after,
    new_webhook_secret,
    sign_webhook,
    verify_webhook,
)
from executus_core.testing import ScriptedModel
from executus_core.testing.conformance.delivery import DeliveryConformance, DeliverySubject

from .conftest import answer, call

SECRET = "s3cret-signing-key"
HANG = -1  # a scripted "status" that makes the receiver sit on the request until the test ends

# Small backoffs keep the retry tests fast; the waits still double and jitter as in production.
FAST = {
    "port_timeout": 2.0,
    "delivery": {"webhook_backoff": 0.01, "webhook_max_backoff": 0.05, "webhook_timeout": 3.0},
}


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when it arrived


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers from a script, then 200 (and records every POST)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(
                        Received(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                        )
                    )
                    status, headers, reply = receiver.script.pop(0) if receiver.script else (200, {}, b"ok")
                if status == HANG:
                    receiver.release.wait(10)
                    status = 200
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, *replies: int | tuple[int, dict[str, str]] | tuple[int, dict[str, str], bytes]) -> None:
        for reply in replies:
            if isinstance(reply, int):
                self.script.append((reply, {}, b""))
            elif len(reply) == 2:
                self.script.append((reply[0], reply[1], b""))
            else:
                self.script.append(reply)  # type: ignore[arg-type]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with Executor(entry_points=False, settings=FAST) as executor:
        yield executor


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def list_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative POSIX path -> content)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hello_agent() -> Agent:
    return Agent(name="hello", model=ScriptedModel([answer("hi there")]))


def webhook(url: str, **options: Any) -> dict[str, Any]:
    return {"kind": "webhook", "url": url, **options}


def signed_by(secret: str, request: Received) -> bool:
    """True when ``request`` verifies with ``secret`` (as a receiver checks it, now)."""
    try:
        verify_webhook(secret, request.headers, request.body)
    except WebhookVerificationError:
        return False
    return True


# --- webhook: retries ------------------------------------------------------------------------


async def test_receiver_that_fails_twice_then_accepts_gets_three_signed_posts(
    ex: Executor, receiver: Receiver
) -> None:
    receiver.answer(500, 503)
    result = await ex.run(
        hello_agent(),
        "hello",
        caller_id="u1",
        delivery=webhook(f"{receiver.url}/hooks/run?v=1", secret=SECRET),
    )
    assert result.status is RunStatus.OK and result.warnings == []
    assert len(receiver.requests) == 3
    bodies = {r.body for r in receiver.requests}
    assert len(bodies) == 1  # every attempt sends the same bytes, so the signature stays valid
    for r in receiver.requests:
        assert r.path == "/hooks/run?v=1"
        assert r.headers["idempotency-key"] == result.run_id
        assert r.headers["x-executus-run-id"] == result.run_id
        assert r.headers["x-executus-status"] == "ok"
        assert r.headers["content-type"] == "application/json"
        assert verify_webhook(SECRET, r.headers, r.body) == result.run_id
        assert r.headers[ID_HEADER] == result.run_id  # the same id on every attempt
        assert not signed_by("another-secret", r)
    delivered = Result.model_validate_json(receiver.requests[0].body)
    assert delivered.run_id == result.run_id and delivered.output == "hi there"


async def test_429_retry_after_is_honoured(ex: Executor, receiver: Receiver) -> None:
    receiver.answer((429, {"Retry-After": "1"}))
    result = await ex.run(hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url))
    assert result.status is RunStatus.OK and result.warnings == []
    assert len(receiver.requests) == 2
    # the backoff setting is 0.01 s: only Retry-After explains a wait of about a second
    assert receiver.requests[1].at - receiver.requests[0].at >= 0.9


async def test_timeout_is_retried(ex: Executor, receiver: Receiver) -> None:
    receiver.answer(HANG)
    result = await ex.run(
        hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url, timeout=1.0, secret=SECRET)
    )
    assert result.warnings == []
    assert len(receiver.requests) == 2
    assert receiver.requests[0].headers["idempotency-key"] == receiver.requests[1].headers["idempotency-key"]


async def test_400_is_not_retried(ex: Executor, receiver: Receiver) -> None:
    receiver.answer((400, {}, b"missing field 'ticket'"), 200)
    result = await ex.run(hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url))
    assert result.status is RunStatus.OK  # a failed delivery never fails the run
    assert len(receiver.requests) == 1


async def test_retry_after_past_the_delivery_time_limit_is_not_waited_for(receiver: Receiver) -> None:
    receiver.answer((429, {"Retry-After": "3600"}))
    async with Executor(entry_points=False, settings={**FAST, "delivery_timeout": 5.0}) as ex:
        result = await ex.run(hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url))
    assert result.status is RunStatus.OK
    assert len(receiver.requests) == 1


async def test_unreachable_receiver_does_not_fail_the_run(ex: Executor) -> None:
    target = webhook(f"http://127.0.0.1:{closed_port()}/hook", attempts=3)
    result = await ex.run(hello_agent(), "hello", caller_id="u1", delivery=target)
    assert result.status is RunStatus.OK and result.output == "hi there"


async def test_attempts_setting_from_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECUTUS_DELIVERY__WEBHOOK_ATTEMPTS", "2")
    receiver.answer(500, 500, 500)
    async with Executor(entry_points=False, settings=FAST) as ex:
        await ex.run(hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url))
    assert len(receiver.requests) == 2


def test_bad_delivery_settings_stop_the_executor_naming_key_and_plugin() -> None:
    with pytest.raises(PluginError, match=r"webhook_atempts \(plugin 'delivery'\)") as info:
        Executor(entry_points=False, settings={"delivery": {"webhook_atempts": 2}})
    assert isinstance(info.value.__cause__, ConfigError)
    with pytest.raises(PluginError, match=r"webhook_backoff: Input should be greater than or equal to 0"):
        Executor(entry_points=False, settings={"delivery": {"webhook_backoff": -1}})


# --- what a delivery says when it gives up (the port object itself, against the same server) --


@pytest.fixture
async def deliveries() -> AsyncIterator[BuiltinDeliveries]:
    port = BuiltinDeliveries(DeliverySettings(**FAST["delivery"]), total_timeout=5.0)
    yield port
    await port.aclose()


@pytest.fixture
async def result(ex: Executor) -> Result:
    return await ex.run(hello_agent(), "hello", caller_id="u1")


async def test_400_says_not_retried_and_what_the_receiver_said(
    deliveries: BuiltinDeliveries, receiver: Receiver, result: Result
) -> None:
    receiver.answer((400, {"Content-Type": "text/plain"}, b"missing field 'ticket'"))
    with pytest.raises(DeliveryFailed) as info:
        await deliveries.deliver(DeliveryTarget(**webhook(f"{receiver.url}/hook")), result)
    assert str(info.value) == (
        f"webhook {receiver.url} answered HTTP 400 Bad Request: missing field 'ticket'; not retried: "
        "fix the target (URL, secret, headers) or the receiver"
    )
    assert len(receiver.requests) == 1


async def test_redirect_is_not_followed(
    deliveries: BuiltinDeliveries, receiver: Receiver, result: Result
) -> None:
    receiver.answer((307, {"Location": "http://127.0.0.1:9/elsewhere"}))
    with pytest.raises(DeliveryFailed, match="HTTP 307 Temporary Redirect; not retried: redirects are not"):
        await deliveries.deliver(DeliveryTarget(**webhook(receiver.url)), result)
    assert len(receiver.requests) == 1


async def test_unreachable_receiver_gives_up_after_the_attempts(
    deliveries: BuiltinDeliveries, result: Result
) -> None:
    port = closed_port()
    with pytest.raises(DeliveryFailed) as info:
        await deliveries.deliver(
            DeliveryTarget(**webhook(f"http://127.0.0.1:{port}/hook", attempts=3)), result
        )
    message = str(info.value)
    assert message.startswith(f"webhook http://127.0.0.1:{port} failed 3 attempts; last: ConnectError")
    assert f"(is the receiver running at http://127.0.0.1:{port}?)" in message
    assert message.endswith("Check that the receiver is up and answers 2xx, or raise webhook_attempts")


async def test_retry_after_past_the_time_limit_says_so(
    deliveries: BuiltinDeliveries, receiver: Receiver, result: Result
) -> None:
    receiver.answer((429, {"Retry-After": "3600"}))
    with pytest.raises(DeliveryFailed) as info:
        await deliveries.deliver(DeliveryTarget(**webhook(receiver.url)), result)
    assert str(info.value) == (
        f"webhook {receiver.url} failed on attempt 1 of 4 (HTTP 429 Too Many Requests); gave up: the "
        "receiver asked to retry after 3600s (capped at 60s by webhook_max_retry_after) would end past "
        "the delivery time limit (5s, setting delivery_timeout)"
    )


async def test_secrets_never_reach_the_error(
    deliveries: BuiltinDeliveries, receiver: Receiver, result: Result
) -> None:
    token, auth = "tok-in-the-path-123", "Bearer very-private"
    # the receiver echoes what it was sent, as careless receivers do
    receiver.answer((401, {}, f"bad auth {auth} for /hook/{token} with {SECRET}".encode()))
    targets = [
        webhook(f"{receiver.url}/hook/{token}?key={token}", secret=SECRET, headers={"Authorization": auth}),
        webhook(f"http://127.0.0.1:{closed_port()}/hook/{token}?key={token}", secret=SECRET, attempts=2),
        webhook(receiver.url, secret=SECRET, secert=SECRET, attempts="many"),
    ]
    messages = []
    for target in targets:
        with pytest.raises(DeliveryFailed) as info:
            await deliveries.deliver(DeliveryTarget(**target), result)
        messages.append(str(info.value))
    text = "\n".join(messages)
    for secret in (token, auth, "very-private", SECRET):
        assert secret not in text
    assert "HTTP 401 Unauthorized: bad auth *** for *** with ***" in messages[0]
    assert messages[2] == (
        "bad webhook target: attempts: Input should be a valid integer, unable to parse string as an "
        "integer; secert: unknown option (its options: url, secret, headers, attempts, timeout)"
    )
    assert len(receiver.requests) == 1  # the bad target never sent anything


async def test_bad_url_is_a_clear_error(deliveries: BuiltinDeliveries, result: Result) -> None:
    for url in ("ftp://example.com/x", "not a url", "http://"):
        with pytest.raises(DeliveryFailed, match="needs a 'url' like https://host/path"):
            await deliveries.deliver(DeliveryTarget(kind="webhook", url=url), result)


async def test_unknown_kind_on_the_builtin_port(deliveries: BuiltinDeliveries, result: Result) -> None:
    with pytest.raises(DeliveryFailed, match="has no target kind 's3'; it serves file, webhook"):
        await deliveries.deliver(DeliveryTarget(kind="s3"), result)


@pytest.mark.parametrize(
    ("replies", "target", "expected"),
    [
        pytest.param(
            [(400, {}, b"missing field 'ticket'")],
            {"kind": "webhook"},
            ["HTTP 400 Bad Request: missing field 'ticket'; not retried"],
            id="400",
        ),
        pytest.param(
            [(429, {"Retry-After": "3600"})],
            {"kind": "webhook"},
            ["asked to retry after 3600s", "delivery_timeout"],
            id="retry-after-too-long",
        ),
        pytest.param(
            [], {"kind": "webhook", "url": "closed"}, ["failed 4 attempts", "ConnectError"], id="down"
        ),
        pytest.param(
            [],
            {"kind": "s3", "bucket": "b"},
            ["no delivery serves targets of kind 's3'; installed kinds: file, webhook"],
            id="unknown-kind",
        ),
    ],
)
async def test_a_failed_delivery_is_in_the_result_warnings(
    receiver: Receiver, replies: list[Any], target: dict[str, Any], expected: list[str]
) -> None:
    receiver.answer(*replies)
    if target["kind"] == "webhook":
        url = f"http://127.0.0.1:{closed_port()}/" if target.get("url") == "closed" else receiver.url
        target = {**target, "url": url, "secret": SECRET}
    async with Executor(entry_points=False, settings={**FAST, "delivery_timeout": 5.0}) as ex:
        result = await ex.run(hello_agent(), "hello", caller_id="u1", delivery=target)
    assert result.status is RunStatus.OK
    [warning] = result.warnings
    for fragment in expected:
        assert fragment in warning
    assert SECRET not in warning


# --- webhook: failed runs, headers ------------------------------------------------------------


async def test_failed_run_goes_to_deliver_error(ex: Executor, receiver: Receiver, tmp_path: Path) -> None:
    agent = Agent(name="broken", model=ScriptedModel([RuntimeError("model exploded")]))
    result = await ex.run(
        agent,
        "hello",
        caller_id="u1",
        delivery=[webhook(receiver.url, secret=SECRET), {"kind": "file", "path": str(tmp_path)}],
    )
    assert result.status is RunStatus.ERROR and "model exploded" in (result.error or "")
    assert result.warnings == []
    [request] = receiver.requests
    assert request.headers["x-executus-status"] == "error"
    assert signed_by(SECRET, request)
    delivered = Result.model_validate_json(request.body)
    assert delivered.status is RunStatus.ERROR and "model exploded" in (delivered.error or "")
    on_disk = Result.model_validate_json(read_bytes(tmp_path / result.run_id / "result.json"))
    assert on_disk.status is RunStatus.ERROR


async def test_our_headers_win_and_extra_headers_are_sent(ex: Executor, receiver: Receiver) -> None:
    target = webhook(
        receiver.url,
        secret=SECRET,
        headers={
            "Authorization": "Bearer tok",
            "Idempotency-Key": "mine",
            SIGNATURE_HEADER: "v1,forged",
            "Webhook-Timestamp": "1",
        },
    )
    result = await ex.run(hello_agent(), "hello", caller_id="u1", delivery=DeliveryTarget(**target))
    [request] = receiver.requests
    assert request.headers["authorization"] == "Bearer tok"
    assert request.headers["idempotency-key"] == result.run_id
    assert signed_by(SECRET, request)
    assert request.headers["user-agent"].startswith("executus/")


async def test_no_secret_no_signature_header(ex: Executor, receiver: Receiver) -> None:
    await ex.run(hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url))
    for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
        assert name not in receiver.requests[0].headers


def test_targets_hide_their_secret_in_repr() -> None:
    target = DeliveryTarget(kind="webhook", url="http://h/x", secret=SECRET)
    options = WebhookTarget.model_validate({"kind": "webhook", **target.options})
    for shown in (repr(target), str(target), repr(options), str(options)):
        assert SECRET not in shown


# --- signatures and Retry-After ---------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_reference_vector() -> None:
    # the test vector of the Standard Webhooks reference libraries
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, stamp, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign_webhook(secret, msg_id, stamp, body) == signature
    headers = {"Webhook-Id": msg_id, "Webhook-Timestamp": str(stamp), "Webhook-Signature": signature}
    assert verify_webhook(secret, headers, body, now=stamp + 10) == msg_id
    # several signatures (a secret being rotated): any v1 that matches will do
    rotated = {**headers, "Webhook-Signature": f"v1,bm90IGl0 v2,abc {signature}"}
    assert verify_webhook(secret, rotated, body, now=stamp) == msg_id


def test_verify_refuses_what_it_should_and_says_why() -> None:
    body, stamp = b'{"run_id":"r1"}', int(time.time())
    good = {
        "webhook-id": "r1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign_webhook(SECRET, "r1", stamp, body),
    }
    assert verify_webhook(SECRET, good, body) == "r1"
    assert verify_webhook(SECRET.encode(), good, body) == "r1", "a plain secret is its UTF-8 bytes"
    cases = [
        (SECRET, {}, body, "missing header webhook-id, webhook-timestamp, webhook-signature"),
        ("another-secret", good, body, "no signature matches"),
        (SECRET, good, body + b" ", "no signature matches"),  # the exact bytes, not the JSON
        (SECRET, {**good, "webhook-id": "r2"}, body, "no signature matches"),  # the id is signed
        (SECRET, {**good, "webhook-timestamp": str(stamp + 1)}, body, "no signature matches"),
        (SECRET, {**good, "webhook-timestamp": "soon"}, body, "must be Unix seconds"),
        (SECRET, {**good, "webhook-signature": "v1,"}, body, "no signature matches"),
        (SECRET, {**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v2,")}, body, "no signature"),
        ("whsec_not*base64", good, body, "must be base64"),
    ]  # fmt: skip
    for secret, headers, sent, says in cases:
        with pytest.raises(WebhookVerificationError, match=re.escape(says)):
            verify_webhook(secret, headers, sent)


def test_whsec_secrets_are_the_base64_of_the_key() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_") and len(secret) == 6 + 44
    key = base64.b64decode(secret.removeprefix("whsec_"))
    body, stamp = b"{}", int(time.time())
    assert sign_webhook(secret, "m", stamp, body) == sign_webhook(key, "m", stamp, body)
    assert new_webhook_secret() != secret


async def test_a_captured_delivery_replayed_outside_the_window_fails(
    ex: Executor, receiver: Receiver
) -> None:
    result = await ex.run(
        hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url, secret=SECRET)
    )
    [captured] = receiver.requests
    signed_at = int(captured.headers["webhook-timestamp"])
    assert abs(signed_at - time.time()) < 60
    assert verify_webhook(SECRET, captured.headers, captured.body) == result.run_id
    # the same bytes, sent again six minutes later, or with the timestamp moved forward
    with pytest.raises(
        WebhookVerificationError, match=r"signed 360s ago, longer than the tolerance \(300s\)"
    ):
        verify_webhook(SECRET, captured.headers, captured.body, now=signed_at + 360)
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        moved = {**captured.headers, "webhook-timestamp": str(signed_at + 360)}
        verify_webhook(SECRET, moved, captured.body, now=signed_at + 360)
    with pytest.raises(WebhookVerificationError, match="in the future"):
        verify_webhook(SECRET, captured.headers, captured.body, now=signed_at - 400)
    assert verify_webhook(SECRET, captured.headers, captured.body, now=signed_at + 360, tolerance=600)


async def test_each_attempt_is_signed_with_its_own_timestamp(receiver: Receiver) -> None:
    receiver.answer((503, {"Retry-After": "1.1"}))
    settings = {**FAST, "delivery": {**FAST["delivery"], "webhook_max_retry_after": 5}}
    async with Executor(entry_points=False, settings=settings) as ex:
        await ex.run(hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url, secret=SECRET))
    first, second = receiver.requests
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert signed_by(SECRET, first) and signed_by(SECRET, second)


def test_retry_after_parsing() -> None:
    def parse(value: str, limit: float = math.inf) -> float | None:
        return _retry_after(httpx2.Response(429, headers={"Retry-After": value}), limit)

    assert parse("7") == 7.0
    assert parse("-3") == 0.0
    assert parse("soon") is None
    when = parse(email.utils.formatdate(time.time() + 30, usegmt=True))
    assert when is not None and 25 <= when <= 31
    assert parse(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert _retry_after(httpx2.Response(503)) is None
    # what a receiver can send that must never make a delivery wait without end
    assert parse("inf", 60) == 60 and parse("Infinity", 60) == 60 and parse("1e308", 60) == 60
    assert parse("nan", 60) is None and parse("-inf", 60) == 0.0
    assert parse("Fri, 31 Dec 9999 23:59:59 GMT", 60) == 60
    assert parse(email.utils.formatdate(time.time() + 86_400 * 365, usegmt=True), 60) == 60


def test_max_retry_after_is_a_finite_setting() -> None:
    assert DeliverySettings().webhook_max_retry_after == 60.0
    for bad in (math.inf, math.nan, -1):
        with pytest.raises(PluginError, match="webhook_max_retry_after"):
            Executor(entry_points=False, settings={"delivery": {"webhook_max_retry_after": bad}})


@pytest.mark.parametrize("asked", ["inf", "nan", "-5", "1e300", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_webhook_without_total_timeout_ends_whatever_retry_after_says(
    receiver: Receiver, result: Result, asked: str
) -> None:
    # no total_timeout: before, "Retry-After: inf" made this sleep forever
    receiver.answer(*[(503, {"Retry-After": asked})] * 3)
    settings = DeliverySettings(webhook_backoff=0.01, webhook_max_retry_after=0.2, webhook_attempts=3)
    delivery = WebhookDelivery(settings)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryFailed, match="failed 3 attempts; last: HTTP 503"):
            await asyncio.wait_for(delivery.deliver(DeliveryTarget(**webhook(receiver.url)), result), 30)
    finally:
        await delivery.aclose()
    assert time.monotonic() - started < 5
    assert len(receiver.requests) == 3


async def test_retry_after_is_capped_by_the_setting_then_retried(receiver: Receiver, result: Result) -> None:
    receiver.answer((429, {"Retry-After": "inf"}))
    delivery = WebhookDelivery(DeliverySettings(webhook_max_retry_after=0.3), total_timeout=10.0)
    try:
        await delivery.deliver(DeliveryTarget(**webhook(receiver.url)), result)
    finally:
        await delivery.aclose()
    first, second = receiver.requests
    assert 0.25 <= second.at - first.at < 3


class BigReply:
    """A receiver on loopback that answers every POST with ``size`` bytes, and counts what it sent."""

    def __init__(self, status: int, size: int) -> None:
        self.sent = 0
        self.done = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                chunk = b"x" * 65536
                try:
                    while owner.sent < size:
                        self.wfile.write(chunk)
                        owner.sent += len(chunk)
                except OSError:
                    pass  # the client hung up: what this test wants
                finally:
                    owner.done.set()
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02})
        self.thread.daemon = True
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [200, 400, 503])
async def test_a_300_mib_reply_is_not_read_in_full(result: Result, status: int) -> None:
    size = 300 * 1024 * 1024
    big = BigReply(status, size)
    delivery = WebhookDelivery(
        DeliverySettings(webhook_attempts=1, webhook_max_reply_bytes=2048), total_timeout=20.0
    )
    try:
        target = DeliveryTarget(**webhook(big.url))
        if status == 200:
            await delivery.deliver(target, result)
        else:
            with pytest.raises(DeliveryFailed) as info:
                await delivery.deliver(target, result)
            assert f"HTTP {status}" in str(info.value) and "xxxx" in str(info.value)
            assert len(str(info.value)) < 1000
        await delivery.aclose()  # the connection goes: the receiver's writes fail
        assert big.done.wait(10)
    finally:
        await delivery.aclose()
        big.close()
    # socket buffers hold a few MiB at most; reading it all would have taken all 300
    assert big.sent < 32 * 1024 * 1024, f"{big.sent / 2**20:.0f} MiB were sent: the reply was read in full"


# --- file -------------------------------------------------------------------------------------


@tool
def write_report(ctx: ToolContext) -> str:
    """Write the report files."""
    ctx.add_artifact("report.txt", "first", media_type="text/plain")
    ctx.add_artifact("../../escape.bin", b"\x00\x01\x02")
    ctx.add_artifact("report.txt", "second", media_type="text/plain")
    ctx.add_artifact("..", "dots")
    return "written"


async def test_file_delivery_writes_result_json_and_artifacts(ex: Executor, tmp_path: Path) -> None:
    out = tmp_path / "out"
    agent = Agent(
        name="reporter", model=ScriptedModel([call("write_report"), answer("done")]), tools=[write_report]
    )
    result = await ex.run(agent, "report", caller_id="u1", delivery={"kind": "file", "path": str(out)})
    assert result.status is RunStatus.OK and result.warnings == []
    folder = out / result.run_id
    on_disk = Result.model_validate_json(read_bytes(folder / "result.json"))
    assert on_disk.output == "done" and on_disk.status is RunStatus.OK
    assert [a.content for a in on_disk.artifacts] == [b"first", b"\x00\x01\x02", b"second", b"dots"]
    files = list_files(tmp_path)
    assert files == {
        f"out/{result.run_id}/result.json": read_bytes(folder / "result.json"),
        f"out/{result.run_id}/artifacts/report.txt": b"first",
        f"out/{result.run_id}/artifacts/escape.bin": b"\x00\x01\x02",
        f"out/{result.run_id}/artifacts/report-2.txt": b"second",
        f"out/{result.run_id}/artifacts/artifact-4": b"dots",
    }  # nothing outside the run's folder, no temporary files left behind


async def test_file_delivery_overwrites_on_redelivery(ex: Executor, tmp_path: Path) -> None:
    target = {"kind": "file", "path": str(tmp_path)}
    first = await ex.run(hello_agent(), "hello", caller_id="u1", delivery=target, run_id="run-1")
    again = Agent(name="hello", model=ScriptedModel([answer("second answer")]))
    second = await ex.run(again, "hello", caller_id="u1", delivery=target, run_id="run-1")
    assert first.warnings == second.warnings == []
    assert list(list_files(tmp_path)) == ["run-1/result.json"]
    assert (
        Result.model_validate_json(read_bytes(tmp_path / "run-1" / "result.json")).output == "second answer"
    )


async def test_file_delivery_refuses_a_run_id_that_is_a_path(
    deliveries: BuiltinDeliveries, result: Result, tmp_path: Path
) -> None:
    for run_id in ("../outside", "..", "a/b", ""):
        with pytest.raises(DeliveryFailed, match="cannot name a folder"):
            await deliveries.deliver(
                DeliveryTarget(kind="file", path=str(tmp_path / "out")),
                result.model_copy(update={"run_id": run_id}),
            )
    assert list_files(tmp_path) == {}


async def test_file_delivery_to_an_unwritable_place(
    deliveries: BuiltinDeliveries, result: Result, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    write_bytes(blocker, b"not a folder")
    with pytest.raises(DeliveryFailed, match=f"cannot write the result to {blocker}/{result.run_id}: "):
        await deliveries.deliver(DeliveryTarget(kind="file", path=str(blocker)), result)


async def test_file_target_without_path(deliveries: BuiltinDeliveries, result: Result) -> None:
    with pytest.raises(DeliveryFailed, match=r"bad file target: path: Field required \(its options: path\)"):
        await deliveries.deliver(DeliveryTarget(kind="file"), result)


def test_artifact_names() -> None:
    names = ["a.txt", "A.TXT", "a.txt", "dir/b.tar.gz", "dir\\b.tar.gz", "", ".", "x y?.md"]
    assert _artifact_names(names) == [
        "a.txt",
        "A-2.TXT",
        "a-3.txt",
        "b.tar.gz",
        "b-2.tar.gz",
        "artifact-6",
        "artifact-7",
        "x y_.md",
    ]


# --- routing ----------------------------------------------------------------------------------


class QueueDelivery:
    """A third-party Delivery plugin for a kind of its own."""

    executus_name = "queue"
    kinds = frozenset({"queue"})

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    @hookimpl
    def executus_delivery(self, settings: Any) -> QueueDelivery:
        return self

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        self.sent.append(("deliver", result.run_id))

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        self.sent.append(("deliver_error", result.run_id))


async def test_a_plugin_delivery_serves_its_own_kind(tmp_path: Path) -> None:
    queue = QueueDelivery()
    async with Executor(entry_points=False, plugins=[queue], settings=FAST) as ex:
        ok = await ex.run(hello_agent(), "hi", caller_id="u1", delivery={"kind": "queue"})
        bad = await ex.run(
            Agent(name="x", model=ScriptedModel([])), "hi", caller_id="u1", delivery={"kind": "queue"}
        )
    assert queue.sent == [("deliver", ok.run_id), ("deliver_error", bad.run_id)]
    assert ok.warnings == bad.warnings == []


# --- what the loop does with delivery ----------------------------------------------------------


async def test_an_invalid_target_mapping_does_not_leak_its_secret(ex: Executor) -> None:
    result = await ex.run(
        hello_agent(), "hello", caller_id="u1", delivery={"url": "http://h/x", "secret": SECRET}
    )
    assert result.warnings and "kind" in result.warnings[0]
    assert SECRET not in "\n".join(result.warnings)


class RefuseAll:
    executus_name = "refuse"

    @hookimpl
    def executus_budget(self, settings: Any) -> Budget:
        return self  # type: ignore[return-value]

    async def check(self, caller_id: str) -> None:
        raise BudgetExceeded("no budget left")

    async def commit(self, caller_id: str, runtime_seconds: float, usage: Any) -> None:
        pass


async def test_a_budget_refused_run_is_delivered_as_an_error(receiver: Receiver) -> None:
    async with Executor(entry_points=False, plugins=[RefuseAll()], settings=FAST) as ex:
        result = await ex.run(hello_agent(), "hello", caller_id="u1", delivery=webhook(receiver.url))
    assert result.status is RunStatus.BUDGET_EXCEEDED
    assert [r.headers["x-executus-status"] for r in receiver.requests] == ["budget_exceeded"]


# --- the Delivery contract every battery's delivery honours -----------------------------------


def read_results(root: Path) -> list[Result]:
    return [Result.model_validate_json(p.read_bytes()) for p in sorted(root.glob("*/result.json"))]


class TestFileDeliveryConformance(DeliveryConformance):
    @pytest.fixture
    def make_delivery(self, tmp_path: Path) -> Any:
        target = DeliveryTarget(kind="file", path=str(tmp_path))
        return lambda: DeliverySubject(FileDelivery(), target, received=lambda: read_results(tmp_path))


class TestWebhookDeliveryConformance(DeliveryConformance):
    @pytest.fixture
    def make_delivery(self, receiver: Receiver) -> Any:
        def received() -> list[Result]:
            with receiver.lock:
                requests = list(receiver.requests)
            for r in requests:
                assert signed_by(SECRET, r)
            return [Result.model_validate_json(r.body) for r in requests]

        target = DeliveryTarget(kind="webhook", url=f"{receiver.url}/hook", secret=SECRET)
        settings = DeliverySettings(**FAST["delivery"])
        return lambda: DeliverySubject(
            WebhookDelivery(settings, total_timeout=10.0), target, received=received
        )
