"""Fuzz: the HTTP request path over a real socket (request lines, headers, bodies,
pipelining, truncation, garbage) against the chat app.

Every answer is a well-formed HTTP/1.1 response with a 1xx/2xx/304/4xx status (or
503/507, the documented limits), the connection ends (answer or close) within a
bound, no handler logs a traceback, and a normal client is served afterwards.
"""

from __future__ import annotations

import re
import socket
import time

from hypothesis import event, example, given

from .live import LiveChat
from .profile import fuzz_settings
from .strategies import API_KEY, http_streams

#: Seconds the server may take to answer and close (its handshake_timeout is 3 s).
WITHIN = 15.0
STATUS_LINE = re.compile(r"HTTP/1\.1 (\d{3}) [\x20-\x7e]*")


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WITHIN) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before reading everything
        raw = b""
        deadline = time.monotonic() + WITHIN
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"no close within {WITHIN}s; got {raw[:300]!r}")
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"no close within {WITHIN}s; got {raw[:300]!r}") from None
            if not chunk:
                break
            raw += chunk
    return raw


def statuses(raw: bytes) -> list[int]:
    """The status of every response in ``raw``, checking each is well formed."""
    found: list[int] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n\r\n", pos)
        assert end != -1, f"incomplete response head: {raw[pos : pos + 300]!r}"
        status_line, *lines = raw[pos:end].decode("latin-1").split("\r\n")
        m = STATUS_LINE.fullmatch(status_line)
        assert m, f"bad status line {status_line!r}"
        status = int(m.group(1))
        found.append(status)
        if status == 101:
            break  # WebSocket frames follow
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            assert sep and name.strip() == name and name, f"bad header line {line!r}"
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        pos = end + 4
        if raw.startswith(b"HTTP/1.1 ", pos) or pos == len(raw):
            continue  # the answer to a HEAD (or a body-less status): no body
        assert pos + length <= len(raw), f"body cut short: {raw[pos - 200 :]!r}"
        pos += length
    return found


def allowed(status: int) -> bool:
    return status in (101, 304, 503, 507) or 100 <= status < 300 or 400 <= status < 500


@fuzz_settings(120)
@given(http_streams())
@example(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
@example(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
@example(
    b"POST /api/rooms/lobby/messages HTTP/1.1\r\nAuthorization: Bearer "
    + API_KEY.encode()
    + b"\r\nContent-Length: 9\r\n\r\n[[[[[[[[["
)
@example(b"GET /api/rooms/lobby/messages?limit=1&before=99999999999999999999999 HTTP/1.1\r\n\r\n")
@example(
    b"POST /api/rooms/lobby/messages HTTP/1.1\r\nAuthorization: Bearer "
    + API_KEY.encode()
    + b'\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"te\r\n0\r\n\r\n'
)
def test_http_request_path(live_chat: LiveChat, data: bytes) -> None:
    raw = exchange(live_chat.port, data)
    codes = statuses(raw)
    body = raw.partition(b"\r\n\r\n")[2][:40]
    event(f"first status {codes[0] if codes else 'none (closed)'} {body!r}")
    assert all(allowed(c) for c in codes), f"status {codes} for {data[:300]!r}"
    bad = live_chat.tracebacks.take()
    assert not bad, "\n".join(bad)
    assert live_chat.healthy(), "the server stopped answering /healthz"
