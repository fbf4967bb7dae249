"""Writing HTTP answers: responses, refusals, and the polite close after them.

:class:`ResponseWriting` is the part of
:class:`~hubbub.transport.http.HttpConnection` that writes: every answer gets
the security headers (unless its handler set one of the same name), ``Date``,
``Server``, ``Content-Length`` and ``Connection``, and one access-log line
(:mod:`.http_access`). A refusal (:meth:`~ResponseWriting.reject`) is a
one-line plain-text reason with ``Connection: close``; after it the
connection lingers (:meth:`~ResponseWriting._linger`) so that the client can
read the answer before the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools

from .. import metrics
from . import http_access
from .http_access import access_log, target_path
from .messages import Request, http_date

if TYPE_CHECKING:
    from ..config import Settings
    from .contract import HttpEndpoint
    from .messages import Response

log = logging.getLogger("hubbub.http")


class ResponseWriting:
    """Answers and refusals (a mix-in of HttpConnection, which sets the state)."""

    endpoint: HttpEndpoint
    settings: Settings
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    parser: httptools.HttpRequestParser | None
    peer: Any
    answering: tuple[Request, float] | None
    began: float
    url: bytes
    closing: bool
    peer_eof: bool
    linger: asyncio.TimerHandle | None

    if TYPE_CHECKING:  # the rest of HttpConnection

        def _arm_timer(self) -> None: ...
        def _cancel_timer(self) -> None: ...

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
            # Refused before the request was complete (400, 408, 413, 414, 431).
            began = self.began
            method, path = "-", "-"
            if self.url:  # the method came before it: the parser knows it
                with contextlib.suppress(Exception):
                    method = self.parser.get_method().decode("latin-1")  # type: ignore[union-attr]
                path = target_path(self.url)
        ms = (self.loop.time() - began) * 1000 if began else 0.0
        http_access.write(peer, method, path, status, nbytes, ms)

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
