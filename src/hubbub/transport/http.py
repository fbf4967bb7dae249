"""HTTP/1.1 on the listening socket: plain requests and the WebSocket upgrade.

One port serves both worlds, as Swoole's WebSocket server does. Every TCP
connection starts here; `httptools` (llhttp) parses request heads and bodies.
A request that asks for ``Upgrade: websocket`` goes through the opening
handshake of RFC 6455 4.2 (checked by `websockets`' sans-I/O server core,
see :mod:`hubbub.transport.handshake`; the server core's side is
:class:`~hubbub.transport.contract.HttpEndpoint`) and, once accepted, the transport is
handed to a :class:`~hubbub.transport.websocket.WebSocketConnection`.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from http import HTTPStatus
from typing import Any

import httptools

from .. import metrics
from .contract import HttpEndpoint, refusal_parts
from .guard import origin_refusal
from .handshake import MAX_HEADERS, compiled_request, is_websocket, negotiate, ws_protocol
from .messages import (
    ACCESS_PATH_MAX,
    Handler,
    Request,
    Response,
    http_date,
    log_safe,
    peer_text,
)

__all__ = [
    "ACCESS_PATH_MAX",
    "Handler",
    "HttpConnection",
    "HttpEndpoint",
    "Request",
    "Response",
    "log_safe",
]

log = logging.getLogger("hubbub.http")
#: One INFO line per answered request (Settings.access_log).
access_log = logging.getLogger("hubbub.access")

#: Bytes handed to the parser at a time: what one read brought is parsed in
#: slices, so that a connection told to stop (its answers are not read, or a
#: handler is busy) keeps the rest as bytes, not as thousands of requests.
FEED_SLICE = 16 * 1024
#: Methods that do not change state (RFC 9110 9.2.1): allowed from any Origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class HttpConnection(asyncio.Protocol):
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
        self.timer: asyncio.TimerHandle | None = None
        self.head_size = 0  # bytes of the current request head, from the parser callbacks
        self.in_head = False
        self.linger: asyncio.TimerHandle | None = None
        self.peer_eof = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.body_parts: list[bytes] = []
        self.body_size = 0

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

    def _compiled_upgrade(self, data: bytes) -> bool:
        """The first read, when it is the common WebSocket handshake: upgrade (True)."""
        found = compiled_request(data, self.settings, self.endpoint.subprotocols, self)
        if found is None:
            return False  # anything else: parsed the general way
        request, head, subprotocol, self.leftover = found
        self._cancel_timer()
        self.answering = (request, self.loop.time())
        if self.pending:
            self.pending = False
            self.endpoint.http_head_complete(self)
        if self._admitted(request):
            self._handshake(request, True, (head, subprotocol))
        return True

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` slice by slice, answering as requests complete; stop
        (keeping the rest in ``backlog``) once the connection is held."""
        if self.parser is None:
            self.parser = httptools.HttpRequestParser(self)
        pos, size = 0, len(data)
        while pos < size:
            chunk = data[pos : pos + FEED_SLICE] if size > FEED_SLICE else data
            pos += len(chunk)
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserUpgrade as exc:
                offset = exc.args[0] if exc.args else len(chunk)
                self.leftover = chunk[offset:] + data[pos:]
                self._process()
                return
            except httptools.HttpParserCallbackError:
                # A callback below already answered (413/431) and closed.
                return
            except httptools.HttpParserError as exc:
                if not self.closing:
                    self.reject(HTTPStatus.BAD_REQUEST, f"Bad Request: {exc}")
                return
            if self.in_head and self.head_size > self.settings.max_header_size:
                self.reject(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Request header fields too large"
                )
                return
            self._process()
            if self.closing or self.upgraded:
                return
            if self._held() and pos < size:
                self.backlog = data[pos:]
                return

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

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self.began = self.loop.time()
        self.in_head = True
        self.head_size = 0
        self._reset()
        self._arm_timer()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if len(self.url) > self.settings.max_header_size:
            self.reject(HTTPStatus.REQUEST_URI_TOO_LONG, "URI too long")
            raise httptools.HttpParserCallbackError("uri too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        self.head_size += len(name) + len(value) + 4  # ": " and CRLF
        if len(self.raw_headers) > MAX_HEADERS or self.head_size > self.settings.max_header_size:
            self.reject(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Request header fields too large"
            )
            raise httptools.HttpParserCallbackError("headers too large")

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.pending:
            self.pending = False
            self.endpoint.http_head_complete(self)
        for name, value in self.raw_headers:
            if name.lower() == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = 0
                if size > self.settings.max_body_size:
                    self.reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")
                    raise httptools.HttpParserCallbackError("body too large")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.settings.max_body_size:
            self.reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")
            raise httptools.HttpParserCallbackError("body too large")
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self.reject(HTTPStatus.BAD_REQUEST, "Bad Request: invalid URL")
            raise httptools.HttpParserCallbackError("invalid url") from None
        path = (parsed.path or b"/").decode("latin-1")
        query = (parsed.query or b"").decode("latin-1")
        parser = self.parser
        assert parser is not None
        request = Request(
            parser.get_method().decode("ascii"),
            path,
            query,
            headers,
            b"".join(self.body_parts),
            self.peer,
            self.tls,
        )
        http11 = parser.get_http_version() not in ("1.0", "0.9")
        self.queue.append((request, parser.should_keep_alive(), self.began, http11))
        self._reset()

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
                log.exception("request handler failed for %s %s", request.method, request.path)
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

    def _internal_error(self, response: Response) -> None:
        if not response.ended and not self.closing:
            response.ended = True
            self.write_response(
                500,
                None,
                [("Content-Type", "text/plain; charset=utf-8")],
                b"Internal Server Error\n",
                False,
                response.method,
            )

    def _handshake(
        self, request: Request, http11: bool, compiled: tuple[bytes, str | None] | None = None
    ) -> None:
        """RFC 6455 4.2.2: accept or refuse the opening handshake (``compiled``: the
        101 answer and subprotocol of the compiled path, which checked it all)."""
        refused = origin_refusal(request.headers, request.tls, self.settings.allowed_origins)
        if refused is not None:
            self.reject(HTTPStatus.FORBIDDEN, refused)
            return
        refused = self.endpoint.ws_admit()
        if refused is not None:
            self.reject(HTTPStatus.SERVICE_UNAVAILABLE, refused, [("Retry-After", "5")])
            return
        s = self.settings
        proto = ws_protocol(s, self.endpoint.subprotocols)
        assert self.transport is not None
        if compiled is not None:
            head, subprotocol = compiled
            proto.origin = request.headers.get("origin")  # type: ignore[assignment]
            proto.subprotocol = subprotocol  # type: ignore[assignment]
        else:
            answer = negotiate(request, http11, proto, s.compression, self.endpoint.subprotocols)
            if not isinstance(answer, bytes):
                metrics.handshake_failures.inc(str(answer[0]))
                self._write_raw_response(*answer, False, "GET")  # refused, with its reason
                return
            head = answer
        request.subprotocol = proto.subprotocol
        try:
            denied = self.endpoint.ws_authorize(request)
        except Exception:
            log.error("upgrade handler failed", exc_info=True)
            denied = (500, "Internal Server Error")
        if denied is not None:
            try:
                status, reason, headers = refusal_parts(denied)
            except (TypeError, ValueError):
                log.error("upgrade handler returned %r", denied)
                status, reason, headers = 500, "Internal Server Error", []
            self.reject(HTTPStatus(status), reason, headers)
            return
        proto.accept_called = True
        self.upgraded = True
        self._cancel_timer()
        # Not written here: the connection queues it as its first bytes, so
        # the 101 and whatever the open handler pushes (the greeting) leave
        # in one write at the end of this tick (one system call, one TCP
        # segment, instead of two).
        conn = self.endpoint.ws_opened(self.transport, proto, request, head)
        self._log_access(101, 0)
        self.transport.set_protocol(conn)
        if self.reading_paused:
            # Paused for an earlier request's handler: the WebSocket reads.
            self.reading_paused = False
            self.transport.resume_reading()
        # This object's job is done: the WebSocket owns the transport now.
        self.endpoint.http_connection_lost(self)
        leftover, self.leftover = self.leftover, b""
        if leftover:
            conn.data_received(leftover)

    # -- writing -------------------------------------------------------------

    def write_response(
        self,
        status: int,
        reason: str | None,
        headers: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
        method: str,
    ) -> None:
        if reason is None:
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = "Unknown"
        headers = [*headers, ("Content-Length", str(len(body)))]
        self._write_raw_response(status, reason, headers, body, keep_alive, method)

    def _write_raw_response(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
        method: str,
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [f"HTTP/1.1 {status} {reason}"]
        names = {k.lower() for k, _ in headers}
        for name, value in headers:
            if name.lower() != "connection":
                lines.append(f"{name}: {value}")
        for name, value in self.endpoint.security_headers:
            if name.lower() not in names:
                lines.append(f"{name}: {value}")
        if "date" not in names:
            lines.append(f"Date: {http_date()}")
        if "server" not in names:
            lines.append("Server: hubbub")
        if "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
        keep_alive = keep_alive and not self.peer_eof
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._log_access(status, 0 if method == "HEAD" else len(body))
        if keep_alive:
            self._arm_timer()
        else:
            self.closing = True
        # May call pause_writing() (the answers are over max_send_buffer).
        self.transport.write(head if method == "HEAD" else head + body)
        if not keep_alive:
            self._linger()

    def _log_access(self, status: int, nbytes: int) -> None:
        """One access-log line for the response just written (then forget the request)."""
        answering, self.answering = self.answering, None
        if not self.settings.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        peer = self.peer
        if answering is not None:
            request, began = answering
            method, path, peer = request.method, request.path, request.remote
        else:
            # Refused before the request was complete (400, 408, 413, 431).
            began = self.began
            method, path = "-", "-"
            if self.url:  # the method came before it: the parser knows it
                with contextlib.suppress(Exception):
                    method = self.parser.get_method().decode("latin-1")
                path = self.url.partition(b"?")[0].decode("latin-1")
        access_log.info(
            '%s "%s %s" %d %d %.1fms',
            peer_text(peer),
            log_safe(method, 20),
            log_safe(path),
            status,
            nbytes,
            (self.loop.time() - began) * 1000 if began else 0.0,
        )

    def _linger(self) -> None:
        """Close after a response with ``Connection: close``.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy the response before the client reads it (a 413
        answered before the body arrived, say). So: end our side, discard
        what still comes, and close when the client does or after a short
        grace period.
        """
        self.closing = True
        self._cancel_timer()
        transport = self.transport
        if transport is None:
            return
        if transport.can_write_eof() and not self.peer_eof:
            transport.write_eof()
            self.linger = self.loop.call_later(
                min(2.0, self.settings.handshake_timeout), self._close_transport
            )
        else:
            self._close_transport()

    def _close_transport(self) -> None:
        """Close politely (what is buffered is sent first), but not forever: a
        client that does not read it is aborted after ``handshake_timeout``."""
        self.closing = True
        self._cancel_timer()
        if self.linger is not None:
            self.linger.cancel()
        if self.transport is None:
            return
        self.transport.close()
        self.linger = self.loop.call_later(self.settings.handshake_timeout, self.transport.abort)

    def eof_received(self) -> bool | None:
        self.peer_eof = True
        # Requests still being handled or waiting get their answers (then we
        # close); otherwise returning False lets the transport close itself.
        waiting = self.busy or self.write_paused or bool(self.queue) or bool(self.backlog)
        return True if waiting and not self.closing else False

    def reject(
        self, status: HTTPStatus, text: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Answer with an error status and a one-line reason, then close."""
        if self.closing:
            return
        metrics.handshake_failures.inc(str(status.value))
        peer = self.answering[0].remote if self.answering is not None else self.peer
        log.info("%s %s from %s: %s", status.value, status.phrase, peer, text)
        hdrs = [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])]
        self.write_response(status.value, status.phrase, hdrs, (text + "\n").encode(), False, "GET")

    # -- timers --------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._cancel_timer()
        self.timer = self.loop.call_later(self.settings.handshake_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
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
