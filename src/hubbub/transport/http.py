"""HTTP/1.1 on the listening socket: plain requests and the WebSocket upgrade.

One port serves both worlds, as Swoole's WebSocket server does. Every TCP
connection starts here; `httptools` (llhttp) parses request heads and bodies.
A request that asks for ``Upgrade: websocket`` goes through the opening
handshake of RFC 6455 4.2 (checked by `websockets`' sans-I/O server core) and,
once accepted, the transport is handed to a
:class:`~hubbub.transport.websocket.WebSocketConnection`.

Bad input never reaches a handler: a malformed request gets 400, an
over-long head 431, an over-long body 413, a slow head 408, an invalid
handshake the 4xx that `websockets` chose with its reason, each with a short
plain-text body and ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import httptools
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request as WSRequest
from websockets.protocol import State

from .websocket import HubbubServerProtocol, WebSocketConnection

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("hubbub.http")
#: One INFO line per answered request (Settings.access_log).
access_log = logging.getLogger("hubbub.access")

MAX_HEADERS = 100
#: Longest path written to the access log (the request head may be 16 KiB).
ACCESS_PATH_MAX = 200
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f"\\]')


class Request:
    """An HTTP request, or the handshake request of a WebSocket (Swoole's ``$request``)."""

    __slots__ = ("body", "fd", "headers", "method", "path", "query_string", "remote", "subprotocol")

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: bytes,
        remote: tuple[str, int] | None,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        #: Header names lower-cased; repeated headers joined with ", ".
        self.headers = headers
        self.body = body
        self.remote = remote
        #: The connection's fd once it is a WebSocket (Swoole's ``$request->fd``).
        self.fd = 0
        self.subprotocol: str | None = None

    @property
    def header(self) -> dict[str, str]:
        """Swoole's name for :attr:`headers`."""
        return self.headers

    @property
    def get(self) -> dict[str, str]:
        """Query parameters, first value of each (Swoole's ``$request->get``)."""
        return {k: v[0] for k, v in parse_qs(self.query_string).items()}

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """The answer to one HTTP request (Swoole's ``$response``)."""

    __slots__ = ("_conn", "_headers", "_reason", "_status", "ended", "keep_alive", "method")

    def __init__(self, conn: HttpConnection, keep_alive: bool, method: str) -> None:
        self._conn = conn
        self._status = 200
        self._reason: str | None = None
        self._headers: list[tuple[str, str]] = []
        self.keep_alive = keep_alive
        self.method = method
        self.ended = False

    def status(self, code: int, reason: str | None = None) -> None:
        if not 100 <= int(code) <= 999:
            raise ValueError(f"invalid HTTP status {code!r}")
        if reason is not None:
            _check_field(reason, "reason phrase")
        self._status = int(code)
        self._reason = reason

    def header(self, name: str, value: str) -> None:
        _check_field(name, "header name")
        _check_field(value, "header value")
        self._headers.append((name, value))

    def end(self, body: str | bytes = b"") -> None:
        """Send the response. Calling it twice is an error."""
        if self.ended:
            raise RuntimeError("response already sent")
        payload = body.encode() if isinstance(body, str) else bytes(body)
        names = {k.lower() for k, _ in self._headers}
        if "content-type" not in names:
            ctype = (
                "text/plain; charset=utf-8" if isinstance(body, str) else "application/octet-stream"
            )
            self._headers.append(("Content-Type", ctype))
        self._conn.write_response(
            self._status, self._reason, self._headers, payload, self.keep_alive, self.method
        )
        # Only now: if writing failed, the caller's error path can still answer 500.
        self.ended = True


def _check_field(text: str, what: str) -> None:
    """Refuse what would break the response framing (RFC 9110 5.5: no CR, LF or NUL)."""
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"{what} must not contain CR, LF or NUL")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be latin-1 (encode other text first)") from None


Handler = Callable[[Request, Response], Awaitable[None] | None]


class HttpEndpoint(Protocol):
    """What the HTTP layer needs from the server core (implemented by
    :class:`hubbub.endpoint.ServerEndpoint`).

    Every method is called from the event loop, in a callback of one
    :class:`HttpConnection`; none may block.
    """

    #: The limits; read by each connection when it is made.
    settings: Settings
    #: Subprotocols offered in the handshake, in preference order; read at
    #: each handshake (so changing the list affects later handshakes only).
    subprotocols: list[str]

    def http_connection_made(self, conn: HttpConnection) -> None:
        """A TCP connection was accepted; ``conn`` answers it.

        Caller: once per connection, before any request of it is handled.
        Implementation: keep ``conn`` until :meth:`http_connection_lost` so
        that a shutdown can close it (``conn.close()`` when not ``conn.busy``,
        ``conn.transport.abort()`` after the grace period).
        """
        ...

    def http_connection_lost(self, conn: HttpConnection) -> None:
        """``conn`` is no longer an HTTP connection of the server.

        Caller: once, when its TCP connection is gone, or when it was upgraded
        (the WebSocket returned by :meth:`ws_opened` owns the transport now).
        Implementation: forget ``conn`` (it must not be kept: one per
        WebSocket ever opened would be a leak); tolerate one it does not know.
        """
        ...

    def http_request(self, request: Request, response: Response) -> Awaitable[None] | None:
        """Answer one plain HTTP request (not an upgrade).

        Caller: once per complete request (head and body within the
        ``max_header_size`` / ``max_body_size`` limits), in the order the
        requests arrived on the connection, one at a time: pipelined requests
        wait until this one's awaitable, if any, is done, and the connection
        stops reading meanwhile.
        Implementation: call ``response.end()`` once, now or in the returned
        awaitable; if it does not, an empty ``200`` is sent when it returns.
        An exception (raised, or from the awaitable) is logged and answered
        with ``500``, never with a traceback to the client.
        """
        ...

    def ws_admit(self) -> str | None:
        """None to accept one more WebSocket, or the reason it is refused.

        Caller: for each upgrade request, before the handshake is checked.
        A reason is answered with ``503`` and ``Retry-After``, and the
        connection closed. Implementation: cheap, no side effect.
        """
        ...

    def ws_opened(
        self, transport: asyncio.Transport, proto: Any, request: Request, head: bytes
    ) -> WebSocketConnection:
        """Make the WebSocket of an accepted handshake and return it.

        Caller: in the same callback that accepted the handshake, before
        anything was written to ``transport``; ``proto`` is the
        :class:`HubbubServerProtocol` in state OPEN with the negotiated
        extensions and subprotocol (also in ``request.subprotocol``); ``head``
        is the 101 answer. After it returns, the caller switches
        ``transport`` to the returned connection and feeds it any bytes that
        followed the request head.
        Implementation: queue ``head`` as the connection's first bytes (with
        ``conn.write``), so that nothing (the open handler's greeting, a
        pong) can overtake the 101; set ``request.fd``; do not read from or
        write to ``transport`` directly.
        """
        ...


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    """The ``Date`` header value (RFC 9110 6.6.1), formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def log_safe(text: str, limit: int = ACCESS_PATH_MAX) -> str:
    """``text`` for a log line: at most ``limit`` characters (then "..."), and
    control characters, quotes and backslashes escaped as ``\\xNN``, so that
    what a client sends can neither start a forged log line nor end a field."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _peer_text(peer: Any) -> str:
    if not peer:
        return "-"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _is_websocket(headers: dict[str, str]) -> bool:
    return "websocket" in headers.get("upgrade", "").lower()


def _switching_protocols(
    accept: str, extensions_header: str | None, protocol_header: str | None
) -> bytes:
    """RFC 6455 4.2.2, step 5: the 101 answer to an accepted handshake.

    Built here rather than by websockets' accept() + Response.serialize(),
    which cost a third of the server's CPU time per handshake (Headers
    objects, a Date formatted each time); the values are websockets' own.
    """
    head = [
        "HTTP/1.1 101 Switching Protocols\r\nDate: ",
        _date(),
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept,
    ]
    if extensions_header is not None:
        head += ("\r\nSec-WebSocket-Extensions: ", extensions_header)
    if protocol_header is not None:
        head += ("\r\nSec-WebSocket-Protocol: ", protocol_header)
    head.append("\r\n\r\n")
    return "".join(head).encode("latin-1")


class HttpConnection(asyncio.Protocol):
    """A TCP connection until (unless) it becomes a WebSocket."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint
        self.settings = endpoint.settings
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        # Parsed requests waiting for their turn: (request, keep-alive, began).
        self.queue: deque[tuple[Request, bool, float]] = deque()
        # The request being answered and when its head began (the access log).
        self.answering: tuple[Request, float] | None = None
        self.began = 0.0
        self.busy = False
        self.closing = False
        self.upgraded = False
        self.timer: asyncio.TimerHandle | None = None
        self.head_size = 0  # bytes of the current request head, from the parser callbacks
        self.pending_head = 0  # bytes fed while the current head is incomplete
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
        self._arm_timer()
        self.endpoint.http_connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.linger is not None:
            self.linger.cancel()
        self.closing = True
        self.endpoint.http_connection_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.upgraded:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._process(leftover=data[offset:])
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

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self.began = self.loop.time()
        self.in_head = True
        self.head_size = 0
        self.pending_head = 0
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
        self.pending_head = 0
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
        request = Request(
            self.parser.get_method().decode("ascii"),
            path,
            query,
            headers,
            b"".join(self.body_parts),
            self.peer,
        )
        self.queue.append((request, self.parser.should_keep_alive(), self.began))
        self._reset()

    # -- request processing ------------------------------------------------

    def _process(self, leftover: bytes = b"") -> None:
        while self.queue and not self.busy and not self.closing:
            request, keep_alive, began = self.queue.popleft()
            self.answering = (request, began)
            if _is_websocket(request.headers):
                self.queue.clear()
                self._handshake(request, leftover)
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
                assert self.transport is not None
                self.transport.pause_reading()
                task = asyncio.ensure_future(result)
                task.add_done_callback(lambda t, r=response: self._handler_done(t, r))
                return
            if not response.ended:
                response.end()

    def _handler_done(self, task: asyncio.Future[Any], response: Response) -> None:
        self.busy = False
        if task.cancelled():
            self._internal_error(response)
        elif task.exception() is not None:
            log.error("request handler failed", exc_info=task.exception())
            self._internal_error(response)
        elif not response.ended:
            response.end()
        if not self.closing and self.transport is not None:
            self.transport.resume_reading()
            self._process()

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

    def _handshake(self, request: Request, leftover: bytes) -> None:
        """RFC 6455 4.2.2: accept or refuse the opening handshake."""
        refused = self.endpoint.ws_admit()
        if refused is not None:
            self.reject(HTTPStatus.SERVICE_UNAVAILABLE, refused, [("Retry-After", "5")])
            return
        proto = self._ws_protocol()
        # Repeated headers were joined with ", " (RFC 9110 5.3), which is
        # how websockets reads them too.
        wsrequest = WSRequest(
            request.path + (f"?{request.query_string}" if request.query_string else ""),
            Headers(request.headers.items()),
            method=request.method,
        )
        assert self.transport is not None
        try:
            # websockets checks the request (RFC 6455 4.2.1) and negotiates
            # extensions and subprotocol; the 101 answer is written below.
            accept, extensions_header, protocol_header = proto.process_request(wsrequest)
        except Exception:
            self._refuse_handshake(proto, wsrequest)
            return
        proto.accept_called = True
        request.subprotocol = proto.subprotocol
        self.upgraded = True
        self._cancel_timer()
        head = _switching_protocols(accept, extensions_header, protocol_header)
        # Not written here: the connection queues it as its first bytes, so
        # the 101 and whatever the open handler pushes (the greeting) leave
        # in one write at the end of this tick (one system call, one TCP
        # segment, instead of two).
        conn = self.endpoint.ws_opened(self.transport, proto, request, head)
        self._log_access(101, 0)
        self.transport.set_protocol(conn)
        # This object's job is done: the WebSocket owns the transport now.
        self.endpoint.http_connection_lost(self)
        if leftover:
            conn.data_received(leftover)

    def _ws_protocol(self) -> HubbubServerProtocol:
        """The sans-I/O WebSocket core for this connection's handshake and frames."""
        settings = self.settings
        extensions = (
            [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            ]
            if settings.compression
            else None
        )
        return HubbubServerProtocol(
            extensions=extensions,
            subprotocols=list(self.endpoint.subprotocols) or None,
            max_size=settings.max_message_size,
            logger=_quiet,
            # The head was parsed by httptools already: the core starts at
            # the frame stage and is given the parsed request below.
            state=State.OPEN,
        )

    def _refuse_handshake(self, proto: HubbubServerProtocol, wsrequest: WSRequest) -> None:
        # Refused: websockets' accept() checks again and builds the
        # answer (status and a one- or two-line reason in the body).
        response = proto.accept(wsrequest)
        body = response.body or b""
        # RFC 6455 4.2.2: say which protocol version this server speaks.
        response.headers["Sec-WebSocket-Version"] = "13"
        self._write_raw_response(
            response.status_code,
            response.reason_phrase,
            list(response.headers.raw_items()),
            body,
            False,
            "GET",
        )

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
        if "date" not in names:
            lines.append(f"Date: {_date()}")
        if "server" not in names:
            lines.append("Server: hubbub")
        if "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
        keep_alive = keep_alive and not self.peer_eof
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.write(head if method == "HEAD" else head + body)
        self._log_access(status, 0 if method == "HEAD" else len(body))
        if keep_alive:
            self._arm_timer()
        else:
            self._linger()

    def _log_access(self, status: int, nbytes: int) -> None:
        """One access-log line for the response just written (then forget the request)."""
        answering, self.answering = self.answering, None
        if not self.settings.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        if answering is not None:
            request, began = answering
            method, path = request.method, request.path
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
            _peer_text(self.peer),
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
                min(2.0, self.settings.handshake_timeout), transport.close
            )
        else:
            transport.close()

    def eof_received(self) -> bool | None:
        self.peer_eof = True
        # A request still being handled gets its answer (then we close);
        # otherwise returning False lets the transport close itself.
        return True if self.busy and not self.closing else False

    def reject(
        self, status: HTTPStatus, text: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Answer with an error status and a one-line reason, then close."""
        if self.closing:
            return
        log.info("%s %s from %s: %s", status.value, status.phrase, self.peer, text)
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
        if self.closing or self.upgraded or self.busy:
            return
        if self.in_head:
            self.reject(HTTPStatus.REQUEST_TIMEOUT, "Request head not received in time")
        elif self.transport is not None:
            # An idle keep-alive connection: close quietly.
            self.closing = True
            self.transport.close()

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """`websockets` logs each connection at INFO; hubbub logs its own events."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and log.isEnabledFor(level)


_quiet = _QuietLogger(logging.getLogger("hubbub.websocket.core"), {})
