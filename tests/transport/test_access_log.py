"""The access log (``hubbub.access``): one line per answer, nothing secret in it.

A fallback-transport session id is a bearer credential (docs/transports.md), and
query strings carry tokens: neither may reach a log line, whether the request was
answered by a handler or refused by the HTTP layer before it was complete.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from hubbub import Server
from hubbub.transport.http import log_safe

from .session_clients import SessionSocket
from .test_http import TIMEOUT, assert_serves, exchange, get, open_conn, post, read_reply

HANDSHAKE = (
    b"GET /chat?token=secret HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    # Logged as the response is written, so before the client can read it.
    return [r.getMessage() for r in caplog.records if r.name == "hubbub.access"]


async def test_access_log_has_one_line_per_request_and_the_upgrade(make_server, caplog):
    caplog.set_level(logging.INFO, logger="hubbub.access")

    def setup(s: Server) -> None:
        def handler(request, response):  # type: ignore[no-untyped-def]
            response.status(201)
            response.end("created")

        s.on("request", handler)

    server = await make_server(setup)
    reader, writer = await open_conn(server)
    writer.write(get("/things?api=1", close=False) + get("/healthz", method="HEAD", close=False))
    assert (await read_reply(reader)).status == 201
    assert (await read_reply(reader, head_only=True)).status == 200
    writer.write(HANDSHAKE)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.close()
    lines = access_lines(caplog)
    peer = r"127\.0\.0\.1:\d+"
    assert len(lines) == 3, lines
    assert re.fullmatch(peer + r' "GET /things" 201 7 \d+\.\dms', lines[0]), lines[0]
    assert re.fullmatch(peer + r' "HEAD /healthz" 200 0 \d+\.\dms', lines[1]), lines[1]
    assert re.fullmatch(peer + r' "GET /chat" 101 0 \d+\.\dms', lines[2]), lines[2]
    # Query strings can carry secrets: never logged.
    assert not any("secret" in line or "api=1" in line for line in lines)


async def test_access_log_covers_refused_requests(make_server, caplog):
    caplog.set_level(logging.INFO, logger="hubbub.access")
    server = await make_server(max_body_size=10)
    reply, _ = await exchange(server, post("/upload", b"x" * 100))
    assert reply.status == 413
    reply, _ = await exchange(server, b"NOT HTTP\r\n\r\n")
    assert reply.status == 400
    lines = access_lines(caplog)
    assert '"POST /upload" 413' in lines[0], lines
    assert '"- -" 400' in lines[1], lines


async def test_access_log_escapes_what_the_client_controls(make_server, caplog):
    caplog.set_level(logging.INFO, logger="hubbub.access")
    server = await make_server()
    long_path = "/" + "a" * 5000
    reply, _ = await exchange(server, get('/x"y\\z'))
    assert reply.status == 404
    reply, _ = await exchange(server, get(long_path))
    assert reply.status == 404
    first, second = access_lines(caplog)
    # A quote cannot end the quoted field early, a backslash cannot fake an escape.
    assert '"GET /x\\x22y\\x5cz" 404' in first, first
    assert len(second) < 400 and '"GET /' + "a" * 199 + '..." 404' in second, second


def test_log_safe_escapes_control_characters_and_bounds_length():
    assert log_safe("/plain/path") == "/plain/path"
    forged = '/x HTTP/1.1" 200 0 0.1ms\n127.0.0.1:1 "GET /admin'
    assert "\n" not in log_safe(forged) and "\\x0a" in log_safe(forged)
    assert log_safe("\r\x1b[31m\x7f\x85") == "\\x0d\\x1b[31m\\x7f\\x85"
    assert log_safe("é/ü") == "é/ü"
    assert log_safe("b" * 300, 10) == "b" * 10 + "..."


async def test_no_access_log_flag_turns_it_off(make_server, caplog):
    caplog.set_level(logging.INFO, logger="hubbub.access")
    server = await make_server(access_log=False)
    reply, _ = await exchange(server, get("/healthz"))
    assert reply.status == 200
    reader, writer = await open_conn(server)
    writer.write(HANDSHAKE)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)).startswith(
        b"HTTP/1.1 101 "
    )
    writer.close()
    await assert_serves(server)
    assert access_lines(caplog) == []


# -- session ids (bearer secrets) ------------------------------------------------------

#: Looks like a session id; the HTTP layer refuses these requests before any lookup.
SID = "s3cr3tSessionId0123456789abcdef"


async def test_a_refused_oversized_frames_post_does_not_log_the_session_id(make_server, caplog):
    caplog.set_level(logging.INFO, logger="hubbub.access")
    server = await make_server(max_body_size=1024)
    sock = await SessionSocket.open(f"http://127.0.0.1:{server.port}", "poll", read=False)
    try:
        # Over max_body_size: refused by the HTTP layer (413) before the body is read.
        reply, _ = await exchange(server, post(f"/v1/sessions/{sock.sid}/frames", b"x" * 4096))
        assert reply.status == 413
    finally:
        await sock.stop()
    lines = access_lines(caplog)
    assert any('"POST /v1/sessions/<redacted>/frames" 413' in line for line in lines), lines
    assert not any(sock.sid in line for line in lines), lines


def _chunked(path: str) -> bytes:
    chunk = b"x" * 2000
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
    )


# Each refused before a handler saw it (the session routes never redact these).
REFUSED = {
    # 413 as the body arrives (no Content-Length: the parser counts).
    "chunked body": (_chunked(f"/v1/sessions/{SID}/frames"), 413, "POST"),
    # The absolute form of the target (RFC 9112 3.2.2).
    "absolute form": (post(f"http://test/v1/sessions/{SID}/frames", b"x" * 4096), 413, "POST"),
    # The query string is dropped too (refused before the parser split it off).
    "query token": (post(f"/v1/sessions/{SID}/frames?access_token=tok", b"x" * 4096), 413, "POST"),
    # 431: the head is too large, the target was complete.
    "head too large": (
        get(f"/v1/sessions/{SID}/poll", extra=f"X-Pad: {'p' * 3000}\r\n"),
        431,
        "GET",
    ),
    # 414: only the start of the target was read.
    "target too long": (get(f"/v1/sessions/{SID}/" + "a" * 3000), 414, "GET"),
    # A complete request refused by the Origin check, before the routes.
    "foreign origin": (
        get(f"/v1/sessions/{SID}", method="DELETE", extra="Origin: http://evil.example\r\n"),
        403,
        "DELETE",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_requests_refused_by_the_http_layer_do_not_log_the_session_id(
    make_server, caplog, case
):
    caplog.set_level(logging.INFO, logger="hubbub.access")
    data, status, method = REFUSED[case]
    server = await make_server(max_body_size=1024, max_header_size=2048)
    reply, _ = await exchange(server, data)
    assert reply.status == status
    (line,) = access_lines(caplog)
    assert f'"{method} /v1/sessions/<redacted>' in line and f" {status} " in line, line
    assert SID not in line and "tok" not in line, line
