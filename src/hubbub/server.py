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
and ``shutdown(server)``. ``upgrade(server, request)`` runs for each WebSocket
handshake once it is valid (subprotocol chosen, ``fd`` not yet given): it returns
None to accept, or ``(status, reason)`` to refuse with that HTTP status (e.g.
``(401, "a token is required")``); it may set ``request.user``. It must not block.
Other handlers may be plain functions or coroutines.

Ordering invariant: the events of one connection reach the handlers in the
order they happened (open, messages, close), also when handlers are async
(see :mod:`hubbub.endpoint`).

This class is the API only. The transport calls back an internal
:class:`~hubbub.endpoint.ServerEndpoint`, which owns the connection tables;
timers live in :mod:`hubbub.timers`, task workers in :mod:`hubbub.tasks`.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
import time
from collections.abc import Callable, Iterable, KeysView
from typing import Any

import uvloop
from websockets.frames import Opcode

from .config import Settings
from .endpoint import Frame, ServerEndpoint
from .errors import StartupError
from .tasks import TaskPool
from .timers import Timers
from .transport.http import HttpConnection
from .transport.listen import bind_error, listening_line, server_ssl_context
from .transport.websocket import encode_frame

__all__ = ["EVENTS", "WEBSOCKET_OPCODE_BINARY", "WEBSOCKET_OPCODE_TEXT", "Frame", "Server"]

log = logging.getLogger("hubbub")

EVENTS = ("open", "message", "close", "request", "start", "shutdown", "upgrade")

#: Swoole's opcode constants.
WEBSOCKET_OPCODE_TEXT = Opcode.TEXT
WEBSOCKET_OPCODE_BINARY = Opcode.BINARY
# The data opcodes by value (an Enum call costs about a microsecond per message).
_DATA_OPCODES: dict[int, Opcode] = {int(op): op for op in (Opcode.TEXT, Opcode.BINARY)}


def _opcode(opcode: int | None) -> Opcode | None:
    if opcode is None:
        return None
    return _DATA_OPCODES.get(opcode) or Opcode(opcode)


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
        # The transport's callbacks, the connection tables and handler dispatch.
        self._endpoint = ServerEndpoint(
            self,
            (settings or Settings()).with_overrides(**overrides),
            list(subprotocols),
            health_path,
        )
        # The same dict as the endpoint's (never rebound): push and push_many
        # look connections up without going through the endpoint.
        self._open = self._endpoint.open
        #: The compiled fan-out and its per-tick policy (the endpoint's: its
        #: end-of-tick write uses it too; hubbub.transport.fanout).
        self._fanout = self._endpoint.fanout
        #: The application object built on this server, if any (e.g. the chat app).
        self.app: Any = None
        self._timers = Timers(self._endpoint.call)
        self._tasks = TaskPool(self._endpoint.call)
        self._server: asyncio.Server | None = None
        self._start_failed = False
        self._stop_event: asyncio.Event | None = None
        self.started_at = 0.0

    # The endpoint holds these (the transport reads them there); a user sets
    # or changes them on the server, as before.

    @property
    def settings(self) -> Settings:
        """The limits this server runs with (:class:`~hubbub.config.Settings`)."""
        return self._endpoint.settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self._endpoint.settings = value

    @property
    def subprotocols(self) -> list[str]:
        """Subprotocols offered in the handshake (RFC 6455 1.9), in preference order."""
        return self._endpoint.subprotocols

    @subprotocols.setter
    def subprotocols(self, value: list[str]) -> None:
        self._endpoint.subprotocols = value

    @property
    def security_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers every HTTP response gets unless its handler sets one of the same
        name (``Content-Security-Policy``, ``X-Frame-Options``, ...; see
        :data:`hubbub.transport.messages.SECURITY_HEADERS`)."""
        return self._endpoint.security_headers

    @security_headers.setter
    def security_headers(self, value: tuple[tuple[str, str], ...]) -> None:
        self._endpoint.security_headers = tuple(value)

    @property
    def health_path(self) -> str | None:
        """The path answered ``200 ok`` for load balancers (None: no such path)."""
        return self._endpoint.health_path

    @health_path.setter
    def health_path(self, value: str | None) -> None:
        self._endpoint.health_path = value

    # ------------------------------------------------------------------
    # Events

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register a handler: ``server.on("message", fn)`` or ``@server.on("message")``."""
        name = event.lower()
        if name not in EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        handlers = self._endpoint.handlers
        if handler is None:

            def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
                handlers[name] = fn
                return fn

            return decorator
        handlers[name] = handler
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
        return conn.send(data, _opcode(opcode))

    def push_many(self, fds: Iterable[int], data: str | bytes, opcode: int | None = None) -> int:
        """Send one message to several connections, encoding the frame once.

        ``bytes`` with ``opcode=WEBSOCKET_OPCODE_TEXT`` are sent as a text
        frame without decoding (they must be UTF-8). Returns how many were sent.
        """
        op = _opcode(opcode)
        frame = encode_frame(data, op)
        conns = self._open
        fan = self._fanout
        direct = fan.direct()  # counted for the per-tick policy whichever path runs
        if fan.enabled:
            return fan.send(frame, data, op, fds, conns, self._endpoint, direct)
        n = 0
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
        fan = self._fanout
        direct = fan.direct()
        if fan.enabled:
            items: Iterable[Any] = self._open.values()
            if exclude:
                skip = set(exclude)
                items = [c for fd, c in self._open.items() if fd not in skip]
            return fan.send(frame, data, None, items, None, self._endpoint, direct)
        if exclude:
            skip = set(exclude)
            n = 0
            for fd, conn in list(self._open.items()):
                if fd not in skip:
                    conn.send_frame_bytes(frame, data)
                    n += 1
            return n
        # The snapshot's invariant (nothing in this loop can change it) is
        # written at ServerEndpoint.targets.
        endpoint = self._endpoint
        writes, deflated = endpoint.targets or endpoint.build_targets()
        for write in writes:
            write(frame)
        for conn in deflated:
            conn.send(data)
        return len(writes) + len(deflated)

    def exist(self, fd: int) -> bool:
        """True while the connection exists (until its TCP connection is gone)."""
        return fd in self._endpoint.all

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

    def buffered(self, fd: int) -> int | None:
        """Bytes queued for ``fd`` and not yet taken by the kernel (None if it is gone).

        What a producer paces itself by (a replay, a history page): send the
        next chunk once this is well below ``settings.max_send_buffer``; a
        connection whose buffer passes that limit is dropped with 1013.
        """
        conn = self._endpoint.open.get(fd)
        if conn is None:
            return None
        out = conn.out
        pending = 0 if out is None else (len(out) if type(out) is bytes else sum(map(len, out)))
        return pending + conn.transport.get_write_buffer_size()

    def connection_info(self, fd: int) -> dict[str, Any] | None:
        conn = self._endpoint.all.get(fd)
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
            #: websocket, or a fallback session's carriage: sse, poll.
            "transport": getattr(conn, "kind", "websocket"),
            "connected_at": conn.connected_at,
        }

    # ------------------------------------------------------------------
    # Timers (Swoole\Timer; hubbub.timers)

    def tick(self, ms: float, fn: Callable[..., Any], *args: Any) -> int:
        """Call ``fn(timer_id, *args)`` every ``ms`` milliseconds; returns the timer id."""
        return self._timers.add(ms, fn, args, repeat=True)

    def after(self, ms: float, fn: Callable[..., Any], *args: Any) -> int:
        """Call ``fn(*args)`` once after ``ms`` milliseconds; returns the timer id."""
        return self._timers.add(ms, fn, args, repeat=False)

    def clear_timer(self, timer_id: int) -> bool:
        """Cancel a timer; False if there is no such timer (any more)."""
        return self._timers.clear(timer_id)

    # ------------------------------------------------------------------
    # Task workers (hubbub.tasks)

    def task(
        self, fn: Callable[..., Any], *args: Any, callback: Callable[[Any], Any] | None = None
    ) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a task worker process; returns a future of its result.

        ``fn`` and its arguments must be picklable (a module-level function).
        With ``callback``, it is called with the result in the server's event
        loop (Swoole's ``finish`` event).
        """
        return self._tasks.submit(fn, args, callback, self.settings.task_workers)

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
        endpoint = self._endpoint
        endpoint.loop = self._timers.loop = loop
        self._stop_event = asyncio.Event()
        s = self.settings
        # HTTPS and WSS on the same port when a certificate is given.
        context = server_ssl_context(s.certfile, s.keyfile) if s.certfile else None
        try:
            self._server = await loop.create_server(
                lambda: HttpConnection(endpoint),
                self.host,
                self.port,
                reuse_address=True,
                # --workers N: N processes bind the same port; the kernel spreads
                # the connections between them (SO_REUSEPORT, Linux >= 3.9).
                reuse_port=s.workers > 1 or None,
                backlog=4096,
                start_serving=False,
                ssl=context,
                ssl_handshake_timeout=s.handshake_timeout if context else None,
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
        self._timers.schedule_pending()
        self._endpoint.arm_heartbeat()
        handler = self._endpoint.handlers.get("start")
        if handler is not None:
            result = handler(self)
            if inspect.isawaitable(result):
                await result
        if self._endpoint.stopping or self._stop_event.is_set():
            # shutdown() or stop() (a signal) came while the start handler
            # ran: it was let finish (so that what it set up can be torn down
            # by the shutdown handler), but the port is never opened.
            return self.port
        await self._server.start_serving()
        log.info("%s", listening_line(self.host, self.port, bool(self.settings.certfile)))
        return self.port

    def stop(self) -> None:
        """Ask a server started with start() to shut down (thread-unsafe; call from the loop)."""
        if self._stop_event is not None:
            self._stop_event.set()

    async def shutdown(self) -> None:
        """Stop accepting, close every WebSocket with 1001, wait, then abort the rest.

        Then the timers are cleared, the ``shutdown`` handler runs, and the
        task workers are shut down (each wait bounded by ``shutdown_timeout``).
        """
        endpoint = self._endpoint
        if endpoint.stopping:
            return
        endpoint.stopping = True
        if self._server is not None:
            self._server.close()
        await endpoint.close_all(self.settings.shutdown_timeout)
        self._timers.clear_all()
        handler = endpoint.handlers.get("shutdown")
        if handler is not None:
            result = handler(self)
            if inspect.isawaitable(result):
                await result
        await self._tasks.shutdown(self.settings.shutdown_timeout)
        if not self._start_failed:
            log.info("hubbub stopped")
