"""The WebSocket upgrade: from an HTTP request to a WebSocket connection.

:class:`UpgradeHandOff` is the part of
:class:`~hubbub.transport.http.HttpConnection` that accepts or refuses the
opening handshake of RFC 6455 4.2 and, once accepted, hands the transport to a
:class:`~hubbub.transport.websocket.WebSocketConnection` (made by the
endpoint's ``ws_opened``). Two ways in: the compiled path
(:func:`~.handshake.compiled_request`) when a connection's first read is one
complete handshake head in the common form, else the general one, httptools
then :func:`~.handshake.negotiate`. Either way the Origin rule
(:mod:`.guard`), the connection limits (``ws_admit``) and the app's
``upgrade`` event (``ws_authorize``) may refuse it with an HTTP status.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

from .. import metrics
from .contract import refusal_parts
from .guard import origin_refusal
from .handshake import compiled_request, negotiate, ws_protocol
from .messages import Request

if TYPE_CHECKING:
    from ..config import Settings
    from .contract import HttpEndpoint

log = logging.getLogger("hubbub.http")


class UpgradeHandOff:
    """The opening handshake (a mix-in of HttpConnection, which sets the state)."""

    endpoint: HttpEndpoint
    settings: Settings
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    answering: tuple[Request, float] | None
    leftover: bytes
    pending: bool
    upgraded: bool
    reading_paused: bool

    if TYPE_CHECKING:  # the rest of HttpConnection

        def reject(
            self, status: HTTPStatus, text: str, headers: list[tuple[str, str]] | None = None
        ) -> None: ...
        def _admitted(self, request: Request) -> bool: ...
        def _cancel_timer(self) -> None: ...
        def _log_access(self, status: int, nbytes: int) -> None: ...
        def _write_raw_response(
            self,
            status: int,
            reason: str,
            headers: list[tuple[str, str]],
            body: bytes,
            keep_alive: bool,
            method: str,
        ) -> None: ...

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
            self.endpoint.http_head_complete(self)  # type: ignore[arg-type]
        if self._admitted(request):
            self._handshake(request, True, (head, subprotocol))
        return True

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
        self.endpoint.http_connection_lost(self)  # type: ignore[arg-type]
        leftover, self.leftover = self.leftover, b""
        if leftover:
            conn.data_received(leftover)
