"""The transport's contracts with the server core: :class:`HttpEndpoint` and
:class:`SessionEndpoint` (the fallback transports, SSE and long polling).

Implemented by :class:`hubbub.endpoint.ServerEndpoint`; called by
:class:`hubbub.transport.http.HttpConnection`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .messages import Request, Response, check_field

if TYPE_CHECKING:
    from ..config import Settings
    from .http import HttpConnection
    from .session import Session
    from .websocket import WebSocketConnection


log = logging.getLogger("hubbub.http")


class Refusal(tuple[int, str]):
    """Why a request is refused: ``(status, reason)``, with ``headers`` for the
    answer (``WWW-Authenticate`` with a 401, ``Retry-After`` with a 503).

    A tuple of two, so that code that unpacks ``status, reason`` keeps working;
    an ``upgrade`` handler may return one, a plain ``(status, reason)`` or
    ``(status, reason, headers)``.
    """

    headers: tuple[tuple[str, str], ...]

    def __new__(cls, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> Refusal:
        self = super().__new__(cls, (status, reason))
        self.headers = tuple(headers)
        return self

    def __repr__(self) -> str:
        return f"Refusal({self[0]!r}, {self[1]!r}, {self.headers!r})"


def refusal_parts(denied: Any) -> tuple[int, str, list[tuple[str, str]]]:
    """``(status, reason, headers)`` of a refusal (a :class:`Refusal`, or what an
    ``upgrade`` handler returned). A header that would break the answer (CR, LF,
    NUL, not latin-1) is left out and logged; a value that is not a refusal raises
    (TypeError, ValueError), which the caller answers with ``500``."""
    status, reason, *rest = denied
    if len(rest) > 1 or not isinstance(status, int) or not isinstance(reason, str):
        raise TypeError(f"not a (status, reason[, headers]) refusal: {denied!r}")
    given = rest[0] if rest else getattr(denied, "headers", ())
    headers: list[tuple[str, str]] = []
    for name, value in given:
        try:
            check_field(name, "header name")
            check_field(value, "header value")
        except (TypeError, ValueError) as exc:
            log.error("refusal header %r left out: %s", name, exc)
            continue
        headers.append((name, value))
    return status, reason, headers


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
    #: Headers added to every HTTP response that does not set them itself.
    security_headers: tuple[tuple[str, str], ...]

    def http_connection_made(self, conn: HttpConnection) -> str | None:
        """A TCP connection was accepted: None to serve it, else why it is refused.

        Caller: once per connection, before anything of it is read
        (``conn.peer`` is set). A refused connection is answered ``503`` with
        the reason and closed, without reading its request; it is not
        passed to any other method except :meth:`http_connection_lost`.
        Implementation: count it against the per-address and pending
        handshake limits; keep an accepted ``conn`` until
        :meth:`http_connection_lost` so that a shutdown can close it
        (``conn.close()`` when not ``conn.busy``, ``conn.transport.abort()``
        after the grace period).
        """
        ...

    def http_request_head(self, conn: HttpConnection, request: Request) -> tuple[int, str] | None:
        """Who sent ``request`` and whether its ``Host`` is served: None to go on,
        else the refusal to answer (a :class:`Refusal`; then the connection is closed).

        Caller: once per complete request, before its ``Origin`` is checked and
        before any handler (``request.remote`` is ``conn.peer``).
        Implementation: when ``conn.peer`` is a proxy of ``forwarded_allow_ips``,
        set ``request.remote`` to the client its header names
        (:func:`hubbub.transport.forwarded.forwarded_client`) and count ``conn``
        against that address from now on (``conn.ip``): over
        ``max_connections_per_ip``, refuse ``503`` with ``Retry-After``. Then
        :func:`hubbub.transport.hosts.host_refusal` (``400``/``421``).
        """
        ...

    def http_head_complete(self, conn: HttpConnection) -> None:
        """``conn``'s first request head is complete: it no longer counts as a
        pending handshake.

        Caller: at most once per accepted connection.
        """
        ...

    def http_connection_lost(self, conn: HttpConnection) -> None:
        """``conn`` is no longer an HTTP connection of the server.

        Caller: once, when its TCP connection is gone, or when it was upgraded
        (``conn.upgraded``: the WebSocket returned by :meth:`ws_opened` owns
        the transport, and its address's count, now).
        Implementation: forget ``conn`` (it must not be kept: one per
        WebSocket ever opened would be a leak); tolerate one it does not know.
        """
        ...

    def http_request(self, request: Request, response: Response) -> Any:
        """Answer one plain HTTP request (not an upgrade).

        Caller: once per complete request (head and body within the
        ``max_header_size`` / ``max_body_size`` limits, its ``Origin``
        allowed), in the order the requests arrived on the connection, one
        at a time: pipelined requests wait until this one's awaitable, if
        any, is done, and the connection stops reading meanwhile.
        Implementation: call ``response.end()`` once, now or in the returned
        awaitable; if it does not, an empty ``200`` is sent when it returns.
        An exception (raised, or from the awaitable) is logged and answered
        with ``500``, never with a traceback to the client.
        """
        ...

    def ws_admit(self) -> str | None:
        """None to accept one more WebSocket, or the reason it is refused.

        Caller: for each upgrade request (its ``Origin`` allowed), before the
        handshake is checked. A reason is answered with ``503`` and
        ``Retry-After``, and the connection closed. Implementation: cheap, no
        side effect.
        """
        ...

    def ws_authorize(self, request: Request) -> tuple[int, str] | None:
        """None to open the WebSocket, or ``(status, reason)`` to refuse it (a
        :class:`Refusal` with headers, or ``(status, reason, headers)``).

        Caller: for each upgrade request that websockets accepted (RFC 6455
        4.2.1 checks passed, ``request.subprotocol`` chosen), before the 101;
        answers a refusal with its status, reason and headers
        (:func:`refusal_parts`: a ``401`` carries ``WWW-Authenticate``, RFC 6750 3).
        May set ``request.user``.
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


class SessionEndpoint(Protocol):
    """What the fallback transports need from the server core (implemented by
    :class:`hubbub.endpoint.ServerEndpoint`; called by
    :mod:`hubbub.transport.session_routes` and :class:`hubbub.transport.session.Session`).

    A session is one connection of the server (an ``fd``, the app's open /
    message / close events) carried by HTTP requests instead of a WebSocket
    (docs/transports.md). States and calls for one session::

        session_opened -> session_message* -> session_closing -> session_closed

    Every method is called from the event loop; none may block.
    """

    settings: Settings
    subprotocols: list[str]
    #: Headers added to every HTTP response that does not set them itself.
    security_headers: tuple[tuple[str, str], ...]

    def ws_admit(self) -> str | None:
        """As for a WebSocket: None to accept one more connection, else why not (503)."""
        ...

    def ws_authorize(self, request: Request) -> tuple[int, str] | None:
        """As for a WebSocket: the ``upgrade`` event (token checks) for a session's POST;
        a refusal's headers go with its JSON answer."""
        ...

    def session_admit_ip(self, ip: str) -> str | None:
        """None if address ``ip`` may hold one more connection, else why not (503)."""
        ...

    def session_opened(self, request: Request, kind: str) -> Session:
        """Make a session for an admitted, authorized ``request`` and fire ``open``.

        Implementation: give it an fd (``request.fd``), register it where
        ``push``/``broadcast``/``exist`` find connections, count it against
        its address, then dispatch the ``open`` event (its first frames, e.g.
        the welcome, are queued in the session).
        """
        ...

    def session_lookup(self, sid: str) -> Session | None:
        """The session with id ``sid`` if it exists and is not closed."""
        ...

    def session_message(self, session: Session, data: str) -> None:
        """One client frame (a line of a POST .../frames) for the ``message`` event, in order."""
        ...

    def mark_dirty(self, conn: Any) -> None:
        """``conn`` has frames to write at the end of this tick: call its
        ``flush_out()`` once then (as for a WebSocket; see WebSocketEndpoint)."""
        ...

    def session_closing(self, session: Session) -> None:
        """``session`` left the open state: remove it from the broadcast set."""
        ...

    def session_closed(self, session: Session) -> None:
        """``session`` is gone: forget it (its id answers 404 now), fire ``close``."""
        ...
