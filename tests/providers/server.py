"""A real HTTP/1.1 server on 127.0.0.1 that replays scripted answers and records what it was sent.

It speaks just enough HTTP for the providers' clients: keep-alive, ``Content-Length`` request
bodies, plain answers and chunked server-sent-event streams, which it can cut off mid-way (by
closing the connection, or by ending the stream early). Each request takes the next scripted
`Reply`; a request with none left gets a 500 that says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from typing import Any

import orjson


@dataclasses.dataclass
class Reply:
    """One scripted answer.

    ``json`` (or raw ``body``) is sent whole; ``events`` (raw SSE event bytes) are streamed one
    chunk each. ``cut`` closes the connection after the events without ending the chunked body;
    ``split`` sends every event in two writes, to exercise the client's buffering. ``delay`` waits
    before answering. ``repeat = (piece, times)`` sends ``piece`` that many times after the body or
    the events (then ``tail``), one write each, so a test can send hundreds of MiB without building
    them; a plain answer then has a ``content-length`` of the whole.
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    events: list[bytes] | None = None
    cut: bool = False
    split: bool = False
    delay: float = 0.0
    repeat: tuple[bytes, int] | None = None
    tail: bytes = b""


@dataclasses.dataclass
class Seen:
    """A request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying ``data`` as JSON (or as is, for bytes such as ``b"[DONE]"``)."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


class LoopbackServer:
    """Serve scripted replies on ``127.0.0.1`` (a free port); see ``url``, ``add`` and ``requests``."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Seen] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def close(self) -> None:
        """Stop listening and end every connection, including answers still waiting on a delay."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Seen(method, path, headers, body))
                reply = self.replies.popleft() if self.replies else None
                if reply is None:
                    reply = Reply(500, json={"error": {"message": "the test server has no reply scripted"}})
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if not await self._answer(writer, reply):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # CancelledError: close() ended this connection; ending quietly keeps asyncio's
            # stream callback from logging a cancelled handler as an error.
            return
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        """Write the reply; False when the connection is to be closed."""
        reason = _REASONS.get(reply.status, "Status")
        head = [f"HTTP/1.1 {reply.status} {reason}"]
        if reply.repeat is not None:
            return await self._answer_repeated(writer, reply, head)
        if reply.events is not None:
            head += ["content-type: text/event-stream", "transfer-encoding: chunked"]
            head += [f"{k}: {v}" for k, v in reply.headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            for event in reply.events:
                pieces = [event[: len(event) // 2], event[len(event) // 2 :]] if reply.split else [event]
                for piece in pieces:
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                    if reply.split:
                        await asyncio.sleep(0.001)  # let the halves arrive as separate reads
            if reply.cut:
                await writer.drain()
                return False  # close mid-body: the chunked stream never ends
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        body = reply.body if reply.body is not None else orjson.dumps(reply.json)
        content_type = "application/json" if reply.body is None else "text/plain"
        head += [f"content-type: {content_type}", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        return True

    async def _answer_repeated(self, writer: asyncio.StreamWriter, reply: Reply, head: list[str]) -> bool:
        assert reply.repeat is not None
        piece, times = reply.repeat
        streamed = reply.events is not None
        start = b"".join(reply.events or ()) if streamed else (reply.body or b"")
        if streamed:
            head += ["content-type: text/event-stream", "transfer-encoding: chunked"]
        else:
            size = len(start) + len(piece) * times + len(reply.tail)
            head += ["content-type: application/json", f"content-length: {size}"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())

        def frame(data: bytes) -> bytes:
            return f"{len(data):x}\r\n".encode() + data + b"\r\n" if streamed else data

        if start:
            writer.write(frame(start))
        for _ in range(times):
            writer.write(frame(piece))
            await writer.drain()  # the client reads at its pace: nothing piles up here
        if reply.tail:
            writer.write(frame(reply.tail))
        if streamed:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
