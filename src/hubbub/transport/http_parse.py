"""Reading HTTP requests: `httptools` (llhttp) parses, the limits are checked here.

:class:`RequestParsing` is the part of
:class:`~hubbub.transport.http.HttpConnection` that feeds the parser and takes
its callbacks: the request head (method, target, headers) and body, each
bounded. An over-long target gets 414, an over-long head 431 (bytes or
:data:`~.handshake.MAX_HEADERS` fields), an over-long body 413 (announced by
``Content-Length`` or counted as it arrives), a malformed request 400. A
complete request joins the connection's queue, answered in order.

What one read brought is parsed in slices of :data:`FEED_SLICE` bytes, so that
a connection told to stop (its answers are not read, or a handler is busy)
keeps the rest as bytes, not as thousands of parsed requests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools

from .handshake import MAX_HEADERS
from .messages import Request

if TYPE_CHECKING:
    from ..config import Settings
    from .contract import HttpEndpoint

#: Bytes handed to the parser at a time (see the module doc).
FEED_SLICE = 16 * 1024


class RequestParsing:
    """Parser callbacks and limits (a mix-in of HttpConnection, which sets the state)."""

    endpoint: HttpEndpoint
    settings: Settings
    loop: asyncio.AbstractEventLoop
    parser: httptools.HttpRequestParser | None
    peer: Any
    tls: bool
    queue: deque[tuple[Request, bool, float, bool]]
    backlog: bytes
    leftover: bytes
    began: float
    head_size: int
    in_head: bool
    pending: bool
    closing: bool
    upgraded: bool
    url: bytes
    raw_headers: list[tuple[bytes, bytes]]
    body_parts: list[bytes]
    body_size: int

    if TYPE_CHECKING:  # the rest of HttpConnection

        def reject(
            self, status: HTTPStatus, text: str, headers: list[tuple[str, str]] | None = None
        ) -> None: ...
        def _process(self) -> None: ...
        def _held(self) -> bool: ...
        def _arm_timer(self) -> None: ...
        def _cancel_timer(self) -> None: ...

    def _reset(self) -> None:
        self.url = b""
        self.raw_headers = []
        self.body_parts = []
        self.body_size = 0

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
            self.endpoint.http_head_complete(self)  # type: ignore[arg-type]
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
