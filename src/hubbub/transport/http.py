"""HTTP/1.1 on the listening socket: plain requests and the WebSocket upgrade.

One port serves both worlds, as Swoole's WebSocket server does. Every TCP
connection starts here, as an :class:`HttpConnection`; `httptools` (llhttp)
parses request heads and bodies. A request that asks for ``Upgrade: websocket``
goes through the opening handshake of RFC 6455 4.2 (checked by `websockets`'
sans-I/O server core, see :mod:`hubbub.transport.handshake`; the server core's
side is :class:`~hubbub.transport.contract.HttpEndpoint`) and, once accepted,
the transport is handed to a :class:`~hubbub.transport.websocket.WebSocketConnection`.

Bad input never reaches a handler: a malformed request gets 400, an
over-long head 431, an over-long body 413, a slow head 408, an invalid
handshake the 4xx that `websockets` chose with its reason, a request from a
foreign page (``Origin``, see :mod:`hubbub.transport.guard`) 403, each with a
short plain-text body and ``Connection: close``.

Bounded output: a client that pipelines requests and does not read the
answers cannot make the server buffer them without limit. Once more than
``max_send_buffer`` bytes wait for it, the connection stops reading (and
parsing: what was read is parsed in slices of :data:`FEED_SLICE` bytes, the
rest kept as raw bytes) until the client has read most of them; one whose
answers stay unread for ``handshake_timeout`` seconds is aborted.

The connection is one class in four files, by responsibility:

* here: the connection's life (made, read, held and resumed, timed out, lost)
  and the order in which its requests are answered;
* :mod:`.http_parse`: reading requests, the parser callbacks and the limits;
* :mod:`.http_respond`: writing answers and refusals, closing after them;
* :mod:`.http_upgrade`: the WebSocket handshake and the hand-off;

and :mod:`.http_access` writes the access log (no query string, no session id).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections import deque
from http import HTTPStatus
from typing import Any

import httptools

from .contract import HttpEndpoint, refusal_parts
from .guard import origin_refusal
from .handshake import is_websocket
from .http_access import access_log, redact_path
from .http_parse import FEED_SLICE, RequestParsing
from .http_respond import ResponseWriting
from .http_upgrade import UpgradeHandOff
from .messages import (
    ACCESS_PATH_MAX,
    Handler,
    Request,
    Response,
    log_safe,
    peer_text,
)

__all__ = [
    "ACCESS_PATH_MAX",
    "FEED_SLICE",
    "Handler",
    "HttpConnection",
    "HttpEndpoint",
    "Request",
    "Response",
    "access_log",
    "log_safe",
]

log = logging.getLogger("hubbub.http")

#: Methods that do not change state (RFC 9110 9.2.1): allowed from any Origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Deadlines:
    """One loop timer for every HTTP connection's handshake (and keep-alive) timeout.

    A timer per connection (``call_later``, then ``cancel`` when its request
    head arrives, a few microseconds after) was about 2% of the server's CPU
    time per WebSocket connection. Every deadline of one loop is ``now +
    delay`` with the same delay, so they come in order: a queue of
    ``[deadline, connection]`` entries, and one timer for the first. Cancelling
    clears an entry's connection (the entry goes when it reaches the front);
    when the timer fires, every connection whose deadline has come times out,
    in the order they were armed, exactly as with a timer each.
    """

    __slots__ = ("_loop", "delay", "handle", "queue")

    #: Per loop, per delay (servers of one loop may have different timeouts).
    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Deadlines]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        # Weak: this object is a value of _of_loop, whose key is the loop.
        self._loop = weakref.ref(loop)
        self.delay = delay
        self.queue: deque[list[Any]] = deque()
        self.handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, delay: float) -> Deadlines:
        per_delay = cls._of_loop.get(loop)
        if per_delay is None:
            per_delay = cls._of_loop[loop] = {}
        found = per_delay.get(delay)
        if found is None:
            found = per_delay[delay] = cls(loop, delay)
        return found

    def add(self, conn: HttpConnection) -> list[Any]:
        """Call ``conn._timed_out()`` in ``delay`` seconds unless the entry returned
        is cancelled first (its connection set to None)."""
        loop = self._loop()
        assert loop is not None  # a connection of a loop that is gone
        entry = [loop.time() + self.delay, conn]
        queue = self.queue
        # Cancelled entries at the front go now: most connections cancel in
        # the order they armed, so the queue holds about those still armed.
        # Behind one still armed they wait for its deadline: at most ``delay``
        # seconds of connections (about 100 bytes each).
        while queue and queue[0][1] is None:
            queue.popleft()
        queue.append(entry)
        if self.handle is None:
            self.handle = loop.call_at(entry[0], self._fire)
        return entry

    def _fire(self) -> None:
        loop = self._loop()
        if loop is None:
            self.handle = None
            return
        # Not None while firing: a timeout that arms again (an answer sent
        # on a keep-alive connection) starts no second timer.
        self.handle = _FIRING
        queue = self.queue
        # The loop may run a timer up to its clock's resolution early.
        now = loop.time() + 0.001
        while queue:
            deadline, conn = queue[0]
            if conn is not None and deadline > now:
                self.handle = loop.call_at(deadline, self._fire)
                return
            queue.popleft()
            if conn is not None:
                try:
                    conn._timed_out()
                except Exception:
                    log.exception("HTTP connection timeout failed")
        self.handle = None


_FIRING: Any = object()


class HttpConnection(RequestParsing, ResponseWriting, UpgradeHandOff, asyncio.Protocol):
    """A TCP connection until (unless) it becomes a WebSocket."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint
        self.settings = endpoint.settings
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        #: The client's address (the key of the per-address limits).
        self.ip = ""
        self.tls = False
        #: Made on first use (not for a compiled upgrade): it refers back to
        #: this object, a cycle that only the garbage collector frees.
        self.parser: httptools.HttpRequestParser | None = None
        #: Nothing read yet: the first read may take the compiled upgrade path.
        self.fresh = True
        self.loop = asyncio.get_running_loop()
        # Parsed requests waiting for their turn: (request, keep-alive, began,
        # HTTP/1.1 or higher).
        self.queue: deque[tuple[Request, bool, float, bool]] = deque()
        # The request being answered and when its head began (the access log).
        self.answering: tuple[Request, float] | None = None
        self.began = 0.0
        self.busy = False
        self.closing = False
        self.upgraded = False
        #: More than max_send_buffer bytes of answers wait unread (pause_writing).
        self.write_paused = False
        self.reading_paused = False
        #: Bytes read but not parsed yet (while busy or write_paused).
        self.backlog = b""
        #: Bytes that followed an upgrade request's head (the WebSocket's first frames).
        self.leftover = b""
        #: Still counted as a pending handshake (no complete request head yet).
        self.pending = True
        #: This connection's entry in its loop's Deadlines (None: no timeout armed).
        self.timer: list[Any] | None = None
        self.head_size = 0  # bytes of the current request head, from the parser callbacks
        self.in_head = False
        self.linger: asyncio.TimerHandle | None = None
        self.peer_eof = False
        self._reset()

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.ip = str(self.peer[0]) if self.peer else ""
        self.tls = transport.get_extra_info("ssl_object") is not None
        # Answers waiting for a client that does not read: over this,
        # pause_writing() stops reading until they drain to a quarter.
        self.transport.set_write_buffer_limits(high=self.settings.max_send_buffer)
        refused = self.endpoint.http_connection_made(self)
        if refused is not None:
            self.closing = True
            self.pending = False
            body = (refused + "\n").encode()
            self.transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Retry-After: 5\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            self.transport.close()
            return
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.linger is not None:
            self.linger.cancel()
        self.closing = True
        self.endpoint.http_connection_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.upgraded:
            return
        if self.fresh:
            self.fresh = False
            if self._compiled_upgrade(data):
                return
        if self.backlog or self._held():
            # Reading is paused; bytes of a read already under way wait here.
            self.backlog += data
            return
        self._feed(data)

    def _held(self) -> bool:
        """True while requests must wait: a handler is busy or answers are unread."""
        return self.busy or self.write_paused

    def pause_writing(self) -> None:
        # More than max_send_buffer bytes of answers wait: read nothing more
        # (and answer nothing more) until the client reads them.
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            if not self.transport.is_closing():
                self.transport.pause_reading()
            self.reading_paused = True

    def _resume(self) -> None:
        """Carry on after a hold: answer what is queued, parse what was kept, read again."""
        if self.closing or self.upgraded or self._held():
            return
        self._process()
        if self.closing or self.upgraded or self._held():
            return
        if self.backlog:
            data, self.backlog = self.backlog, b""
            self._feed(data)
            if self.closing or self.upgraded or self._held():
                return
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    # -- request processing ------------------------------------------------

    def _process(self) -> None:
        while self.queue and not self.busy and not self.closing and not self.write_paused:
            request, keep_alive, began, http11 = self.queue.popleft()
            self.answering = (request, began)
            if not self._admitted(request):
                return
            if is_websocket(request.headers):
                self.queue.clear()
                self._handshake(request, http11)
                return
            if request.method not in SAFE_METHODS:
                refused = origin_refusal(
                    request.headers, request.tls, self.settings.allowed_origins
                )
                if refused is not None:
                    self.queue.clear()
                    self.reject(HTTPStatus.FORBIDDEN, refused)
                    return
            response = Response(self, keep_alive, request.method)
            try:
                result = self.endpoint.http_request(request, response)
            except Exception:
                log.exception(
                    "request handler failed for %s %s",
                    log_safe(request.method, 20),
                    log_safe(redact_path(request.path)),
                )
                self._internal_error(response)
                continue
            if inspect.isawaitable(result):
                # Answer pipelined requests in order: hold the rest (and stop
                # reading) until this handler is done.
                self.busy = True
                self._pause_reading()
                task = asyncio.ensure_future(result)
                task.add_done_callback(lambda t, r=response: self._handler_done(t, r))
                return
            if not response.ended:
                response.end()

    def _admitted(self, request: Request) -> bool:
        """The endpoint's checks of a complete request head: the client behind a
        trusted proxy (``request.remote``), the Host (DNS rebinding). False when it
        was refused (answered; the connection closes)."""
        denied = self.endpoint.http_request_head(self, request)
        if denied is None:
            return True
        status, reason, headers = refusal_parts(denied)
        self.queue.clear()
        self.reject(HTTPStatus(status), reason, headers)
        return False

    def _handler_done(self, task: asyncio.Future[Any], response: Response) -> None:
        self.busy = False
        if task.cancelled():
            self._internal_error(response)
        elif task.exception() is not None:
            log.error("request handler failed", exc_info=task.exception())
            self._internal_error(response)
        elif not response.ended:
            response.end()
        self._resume()

    def eof_received(self) -> bool | None:
        self.peer_eof = True
        # Requests still being handled or waiting get their answers (then we
        # close); otherwise returning False lets the transport close itself.
        waiting = self.busy or self.write_paused or bool(self.queue) or bool(self.backlog)
        return True if waiting and not self.closing else False

    # -- timers --------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._cancel_timer()
        self.timer = Deadlines.of(self.loop, self.settings.handshake_timeout).add(self)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer[1] = None
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.closing or self.upgraded or self.transport is None:
            return
        if self.write_paused:
            # Answers unread for handshake_timeout: a polite close would wait
            # for the client to read them, forever. Abort.
            log.info(
                "HTTP client %s aborted: %d bytes of answers unread for %.1fs",
                peer_text(self.peer),
                self.transport.get_write_buffer_size(),
                self.settings.handshake_timeout,
            )
            self.closing = True
            self.transport.abort()
            return
        if self.busy:
            return
        if self.in_head:
            self.reject(HTTPStatus.REQUEST_TIMEOUT, "Request head not received in time")
        else:
            # An idle keep-alive connection: close quietly.
            self._close_transport()

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self._close_transport()
