"""What one HTTP exchange is made of: the request, the response, and their headers.

:class:`Request` and :class:`Response` are Swoole's ``$request`` and
``$response``; :class:`~hubbub.transport.http.HttpConnection` parses the one
and writes the other. Every response carries the security headers of
:data:`SECURITY_HEADERS` unless its handler set a header of the same name
(``response.header("Content-Security-Policy", ...)`` replaces the default for
that response; ``Server.security_headers`` changes the defaults server-wide).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

#: Longest path written to the access log (the request head may be 16 KiB).
ACCESS_PATH_MAX = 200
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f"\\]')

#: The built-in pages' policy (the same as index.html's <meta>), plus what
#: only a header can say: no framing by any page (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

#: Sent with every HTTP response (errors and API JSON included) unless the
#: handler set a header of the same name.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


class Request:
    """An HTTP request, or the handshake request of a WebSocket (Swoole's ``$request``)."""

    __slots__ = (
        "body",
        "fd",
        "headers",
        "method",
        "path",
        "query_string",
        "remote",
        "subprotocol",
        "tls",
        "user",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: bytes,
        remote: tuple[str, int] | None,
        tls: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        #: Header names lower-cased; repeated headers joined with ", ".
        self.headers = headers
        self.body = body
        self.remote = remote
        #: True when the request came over TLS (https://, wss://).
        self.tls = tls
        #: The connection's fd once it is a WebSocket (Swoole's ``$request->fd``).
        self.fd = 0
        self.subprotocol: str | None = None
        #: Who sent it, when an ``upgrade`` (or request) handler verified a
        #: credential (an :class:`hubbub.core.Identity` for the chat app); else None.
        self.user: Any = None

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


class ResponseWriter(Protocol):
    """Where a :class:`Response` goes (an :class:`~hubbub.transport.http.HttpConnection`)."""

    def write_response(
        self,
        status: int,
        reason: str | None,
        headers: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
        method: str,
    ) -> None: ...


class Response:
    """The answer to one HTTP request (Swoole's ``$response``)."""

    __slots__ = ("_conn", "_headers", "_reason", "_status", "ended", "keep_alive", "method")

    def __init__(self, conn: ResponseWriter, keep_alive: bool, method: str) -> None:
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
            check_field(reason, "reason phrase")
        self._status = int(code)
        self._reason = reason

    def header(self, name: str, value: str) -> None:
        """Add a header; one named like a default security header replaces the default."""
        check_field(name, "header name")
        check_field(value, "header value")
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


def check_field(text: str, what: str) -> None:
    """Refuse what would break the response framing (RFC 9110 5.5: no CR, LF or NUL)."""
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"{what} must not contain CR, LF or NUL")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be latin-1 (encode other text first)") from None


Handler = Callable[[Request, Response], Awaitable[None] | None]

_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
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


def peer_text(peer: Any) -> str:
    """``1.2.3.4:5678`` or ``[::1]:5678`` for a log line (``-`` when unknown)."""
    if not peer:
        return "-"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
