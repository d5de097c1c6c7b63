"""Delivery: where a finished run's result goes.

Pass targets to `Executor.run` (``delivery=``, one target or a list); each goes to the first
`Delivery` whose ``kinds`` holds its ``kind``. A successful run goes to ``deliver``, any other
ending (``error``, ``timeout``, ``budget_exceeded``, ``cancelled``) to ``deliver_error``. A delivery
that fails never fails the run: the `Result` lists why in ``warnings``. The core ships two kinds:

``file``
    ``{"kind": "file", "path": "out/"}`` writes each artifact to ``out/<run_id>/artifacts/<name>``,
    then the whole `Result` as JSON to ``out/<run_id>/result.json`` (artifacts included, base64, so
    ``Result.model_validate_json`` reads it back). Every file is written to a temporary name, synced
    and renamed, and ``result.json`` comes last: when it exists, the delivery is complete.
    Delivering the same run again overwrites it.

``webhook``
    ``{"kind": "webhook", "url": "https://host/hook", "secret": "whsec_..."}`` POSTs the `Result` as
    JSON, signed the way Standard Webhooks (https://www.standardwebhooks.com/) specifies, so any
    Standard Webhooks library verifies it: ``webhook-id`` (the run id, the same on every attempt),
    ``webhook-timestamp`` (Unix seconds when the attempt was signed) and ``webhook-signature``
    (``v1,`` + base64 of HMAC-SHA256 over ``"{webhook-id}.{webhook-timestamp}.{body}"``). The id and
    the time are under the signature, so a receiver that checks the time (`verify_webhook` does,
    within 5 minutes) refuses a captured delivery replayed later. Also sent: ``Idempotency-Key`` and
    ``X-Executus-Run-Id`` (the run id: a receiver drops repeats) and ``X-Executus-Status`` (the run's
    status). The secret is ``whsec_`` + base64 of the key bytes, as Standard Webhooks writes it
    (`new_webhook_secret` makes one), or any other string, used as its UTF-8 bytes.
    Connection errors, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff and
    jitter, honouring ``Retry-After`` up to ``webhook_max_retry_after``; other 4xx and 3xx are not
    (redirects are not followed: a signed body goes only where it was sent). Only the first
    ``webhook_max_reply_bytes`` of a reply are read (to quote an error), whatever its size. Options:
    ``secret``, ``headers`` (a mapping, e.g. an ``Authorization`` header), ``attempts``, ``timeout``
    (seconds per attempt, the reply included).

Settings (``[tool.executus.delivery]``, or ``EXECUTUS_DELIVERY__WEBHOOK_ATTEMPTS=...``):
``webhook_attempts`` (4), ``webhook_backoff`` (0.5 s before the first retry, doubled each retry),
``webhook_max_backoff`` (30 s), ``webhook_timeout`` (10 s per attempt), ``webhook_max_retry_after``
(60 s: the longest wait a ``Retry-After`` gets; ``inf``, ``nan``, a negative number or a date far
away never make a delivery wait longer) and ``webhook_max_reply_bytes`` (4096). All attempts
together stay within the core's ``delivery_timeout`` (60 s): a retry that could not start in time is
not made, and the warning says so.

Secrets (the signing secret, header values, the URL's path and query, which often hold tokens)
never appear in errors, warnings, logs or ``repr``: a webhook is named by its origin only.

A receiver, with any web framework::

    from executus_core.delivery import WebhookVerificationError, verify_webhook

    body = await request.body()  # the raw bytes, before any JSON parsing
    try:
        message_id = verify_webhook(SECRET, request.headers, body)  # tolerance=300 seconds
    except WebhookVerificationError as exc:
        return Response(str(exc), status_code=401)
    if seen(message_id):  # the run id: the same on every retry of one delivery
        return Response(status_code=200)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import logging
import math
import os
import random
import re
import secrets
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from executus_core.config import Settings
from executus_core.hookspecs import hookimpl
from executus_core.types import DeliveryTarget, Result

__all__ = [
    "DEFAULT_TOLERANCE",
    "IDEMPOTENCY_HEADER",
    "ID_HEADER",
    "RETRY_STATUSES",
    "SIGNATURE_HEADER",
    "STATUS_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryFailed",
    "DeliverySettings",
    "FileDelivery",
    "FileTarget",
    "WebhookDelivery",
    "WebhookTarget",
    "WebhookVerificationError",
    "new_webhook_secret",
    "sign_webhook",
    "verify_webhook",
]

log = logging.getLogger("executus.delivery")

ID_HEADER = "webhook-id"
"""Standard Webhooks' message id: the run id, the same on every attempt (signed)."""
TIMESTAMP_HEADER = "webhook-timestamp"
"""Standard Webhooks' timestamp: Unix seconds when the attempt was signed (signed)."""
SIGNATURE_HEADER = "webhook-signature"
"""Standard Webhooks' signature: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, sent when
the target has a secret (several space-separated signatures may be sent while a secret is rotated)."""
DEFAULT_TOLERANCE = 300.0
"""How far, in seconds, a delivery's timestamp may be from the receiver's clock (either way) in
`verify_webhook`: Standard Webhooks' five minutes."""
SECRET_PREFIX = "whsec_"
STATUS_HEADER = "X-Executus-Status"
"""The header that carries the run's `RunStatus` value (``ok`` for ``deliver``, else ``deliver_error``)."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
"""The header that carries the run id: the same for every attempt of one delivery."""
RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
"""HTTP statuses worth another attempt; any other status that is not 2xx ends the delivery."""

# Our own headers win over a target's ``headers`` option: a receiver relies on them.
_PROTOCOL_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Type",
        "Accept-Encoding",
        IDEMPOTENCY_HEADER,
        "X-Executus-Run-Id",
        STATUS_HEADER,
        ID_HEADER,
        TIMESTAMP_HEADER,
        SIGNATURE_HEADER,
    )
)
# The webhook gives up by itself a little before the core's delivery_timeout cuts it off, so the
# Result says why it gave up instead of only that it took too long.
_BUDGET_SHARE = 0.9
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")
_SAFE_RUN_ID = re.compile(r"[A-Za-z0-9._-]+")

T = TypeVar("T", bound=BaseModel)


class DeliveryFailed(Exception):
    """A delivery gave up; the message says where (never with secrets), why, and what to do.

    The core catches it: the run's `Result` lists the message in ``warnings``.
    """


class WebhookVerificationError(ValueError):
    """Raised by `verify_webhook`: the request is not a delivery signed with this secret, or it is too
    old or too new to be accepted (a replay, or a clock that is off). The message says which; answer
    the request with 401 and do not act on it.
    """


class DeliverySettings(BaseModel):
    """The built-in deliveries' settings: ``[tool.executus.delivery]``. Durations are seconds."""

    model_config = ConfigDict(extra="forbid")

    webhook_attempts: int = Field(4, ge=1, description="Attempts per webhook delivery, the first included.")
    webhook_backoff: float = Field(0.5, ge=0, description="Wait before the first retry; doubled each retry.")
    webhook_max_backoff: float = Field(30.0, ge=0, description="Longest wait between two attempts.")
    webhook_timeout: float = Field(
        10.0, gt=0, description="Longest one attempt may take, the receiver's reply included."
    )
    webhook_max_retry_after: float = Field(
        60.0,
        ge=0,
        allow_inf_nan=False,
        description="Longest wait a receiver's Retry-After gets (longer asks, inf or a far date wait this).",
    )
    webhook_max_reply_bytes: int = Field(
        4096,
        ge=0,
        description="Bytes of a receiver's reply read (to quote it in an error); the rest is dropped.",
    )


class FileTarget(BaseModel):
    """The options of a ``file`` target: ``path``, the folder results go under."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "file"
    path: Path


class WebhookTarget(BaseModel):
    """The options of a ``webhook`` target.

    ``attempts`` and ``timeout`` override ``webhook_attempts`` / ``webhook_timeout`` for this target.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kind: str = "webhook"
    url: str
    secret: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    attempts: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0)


def _secret_bytes(secret: str | bytes | SecretStr) -> bytes:
    """The HMAC key: a ``whsec_`` secret is base64-decoded (Standard Webhooks), any other is its bytes."""
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"a webhook secret starting with {SECRET_PREFIX} must be base64 after it (Standard "
                "Webhooks); make one with executus_core.delivery.new_webhook_secret()"
            ) from None
    return secret.encode()


def new_webhook_secret() -> str:
    """A new random signing secret in Standard Webhooks' form: ``whsec_`` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign_webhook(secret: str | bytes | SecretStr, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt: ``v1,`` + base64 of HMAC-SHA256, keyed by
    ``secret``, over ``"{message_id}.{timestamp}.{body}"`` (Standard Webhooks)."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()).decode()


def verify_webhook(
    secret: str | bytes | SecretStr,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check a webhook delivery as a receiver; return its ``webhook-id`` (drop repeats by it).

    Args:
        secret: the target's secret, as given to the sender (``whsec_...`` or plain).
        headers: the request's headers (any mapping; names are matched without case).
        body: the raw request bytes as received: parsing and re-serializing the JSON changes them.
        tolerance: how far, in seconds, ``webhook-timestamp`` may be from ``now``, either way.
        now: the receiver's time as Unix seconds (default: the clock).

    Raises:
        WebhookVerificationError: a header is missing or malformed, the timestamp is outside the
            tolerance (a captured delivery replayed later fails here), or no signature matches
            (another secret, or a changed body). The comparison takes constant time.
    """
    found = {str(k).lower(): v for k, v in headers.items()}
    missing = [h for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if not found.get(h)]
    if missing:
        raise WebhookVerificationError(
            f"not a signed webhook: missing header {', '.join(missing)} (the sender needs a 'secret' on the "
            "target to sign)"
        )
    message_id, raw_time, signatures = (
        found[ID_HEADER],
        found[TIMESTAMP_HEADER].strip(),
        found[SIGNATURE_HEADER],
    )
    if not raw_time.isdigit():
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} must be Unix seconds, got {raw_time[:40]!r}")
    timestamp = int(raw_time)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError(
            f"the delivery was signed {current - timestamp:.0f}s ago, longer than the tolerance "
            f"({tolerance:g}s): a replay of an old delivery, or a clock that is off; it is refused"
        )
    if timestamp > current + tolerance:
        raise WebhookVerificationError(
            f"the delivery is signed {timestamp - current:.0f}s in the future, more than the tolerance "
            f"({tolerance:g}s): check the sender's and this host's clocks"
        )
    try:
        expected = sign_webhook(secret, message_id, timestamp, body).split(",", 1)[1].encode()
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from None
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode()):
            return message_id
    raise WebhookVerificationError(
        "no signature matches: the secret differs from the sender's, or the body was changed (pass the "
        "raw request bytes, before any JSON parsing)"
    )


def _options(model: type[T], target: DeliveryTarget) -> T:
    """Validate a target's options, naming each bad option without echoing any value (secrets)."""
    try:
        return model.model_validate({"kind": target.kind, **target.options})
    except ValidationError as exc:
        known = ", ".join(name for name in model.model_fields if name != "kind")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'options'}: "
            + ("unknown option" if err["type"] == "extra_forbidden" else err["msg"])
            for err in exc.errors()
        )
        raise DeliveryFailed(f"bad {target.kind} target: {problems} (its options: {known})") from None


def _payload(result: Result) -> bytes:
    return result.model_dump_json().encode()


# --- file -------------------------------------------------------------------------------------


def _artifact_names(names: list[str]) -> list[str]:
    """A safe, unique file name per artifact: no folders, no '..', no clashes (``a.txt``, ``a-2.txt``)."""
    used: set[str] = set()
    out = []
    for index, raw in enumerate(names, 1):
        name = _SAFE_NAME.sub("_", Path(raw.replace("\\", "/")).name).strip()
        if not name.strip("."):
            name = f"artifact-{index}"
        stem, dot, suffix = name.partition(".") if not name.startswith(".") else (name, "", "")
        candidate, n = name, 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{stem}-{n}{dot}{suffix}"
        used.add(candidate.lower())
        out.append(candidate)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FileDelivery:
    """Serves ``file`` targets: ``<path>/<run_id>/result.json`` and ``<path>/<run_id>/artifacts/*``.

    Writing happens in a worker thread, so the event loop never waits on the disk.
    """

    kinds = frozenset({"file"})

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        """Write the result and its artifacts; raises `DeliveryFailed` on a bad target or a disk error."""
        options = _options(FileTarget, target)
        await asyncio.to_thread(self._write, options.path, result)

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        """The same files for a failed run (``result.json`` holds its status and error)."""
        await self.deliver(target, result)

    @staticmethod
    def _write(path: Path, result: Result) -> None:
        run_id = result.run_id
        if not _SAFE_RUN_ID.fullmatch(run_id) or not run_id.strip("."):
            raise DeliveryFailed(
                f"run id {run_id!r} cannot name a folder; use letters, digits, '.', '_' and '-' in run ids"
            )
        folder = path.expanduser() / run_id
        try:
            artifacts = folder / "artifacts"
            if result.artifacts:
                artifacts.mkdir(parents=True, exist_ok=True)
            else:
                folder.mkdir(parents=True, exist_ok=True)
            for name, artifact in zip(
                _artifact_names([a.name for a in result.artifacts]), result.artifacts, strict=True
            ):
                _atomic_write(artifacts / name, artifact.content)
            _atomic_write(folder / "result.json", _payload(result))
        except OSError as exc:
            raise DeliveryFailed(
                f"cannot write the result to {folder}: {exc.strerror or exc}; check the target's path "
                "and that this process may write there"
            ) from None


# --- webhook ----------------------------------------------------------------------------------


def _retry_after(response: httpx2.Response, limit: float = math.inf) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (delay-seconds or an HTTP date), at most
    ``limit``; ``None`` when there is none or it is not a number (``nan``). Negative or past is 0."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        asked = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        try:
            asked = when.timestamp() - time.time()
        except (OverflowError, ValueError, OSError):
            asked = math.inf
    if math.isnan(asked):
        return None
    return min(max(0.0, asked), limit)


def _origin(url: httpx2.URL) -> str:
    """The URL as it may be shown: scheme, host and port only (paths and queries often hold tokens)."""
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


class WebhookDelivery:
    """Serves ``webhook`` targets: POSTs the result as signed JSON, with retries.

    Args:
        settings: attempts, backoff and timeouts (``[tool.executus.delivery]``).
        total_timeout: the time all attempts of one delivery may take together (the core passes
            its ``delivery_timeout``); ``None``: bounded by attempts alone.
        transport: an httpx2 transport to send through (a proxy, a test transport).

    One pooled client serves every delivery; `aclose` closes it (`Executor.shutdown` calls it).
    """

    kinds = frozenset({"webhook"})

    def __init__(
        self,
        settings: DeliverySettings | None = None,
        *,
        total_timeout: float | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings or DeliverySettings()
        self.total_timeout = total_timeout
        self._transport = transport
        self._client: httpx2.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"WebhookDelivery(attempts={self.settings.webhook_attempts})"

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            from executus_core import __version__

            self._client = httpx2.AsyncClient(
                transport=self._transport,
                follow_redirects=False,
                headers={"User-Agent": f"executus/{__version__}"},
            )
        return self._client

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        """POST the result; raises `DeliveryFailed` once it gives up."""
        await self._post(target, result)

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        """POST a failed run's result (``X-Executus-Status`` says how it ended); same retries."""
        await self._post(target, result)

    async def _post(self, target: DeliveryTarget, result: Result) -> None:
        options = _options(WebhookTarget, target)
        try:
            url = httpx2.URL(options.url)
        except Exception:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise DeliveryFailed(
                "a webhook target needs a 'url' like https://host/path (http or https, with a host)"
            )
        where = _origin(url)
        hidden_values = [options.url, url.path, url.query.decode(errors="replace"), *options.headers.values()]
        key: bytes | None = None
        if options.secret is not None:
            hidden_values.append(options.secret.get_secret_value())
            try:
                key = _secret_bytes(options.secret)
            except ValueError as exc:
                raise DeliveryFailed(f"bad webhook target: secret: {exc}") from None

        # longest first, so a secret that contains another is hidden whole
        hidden = sorted((s for s in hidden_values if len(s) > 1 and s != "/"), key=len, reverse=True)

        def scrub(text: str) -> str:
            for secret in hidden:
                text = text.replace(secret, "***")
            return text

        body = _payload(result)
        headers = {k: v for k, v in options.headers.items() if k.lower() not in _PROTOCOL_HEADERS}
        headers |= {
            "Content-Type": "application/json",
            # the reply is read raw and bounded: a compressed one could not be quoted
            "Accept-Encoding": "identity",
            IDEMPOTENCY_HEADER: result.run_id,
            "X-Executus-Run-Id": result.run_id,
            STATUS_HEADER: result.status.value,
        }

        cfg = self.settings
        attempts = options.attempts or cfg.webhook_attempts
        attempt_timeout = options.timeout or cfg.webhook_timeout
        budget = None if self.total_timeout is None else self.total_timeout * _BUDGET_SHARE
        started = time.monotonic()
        last = ""
        for attempt in range(1, attempts + 1):
            timeout = attempt_timeout
            if budget is not None:
                timeout = max(0.001, min(timeout, budget - (time.monotonic() - started)))
            if key is not None:
                # signed per attempt: a retry after a long wait still carries a fresh timestamp
                stamp = int(time.time())
                headers[ID_HEADER] = result.run_id
                headers[TIMESTAMP_HEADER] = str(stamp)
                headers[SIGNATURE_HEADER] = sign_webhook(key, result.run_id, stamp, body)
            asked: float | None = None
            try:
                code, reason, reply, retry_after = await self._attempt(url, body, headers, timeout)
            except TimeoutError:
                last = f"no answer within {timeout:g}s"
            except httpx2.TimeoutException:
                last = f"no answer within {timeout:g}s"
            except httpx2.TransportError as exc:
                last = scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                if isinstance(exc, httpx2.ConnectError):
                    last += f" (is the receiver running at {where}?)"
            else:
                if 200 <= code < 300:
                    if attempt > 1:
                        log.info("webhook %s accepted run %s on attempt %d", where, result.run_id, attempt)
                    return
                said = scrub(reply.strip().replace("\n", " ")[:200])
                last = f"HTTP {code} {reason}".rstrip() + (f": {said}" if said else "")
                if code not in RETRY_STATUSES:
                    hint = (
                        "redirects are not followed; point the target at the final URL"
                        if 300 <= code < 400
                        else "fix the target (URL, secret, headers) or the receiver"
                    )
                    raise DeliveryFailed(f"webhook {where} answered {last}; not retried: {hint}")
                asked = retry_after
            if attempt == attempts:
                break
            backoff = min(cfg.webhook_max_backoff, cfg.webhook_backoff * 2 ** (attempt - 1))
            # "Equal jitter": at least half the backoff, so many senders don't retry in step.
            wait = backoff * (0.5 + random.random() / 2)
            why = ""
            if asked is not None:
                wait = min(asked, cfg.webhook_max_retry_after)
                why = f"the receiver asked to retry after {asked:g}s"
                if wait < asked:
                    why += f" (capped at {wait:g}s by webhook_max_retry_after)"
            if budget is not None and time.monotonic() - started + wait >= budget:
                raise DeliveryFailed(
                    f"webhook {where} failed on attempt {attempt} of {attempts} ({last}); gave up: "
                    f"{why or f'the next attempt (in {wait:.2g}s)'} would end past the delivery time "
                    f"limit ({self.total_timeout:g}s, setting delivery_timeout)"
                )
            log.info(
                "webhook %s: attempt %d of %d for run %s failed (%s); retrying in %.2fs%s",
                where,
                attempt,
                attempts,
                result.run_id,
                last,
                wait,
                f": {why}" if why else "",
            )
            await asyncio.sleep(wait)
        raise DeliveryFailed(
            f"webhook {where} failed {attempts} attempts; last: {last}. Check that the receiver is up "
            "and answers 2xx, or raise webhook_attempts"
        )

    async def _attempt(
        self, url: httpx2.URL, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, str, str, float | None]:
        """One POST: ``(status, reason, the reply's first bytes as text, Retry-After seconds)``.

        The whole attempt, reply included, is bounded by ``timeout`` (a receiver dripping its reply
        cannot hold it), and at most ``webhook_max_reply_bytes`` of the reply are read: a longer
        reply is dropped with its connection.
        """
        limit = self.settings.webhook_max_reply_bytes
        async with asyncio.timeout(timeout):
            request = self._http().build_request("POST", url, content=body, headers=headers, timeout=timeout)
            response = await self._http().send(request, stream=True)
            try:
                code = response.status_code
                retry_after = _retry_after(response) if code in RETRY_STATUSES else None
                kept = bytearray()
                # read even a 2xx reply (bounded): one read to its end lets the connection be reused
                if limit > 0:
                    async for chunk in response.aiter_raw():
                        kept += chunk[: limit - len(kept)]
                        if len(kept) >= limit:
                            break
                return code, response.reason_phrase, kept.decode(errors="replace"), retry_after
            finally:
                await response.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (open connections); a later delivery opens a new one."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


# --- the built-in plugin ----------------------------------------------------------------------


class BuiltinDeliveries:
    """The core's `Delivery` port object: ``file`` and ``webhook`` targets, each to its own class."""

    kinds = FileDelivery.kinds | WebhookDelivery.kinds

    def __init__(self, settings: DeliverySettings, *, total_timeout: float | None = None) -> None:
        self.file = FileDelivery()
        self.webhook = WebhookDelivery(settings, total_timeout=total_timeout)
        self._by_kind: Mapping[str, FileDelivery | WebhookDelivery] = {
            kind: d for d in (self.file, self.webhook) for kind in d.kinds
        }

    def _for(self, target: DeliveryTarget) -> FileDelivery | WebhookDelivery:
        found = self._by_kind.get(target.kind)
        if found is None:
            raise DeliveryFailed(
                f"the built-in delivery has no target kind {target.kind!r}; it serves "
                f"{', '.join(sorted(self.kinds))}"
            )
        return found

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        """Send an ``ok`` result to ``target``."""
        await self._for(target).deliver(target, result)

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        """Send a failed run's result to ``target``."""
        await self._for(target).deliver_error(target, result)

    async def aclose(self) -> None:
        """Close the webhook client."""
        await self.webhook.aclose()


@hookimpl
def executus_delivery(settings: Settings) -> Any:
    """The built-in ``file`` and ``webhook`` deliveries, configured by ``[tool.executus.delivery]``."""
    return BuiltinDeliveries(
        settings.section("delivery", DeliverySettings, plugin="delivery"),
        total_timeout=settings.core.delivery_timeout,
    )
