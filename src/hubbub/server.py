"""The Swoole-style server API.

A user who knows ``Swoole\\WebSocket\\Server`` recognises it::

    from hubbub import Server

    ws = Server("0.0.0.0", 9502)

    @ws.on("open")
    def on_open(ws, request):
        ws.push(request.fd, "Hello, welcome\\n")

    @ws.on("message")
    def on_message(ws, frame):
        ws.broadcast(f"from {frame.fd}: {frame.data}")

    ws.start()

Events: ``open(server, request)``, ``message(server, frame)``,
``close(server, fd)``, ``request(request, response)``, plus ``start(server)``
and ``shutdown(server)``. Handlers may be plain functions or coroutines.

Ordering invariant: the events of one connection reach the handlers in the
order they happened (open, messages, close), also when handlers are async:
an async handler's successors wait in a per-connection queue, and reading
from that socket pauses once ``max_pending_messages`` are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import logging
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, KeysView
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import uvloop
from websockets.frames import CloseCode, Opcode

from .config import Settings
from .errors import StartupError
from .transport.http import HttpConnection, Request, Response
from .transport.listen import bind_error, listening_line
from .transport.websocket import WebSocketConnection, encode_frame

log = logging.getLogger("hubbub")

EVENTS = ("open", "message", "close", "request", "start", "shutdown")

#: Swoole's opcode constants.
WEBSOCKET_OPCODE_TEXT = Opcode.TEXT
WEBSOCKET_OPCODE_BINARY = Opcode.BINARY


class Frame:
    """A received WebSocket message (Swoole's ``$frame``)."""

    __slots__ = ("data", "fd", "finish", "opcode")

    def __init__(self, fd: int, data: str | bytes) -> None:
        self.fd = fd
        self.data = data
        self.opcode = Opcode.TEXT if isinstance(data, str) else Opcode.BINARY
        self.finish = True

    def __repr__(self) -> str:
        return f"<Frame fd={self.fd} opcode={self.opcode.name} {len(self.data)} bytes>"


class _Timer:
    __slots__ = ("args", "fn", "handle", "id", "interval", "repeat")

    def __init__(
        self,
        timer_id: int,
        interval: float,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        repeat: bool,
    ):
        self.id = timer_id
        self.interval = interval
        self.fn = fn
        self.args = args
        self.repeat = repeat
        self.handle: asyncio.TimerHandle | None = None


class Server:
    """A WebSocket + HTTP server on one port, with Swoole's event API."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 9502,
        settings: Settings | None = None,
        *,
        subprotocols: Iterable[str] = (),
        health_path: str | None = "/healthz",
        **overrides: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.settings = (settings or Settings()).with_overrides(**overrides)
        #: Subprotocols offered in the handshake (RFC 6455 1.9), in preference order.
        self.subprotocols = list(subprotocols)
        self.health_path = health_path
        #: The application object built on this server, if any (e.g. the chat app).
        self.app: Any = None
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._fds = itertools.count(1)
        # Every WebSocket until its TCP connection is gone (exist()).
        self._all: dict[int, WebSocketConnection] = {}
        # Established connections, the broadcast set (is_established()).
        self._open: dict[int, WebSocketConnection] = {}
        # Broadcast targets derived from _open, rebuilt after any change.
        # Invariant: a broadcast loops over this snapshot synchronously, and
        # each write only queues bytes (WebSocketConnection.write); the
        # transport sees them when the tick ends. So nothing inside the loop
        # can drop a connection or change _open under it.
        self._targets: (
            tuple[tuple[Callable[[bytes], None], ...], tuple[WebSocketConnection, ...]] | None
        ) = None
        self._http: set[HttpConnection] = set()
        # Connections with bytes queued this tick (WebSocketConnection.write).
        self._dirty: list[WebSocketConnection] = []
        self._flush_scheduled = False
        self._timers: dict[int, _Timer] = {}
        self._timer_ids = itertools.count(1)
        self._pool: ProcessPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._stopping = False
        self._start_failed = False
        self._all_gone: asyncio.Event | None = None
        # Handler tasks in flight (a reference keeps them from being collected).
        self._tasks: set[asyncio.Future[Any]] = set()
        self._stop_event: asyncio.Event | None = None
        self._closed_event: asyncio.Event | None = None
        self.started_at = 0.0

    # ------------------------------------------------------------------
    # Events

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register a handler: ``server.on("message", fn)`` or ``@server.on("message")``."""
        name = event.lower()
        if name not in EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        if handler is None:

            def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
                self._handlers[name] = fn
                return fn

            return decorator
        self._handlers[name] = handler
        return handler

    # ------------------------------------------------------------------
    # Connections

    def push(self, fd: int, data: str | bytes, opcode: int | None = None) -> bool:
        """Send one message to ``fd``; text for ``str``, binary for ``bytes``.

        Returns False when ``fd`` is not an established WebSocket.
        """
        conn = self._open.get(fd)
        if conn is None:
            return False
        return conn.send(data, Opcode(opcode) if opcode is not None else None)

    def push_many(self, fds: Iterable[int], data: str | bytes, opcode: int | None = None) -> int:
        """Send one message to several connections, encoding the frame once.

        ``bytes`` with ``opcode=WEBSOCKET_OPCODE_TEXT`` are sent as a text
        frame without decoding (they must be UTF-8). Returns how many were sent.
        """
        op = Opcode(opcode) if opcode is not None else None
        frame = encode_frame(data, op)
        n = 0
        conns = self._open
        for fd in fds:
            conn = conns.get(fd)
            if conn is not None:
                conn.send_frame_bytes(frame, data, op)
                n += 1
        return n

    def broadcast(self, data: str | bytes, exclude: Iterable[int] = ()) -> int:
        """Send one message to every established connection; returns how many.

        The frame is encoded once and the same bytes are written to every
        recipient (connections with permessage-deflate are encoded each).
        """
        frame = encode_frame(data)
        if exclude:
            skip = set(exclude)
            n = 0
            for fd, conn in list(self._open.items()):
                if fd not in skip:
                    conn.send_frame_bytes(frame, data)
                    n += 1
            return n
        targets = self._targets or self._build_targets()
        writes, deflated = targets
        for write in writes:
            write(frame)
        for conn in deflated:
            conn.send(data)
        return len(writes) + len(deflated)

    def _build_targets(
        self,
    ) -> tuple[tuple[Callable[[bytes], None], ...], tuple[WebSocketConnection, ...]]:
        conns = self._open.values()
        self._targets = (
            tuple(c.write for c in conns if not c.compressed),
            tuple(c for c in conns if c.compressed),
        )
        return self._targets

    def exist(self, fd: int) -> bool:
        """True while the connection exists (until its TCP connection is gone)."""
        return fd in self._all

    def is_established(self, fd: int) -> bool:
        """True while ``fd`` is an open WebSocket that can be pushed to."""
        return fd in self._open

    def disconnect(self, fd: int, code: int = 1000, reason: str = "") -> bool:
        """Close ``fd`` with a close code and reason (RFC 6455 7.4)."""
        conn = self._open.get(fd)
        if conn is None:
            return False
        return conn.close(code, reason)

    @property
    def connections(self) -> KeysView[int]:
        """Live view of the fds of established connections (Swoole's ``$server->connections``)."""
        return self._open.keys()

    def connection_info(self, fd: int) -> dict[str, Any] | None:
        conn = self._all.get(fd)
        if conn is None:
            return None
        # Read once, by the HTTP layer, when the connection was made.
        peer = conn.request.remote or ("", 0)
        return {
            "fd": fd,
            "remote_ip": peer[0],
            "remote_port": peer[1],
            "path": conn.request.path,
            "subprotocol": conn.proto.subprotocol,
            "compressed": conn.compressed,
            "established": conn.open,
        }

    # ------------------------------------------------------------------
    # Timers (Swoole\Timer)

    def tick(self, ms: float, fn: Callable[..., Any], *args: Any) -> int:
        """Call ``fn(timer_id, *args)`` every ``ms`` milliseconds; returns the timer id."""
        return self._add_timer(ms, fn, args, repeat=True)

    def after(self, ms: float, fn: Callable[..., Any], *args: Any) -> int:
        """Call ``fn(*args)`` once after ``ms`` milliseconds; returns the timer id."""
        return self._add_timer(ms, fn, args, repeat=False)

    def clear_timer(self, timer_id: int) -> bool:
        timer = self._timers.pop(timer_id, None)
        if timer is None:
            return False
        if timer.handle is not None:
            timer.handle.cancel()
        return True

    def _add_timer(
        self, ms: float, fn: Callable[..., Any], args: tuple[Any, ...], repeat: bool
    ) -> int:
        if ms <= 0:
            raise ValueError("timer interval must be positive")
        timer = _Timer(next(self._timer_ids), ms / 1000.0, fn, args, repeat)
        self._timers[timer.id] = timer
        if self._loop is not None:
            self._schedule(timer)
        return timer.id

    def _schedule(self, timer: _Timer) -> None:
        assert self._loop is not None
        timer.handle = self._loop.call_later(timer.interval, self._fire, timer)

    def _fire(self, timer: _Timer) -> None:
        if timer.id not in self._timers:
            return
        if timer.repeat:
            self._schedule(timer)
            args: tuple[Any, ...] = (timer.id, *timer.args)
        else:
            del self._timers[timer.id]
            args = timer.args
        self._call(timer.fn, args, f"timer {timer.id}")

    # ------------------------------------------------------------------
    # Task workers

    def task(
        self, fn: Callable[..., Any], *args: Any, callback: Callable[[Any], Any] | None = None
    ) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a task worker process; returns a future of its result.

        ``fn`` and its arguments must be picklable (a module-level function).
        With ``callback``, it is called with the result in the server's event
        loop (Swoole's ``finish`` event).
        """
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=max(1, self.settings.task_workers),
                mp_context=multiprocessing.get_context("forkserver"),
            )
        future = loop.run_in_executor(self._pool, fn, *args)
        if callback is not None:

            def done(f: asyncio.Future[Any]) -> None:
                if f.cancelled():
                    return
                exc = f.exception()
                if exc is not None:
                    log.error("task %s failed", getattr(fn, "__name__", fn), exc_info=exc)
                else:
                    self._call(callback, (f.result(),), "task callback")

            future.add_done_callback(done)
        return future

    # ------------------------------------------------------------------
    # Running

    def start(self) -> None:
        """Listen and serve until SIGINT or SIGTERM, then shut down gracefully.

        If the server cannot start (the port is taken, the ``start`` handler
        fails), what was set up is torn down, the port is closed and the
        error is raised: a :class:`~hubbub.errors.StartupError` for the
        foreseeable causes, whose ``str()`` is one line for the operator.
        """
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        uvloop.run(self._run_forever())

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        # Installed before listening: a SIGTERM that arrives while the start
        # handler runs (or right after the port opens) must mean a graceful
        # shutdown, not the default action, which kills the process at once.
        # listen() creates _stop_event before its first await, so stop()
        # always finds it; a stop during start-up lets the start handler
        # finish and then shuts down without accepting a connection.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self._serve_until_stopped()
        except BaseException:
            # Start-up failed: undo what the start handler set up, but the
            # error the caller sees is the one that stopped the start, not
            # one from tearing down a half-started app.
            self._start_failed = True
            try:
                await self.shutdown()
            except Exception:
                log.debug("shutdown after a failed start-up failed too", exc_info=True)
            raise
        else:
            await self.shutdown()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _serve_until_stopped(self) -> None:
        await self.listen()
        if self.settings.gc_freeze:
            # What is alive now lives as long as the process: a full
            # collection would only walk it again (~100k objects, tens of
            # milliseconds with the loop stopped). Frozen objects are never
            # collected, so this happens once, after start-up garbage is gone.
            gc.collect()
            gc.freeze()
        assert self._stop_event is not None
        await self._stop_event.wait()

    async def listen(self) -> int:
        """Start listening (port 0 picks a free one); returns the bound port.

        The ``start`` handler runs (and, if it is a coroutine, finishes)
        before the first connection is accepted: what it sets up (the chat
        app opens its store there) is ready for every client.

        Raises :class:`~hubbub.errors.StartupError` when the address cannot
        be listened on; an exception of the start handler propagates. Either
        way the port is closed again (call :meth:`shutdown` to undo the rest).
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        self._closed_event = asyncio.Event()
        try:
            self._server = await loop.create_server(
                lambda: HttpConnection(self),
                self.host,
                self.port,
                reuse_address=True,
                backlog=4096,
                start_serving=False,
            )
        except (OSError, OverflowError) as exc:
            raise StartupError(bind_error(self.host, self.port, exc)) from exc
        try:
            return await self._start_serving()
        except BaseException:
            self._server.close()
            raise

    async def _start_serving(self) -> int:
        assert self._server is not None and self._stop_event is not None
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self.started_at = time.time()
        for timer in self._timers.values():
            if timer.handle is None:
                self._schedule(timer)
        self._arm_heartbeat()
        handler = self._handlers.get("start")
        if handler is not None:
            result = handler(self)
            if inspect.isawaitable(result):
                await result
        if self._stopping or self._stop_event.is_set():
            # shutdown() or stop() (a signal) came while the start handler
            # ran: it was let finish (so that what it set up can be torn down
            # by the shutdown handler), but the port is never opened.
            return self.port
        await self._server.start_serving()
        log.info("%s", listening_line(self.host, self.port))
        return self.port

    def stop(self) -> None:
        """Ask a server started with start() to shut down (thread-unsafe; call from the loop)."""
        if self._stop_event is not None:
            self._stop_event.set()

    async def shutdown(self) -> None:
        """Stop accepting, close every WebSocket with 1001, wait, then abort the rest."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for conn in list(self._all.values()):
            if not conn.close(CloseCode.GOING_AWAY, "server shutting down"):
                conn._arm_abort()
        for http in list(self._http):
            if not http.busy:
                http.close()
        if self._all:
            self._all_gone = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), self.settings.shutdown_timeout)
        for conn in list(self._all.values()):
            conn.abort()
        for http in list(self._http):
            if http.transport is not None:
                http.transport.abort()
        await asyncio.sleep(0)
        for timer_id in list(self._timers):
            self.clear_timer(timer_id)
        handler = self._handlers.get("shutdown")
        if handler is not None:
            result = handler(self)
            if inspect.isawaitable(result):
                await result
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if not self._start_failed:
            log.info("hubbub stopped")

    # ------------------------------------------------------------------
    # Heartbeat (RFC 6455 5.5.2 ping, 5.5.3 pong)

    def _arm_heartbeat(self) -> None:
        s = self.settings
        if s.ping_interval > 0 and self._loop is not None and not self._stopping:
            period = max(0.05, min(s.ping_interval, s.ping_timeout or s.ping_interval) / 2)
            self._heartbeat = self._loop.call_later(period, self._sweep)

    def _sweep(self) -> None:
        """Ping connections silent for ping_interval; drop those silent past ping_timeout too."""
        assert self._loop is not None
        now = self._loop.time()
        s = self.settings
        for conn in list(self._open.values()):
            idle = now - conn.last_rx
            if conn.ping_sent and idle > s.ping_interval + s.ping_timeout:
                log.info("client-%d dropped: no answer to ping in %.1fs", conn.fd, s.ping_timeout)
                conn._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                conn.abort()
            elif not conn.ping_sent and idle >= s.ping_interval:
                conn.ping()
        self._arm_heartbeat()

    # ------------------------------------------------------------------
    # Endpoint callbacks from the transports

    def http_connection_made(self, conn: HttpConnection) -> None:
        self._http.add(conn)

    def http_connection_lost(self, conn: HttpConnection) -> None:
        self._http.discard(conn)

    def http_request(self, request: Request, response: Response) -> Any:
        if self.health_path is not None and request.path == self.health_path:
            response.header("Content-Type", "text/plain; charset=utf-8")
            response.end("ok\n")
            return None
        handler = self._handlers.get("request")
        if handler is None:
            response.status(404)
            response.end("Not Found\n")
            return None
        return handler(request, response)

    def ws_admit(self) -> str | None:
        if self._stopping:
            return "Server is shutting down"
        if len(self._all) >= self.settings.max_connections:
            return f"Connection limit reached ({self.settings.max_connections})"
        return None

    def ws_opened(
        self, transport: asyncio.Transport, proto: Any, request: Request, head: bytes
    ) -> WebSocketConnection:
        fd = next(self._fds)
        request.fd = fd
        conn = WebSocketConnection(self, fd, proto, transport, request)
        # The 101 answer goes first; every later byte for this connection
        # is queued behind it by conn.write, so nothing can overtake it.
        conn.write(head)
        self._all[fd] = conn
        self._open[fd] = conn
        self._targets = None
        handler = self._handlers.get("open")
        if handler is not None:
            self._dispatch(conn, handler, (self, request))
        return conn

    def ws_message(self, conn: WebSocketConnection, data: str | bytes) -> None:
        handler = self._handlers.get("message")
        if handler is not None:
            self._dispatch(conn, handler, (self, Frame(conn.fd, data)))

    def mark_dirty(self, conn: WebSocketConnection) -> None:
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_writes)

    def _flush_writes(self) -> None:
        # Runs once per tick, after the I/O callbacks that queued the bytes.
        dirty = self._dirty
        self._dirty = []
        self._flush_scheduled = False
        for conn in dirty:
            conn.flush_out()

    def ws_closing(self, conn: WebSocketConnection) -> None:
        if self._open.pop(conn.fd, None) is not None:
            self._targets = None

    def ws_closed(self, conn: WebSocketConnection) -> None:
        self._all.pop(conn.fd, None)
        if self._all_gone is not None and not self._all:
            self._all_gone.set()
        handler = self._handlers.get("close")
        if handler is not None:
            self._dispatch(conn, handler, (self, conn.fd))

    # ------------------------------------------------------------------
    # Calling user code

    def _dispatch(
        self, conn: WebSocketConnection, handler: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        """Run a handler for ``conn``, keeping its events in order (see module doc)."""
        if conn.running:
            if conn.pending is None:
                conn.pending = deque()
            conn.pending.append((handler, args))
            if len(conn.pending) >= self.settings.max_pending_messages and not conn.closed:
                conn.transport.pause_reading()
            return
        result = self._call(handler, args, "handler", awaitable_ok=True)
        if result is not None:
            conn.running = True
            self._spawn(self._drain(conn, result))

    async def _drain(self, conn: WebSocketConnection, first: Any) -> None:
        try:
            await self._await(first)
            while conn.pending:
                handler, args = conn.pending.popleft()
                if not conn.closed and len(conn.pending) < self.settings.max_pending_messages // 2:
                    with contextlib.suppress(Exception):
                        conn.transport.resume_reading()
                result = self._call(handler, args, "handler", awaitable_ok=True)
                if result is not None:
                    await self._await(result)
        finally:
            conn.running = False

    async def _await(self, awaitable: Any) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("event handler failed")

    def _call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], what: str, awaitable_ok: bool = False
    ) -> Any:
        """Call user code; log (never propagate) its exceptions."""
        try:
            result = fn(*args)
        except Exception:
            log.exception("%s %s failed", what, getattr(fn, "__name__", fn))
            return None
        if inspect.isawaitable(result):
            if awaitable_ok:
                return result
            self._spawn(self._await(result))
        return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
