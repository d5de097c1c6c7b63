"""A fast scripted OpenAI-compatible server for the benchmarks, run in its own process.

Raw asyncio (a `Protocol`, no framework), keep-alive HTTP/1.1, responses precomputed: a request costs
the server a header scan, a regex for the model name and a count of the tool results already in the
body. ``POST .../chat/completions`` with model ``bench-<n>`` answers with tool call ``k`` (``k`` = the
number of ``"tool_call_id"`` keys in the request) while ``k < n``, then with the final text.

Run: ``python -m bench.server [--port 0] [--cpu 1]``; it prints ``READY <port>`` once listening, and
stops on SIGTERM/SIGINT, when its standard input closes (the parent went away), or after
``--max-seconds``. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import threading

import orjson

from bench.workload import TOOL_NAME, final_answer

_MODEL = re.compile(rb'"model"\s*:\s*"([^"]*)"')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_BENCH_MODEL = re.compile(r"bench-(\d+)$")
_TOOL_RESULT = b'"tool_call_id"'
_MAX_HEADER = 64 * 1024


def _http(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def _error(status: str, message: str) -> bytes:
    return _http(status, orjson.dumps({"error": {"message": message, "type": "bench_server_error"}}))


def _completion(model: str, step: int, n: int) -> bytes:
    if step < n:
        message: dict[str, object] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{step}",
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": orjson.dumps({"key": f"k{step}"}).decode()},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": final_answer(n)}
        finish = "stop"
    body = {
        "id": f"chatcmpl-bench-{step}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 40 + 30 * step, "completion_tokens": 12, "total_tokens": 52 + 30 * step},
    }
    return _http("200 OK", orjson.dumps(body))


class _Responses:
    """Response bytes by (model, step), built on first use and kept."""

    def __init__(self) -> None:
        self.cache: dict[tuple[bytes, int], bytes] = {}

    def answer(self, method: bytes, path: bytes, body: bytes) -> bytes:
        if method == b"GET" and path.endswith(b"/health"):
            return _http("200 OK", b'{"ok":true}')
        if method != b"POST" or not path.endswith(b"/chat/completions"):
            return _error("404 Not Found", f"the bench server serves POST .../chat/completions, not {path!r}")
        found = _MODEL.search(body)
        if found is None:
            return _error("400 Bad Request", "the request names no model")
        if _STREAM.search(body):
            return _error("400 Bad Request", "the bench server does not stream; send stream=false")
        model = found.group(1)
        done = body.count(_TOOL_RESULT)
        key = (model, done)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        scripted = _BENCH_MODEL.match(model.decode())
        if scripted is None:
            return _error(
                "400 Bad Request", f"model {model!r} is not bench-<n>: the name says how many steps"
            )
        response = _completion(model.decode(), done, int(scripted.group(1)))
        self.cache[key] = response
        return response


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses HTTP/1.1 requests (Content-Length or chunked) and answers them."""

    def __init__(self, responses: _Responses) -> None:
        self.responses = responses
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and self._one_request():
            pass

    def _fail(self, message: str) -> None:
        assert self.transport is not None
        self.transport.write(_error("400 Bad Request", message))
        self.transport.close()
        self.transport = None

    def _one_request(self) -> bool:
        """Answer the first complete request in the buffer; False when more bytes are needed."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEADER:
                self._fail("request headers too large")
            return False
        head = bytes(buffer[:end]).split(b"\r\n")
        parts = head[0].split(b" ")
        if len(parts) != 3:
            self._fail(f"bad request line {head[0]!r}")
            return False
        length = 0
        chunked = close = False
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        start = end + 4
        if chunked:
            decoded = self._dechunk(start)
            if decoded is None:
                return False
            body, consumed = decoded
        else:
            if len(buffer) < start + length:
                return False
            body, consumed = bytes(buffer[start : start + length]), start + length
        del buffer[:consumed]
        assert self.transport is not None
        self.transport.write(self.responses.answer(parts[0], parts[1], body))
        if close:
            self.transport.close()
            self.transport = None
            return False
        return True

    def _dechunk(self, start: int) -> tuple[bytes, int] | None:
        buffer, pos, chunks = self.buffer, start, []
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2
            if size == 0:
                if buffer.find(b"\r\n", pos) < 0:
                    return None
                return b"".join(chunks), buffer.find(b"\r\n", pos) + 2
            if len(buffer) < pos + size + 2:
                return None
            chunks.append(bytes(buffer[pos : pos + size]))
            pos += size + 2

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, max_seconds: float, ready: str = "READY") -> None:
    """Listen on 127.0.0.1:``port`` until told to stop (signal, stdin closed) or ``max_seconds`` pass."""
    loop = asyncio.get_running_loop()
    responses = _Responses()
    server = await loop.create_server(lambda: _Connection(responses), "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        # The parent holds our stdin open; when it goes away (even killed), stdin closes and we stop.
        # Raw reads (no buffered reader): a daemon thread must not hold a lock at interpreter exit.
        with contextlib.suppress(OSError):
            while os.read(0, 65536):
                pass
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(stop.set)

    if not sys.stdin.isatty():
        threading.Thread(target=watch_stdin, daemon=True).start()
    bound = server.sockets[0].getsockname()[1]
    print(f"{ready} {bound}", flush=True)
    try:
        async with asyncio.timeout(max_seconds):
            await stop.wait()
    except TimeoutError:
        print(f"bench server: stopping after {max_seconds:g}s (--max-seconds)", file=sys.stderr)
    finally:
        server.close()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m bench.server``."""
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long regardless")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
