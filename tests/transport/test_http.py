"""Plain HTTP on the server's port, driven with raw sockets for exact bytes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from hubbub import Server

TIMEOUT = 3.0


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    #: Header lines as sent, in order (name, value), to spot duplicates and splits.
    lines: list[tuple[str, str]]
    body: bytes
    raw: bytes


def parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    text = head.decode("latin-1")
    assert text.endswith("\r\n\r\n"), text
    status_line, *header_lines = text[:-4].split("\r\n")
    version, code, *reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    lines = []
    for line in header_lines:
        name, sep, value = line.partition(":")
        assert sep, f"not a header line: {line!r}"
        lines.append((name, value.strip()))
    return int(code), (reason[0] if reason else ""), lines


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False) -> Reply:
    """Read one response: its head, then Content-Length bytes of body (unless head_only)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status, reason, lines = parse_head(head)
    headers = {name.lower(): value for name, value in lines}
    body = b""
    if not head_only:
        length = int(headers["content-length"])
        body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    return Reply(status, reason, headers, lines, body, head + body)


async def read_reply_or_none(reader: asyncio.StreamReader) -> Reply | None:
    """read_reply, or None when the server closed (or reset) the connection instead."""
    try:
        return await read_reply(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


async def open_conn(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def exchange(server: Server, data: bytes) -> tuple[Reply, bytes]:
    """Send ``data`` on a new connection; return the first response and all bytes after it
    up to the server's EOF."""
    reader, writer = await open_conn(server)
    try:
        writer.write(data)
        reply = await read_reply(reader)
        rest = await read_to_eof(reader)
        return reply, rest
    finally:
        writer.close()


def get(path: str = "/", *, method: str = "GET", close: bool = True, extra: str = "") -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{conn}{extra}\r\n".encode()


def post(path: str, body: bytes, *, close: bool = True) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\n{conn}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def assert_serves(server: Server) -> None:
    """A fresh connection still gets an answer."""
    reply, _ = await exchange(server, get("/healthz"))
    assert reply.status == 200 and reply.body == b"ok\n"


def assert_no_traceback(raw: bytes) -> None:
    assert b"Traceback" not in raw
    assert b'File "' not in raw
    assert b"httptools" not in raw


# -- basics --------------------------------------------------------------------


async def test_healthz_returns_200_ok_without_calling_the_handler(make_server):
    calls: list[str] = []

    def on_request(req, resp):
        calls.append(req.path)
        resp.status(418)
        resp.end("teapot")

    server = await make_server(lambda s: s.on("request", on_request))
    reply, rest = await exchange(server, get("/healthz"))
    assert reply.status == 200 and reply.reason == "OK"
    assert reply.body == b"ok\n"
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.headers["connection"] == "close"
    assert rest == b""
    assert calls == []


async def test_no_request_handler_gives_404(make_server):
    server = await make_server()
    reply, _ = await exchange(server, get("/anything"))
    assert reply.status == 404
    assert reply.body == b"Not Found\n"


async def test_request_handler_status_headers_and_body_arrive(make_server):
    seen = []

    def on_request(req, resp):
        seen.append((req.method, req.path, req.get, req.headers.get("x-client"), req.body))
        resp.status(201)
        resp.header("X-Test", "yes")
        resp.header("Content-Type", "application/json")
        resp.end('{"made": true}')

    server = await make_server(lambda s: s.on("request", on_request))
    data = (
        b"POST /items?a=1&b=two HTTP/1.1\r\nHost: test\r\nX-Client: raw\r\n"
        b"Connection: close\r\nContent-Length: 5\r\n\r\nhello"
    )
    reply, rest = await exchange(server, data)
    assert reply.status == 201 and reply.reason == "Created"
    assert reply.headers["x-test"] == "yes"
    assert reply.headers["content-type"] == "application/json"
    assert [n for n, _ in reply.lines if n.lower() == "content-type"] == ["Content-Type"]
    assert reply.headers["content-length"] == str(len(b'{"made": true}'))
    assert reply.body == b'{"made": true}'
    assert rest == b""
    assert seen == [("POST", "/items", {"a": "1", "b": "two"}, "raw", b"hello")]


async def test_async_request_handler(make_server):
    async def on_request(req, resp):
        await asyncio.sleep(0.05)
        resp.status(202)
        resp.header("X-Async", "1")
        resp.end(f"later {req.path}")

    server = await make_server(lambda s: s.on("request", on_request))
    reply, _ = await exchange(server, get("/slow"))
    assert reply.status == 202
    assert reply.headers["x-async"] == "1"
    assert reply.body == b"later /slow"


async def test_handler_that_does_not_end_gets_an_empty_200(make_server):
    async def on_request(req, resp):
        resp.header("X-Touched", "1")

    server = await make_server(lambda s: s.on("request", on_request))
    reply, _ = await exchange(server, get("/"))
    assert reply.status == 200
    assert reply.headers["x-touched"] == "1"
    assert reply.body == b""


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_handler_exception_gives_500_and_server_keeps_serving(make_server, kind):
    def sync_handler(req, resp):
        if req.path == "/boom":
            raise RuntimeError("handler bug with a secret")
        resp.end("fine")

    async def async_handler(req, resp):
        await asyncio.sleep(0.01)
        sync_handler(req, resp)

    handler = sync_handler if kind == "sync" else async_handler
    server = await make_server(lambda s: s.on("request", handler))
    # Keep-alive requested: a failed request still closes the connection.
    reply, rest = await exchange(server, get("/boom", close=False))
    assert reply.status == 500
    assert reply.body == b"Internal Server Error\n"
    assert reply.headers["connection"] == "close"
    assert rest == b""
    assert b"secret" not in reply.raw
    assert_no_traceback(reply.raw)
    reply, _ = await exchange(server, get("/ok"))
    assert reply.status == 200 and reply.body == b"fine"


# -- keep-alive and pipelining ------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_pipelined_requests_are_answered_in_order(make_server, kind):
    started: list[str] = []

    def sync_handler(req, resp):
        started.append(req.path)
        resp.end(f"answer {req.path}")

    async def async_handler(req, resp):
        started.append(req.path)
        if req.path == "/first":
            await asyncio.sleep(0.15)
        resp.end(f"answer {req.path}")

    handler = sync_handler if kind == "sync" else async_handler
    server = await make_server(lambda s: s.on("request", handler))
    reader, writer = await open_conn(server)
    try:
        # All three requests in one write: the server parses them together.
        writer.write(get("/first", close=False) + get("/second", close=False) + get("/third"))
        first = await read_reply(reader)
        second = await read_reply(reader)
        third = await read_reply(reader)
        assert await read_to_eof(reader) == b""
    finally:
        writer.close()
    assert [r.body for r in (first, second, third)] == [
        b"answer /first",
        b"answer /second",
        b"answer /third",
    ]
    assert first.headers["connection"] == "keep-alive"
    assert second.headers["connection"] == "keep-alive"
    assert third.headers["connection"] == "close"
    # An async handler holds the next request until it is done.
    assert started == ["/first", "/second", "/third"]


async def test_keep_alive_connection_serves_sequential_requests(make_server):
    server = await make_server(lambda s: s.on("request", lambda req, resp: resp.end(req.path)))
    reader, writer = await open_conn(server)
    try:
        for path in ("/a", "/b", "/c"):
            writer.write(get(path, close=False))
            reply = await read_reply(reader)
            assert reply.status == 200 and reply.body == path.encode()
            assert reply.headers["connection"] == "keep-alive"
    finally:
        writer.close()


async def test_head_gets_headers_but_no_body(make_server):
    def on_request(req, resp):
        resp.header("X-Method", req.method)
        resp.end("hello")

    server = await make_server(lambda s: s.on("request", on_request))
    reader, writer = await open_conn(server)
    try:
        # HEAD then GET on one connection: if the HEAD response carried a body,
        # the GET response would not start right after the HEAD head.
        writer.write(get("/x", method="HEAD", close=False) + get("/y"))
        head = await read_reply(reader, head_only=True)
        assert head.status == 200
        assert head.headers["x-method"] == "HEAD"
        assert head.headers["content-length"] == "5"
        following = await read_reply(reader)
        assert following.headers["x-method"] == "GET"
        assert following.body == b"hello"
        assert await read_to_eof(reader) == b""
    finally:
        writer.close()


async def test_head_healthz_has_no_body(make_server):
    server = await make_server()
    reader, writer = await open_conn(server)
    try:
        writer.write(get("/healthz", method="HEAD"))
        raw = await read_to_eof(reader)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 3" in head
    assert body == b""


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/9.9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\n",
    ],
    ids=["garbage", "header-without-colon", "bad-version", "bad-content-length"],
)
async def test_malformed_request_gets_400_with_a_reason(make_server, data):
    calls: list[str] = []
    server = await make_server(lambda s: s.on("request", lambda req, resp: calls.append(req.path)))
    reply, rest = await exchange(server, data)
    assert reply.status == 400
    assert reply.headers["connection"] == "close"
    assert reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    assert text.startswith("Bad Request")
    # A reason, not just the status phrase.
    assert len(text.strip()) > len("Bad Request: ")
    assert_no_traceback(reply.raw)
    assert rest == b""
    assert calls == []
    await assert_serves(server)


@pytest.mark.parametrize("pieces", [1, 2], ids=["one-write", "dripped"])
async def test_request_head_over_max_header_size_gets_431(make_server, pieces):
    calls: list[str] = []
    server = await make_server(
        lambda s: s.on("request", lambda req, resp: calls.append(req.path)), max_header_size=1024
    )
    data = get("/", extra=f"X-Big: {'a' * 1400}\r\n")
    # Dripped: two writes, each under the limit, together over it.
    parts = [data] if pieces == 1 else [data[:600], data[600:]]
    if pieces == 2:
        assert all(len(p) < 1024 for p in parts) and len(data) > 1024
    reader, writer = await open_conn(server)
    try:
        for part in parts:
            writer.write(part)
            await asyncio.sleep(0.02)
        reply = await read_reply(reader)
        assert await read_to_eof(reader) == b""
    finally:
        writer.close()
    assert reply.status == 431
    assert reply.body.strip()
    assert reply.headers["connection"] == "close"
    assert calls == []
    await assert_serves(server)


async def test_too_many_headers_gets_431(make_server):
    server = await make_server()
    extra = "".join(f"X-H{i}: v\r\n" for i in range(150))
    reply, _ = await exchange(server, get("/", extra=extra))
    assert reply.status == 431


async def test_head_just_under_max_header_size_is_accepted(make_server):
    server = await make_server(
        lambda s: s.on("request", lambda req, resp: resp.end(str(len(req.headers["x-big"])))),
        max_header_size=1024,
    )
    data = get("/", extra=f"X-Big: {'a' * 900}\r\n")
    assert len(data) < 1024
    reply, _ = await exchange(server, data)
    assert reply.status == 200 and reply.body == b"900"


async def test_content_length_over_max_body_size_gets_413_before_the_body(make_server):
    calls: list[str] = []
    server = await make_server(
        lambda s: s.on("request", lambda req, resp: calls.append(req.path)), max_body_size=1000
    )
    # Only the head is sent: the server refuses on the declared length alone.
    head = b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n"
    reply, rest = await exchange(server, head)
    assert reply.status == 413
    assert reply.body.strip()
    assert reply.headers["connection"] == "close"
    assert rest == b""
    assert calls == []
    await assert_serves(server)


async def test_chunked_body_over_max_body_size_gets_413(make_server):
    calls: list[str] = []
    server = await make_server(
        lambda s: s.on("request", lambda req, resp: calls.append(req.path)), max_body_size=1000
    )
    chunk = b"258\r\n" + b"z" * 600 + b"\r\n"  # 0x258 = 600
    reader, writer = await open_conn(server)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunk)
        await asyncio.sleep(0.02)
        writer.write(chunk)
        reply = await read_reply(reader)
        assert await read_to_eof(reader) == b""
    finally:
        writer.close()
    assert reply.status == 413
    assert calls == []
    await assert_serves(server)


async def test_chunked_body_within_max_body_size_is_delivered(make_server):
    server = await make_server(
        lambda s: s.on("request", lambda req, resp: resp.end(req.body[::-1])), max_body_size=1000
    )
    data = (
        b"POST /up HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    reply, _ = await exchange(server, data)
    assert reply.status == 200 and reply.body == b"edcba"


@pytest.mark.parametrize("split", [False, True], ids=["head-and-body-together", "body-apart"])
async def test_body_bigger_than_header_limit_but_within_body_limit_is_accepted(make_server, split):
    """max_header_size bounds the head only: a body of 4 KB must pass when max_body_size is
    100 KB and max_header_size 1 KB, and must not count against the next request's head."""
    server = await make_server(
        lambda s: s.on("request", lambda req, resp: resp.end(f"{req.path} {len(req.body)}")),
        max_header_size=1024,
        max_body_size=100_000,
    )
    body = b"b" * 4000
    reader, writer = await open_conn(server)
    try:
        data = post("/one", body, close=False)
        if split:
            head_len = len(data) - len(body)
            writer.write(data[:head_len])
            await asyncio.sleep(0.02)
            writer.write(body)
        else:
            writer.write(data)
        first = await read_reply_or_none(reader)
        assert first is not None, "connection closed without a response to the first request"
        assert (first.status, first.body) == (200, b"/one 4000")
        writer.write(get("/two"))
        second = await read_reply_or_none(reader)
        assert second is not None, "connection closed without a response to the second request"
        assert (second.status, second.body) == (200, b"/two 0")
    finally:
        writer.close()


# -- timeouts -------------------------------------------------------------------


async def test_incomplete_head_gets_408_after_handshake_timeout(make_server):
    calls: list[str] = []
    server = await make_server(
        lambda s: s.on("request", lambda req, resp: calls.append(req.path)),
        handshake_timeout=0.3,
    )
    reader, writer = await open_conn(server)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n")  # no blank line: head never ends
        t0 = time.monotonic()
        reply = await read_reply(reader)
        elapsed = time.monotonic() - t0
        assert await read_to_eof(reader) == b""
    finally:
        writer.close()
    assert reply.status == 408
    assert reply.body.strip()
    assert reply.headers["connection"] == "close"
    assert 0.25 <= elapsed < 2.0
    assert calls == []
    await assert_serves(server)


async def test_silent_connection_is_closed_after_handshake_timeout(make_server):
    server = await make_server(handshake_timeout=0.3)
    reader, writer = await open_conn(server)
    try:
        t0 = time.monotonic()
        await read_to_eof(reader)
        elapsed = time.monotonic() - t0
    finally:
        writer.close()
    assert 0.25 <= elapsed < 2.0


async def test_idle_keep_alive_connection_is_closed_after_handshake_timeout(make_server):
    server = await make_server(handshake_timeout=0.3)
    reader, writer = await open_conn(server)
    try:
        writer.write(get("/healthz", close=False))
        assert (await read_reply(reader)).headers["connection"] == "keep-alive"
        # Still open (and usable) well before the timeout; the timer restarts.
        await asyncio.sleep(0.15)
        writer.write(get("/healthz", close=False))
        assert (await read_reply(reader)).status == 200
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.15)
        # Then closed quietly: no 408 for a connection that is between requests.
        assert await read_to_eof(reader) == b""
        elapsed = time.monotonic() - t0
    finally:
        writer.close()
    assert elapsed < 1.5


# -- response header safety ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Split", "a\r\nInjected: b"), ("X-Split\r\nInjected", "b"), ("X-Split", "a\nInjected: b")],
    ids=["crlf-in-value", "crlf-in-name", "lf-in-value"],
)
async def test_header_injection_raises_and_client_gets_500(make_server, name, value):
    raised: list[BaseException] = []

    def on_request(req, resp):
        try:
            resp.header(name, value)
        except BaseException as exc:
            raised.append(exc)
            raise
        resp.end("should not be sent")

    server = await make_server(lambda s: s.on("request", on_request))
    reply, _ = await exchange(server, get("/"))
    assert len(raised) == 1 and isinstance(raised[0], ValueError)
    assert reply.status == 500
    assert all(n.lower() not in ("injected", "x-split") for n, _ in reply.lines)
    assert b"Injected" not in reply.raw
    assert b"should not be sent" not in reply.raw


async def test_status_reason_cannot_inject_headers(make_server):
    """The reason phrase is written into the status line: CR/LF in it must not split it."""

    def on_request(req, resp):
        resp.status(200, "OK\r\nInjected: yes")
        resp.end("body")

    server = await make_server(lambda s: s.on("request", on_request))
    reader, writer = await open_conn(server)
    try:
        writer.write(get("/"))
        raw = await read_to_eof(reader)
    finally:
        writer.close()
    head = raw.partition(b"\r\n\r\n")[0]
    assert b"\r\nInjected:" not in head


async def test_header_value_that_is_not_latin1_gives_500_not_a_missing_response(make_server):
    """A header value HTTP/1.1 cannot carry must fail the request (500), not leave it
    unanswered: with pipelining, the next response would be read as this one's."""

    def on_request(req, resp):
        if req.path == "/bad":
            resp.header("X-Name", "caf\u20ac")
        resp.end(f"answer {req.path}")

    server = await make_server(lambda s: s.on("request", on_request))
    reader, writer = await open_conn(server)
    try:
        writer.write(get("/bad", close=False) + get("/next"))
        reply = await read_reply_or_none(reader)
    finally:
        writer.close()
    assert reply is not None, "no response to /bad"
    assert reply.body != b"answer /next", "the response to /next arrived as the answer to /bad"
    assert reply.status == 500


async def test_client_half_close_still_gets_the_answer_of_an_async_handler(make_server):
    async def slow(request, response):
        await asyncio.sleep(0.1)
        response.end("late but here")

    server = await make_server(lambda s: s.on("request", slow))
    reader, writer = await open_conn(server)
    writer.write(get("/slow", close=False))
    writer.write_eof()  # the client is done sending, but still reads
    reply = await read_reply(reader)
    assert reply.status == 200 and reply.body == b"late but here"
    # Then the server closes: it has answered everything the client sent.
    assert await read_to_eof(reader) == b""
    writer.close()


async def test_rejected_handshake_names_the_supported_version(make_server):
    server = await make_server()
    reader, writer = await open_conn(server)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    reply = await read_reply(reader)
    assert reply.status in (400, 426)
    assert reply.headers["sec-websocket-version"] == "13"
    writer.close()


class _CountingTransport:
    """Forwards to a real transport, counting write() calls."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


async def test_the_101_answer_and_the_greeting_leave_in_one_write():
    transports: list[_CountingTransport] = []

    server = Server("127.0.0.1", 0)
    # The transport calls the server's endpoint (hubbub.endpoint): wrap its ws_opened.
    endpoint = server._endpoint
    ws_opened = endpoint.ws_opened

    def counting_ws_opened(transport, proto, request, head):  # type: ignore[no-untyped-def]
        counting = _CountingTransport(transport)
        transports.append(counting)
        return ws_opened(counting, proto, request, head)

    endpoint.ws_opened = counting_ws_opened  # type: ignore[method-assign]

    @server.on("open")
    def greet(server: Server, request: object) -> None:
        server.push(request.fd, "Hello, welcome\n")  # type: ignore[attr-defined]
        server.push(request.fd, "second")  # type: ignore[attr-defined]

    await server.listen()
    try:
        reader, writer = await open_conn(server)
        # A ping in the same segment as the handshake: its pong must follow
        # the 101 and the open handler's frames, never overtake them.
        ping = bytes([0x89, 0x80 | 2]) + b"\0\0\0\0" + b"hi"
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + ping
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
        frames = b"\x81\x0fHello, welcome\n" + b"\x81\x06second" + b"\x8a\x02hi"
        assert await asyncio.wait_for(reader.readexactly(len(frames)), TIMEOUT) == frames
        (counting,) = transports
        assert counting.writes == [head + frames]
        writer.close()
    finally:
        await server.shutdown()
