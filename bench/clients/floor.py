"""The machine's floor: raw asyncio streams, keep-alive HTTP/1.1, orjson, each message's bytes cached.

Nothing here is general (no redirects, no TLS, no retries): it is the least a Python client can do
per step on this machine, the bound every other client is read against.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench.clients import ToolCounter
from bench.workload import INSTRUCTIONS, PROMPT, TOOL_SCHEMA, model_name, tool_result

LABEL = "floor (asyncio streams + orjson)"
PACKAGES = ["orjson"]
MAX_CONNECTIONS = 100  # httpx2's default pool size, so concurrent runs queue the same way

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def cached(data: Any) -> bytes:
    """``data`` as JSON bytes to keep: orjson (3.12+) returns buffers over-allocated to ~4 KiB,
    so bytes kept for the life of a run are copied to their own size (a fraction of a microsecond)."""
    return bytes(memoryview(orjson.dumps(data)))


class FloorClient:
    """A keep-alive connection pool and a loop that appends cached message bytes."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.head = (
            f"POST {url.path.rstrip('/')}/chat/completions HTTP/1.1\r\nhost: {url.netloc}\r\n"
            "authorization: Bearer bench\r\ncontent-type: application/json\r\ncontent-length: "
        ).encode()
        self.idle: list[_Conn] = []
        self.open: list[_Conn] = []
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.tools = orjson.dumps([TOOL_SCHEMA])
        self.system = cached({"role": "system", "content": INSTRUCTIONS})
        self.user = cached({"role": "user", "content": PROMPT})
        self.counter = ToolCounter()

    async def _post(self, body: bytes) -> Any:
        async with self.slots:
            if self.idle:
                conn = self.idle.pop()
            else:
                conn = await asyncio.open_connection(self.host, self.port)
                self.open.append(conn)
            reader, writer = conn
            writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            headers = await reader.readuntil(b"\r\n\r\n")
            at = headers.lower().find(b"content-length:")
            if at < 0:
                raise RuntimeError(f"floor: response without content-length: {headers[:200]!r}")
            length = int(headers[at + 15 : headers.find(b"\r\n", at)])
            data = await reader.readexactly(length)
            self.idle.append(conn)
        if headers[9:12] != b"200":
            raise RuntimeError(f"floor: HTTP {headers[9:12].decode()}: {data[:300]!r}")
        return orjson.loads(data)

    async def run(self, n: int) -> str | None:
        prefix = b'{"model":"' + model_name(n).encode() + b'","tools":' + self.tools + b',"messages":['
        parts = [self.system, self.user]
        for _ in range(n + 2):
            message = (await self._post(prefix + b",".join(parts) + b"]}"))["choices"][0]["message"]
            calls = message.get("tool_calls")
            if not calls:
                return message.get("content")
            parts.append(cached(message))
            for call in calls:
                arguments = orjson.loads(call["function"]["arguments"])
                self.counter.calls += 1
                parts.append(
                    cached({"role": "tool", "tool_call_id": call["id"], "content": await lookup(**arguments)})
                )
        raise RuntimeError(f"floor: no answer after {n + 2} model calls")

    async def aclose(self) -> None:
        for _, writer in self.open:
            writer.close()
        self.open.clear()
        self.idle.clear()


async def lookup(key: str) -> str:
    """The trivial async tool."""
    return tool_result(key)


async def create(base_url: str) -> FloorClient:
    """The floor client for the server at ``base_url`` (``http://127.0.0.1:PORT/v1``)."""
    return FloorClient(base_url)
