"""Delivery: where a finished run's result goes.

Pass targets to `Executor.run` (``delivery=``); each goes to the `Delivery` that serves its kind.
The core ships two:

``file``
    ``{"kind": "file", "path": "out/"}`` writes ``out/<run_id>/result.json`` and each artifact
    beside it under ``artifacts/``. Files are written to a temporary name and renamed, so a reader
    never sees half a result.

``webhook``
    ``{"kind": "webhook", "url": "https://host/hook", "secret": "..."}`` POSTs the result as JSON.
    The body is signed: ``X-Executus-Signature: sha256=<hex HMAC-SHA256 of the body with the
    secret>``; ``Idempotency-Key`` is the run id, so a receiver can drop a repeat. Connection errors,
    timeouts, 408, 425, 429 and 5xx are retried with exponential backoff and jitter (honouring
    ``Retry-After``); other 4xx are not. Optional: ``headers`` (a mapping), ``attempts``, ``timeout``.

A failed run goes to ``deliver_error``: the same payload, with ``X-Executus-Status`` telling the
receiver it is not ``ok``.

Settings (``[tool.executus.delivery]``): ``webhook_attempts`` (4), ``webhook_backoff`` (0.5 s, doubled
each retry), ``webhook_max_backoff`` (30 s), ``webhook_timeout`` (10 s per attempt).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx2
from pydantic import BaseModel, ConfigDict, Field

from executus_core.config import Settings
from executus_core.hookspecs import hookimpl
from executus_core.types import DeliveryTarget, Result

__all__ = ["DeliveryFailed", "DeliverySettings", "FileDelivery", "WebhookDelivery", "sign"]

SIGNATURE_HEADER = "X-Executus-Signature"
RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


class DeliveryFailed(Exception):
    """A delivery gave up; the message says where and why (the run's Result lists it in warnings)."""


class DeliverySettings(BaseModel):
    """``[tool.executus.delivery]``."""

    model_config = ConfigDict(extra="forbid")

    webhook_attempts: int = Field(4, ge=1)
    webhook_backoff: float = Field(0.5, ge=0)
    webhook_max_backoff: float = Field(30.0, gt=0)
    webhook_timeout: float = Field(10.0, gt=0)


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex>``. Receivers compare with `hmac.compare_digest`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _payload(result: Result) -> bytes:
    return result.model_dump_json().encode()


class FileDelivery:
    """Writes ``<path>/<run_id>/result.json`` and the artifacts."""

    kinds = frozenset({"file"})

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        await asyncio.to_thread(self._write, target, result)

    deliver_error = deliver

    def _write(self, target: DeliveryTarget, result: Result) -> None:
        path = target.options.get("path")
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise DeliveryFailed("a file target needs a 'path' (a folder)")
        folder = Path(path).expanduser() / result.run_id
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        for artifact in result.artifacts:
            name = Path(artifact.name).name  # never outside the folder
            _atomic_write(folder / "artifacts" / name, artifact.content)
        _atomic_write(folder / "result.json", _payload(result))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class WebhookDelivery:
    """POSTs the result as signed JSON, with retries; one pooled client, closed by `aclose`."""

    kinds = frozenset({"webhook"})

    def __init__(
        self, settings: DeliverySettings | None = None, *, transport: httpx2.AsyncBaseTransport | None = None
    ):
        self.settings = settings or DeliverySettings()
        self._transport = transport
        self._client: httpx2.AsyncClient | None = None

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = httpx2.AsyncClient(transport=self._transport, follow_redirects=False)
        return self._client

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        await self._post(target, result)

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        await self._post(target, result)

    async def _post(self, target: DeliveryTarget, result: Result) -> None:
        options = target.options
        url = options.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise DeliveryFailed("a webhook target needs a 'url' starting with http:// or https://")
        body = _payload(result)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": result.run_id,
            "X-Executus-Run-Id": result.run_id,
            "X-Executus-Status": result.status.value,
            **{str(k): str(v) for k, v in (options.get("headers") or {}).items()},
        }
        secret = options.get("secret")
        if secret:
            headers[SIGNATURE_HEADER] = sign(str(secret), body)
        cfg = self.settings
        attempts = int(options.get("attempts", cfg.webhook_attempts))
        timeout = float(options.get("timeout", cfg.webhook_timeout))
        where = httpx2.URL(url).copy_with(query=None, username=None, password=None)
        last = ""
        for attempt in range(1, attempts + 1):
            wait = None
            try:
                response = await self._http().post(url, content=body, headers=headers, timeout=timeout)
            except httpx2.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    return
                last = f"HTTP {response.status_code}"
                if response.status_code not in RETRY_STATUSES:
                    raise DeliveryFailed(
                        f"webhook {where} answered {last}; not retried (fix the receiver or target)"
                    )
                wait = _retry_after(response)
            if attempt < attempts:
                backoff = min(cfg.webhook_max_backoff, cfg.webhook_backoff * 2 ** (attempt - 1))
                await asyncio.sleep(wait if wait is not None else backoff * (0.5 + random.random() / 2))
        raise DeliveryFailed(f"webhook {where} failed {attempts} times; last: {last}")

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


@hookimpl
def executus_delivery(settings: Settings) -> Any:
    return _Deliveries(settings.section("delivery", DeliverySettings, plugin="delivery"))


class _Deliveries:
    """The built-in deliveries as one port object: ``file`` and ``webhook``."""

    kinds = FileDelivery.kinds | WebhookDelivery.kinds

    def __init__(self, settings: DeliverySettings) -> None:
        self.file = FileDelivery()
        self.webhook = WebhookDelivery(settings)

    def _for(self, target: DeliveryTarget) -> FileDelivery | WebhookDelivery:
        return self.file if target.kind in self.file.kinds else self.webhook

    async def deliver(self, target: DeliveryTarget, result: Result) -> None:
        await self._for(target).deliver(target, result)

    async def deliver_error(self, target: DeliveryTarget, result: Result) -> None:
        await self._for(target).deliver_error(target, result)

    async def aclose(self) -> None:
        await self.webhook.aclose()
