"""Server-Sent Events: a session's frames as a ``text/event-stream`` response.

The HTTP layer writes whole responses (:class:`~hubbub.transport.messages.Response`,
``Content-Length``). An event stream has no end known in advance, so
:class:`EventStream` writes its own head (``Transfer-Encoding: chunked``,
``Connection: close``) on the request's connection and then one chunk per
batch of events; the request handler's awaitable (:meth:`EventStream.run`)
stays pending while the stream lives, which keeps the HTTP connection busy
(it reads nothing more; pipelined requests wait). The stream ends with the
last chunk and the connection is closed (EventSource reconnects on a new one).
To an HTTP/1.0 request (an old proxy) the body is not chunked: it ends when
the connection does.

Backpressure: the connection's transport holds what the client has not
read; :meth:`EventStream.buffered` reports it and the session drops a client
whose stream holds more than ``max_send_buffer`` (close code 1013).

Event format (the WHATWG HTML "server-sent events" section): each frame is
``id: <n>`` and its text as ``data:`` lines (a text with line breaks becomes
several ``data:`` lines, which EventSource joins with ``\\n``), then a blank
line; ``: ping`` comment lines keep proxies from timing the stream out.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

from .messages import Response, http_date

#: Seconds between ``: ping`` comments on an idle stream (capped by poll_timeout).
PING_PERIOD = 15.0
#: What EventSource waits before it reconnects a stream that ended (ms).
RETRY_MS = 1000
_LINES = re.compile(rb"\r\n|\r|\n")


def event_bytes(n: int | None, data: bytes, event: str | None = None) -> bytes:
    """One event: ``event:`` (optional), ``id:`` (optional), ``data:`` lines, blank line."""
    head = b""
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    if n is not None:
        head += b"id: %d\n" % n
    if b"\n" in data or b"\r" in data:
        body = b"".join(b"data: " + line + b"\n" for line in _LINES.split(data))
    else:
        body = b"data: " + data + b"\n"
    return head + body + b"\n"


class EventStream:
    """One ``GET /v1/sessions/<id>/events`` response, written as events come.

    ``response`` is the request's :class:`Response`; its connection (an
    :class:`~hubbub.transport.http.HttpConnection`) is written to directly.
    """

    def __init__(self, response: Response, ping_period: float) -> None:
        self.response = response
        self.conn: Any = response._conn  # the HttpConnection (see the module doc)
        self.transport: asyncio.Transport = self.conn.transport
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.ping_period = ping_period
        self._ping: asyncio.TimerHandle | None = None
        self.nbytes = 0
        # HTTP/1.1: chunked (the end of the stream is visible). An HTTP/1.0 client
        # (or proxy) knows no chunks: the body then ends when the connection does.
        self.chunked = self.conn.parser.get_http_version() != "1.0"

    def start(self, security_headers: tuple[tuple[str, str], ...]) -> None:
        """Write the response head (and a first comment, so proxies pass the head on)."""
        headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("X-Accel-Buffering", "no"),  # nginx: pass each event on at once
            *security_headers,
            ("Date", http_date()),
            ("Server", "hubbub"),
            *([("Transfer-Encoding", "chunked")] if self.chunked else []),
            ("Connection", "close"),
        ]
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        self.response.ended = True  # the HTTP layer must not answer it again
        self.conn._log_access(200, 0)
        self._write(head.encode("latin-1") + self._body(b"retry: %d\n: ok\n\n" % RETRY_MS))
        self._arm_ping()

    async def run(self) -> None:
        """Pending while the stream lives (the HTTP layer waits for it)."""
        await self.done

    # -- Carrier (hubbub.transport.session) ----------------------------------

    def write_frames(self, frames: list[tuple[int, bytes]]) -> None:
        if frames and not self.done.done():
            self._write(self._body(b"".join(event_bytes(n, d) for n, d in frames)))
            self._arm_ping()

    def finish(self, event: str | None, data: dict[str, Any] | None) -> None:
        """Write a last event (if any) and the end of the stream, then close."""
        if self.done.done():
            return
        last = b""
        if event is not None:
            last = self._body(event_bytes(None, json.dumps(data or {}).encode(), event))
        self._write(last + (b"0\r\n\r\n" if self.chunked else b""))
        self._end()

    def buffered(self) -> int:
        if self.transport.is_closing():
            return 0
        return self.transport.get_write_buffer_size()

    # -- the connection ------------------------------------------------------

    def lost(self) -> None:
        """The client went away (the HTTP connection is gone)."""
        self._end()

    def _end(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
        if not self.done.done():
            self.done.set_result(None)
            self.conn.close()

    def _body(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.nbytes += len(data)
            self.transport.write(data)

    def _arm_ping(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        self._ping = self.loop.call_later(self.ping_period, self._send_ping)

    def _send_ping(self) -> None:
        self._ping = None
        if not self.done.done():
            self._write(self._body(b": ping\n\n"))
            self._arm_ping()


class Hold(asyncio.Protocol):
    """Watches an HTTP connection held by an event stream or a long poll.

    While a request handler is busy, the HTTP layer stops reading its
    connection, so it would never see the client leave (a FIN or a reset is
    only seen by reading). For as long as the hold lasts this protocol stands
    in for the :class:`~hubbub.transport.http.HttpConnection` on the
    transport, reads, and calls ``lost`` when the client closes its side or
    the connection is gone. Everything is passed on to the connection (bytes
    a client pipelines meanwhile wait in its backlog, as they would; past
    ``max_header_size`` of them reading stops again: a program that pipelines
    behind a long poll is answered in turn, it is not watched).
    """

    def __init__(self, conn: Any, lost: Callable[[], None]) -> None:
        self.conn = conn
        self.lost: Callable[[], None] | None = lost
        self.transport: asyncio.Transport = conn.transport
        self.limit = conn.settings.max_header_size
        if not self.transport.is_closing():
            self.transport.set_protocol(self)
            self.transport.resume_reading()

    def release(self) -> None:
        """The hold is over: the connection gets its transport back, paused as it left it."""
        self.lost = None
        if not self.transport.is_closing() and self.transport.get_protocol() is self:
            self.transport.pause_reading()
            self.transport.set_protocol(self.conn)

    def _gone(self) -> None:
        lost, self.lost = self.lost, None
        if lost is not None:
            lost()

    def data_received(self, data: bytes) -> None:
        self.conn.data_received(data)
        if len(self.conn.backlog) > self.limit and not self.transport.is_closing():
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        keep = self.conn.eof_received()
        self._gone()
        return keep

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()
