"""One MCP server as an executor sees it: started on first use, shared by every run, stopped at close.

A `ServerConnection` holds at most one live session at a time. Each session belongs to one task of
its own (the SDK's `mcp.Client` opens anyio task groups, which must be closed by the task that
opened them); runs only send requests through it, concurrently.

What it guarantees:

- **One start for many callers.** Runs that need the server while it starts wait for the same start;
  each waits no longer than its own limit, and a caller that gives up does not stop the start for the
  others. Within ``FAILED_RETRY_SECONDS`` of a failed start, callers get that failure again rather
  than each starting the program once more.
- **Bounded waits.** The start (spawn or connect, handshake, the whole tool list) is bounded by
  ``connect_timeout``; a call by its limit (``call_timeout``, or less when the run's deadline is
  nearer), enforced by the SDK's request timeout, which also cancels the call on the server.
- **A lost session is replaced, a call is never replayed.** When the server exits or the transport
  closes, the session ends; the next call starts a new one first. A call that was in flight when the
  session was lost fails with `McpConnectionLost`; it is not sent again, since it may have run.
- **The tool list follows the server.** All pages are read (at most ``MAX_PAGES``);
  ``notifications/tools/list_changed`` (sent directly on a handshake-era connection, and through a
  ``subscriptions/listen`` stream on a 2026-07-28 one) marks the list stale and refreshes it in the
  background; the next `tools` call waits for the new list.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import logging
import math
import os
import shlex
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2

from executus_mcp import guard
from executus_mcp.errors import (
    McpCallTimeout,
    McpConnectionLost,
    McpServerUnavailable,
    McpToolError,
)
from executus_mcp.settings import McpSettings, ServerSettings, expand_env

if TYPE_CHECKING:
    import mcp_types
    from mcp import Client
    from mcp.shared.exceptions import MCPError

# The mcp SDK (~1 s to import on a loaded machine) is imported where a server is first started or
# its errors are read, never when the plugin loads: `executus plugins`, `Executor()` and runs that
# name no MCP server do not pay for it.

__all__ = ["FAILED_RETRY_SECONDS", "MAX_PAGES", "ServerConnection", "ServerState"]

log = logging.getLogger("executus_mcp")

MAX_PAGES = 100
"""The most ``tools/list`` pages read for one listing: a server whose cursor never ends cannot hang a run."""

FAILED_RETRY_SECONDS = 1.0
"""After a failed start, callers within this many seconds get the same error without a new attempt."""

STDERR_LINES = 20
"""How many of a server's last stderr lines are kept for error messages."""

STOP_TIMEOUT = 6.0
"""The longest a session takes to stop: the SDK closes stdin, waits 2 s, SIGTERMs, waits 2 s, SIGKILLs."""

CLIENT_NAME, CLIENT_VERSION = "executus-mcp", "0.1.0"


class ServerState(enum.StrEnum):
    """Where a server stands, as ``executus mcp list`` shows it."""

    IDLE = "idle"
    """Not started yet: servers start when a run first names them."""
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    """The last start failed (`ServerConnection.last_error` says why); the next use tries again."""
    LOST = "lost"
    """The session ended (the server exited or dropped it); the next use starts a new one."""
    CLOSED = "closed"


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups: what anyio task groups wrap."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _public_url(url: str) -> str:
    """``url`` without a password (error messages and ``executus mcp list`` show it)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _WatchedReadStream:
    """The transport's read stream, reporting its end: the server exited or the session dropped.

    The SDK's dispatcher reads until this stream ends; `on_end` lets the connection end the session
    at once, so the next call starts a new one instead of failing on a dead one.
    """

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except (StopAsyncIteration, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedReadStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return bool(await self._inner.__aexit__(*exc))


@asynccontextmanager
async def _watched(transport: Any, on_end: Callable[[], None]) -> AsyncIterator[tuple[Any, Any]]:
    async with transport as (read_stream, write_stream):
        yield _WatchedReadStream(read_stream, on_end), write_stream


class _StderrTail:
    """A pipe for a stdio server's stderr: each line goes to the log (DEBUG, logger
    ``executus_mcp.server.NAME``) and the last `STDERR_LINES` are kept for error messages."""

    def __init__(self, server: str) -> None:
        read_fd, write_fd = os.pipe()
        self.writer = os.fdopen(write_fd, "w", encoding="utf-8", errors="replace")
        self.lines: deque[str] = deque(maxlen=STDERR_LINES)
        self._log = logging.getLogger(f"executus_mcp.server.{server}")
        self._reader = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - owned by the read task
        self.task = asyncio.get_running_loop().create_task(self._read(), name=f"mcp {server} stderr")

    def close_writer(self) -> None:
        """Drop our copy of the write end once the server has its own (or failed to start)."""
        with contextlib.suppress(OSError):
            self.writer.close()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self._reader
        )
        buffer = b""
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    self._line(raw)
                if len(buffer) > 65536:  # a line with no end in sight: keep its start
                    self._line(buffer)
                    buffer = b""
            if buffer:
                self._line(buffer)
        finally:
            transport.close()

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if line:
            self.lines.append(line)
            self._log.debug("%s", line)

    def tail(self, count: int = 5) -> list[str]:
        return list(self.lines)[-count:]


class _Session:
    """One connection to the server, from start to end, run by a task of its own."""

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.client: Client | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        # Retrieved here so an unawaited failure (every caller gave up) is not reported as lost.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.ended = asyncio.Event()  # stop asked for, or the connection is gone
        self.lost = False
        self.stderr: _StderrTail | None = None
        self.task = loop.create_task(self._main(), name=f"mcp server {conn.name}")

    def end(self, *, lost: bool) -> None:
        """Stop this session (``lost``: because the connection is gone)."""
        if lost and not self.lost:
            self.lost = True
            if self.ready.done():
                log.info("MCP server %r: the session ended; the next call starts a new one", self.conn.name)
        self.ended.set()

    async def _main(self) -> None:
        import mcp_types
        from mcp import Client

        conn = self.conn
        timeout = conn.connect_timeout
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                async with AsyncExitStack() as stack:
                    transport = await self._transport(stack)
                    client = Client(
                        _watched(transport, lambda: self.end(lost=True)),
                        mode=conn.settings.mode,
                        read_timeout_seconds=timeout,
                        message_handler=conn._on_message,
                        client_info=mcp_types.Implementation(name=CLIENT_NAME, version=CLIENT_VERSION),
                        cache=None,  # the connection keeps the tool list itself, refreshed on list_changed
                    )
                    try:
                        await stack.enter_async_context(client)
                        tools = await _list_all(client)
                    finally:
                        if self.stderr is not None:
                            self.stderr.close_writer()
                    scope.deadline = math.inf  # started: from now on only stop() or the server ends it
                    self.client = client
                    conn._started(self, client, tools)
                    self.ready.set_result(None)
                    async with anyio.create_task_group() as group:
                        if _wants_listen(client):
                            group.start_soon(self._listen, client)
                        await self.ended.wait()
                        group.cancel_scope.cancel()
            if scope.cancelled_caught and not self.ready.done():
                raise TimeoutError
        except Exception as exc:
            if not self.ready.done():
                self.ready.set_exception(conn._unavailable(_leaf(exc), timeout, self.stderr))
            else:
                log.debug("MCP server %r: the session ended with %r", conn.name, exc)
        finally:
            self.client = None
            self.ended.set()
            if not self.ready.done():
                self.ready.set_exception(
                    McpServerUnavailable(
                        f"MCP server {conn.name!r} was stopped while starting", server=conn.name
                    )
                )
            conn._ended(self)

    async def _transport(self, stack: AsyncExitStack) -> Any:
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.client.streamable_http import streamable_http_client

        conn, cfg = self.conn, self.conn.settings
        where = f"[tool.executus.mcp.servers.{conn.name}]"
        if cfg.command is not None:
            env = {key: expand_env(value, f"{where} env.{key}") for key, value in cfg.env.items()}
            args = [expand_env(arg, f"{where} args") for arg in cfg.args]
            command = expand_env(cfg.command, f"{where} command")
            if os.name == "posix" and sys.executable:
                command, args = guard.guarded_command(command, args)
            self.stderr = _StderrTail(conn.name)
            conn._stderr_tasks.add(self.stderr.task)
            self.stderr.task.add_done_callback(conn._stderr_tasks.discard)
            params = StdioServerParameters(command=command, args=args, env=env or None, cwd=cfg.cwd)
            return stdio_client(params, errlog=self.stderr.writer)
        assert cfg.url is not None
        headers = {key: expand_env(value, f"{where} headers.{key}") for key, value in cfg.headers.items()}
        http = httpx2.AsyncClient(
            headers=headers,
            # Per-request limits are the SDK's (call_timeout); this only bounds connecting and idle streams.
            timeout=httpx2.Timeout(conn.connect_timeout, read=max(300.0, conn.call_timeout)),
        )
        await stack.enter_async_context(http)
        return streamable_http_client(expand_env(cfg.url, f"{where} url"), http_client=http)

    async def _listen(self, client: Client) -> None:
        """Keep a ``subscriptions/listen`` stream open for tool-list changes (2026-07-28 connections).

        Each event also reaches the message handler as ``notifications/tools/list_changed``, which
        is where the connection acts on it; this loop only keeps the stream drained.
        """
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    pass
        except Exception as exc:
            log.debug("MCP server %r: the tool-list subscription ended: %r", self.conn.name, exc)


def _import_sdk() -> None:
    for module in (
        "mcp",
        "mcp.client.stdio",
        "mcp.client.streamable_http",
        "mcp.shared.exceptions",
        "mcp_types",
    ):
        importlib.import_module(module)


def _session_unknown(exc: MCPError) -> bool:
    """The server answered HTTP 404 to our session id: it restarted, or expired the session, and did
    not run the request (the SDK's stand-in is INVALID_REQUEST "Session terminated"; servers that
    send a JSON-RPC body say "Session not found")."""
    import mcp_types

    message = exc.error.message.lower()
    return (exc.code == mcp_types.INVALID_REQUEST and "session" in message) or "session not found" in message


def _wants_listen(client: Client) -> bool:
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    tools = client.server_capabilities.tools
    return (
        client.protocol_version in MODERN_PROTOCOL_VERSIONS and tools is not None and bool(tools.list_changed)
    )


async def _list_all(client: Client) -> list[mcp_types.Tool]:
    """Every tool the server offers, across pages (at most `MAX_PAGES`)."""
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
        if cursor in seen:
            raise McpToolError(f"the server's tools/list repeated the cursor {cursor!r}")
        seen.add(cursor)
    raise McpToolError(f"the server's tools/list went on for more than {MAX_PAGES} pages")


class ServerConnection:
    """One configured MCP server, shared by every run of an executor.

    Args:
        name: the server's name under ``[tool.executus.mcp.servers]``.
        config: the whole ``[tool.executus.mcp]`` table (for the limits the server inherits).
    """

    def __init__(self, name: str, config: McpSettings) -> None:
        self.name = name
        self.settings: ServerSettings = config.servers[name]
        self.connect_timeout = config.connect_timeout_of(name)
        self.call_timeout = config.call_timeout_of(name)
        self.required = config.required_of(name)
        self.state = ServerState.IDLE
        self.last_error: str | None = None
        self.protocol_version: str | None = None
        self.server_info: mcp_types.Implementation | None = None
        self.starts = 0
        self._session: _Session | None = None
        self._failed: tuple[float, McpServerUnavailable] | None = None
        self._tools: list[mcp_types.Tool] | None = None
        self._names: frozenset[str] = frozenset()
        self._stale = False
        self._generation = 0  # bumped by each list_changed
        self._refresh: asyncio.Task[None] | None = None
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self._stderr_tasks: set[asyncio.Task[None]] = set()

    # -- what it is ----------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """What is started or reached: the command line, or the URL (without a password)."""
        if self.settings.command is not None:
            return shlex.join([self.settings.command, *self.settings.args])
        assert self.settings.url is not None
        return _public_url(self.settings.url)

    @property
    def cached_tools(self) -> list[mcp_types.Tool] | None:
        """The tool list as last read (None before the first start)."""
        return self._tools

    def on_tools_changed(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever a new tool list is read."""
        self._listeners.append(listener)

    # -- sessions ------------------------------------------------------------------------------

    async def session(self, limit: float | None = None) -> Client:
        """The live client, starting the server first if needed; waits at most ``limit`` seconds.

        Raises:
            McpServerUnavailable: the server could not start, or not within the limit.
        """
        if "mcp.client.streamable_http" not in sys.modules:
            # The SDK's first import takes ~1 s on a loaded machine: in a thread, so that neither the
            # other runs' loop nor this server's connect_timeout pays for it.
            await asyncio.to_thread(_import_sdk)
        wait = self.connect_timeout if limit is None else min(limit, self.connect_timeout)
        for _ in range(2):  # a session that ends as soon as it is ready gets one more start, no more
            if self._closed:
                raise McpServerUnavailable(
                    f"MCP server {self.name!r}: the executor is shut down", server=self.name
                )
            current = self._session
            if current is None or current.ended.is_set():
                if self._failed is not None and time.monotonic() - self._failed[0] < FAILED_RETRY_SECONDS:
                    raise self._failed[1]
                current = self._start()
            if not current.ready.done():
                # Bounded by connect_timeout, the start ends on its own (with the better message,
                # the server's stderr in it); the margin lets it. A nearer deadline cuts the wait.
                by_deadline = wait < self.connect_timeout
                try:
                    await asyncio.wait_for(asyncio.shield(current.ready), wait if by_deadline else wait + 1.0)
                except TimeoutError:
                    raise McpServerUnavailable(
                        f"MCP server {self.name!r} ({self.target}) did not finish starting within {wait:g}s "
                        + ("(what was left of the run's time)" if by_deadline else "(connect_timeout)"),
                        server=self.name,
                    ) from None
            current.ready.result()  # raises the start's failure
            if current.client is not None:
                return current.client
        raise McpServerUnavailable(
            f"MCP server {self.name!r} ({self.target}) ended its session right after starting, twice",
            server=self.name,
        )

    def _start(self) -> _Session:
        self.state = ServerState.STARTING
        self.starts += 1
        self._session = _Session(self)
        return self._session

    def _started(self, session: _Session, client: Client, tools: list[mcp_types.Tool]) -> None:
        if session is not self._session:
            return
        self.state = ServerState.READY
        self.last_error = None
        self._failed = None
        self.protocol_version = client.protocol_version
        self.server_info = client.server_info
        self._stale = False
        self._set_tools(tools)
        log.info(
            "MCP server %r ready (%s, protocol %s, %d tools)",
            self.name,
            self.target,
            client.protocol_version,
            len(tools),
        )

    def _ended(self, session: _Session) -> None:
        if session is not self._session:
            return
        if self._closed:
            self.state = ServerState.CLOSED
            return
        error = None if session.ready.cancelled() else session.ready.exception()
        if isinstance(error, McpServerUnavailable):
            self.state = ServerState.FAILED
            self.last_error = str(error)
            self._failed = (time.monotonic(), error)
            log.warning("%s", error)
        else:
            self.state = ServerState.LOST

    def _unavailable(
        self, exc: BaseException, timeout: float, stderr: _StderrTail | None
    ) -> McpServerUnavailable:
        import mcp_types
        from mcp.shared.exceptions import MCPError

        if isinstance(exc, McpServerUnavailable):
            return exc
        if isinstance(exc, TimeoutError) or (
            isinstance(exc, MCPError) and exc.code == mcp_types.REQUEST_TIMEOUT
        ):
            why = f"it did not finish starting within {timeout:g}s (connect_timeout)"
        elif isinstance(exc, MCPError) and exc.code == mcp_types.CONNECTION_CLOSED:
            why = "it exited, or closed the connection, before the handshake was done"
        elif isinstance(exc, FileNotFoundError):
            why = f"there is no program {self.settings.command!r} ({exc.strerror})"
        elif isinstance(exc, httpx2.HTTPStatusError):
            why = f"the server answered HTTP {exc.response.status_code}"
        elif isinstance(exc, httpx2.TransportError):
            why = f"cannot connect ({type(exc).__name__}: {exc})"
        elif isinstance(exc, ValueError) and "environment variable" in str(exc):
            why = str(exc)
        else:
            why = f"{type(exc).__name__}: {exc}"
        tail = [] if stderr is None else stderr.tail()
        said = [line.removeprefix(guard.MARK) for line in tail if line.startswith(guard.MARK)]
        if said:  # the guard could not even start the program: that is the whole story
            why, tail = said[-1], [line for line in tail if not line.startswith(guard.MARK)]
        message = f"MCP server {self.name!r} ({self.target}) could not start: {why}"
        if tail:
            message += "; its stderr ended with: " + " | ".join(tail)
        message += f". Check [tool.executus.mcp.servers.{self.name}]"
        if self.required:
            message += ", or set required = false there to let runs go on without it"
        return McpServerUnavailable(message, server=self.name)

    # -- the tool list ---------------------------------------------------------------------------

    async def _on_message(self, message: Any) -> None:
        import mcp_types

        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._tools_changed()
        elif isinstance(message, Exception):
            log.debug("MCP server %r: transport error %r", self.name, message)

    def _tools_changed(self) -> None:
        self._generation += 1
        self._stale = True
        log.info("MCP server %r: its tool list changed; reading it again", self.name)
        self._refresh_soon()

    def _refresh_soon(self) -> asyncio.Task[None]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(
                self._read_tools(), name=f"mcp {self.name} tools"
            )
        return self._refresh

    async def _read_tools(self) -> None:
        while self._stale and not self._closed:
            generation = self._generation
            try:
                client = await self.session()
                tools = await _list_all(client)
            except Exception as exc:
                log.warning("MCP server %r: reading its changed tool list failed: %r", self.name, exc)
                return
            if generation == self._generation:
                self._stale = False
            self._set_tools(tools)

    def _set_tools(self, tools: list[mcp_types.Tool]) -> None:
        self._tools = tools
        self._names = frozenset(tool.name for tool in tools)
        for listener in self._listeners:
            listener()

    async def tools(self, limit: float | None = None) -> list[mcp_types.Tool]:
        """The server's tools, starting it first if needed, and re-read if the list changed.

        Raises:
            McpServerUnavailable: the server could not start, or not within ``limit`` seconds.
        """
        started = time.monotonic()
        await self.session(limit)
        if self._stale:
            refresh = self._refresh_soon()
            left = self.connect_timeout if limit is None else limit - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(refresh), max(0.0, left))
        assert self._tools is not None
        return self._tools

    # -- calls -----------------------------------------------------------------------------------

    async def call_tool(
        self, tool: str, arguments: dict[str, Any], *, limit: float | None = None
    ) -> mcp_types.CallToolResult:
        """Call ``tool`` within ``limit`` seconds (and ``call_timeout``), starting the server if needed.

        A call that may have run is never sent again. The one case where it goes out a second time
        is a call the server refused, unrun, because it no longer knew the session (HTTP 404 on a
        handshake-era session, after the server restarted): the spec says to start a new session
        then, and the call goes to it. Raises `McpServerUnavailable`, `McpCallTimeout`,
        `McpConnectionLost` or `McpToolError` (the server refused the call); a result with
        ``isError`` is returned as it is.
        """
        import mcp_types
        from mcp.shared.exceptions import MCPError

        started = time.monotonic()
        budget = self.call_timeout if limit is None else min(limit, self.call_timeout)
        for attempt in (1, 2):
            left = budget - (time.monotonic() - started)
            if left <= 0:
                raise McpCallTimeout(
                    f"no time left to call {tool!r} on MCP server {self.name!r} "
                    + ("(the run's deadline has passed)" if attempt == 1 else f"(limit {budget:g}s)"),
                    server=self.name,
                    tool=tool,
                )
            client = await self.session(left)
            if not self._stale and self._tools is not None and tool not in self._names:
                offered = ", ".join(t.name for t in self._tools) or "none"
                raise McpToolError(
                    f"MCP server {self.name!r} no longer offers the tool {tool!r} (its tool list changed); "
                    f"it offers: {offered}",
                    server=self.name,
                    tool=tool,
                )
            left = budget - (time.monotonic() - started)
            if left <= 0:
                raise McpCallTimeout(
                    f"no time left to call {tool!r} after starting MCP server {self.name!r} (limit {budget:g}s)",
                    server=self.name,
                    tool=tool,
                )
            session = self._session
            try:
                # The SDK's request timeout cancels the call on the server; ours is the backstop.
                async with asyncio.timeout(left + 1.0):
                    return await client.call_tool(tool, arguments, read_timeout_seconds=left)
            except MCPError as exc:
                if exc.code == mcp_types.REQUEST_TIMEOUT:
                    raise self._timed_out(tool, budget, limit) from None
                if exc.code == mcp_types.CONNECTION_CLOSED:
                    raise self._lost(session, tool) from None
                if _session_unknown(exc):
                    if session is not None:
                        session.end(lost=True)
                    if attempt == 1:
                        log.info("MCP server %r no longer knows the session; starting a new one", self.name)
                        continue
                raise McpToolError(
                    f"MCP server {self.name!r} refused the call of {tool!r}: {exc.error.message} "
                    f"(JSON-RPC error {exc.code})",
                    server=self.name,
                    tool=tool,
                ) from None
            except TimeoutError:
                raise self._timed_out(tool, budget, limit) from None
            except (
                httpx2.TransportError,
                OSError,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
            ) as exc:
                log.debug("MCP server %r: call of %r failed in the transport: %r", self.name, tool, exc)
                raise self._lost(session, tool) from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _timed_out(self, tool: str, budget: float, limit: float | None) -> McpCallTimeout:
        why = (
            "what was left of the run's time"
            if limit is not None and limit < self.call_timeout
            else "call_timeout"
        )
        return McpCallTimeout(
            f"{tool!r} on MCP server {self.name!r} did not answer within {budget:.3g}s ({why}); the call was "
            "cancelled, and may have done part of its work",
            server=self.name,
            tool=tool,
        )

    def _lost(self, session: _Session | None, tool: str) -> McpConnectionLost:
        if session is not None:
            session.end(lost=True)
        return McpConnectionLost(
            f"MCP server {self.name!r} closed the connection while {tool!r} was running (it exited or dropped "
            "the session); the call was not sent again and may or may not have taken effect. The next call "
            "starts the server again.",
            server=self.name,
            tool=tool,
        )

    # -- closing ---------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the server (stdio: close its stdin, then SIGTERM and SIGKILL its group if it lingers)."""
        self._closed = True
        if self._refresh is not None:
            self._refresh.cancel()
        session = self._session
        if session is not None:
            session.end(lost=False)
            try:
                await asyncio.wait_for(asyncio.shield(session.task), STOP_TIMEOUT)
            except TimeoutError:
                session.task.cancel()
                with contextlib.suppress(BaseException):
                    await session.task
        for task in list(
            self._stderr_tasks
        ):  # a server that is gone ends its reader by EOF; this is the rest
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.state = ServerState.CLOSED
