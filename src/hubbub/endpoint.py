"""The server's side of the transport: what the connections call back, and what it owns.

Internal. Users see :class:`hubbub.server.Server`, whose methods are the
Swoole-style API of the README; the transport (:mod:`hubbub.transport.http`,
:mod:`hubbub.transport.websocket`) talks to one :class:`ServerEndpoint` per
server, which implements both of its endpoint protocols
(:class:`~hubbub.transport.contract.HttpEndpoint` and
:class:`~hubbub.transport.websocket.WebSocketEndpoint`; their contracts are
written there). It owns:

* the connection tables: every WebSocket until its TCP connection is gone
  (``all``), the established ones (``open``, the broadcast set), the
  broadcast targets derived from ``open``, and the HTTP connections not
  upgraded (``http``);
* the sessions of the fallback transports (SSE, long polling; see
  :mod:`hubbub.transport.session`): each is a connection of the tables above
  with its own fd, and also in ``sessions`` by id; the ``/v1/sessions`` paths
  are answered here (:mod:`hubbub.transport.session_routes`) before the
  app's ``request`` handler;
* the admission of TCP connections: counts per client address (``per_ip``,
  HTTP and WebSocket alike) and of connections that have not sent a
  complete request head yet (``pending``), against
  ``max_connections_per_ip``, ``max_pending_handshakes`` and
  ``max_pending_handshakes_per_ip``;
* the end-of-tick write coalescing (``mark_dirty`` / ``flush_writes``);
* the heartbeat sweep (RFC 6455 5.5.2 ping, 5.5.3 pong);
* calling user code: the event handlers, in order per connection.

Ordering invariant: the events of one connection reach the handlers in the
order they happened (open, messages, close), also when handlers are async:
an async handler's successors wait in a per-connection queue, and reading
from that socket pauses once ``max_pending_messages`` are waiting.

For tests: ``server._endpoint`` is a server's endpoint; its tables (``all``,
``open``, ``http``) and ``handlers`` may be read to check what the public API
cannot show (e.g. that no HttpConnection outlives its upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from websockets.frames import CloseCode, Opcode

from . import metrics
from .logs import context
from .transport import session_routes
from .transport.contract import Refusal
from .transport.fanout import FanOut
from .transport.forwarded import forwarded_client, forwarded_tls, trusted_proxy
from .transport.guard import AddressCounter, RefusalLog
from .transport.hosts import host_refusal, is_loopback_address
from .transport.http import HttpConnection, Request, Response
from .transport.messages import SECURITY_HEADERS
from .transport.session import Session
from .transport.websocket import HOLD_PENDING, WebSocketConnection

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("hubbub")

#: A connection of the tables: a WebSocket or a session (same methods).
Conn = WebSocketConnection | Session
#: What ``broadcast`` writes to: the write method of each WebSocket without
#: an extension (they all get the same bytes), and the connections that
#: take the message itself (``send``): permessage-deflate WebSockets, which
#: encode for themselves, and sessions, which queue the text.
Targets = tuple[tuple[Callable[[bytes], None], ...], tuple[Conn, ...]]


@functools.lru_cache(maxsize=8)
def _addresses(setting: str) -> frozenset[str]:
    """``unlimited_addresses``: the client addresses the per-address limits skip."""
    return frozenset(setting.replace(",", " ").split())


def _loopback(conn: HttpConnection) -> bool:
    """Did ``conn`` reach this server on a loopback address?"""
    local = conn.transport.get_extra_info("sockname") if conn.transport is not None else None
    return isinstance(local, tuple) and is_loopback_address(str(local[0]))


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


class ServerEndpoint:
    """The transport's endpoint for one :class:`~hubbub.server.Server`.

    ``server`` is passed to the event handlers as their first argument;
    the endpoint uses nothing else of it.
    """

    def __init__(
        self,
        server: object,
        settings: Settings,
        subprotocols: list[str],
        health_path: str | None,
    ) -> None:
        self.server = server
        self.settings = settings
        #: Subprotocols offered in the handshake (RFC 6455 1.9), in preference order.
        self.subprotocols = subprotocols
        self.health_path = health_path
        #: Event name -> handler (Server.on).
        self.handlers: dict[str, Callable[..., Any]] = {}
        #: Connection ids: 1, 2, 3... (number_fds: unique across --workers N).
        self._fds = itertools.count(1)
        # The tables below are never rebound, only mutated: Server keeps a
        # reference to ``open`` for its hot paths (push, push_many).
        #: Every WebSocket until its TCP connection is gone, every session
        #: until it is closed (exist()).
        self.all: dict[int, Conn] = {}
        #: Established connections, the broadcast set (is_established()).
        self.open: dict[int, Conn] = {}
        #: Sessions (SSE, long polling) by id, until closed.
        self.sessions: dict[str, Session] = {}
        # Broadcast targets derived from ``open``, rebuilt after any change.
        # Invariant: a broadcast loops over this snapshot synchronously, and
        # each write only queues bytes (WebSocketConnection.write); the
        # transport sees them when the tick ends. So nothing inside the loop
        # can drop a connection or change ``open`` under it.
        self.targets: Targets | None = None
        #: TCP connections that are (still) HTTP: accepted and not upgraded.
        self.http: set[HttpConnection] = set()
        #: TCP connections per client address (HTTP and WebSocket).
        self.per_ip = AddressCounter()
        #: Accepted connections without a complete request head, per address.
        self.pending = AddressCounter()
        self.refusals = RefusalLog(log)
        #: Headers every HTTP response gets unless it sets them (Server.security_headers).
        self.security_headers: tuple[tuple[str, str], ...] = SECURITY_HEADERS
        # Connections with bytes queued this tick (WebSocketConnection.write).
        self._dirty: list[Conn] = []
        self._flush_scheduled = False
        #: The compiled fan-out and end-of-tick write, and their per-tick policy
        #: (hubbub.transport.fanout); ``enabled`` False: the Python path only.
        self.fanout = FanOut()
        self.fanout.at_tick_end = self.schedule_flush
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Set by Server.shutdown: no more handshakes, no more heartbeats.
        self.stopping = False
        self._all_gone: asyncio.Event | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        # Handler tasks in flight (a reference keeps them from being collected).
        self._tasks: set[asyncio.Future[Any]] = set()

    def number_fds(self, index: int, count: int) -> None:
        """Worker ``index`` (from 0) of ``count`` numbers its connections
        ``index+1, index+1+count, ...``: unique across the workers of one
        ``hubbub serve --workers N`` (``from <fd>`` in the plain room). Before start."""
        if not 0 <= index < count:
            raise ValueError(f"worker index {index} not in 0..{count - 1}")
        self._fds = itertools.count(index + 1, count)

    def build_targets(self) -> Targets:
        """The broadcast targets of the current ``open`` set (cached in ``targets``)."""
        writes: list[Callable[[bytes], None]] = []
        senders: list[Conn] = []
        for c in self.open.values():
            if c.compressed or type(c) is Session:
                senders.append(c)
            else:
                writes.append(c.write)
        self.targets = (tuple(writes), tuple(senders))
        return self.targets

    # ------------------------------------------------------------------
    # HttpEndpoint (see hubbub.transport.contract for the contract)

    def http_connection_made(self, conn: HttpConnection) -> str | None:
        s = self.settings
        ip = conn.ip
        refused = None
        if s.max_pending_handshakes and self.pending.total >= s.max_pending_handshakes:
            refused = ("max_pending_handshakes", self.pending.total, s.max_pending_handshakes)
        elif ip not in _addresses(s.unlimited_addresses) and not trusted_proxy(s, ip):
            # A trusted proxy's connections are counted against the clients its
            # requests name (http_request_head).
            if s.max_pending_handshakes_per_ip and (
                self.pending.get(ip) >= s.max_pending_handshakes_per_ip
            ):
                refused = (
                    "max_pending_handshakes_per_ip",
                    self.pending.get(ip),
                    s.max_pending_handshakes_per_ip,
                )
            elif s.max_connections_per_ip and self.per_ip.get(ip) >= s.max_connections_per_ip:
                refused = ("max_connections_per_ip", self.per_ip.get(ip), s.max_connections_per_ip)
        if refused is not None:
            cause, count, limit = refused
            self.refusals.refused(
                cause, f"{count} open (limit {limit}), latest from {ip or 'an unknown address'}"
            )
            if cause == "max_pending_handshakes":
                return "Server busy: too many connections opening; retry later"
            return f"Too many connections from your address (--{cause.replace('_', '-')})"
        self.http.add(conn)
        self.per_ip.add(ip)
        self.pending.add(ip)
        return None

    def http_request_head(self, conn: HttpConnection, request: Request) -> tuple[int, str] | None:
        s = self.settings
        via_proxy = False
        if s.forwarded_allow_ips:
            peer_ip = conn.peer[0] if conn.peer else ""
            via_proxy = trusted_proxy(s, peer_ip)
            client = forwarded_client(s, conn.peer, request.headers) if via_proxy else None
            if client is not None:
                request.remote = client
            if via_proxy:
                # The scheme the browser used (its Origin's): TLS ends at the proxy.
                tls = forwarded_tls(s, request.headers)
                if tls is not None:
                    request.tls = tls
            ip = peer_ip if client is None else client[0]
            if ip != conn.ip:
                refused = self._count_as(conn, ip, peer_ip)
                if refused is not None:
                    return Refusal(503, refused, (("Retry-After", "5"),))
        return host_refusal(
            request.headers, s.allowed_hosts, functools.partial(_loopback, conn), via_proxy
        )

    def _count_as(self, conn: HttpConnection, ip: str, proxy: str) -> str | None:
        """Count ``conn`` against ``ip`` (the client the ``proxy`` named) instead of
        ``conn.ip``; the reason if ``ip`` is at its ``max_connections_per_ip``."""
        if ip != proxy:
            refused = self._ip_full(ip, f"from {ip} through the proxy {proxy}")
            if refused is not None:
                return refused
        self.per_ip.remove(conn.ip)
        self.per_ip.add(ip)
        conn.ip = ip
        return None

    def http_head_complete(self, conn: HttpConnection) -> None:
        self.pending.remove(conn.ip)

    def http_connection_lost(self, conn: HttpConnection) -> None:
        if conn not in self.http:
            return  # refused at connection_made, or already forgotten
        self.http.discard(conn)
        if conn.pending:
            conn.pending = False
            self.pending.remove(conn.ip)
        if not conn.upgraded:
            # An upgraded connection's count goes with its WebSocket (ws_closed).
            self.per_ip.remove(conn.ip)

    def http_request(self, request: Request, response: Response) -> Any:
        if self.health_path is not None and request.path == self.health_path:
            response.header("Content-Type", "text/plain; charset=utf-8")
            response.end("ok\n")
            return None
        if session_routes.is_session_path(request.path):
            return session_routes.handle(self, request, response)
        handler = self.handlers.get("request")
        if handler is None:
            response.status(404)
            response.end("Not Found\n")
            return None
        return handler(request, response)

    def ws_admit(self) -> str | None:
        if self.stopping:
            return "Server is shutting down"
        if len(self.all) >= self.settings.max_connections:
            return f"Connection limit reached ({self.settings.max_connections})"
        return None

    def ws_authorize(self, request: Request) -> tuple[int, str] | None:
        handler = self.handlers.get("upgrade")
        if handler is None:
            return None
        return handler(self.server, request)

    def ws_opened(
        self, transport: asyncio.Transport, proto: Any, request: Request, head: bytes
    ) -> WebSocketConnection:
        fd = next(self._fds)
        request.fd = fd
        conn = WebSocketConnection(self, fd, proto, transport, request)
        # The 101 answer goes first; every later byte for this connection
        # is queued behind it by conn.write, so nothing can overtake it.
        conn.write(head)
        self.all[fd] = conn
        self.open[fd] = conn
        self.targets = None
        handler = self.handlers.get("open")
        if handler is not None:
            self._dispatch(conn, handler, (self.server, request))
        return conn

    # ------------------------------------------------------------------
    # WebSocketEndpoint (see hubbub.transport.websocket for the contract)

    def ws_message(self, conn: WebSocketConnection, data: str | bytes) -> None:
        handler = self.handlers.get("message")
        if handler is not None:
            self._dispatch(conn, handler, (self.server, Frame(conn.fd, data)))

    def mark_dirty(self, conn: Conn) -> None:
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self.schedule_flush()

    def schedule_flush(self) -> None:
        """Run :meth:`flush_writes` at the end of this tick (once, however often asked)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # The loop is known once listening: asking asyncio for it costs a
            # getpid() system call per tick.
            (self.loop or asyncio.get_running_loop()).call_soon(self.flush_writes)

    def flush_writes(self) -> None:
        """Hand every dirty connection's bytes to its transport, once per tick."""
        # Runs once per tick, after the I/O callbacks that queued the bytes.
        dirty = self._dirty
        self._dirty = []
        self._flush_scheduled = False
        self.fanout.tick_end()
        if self.fanout.enabled:
            # Compiled: one send(2) per connection whose transport holds nothing;
            # the others (and what a socket did not take) go to flush_out.
            dirty = self.fanout.flush(dirty)
        for conn in dirty:
            conn.flush_out()

    def ws_closing(self, conn: WebSocketConnection) -> None:
        if self.open.pop(conn.fd, None) is not None:
            self.targets = None

    def ws_closed(self, conn: Conn) -> None:
        pr = getattr(conn, "proto", None)
        if hasattr(pr, "close_sent"):  # a WebSocket's protocol (not a session's)
            metrics.closed(
                pr.close_sent.code if pr.close_sent else None,
                pr.close_rcvd.code if pr.close_rcvd else None,
                pr.close_rcvd_then_sent,
            )
        if self.all.pop(conn.fd, None) is not None:
            remote = conn.request.remote
            self.per_ip.remove(str(remote[0]) if remote else "")
        if self._all_gone is not None and not self.all:
            self._all_gone.set()
        handler = self.handlers.get("close")
        if handler is not None:
            self._dispatch(conn, handler, (self.server, conn.fd))

    # ------------------------------------------------------------------
    # SessionEndpoint (see hubbub.transport.contract for the contract)

    def session_admit_ip(self, ip: str) -> str | None:
        return self._ip_full(ip, f"a session from {ip or 'an unknown address'}")

    def _ip_full(self, ip: str, latest: str) -> str | None:
        """The refusal (logged as a refusal, with ``latest`` saying who asked) when
        ``ip`` holds its ``max_connections_per_ip`` already, else None."""
        limit = self.settings.max_connections_per_ip
        if not limit or ip in _addresses(self.settings.unlimited_addresses):
            return None
        count = self.per_ip.get(ip)
        if count < limit:
            return None
        self.refusals.refused(
            "max_connections_per_ip", f"{count} open (limit {limit}), latest {latest}"
        )
        return "Too many connections from your address (--max-connections-per-ip)"

    def session_opened(self, request: Request, kind: str) -> Session:
        fd = next(self._fds)
        request.fd = fd
        session = Session(self, fd, secrets.token_urlsafe(16), kind, request)
        self.all[fd] = session
        self.open[fd] = session
        self.sessions[session.id] = session
        self.targets = None
        self.per_ip.add(str(request.remote[0]) if request.remote else "")
        handler = self.handlers.get("open")
        if handler is not None:
            self._dispatch(session, handler, (self.server, request))
        return session

    def session_lookup(self, sid: str) -> Session | None:
        session = self.sessions.get(sid)
        return None if session is None or session.closed else session

    def session_message(self, session: Session, data: str) -> None:
        handler = self.handlers.get("message")
        if handler is not None:
            self._dispatch(session, handler, (self.server, Frame(session.fd, data)))

    def session_closing(self, session: Session) -> None:
        if self.open.pop(session.fd, None) is not None:
            self.targets = None

    def session_closed(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self.ws_closed(session)

    # ------------------------------------------------------------------
    # Shutting down

    async def close_all(self, grace: float) -> None:
        """Close every WebSocket with 1001 and idle HTTP connections, wait up to
        ``grace`` seconds for the WebSockets to go, then abort what is left.

        The caller has set ``stopping`` (no new handshake is admitted)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for conn in list(self.all.values()):
            if type(conn) is Session:
                conn.close(CloseCode.GOING_AWAY, "server shutting down")
                if conn.stream is None and conn.poll is None:
                    conn.abort()  # nobody there to tell: gone now
            elif not conn.close(CloseCode.GOING_AWAY, "server shutting down"):
                conn._arm_abort()
        for http in list(self.http):
            if not http.busy:
                http.close()
        if self.all:
            self._all_gone = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), grace)
        for conn in list(self.all.values()):
            conn.abort()
        for http in list(self.http):
            if http.transport is not None:
                http.transport.abort()
        await asyncio.sleep(0)

    # ------------------------------------------------------------------
    # Heartbeat (RFC 6455 5.5.2 ping, 5.5.3 pong)

    def arm_heartbeat(self) -> None:
        s = self.settings
        if s.ping_interval > 0 and self.loop is not None and not self.stopping:
            period = max(0.05, min(s.ping_interval, s.ping_timeout or s.ping_interval) / 2)
            self._heartbeat = self.loop.call_later(period, self._sweep)

    def _sweep(self) -> None:
        """Ping connections silent for ping_interval; drop those silent past ping_timeout too."""
        assert self.loop is not None
        now = self.loop.time()
        s = self.settings
        for conn in list(self.open.values()):
            if type(conn) is not WebSocketConnection:
                continue  # sessions time out by themselves (Session.detach)
            idle = now - conn.last_rx
            if conn.ping_sent and idle > s.ping_interval + s.ping_timeout:
                log.info(
                    "client-%d dropped: no answer to ping in %.1fs",
                    conn.fd,
                    s.ping_timeout,
                    extra=context(fd=conn.fd, reason="ping_timeout", code=1011),
                )
                conn._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                conn.abort()
            elif not conn.ping_sent and idle >= s.ping_interval:
                conn.ping()
        self.arm_heartbeat()

    # ------------------------------------------------------------------
    # Calling user code

    def _dispatch(self, conn: Conn, handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run a handler for ``conn``, keeping its events in order (see module doc)."""
        if conn.running:
            if conn.pending is None:
                conn.pending = deque()
            conn.pending.append((handler, args))
            if len(conn.pending) >= self.settings.max_pending_messages:
                conn.hold(HOLD_PENDING)
            return
        result = self.call(handler, args, "handler", awaitable_ok=True)
        if result is not None:
            conn.running = True
            self.spawn(self._drain(conn, result))

    async def _drain(self, conn: Conn, first: Any) -> None:
        try:
            await self._await(first)
            while conn.pending:
                handler, args = conn.pending.popleft()
                if conn.holds & HOLD_PENDING and (
                    len(conn.pending) <= self.settings.max_pending_messages // 2
                ):
                    conn.release(HOLD_PENDING)
                result = self.call(handler, args, "handler", awaitable_ok=True)
                if result is not None:
                    await self._await(result)
        finally:
            conn.running = False
            if conn.holds & HOLD_PENDING:
                conn.release(HOLD_PENDING)

    async def _await(self, awaitable: Any) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("event handler failed")

    def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], what: str, awaitable_ok: bool = False
    ) -> Any:
        """Call user code; log (never propagate) its exceptions.

        A coroutine it returns is run as a task (its exception logged too),
        or returned to the caller with ``awaitable_ok``.
        """
        try:
            result = fn(*args)
        except Exception:
            log.exception("%s %s failed", what, getattr(fn, "__name__", fn))
            return None
        if result is not None and inspect.isawaitable(result):
            if awaitable_ok:
                return result
            self.spawn(self._await(result))
        return None

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
