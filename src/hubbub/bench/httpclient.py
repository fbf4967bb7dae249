"""A lean HTTP/1.1 keep-alive client for the push-vs-polling bench, and byte meters.

Thousands of polling clients in one generator process need a client that costs
little per request: :class:`HttpConn` is a plain :class:`asyncio.Protocol`
whose response parsing is ``httptools`` (llhttp, the parser the server uses
too), one request at a time per connection, keep-alive, and every byte that
crosses the socket in either direction counted in a shared :class:`Meter`
(request heads and bodies as written, responses as read: HTTP headers,
chunked framing and all). Nothing is estimated.

WebSocket clients (picows) do their I/O in C; their bytes are read from the
kernel's own per-socket counters (``TCP_INFO``: ``tcpi_bytes_acked`` and
``tcpi_bytes_received``, the TCP payload bytes, i.e. the same bytes
``data_received`` would see) by :func:`tcp_bytes`.

Bounds: a response body is capped at :data:`MAX_BODY` bytes (a bigger one
fails the request); a stream's unparsed tail at :data:`MAX_EVENT` bytes.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import httptools

#: Largest response body one request accepts (a history page is at most 256 KiB).
MAX_BODY = 4 * 1024 * 1024

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked is the u64 at offset 120,
# tcpi_bytes_received the u64 at 128 (Linux 4.1+). 136 bytes are enough.
_TCP_INFO_LEN = 136
_BYTES = struct.Struct("=QQ")


class Meter:
    """What a group of client connections did: bytes both ways, requests, connects."""

    __slots__ = ("bytes_in", "bytes_out", "connects", "requests")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests = 0
        self.connects = 0


def tcp_bytes(sock: socket.socket) -> tuple[int, int]:
    """(bytes sent and acknowledged, bytes received) on a TCP socket, from the kernel."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return 0, 0
    if len(raw) < _TCP_INFO_LEN:
        return 0, 0
    acked, received = _BYTES.unpack_from(raw, 120)
    # The kernel counts the SYN as one acknowledged byte.
    return max(0, acked - 1), received


class HttpError(Exception):
    """A request that could not be answered (connection lost, bad response, too big)."""


class HttpConn(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, responses parsed by httptools.

    ``request()`` returns (status, body). With ``stream``, each decoded body chunk
    goes to that callback instead (text/event-stream) and the request ends when
    the response does or the connection closes.
    """

    def __init__(self, meter: Meter, host: str) -> None:
        self.meter = meter
        self.host = host.encode()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.stream: Callable[[bytes], None] | None = None
        self.status = 0
        self.body: list[bytes] = []
        self.size = 0
        self.closed = False
        self.keep_alive = True

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.meter.connects += 1

    def data_received(self, data: bytes) -> None:
        self.meter.bytes_in += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"bad response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.stream is not None and self.waiter is not None and not self.waiter.done():
            # A stream without a length ends with its connection.
            self.waiter.set_result((self.status, b""))
            return
        self._fail(HttpError("connection closed" + (f": {exc}" if exc else "")))

    # -- httptools callbacks -----------------------------------------------

    def on_message_begin(self) -> None:
        self.body = []
        self.size = 0

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.stream is not None and 200 <= self.status < 300:
            self.stream(body)
            return
        self.size += len(body)
        if self.size > MAX_BODY:
            self._fail(HttpError(f"response body over {MAX_BODY} bytes"))
            self.close()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, b"".join(self.body)))
        if not self.keep_alive:
            self.close()

    # -- requests ------------------------------------------------------------

    def send(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: bytes = b"",
        stream: Callable[[bytes], None] | None = None,
    ) -> asyncio.Future[tuple[int, bytes]]:
        """Write one request; the future is its (status, body)."""
        if self.closed or self.transport is None:
            raise HttpError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            raise HttpError("a request is already in flight on this connection")
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (
            method.encode(),
            target.encode(),
            self.host,
            headers,
        )
        if body or method in ("POST", "PUT"):
            head += b"Content-Length: %d\r\n" % len(body)
        data = head + b"\r\n" + body
        self.waiter = asyncio.get_running_loop().create_future()
        self.stream = stream
        self.meter.bytes_out += len(data)
        self.meter.requests += 1
        self.transport.write(data)
        return self.waiter

    def _fail(self, exc: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


class HttpClient:
    """Requests to one server over one keep-alive connection, reopened when it closes."""

    def __init__(self, host: str, port: int, meter: Meter) -> None:
        self.host = host
        self.port = port
        self.meter = meter
        self.conn: HttpConn | None = None
        #: The connection of :meth:`stream`, while one is open.
        self.streaming: HttpConn | None = None

    async def connect(self) -> None:
        """Open the keep-alive connection now (else the first request opens it)."""
        if self.conn is None or self.conn.closed:
            await self._open()

    async def _open(self) -> HttpConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: HttpConn(self.meter, f"{self.host}:{self.port}"), self.host, self.port
        )
        self.conn = conn
        return conn

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        *,
        within: float,
        headers: bytes = b"",
        retry: bool = True,
    ) -> tuple[int, bytes]:
        """(status, body) of one request, within ``within`` seconds; a keep-alive
        connection the server closed meanwhile is reopened and, with ``retry``, the
        request sent again once."""
        async with asyncio.timeout(within):
            for attempt in (0, 1):
                conn = self.conn
                if conn is None or conn.closed:
                    conn = await self._open()
                try:
                    return await conn.send(method, target, body, headers)
                except HttpError:
                    if attempt or not retry or not conn.closed:
                        raise
                    self.conn = None
        raise AssertionError("unreachable")

    async def stream(
        self, target: str, on_chunk: Callable[[bytes], None], headers: bytes = b""
    ) -> int:
        """GET ``target`` on a connection of its own, feeding the body to ``on_chunk``
        until the response or the connection ends; returns the status."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: HttpConn(self.meter, f"{self.host}:{self.port}"), self.host, self.port
        )
        self.streaming = conn
        try:
            status, _ = await conn.send("GET", target, headers=headers, stream=on_chunk)
        finally:
            conn.close()
        return status

    def close(self) -> None:
        for conn in (self.conn, self.streaming):
            if conn is not None:
                conn.abort()
        self.conn = None
