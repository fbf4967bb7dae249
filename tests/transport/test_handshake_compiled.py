"""The compiled upgrade path (hubbub/transport/_handshake.c) and RFC 6455 4.1's
HTTP-level rules (HTTP/1.1 or higher, a Host header) on every path.

The compiled path may only accept a request head that the general path (httptools,
then fast_handshake or websockets) accepts as the same request, with the same
answer; everything else it leaves to the general path. Checked on generated
request heads and on byte-level mutations of valid ones, and over real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import os
import re
from typing import Any

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WSRequest

from hubbub.config import Settings
from hubbub.transport import handshake
from hubbub.transport.handshake import (
    MAX_HEADERS,
    fast_handshake,
    http_refusal,
    switching_protocols,
    ws_protocol,
)

from .test_handshake_fast import HEADER_FORMS, KEY
from .test_http import open_conn, read_reply

try:
    compiled: Any = importlib.import_module("hubbub.transport._handshake")
except ImportError:  # not built: the general path's tests still run
    compiled = None
needs_compiled = pytest.mark.skipif(
    compiled is None, reason="the _handshake extension is not built"
)

DATE = "Wed, 03 Dec 2026 10:00:00 GMT"
MAX_HEAD = Settings().max_header_size


def upgrade(raw: bytes, compression: bool = True, available: tuple[str, ...] = ()) -> Any:
    return compiled.upgrade(raw, available, compression, MAX_HEAD, MAX_HEADERS, DATE)


class _Head:
    """What hubbub's HTTP layer collects from httptools' callbacks."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.complete = True


def general(raw: bytes, compression: bool, available: tuple[str, ...]) -> Any:
    """The general path on ``raw`` (HttpConnection's reading, http_refusal, then
    fast_handshake or websockets): ``((path, query, headers, consumed), (accept,
    extensions, subprotocol))``, or None unless it upgrades."""
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(raw[:MAX_HEAD])
        return None  # no upgrade: answered as plain HTTP (or incomplete)
    except httptools.HttpParserUpgrade as exc:
        consumed = exc.args[0]
    except httptools.HttpParserError:
        return None
    if not head.complete or consumed > MAX_HEAD or len(head.headers) > MAX_HEADERS:
        return None
    headers: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    url = httptools.parse_url(head.url)
    method = parser.get_method().decode("ascii")
    http11 = parser.get_http_version() not in ("1.0", "0.9")
    if "websocket" not in headers.get("upgrade", "").lower():
        return None  # not a WebSocket upgrade (is_websocket)
    if http_refusal(http11, headers) is not None:
        return None
    proto = ws_protocol(Settings(compression=compression), list(available))
    request = WSRequest("/", Headers(headers.items()), method=method)
    try:
        answer = proto.process_request(request)
    except Exception:
        return None
    parsed = ((url.path or b"/").decode("latin-1"), (url.query or b"").decode("latin-1"))
    return (*parsed, headers, consumed), answer


def assert_agrees(raw: bytes, compression: bool, available: tuple[str, ...]) -> bool:
    """The compiled answer, if any, is the general path's; True if it answered."""
    got = upgrade(raw, compression, available)
    if got is None:
        return False
    path, query, headers, subprotocol, head, consumed = got
    ref = general(raw, compression, available)
    assert ref is not None, f"compiled path accepted what the general path refuses: {raw!r}"
    request, (accept, extensions, ref_subprotocol) = ref
    assert (path, query, headers, consumed) == request
    assert extensions is None and subprotocol == ref_subprotocol
    assert fast_handshake("GET", headers, compression, list(available)) == (accept, subprotocol)
    expected = switching_protocols(accept, None, subprotocol)
    assert head == re.sub(rb"Date: [^\r]*", f"Date: {DATE}".encode(), expected)
    return True


def request(lines: list[str], start: str = "GET / HTTP/1.1", end: str = "\r\n") -> bytes:
    return (start + "\r\n" + "".join(f"{line}\r\n" for line in lines) + end).encode("latin-1")


COMMON = [
    "Host: 127.0.0.1:9502",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Version: 13",
]


@needs_compiled
def test_accept_key_is_rfc_6455s_and_sha1s():
    # RFC 6455 1.3's example, then random keys against hashlib.
    assert compiled.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    for _ in range(200):
        key = base64.b64encode(os.urandom(16)).decode()
        digest = hashlib.sha1((key + handshake.GUID).encode()).digest()
        assert compiled.accept_key(key) == base64.b64encode(digest).decode()


def common(*extra: str, start: str = "GET / HTTP/1.1", drop: str = "") -> bytes:
    """The common request with ``extra`` header lines, without the ``drop`` one."""
    return request([line for line in COMMON if drop == "" or drop not in line] + list(extra), start)


PROTOCOL = "Sec-WebSocket-Protocol: "


@needs_compiled
@pytest.mark.parametrize(
    ("raw", "compression", "available", "subprotocol"),
    [
        (common(), True, (), None),
        (common(start="GET /chat?room=a&b=%20c HTTP/1.1"), True, (), None),
        (common(PROTOCOL + "hubbub.v1"), True, ("hubbub.v1",), "hubbub.v1"),
        (common(PROTOCOL + "chat,\tx"), True, ("hubbub.v1", "x"), "x"),
        (common(PROTOCOL + "chat"), True, ("hubbub.v1",), None),
        (common("Sec-WebSocket-Extensions: permessage-deflate"), False, (), None),
        (
            common("connection: keep-alive, Upgrade", "Origin: http://a", drop="Conn"),
            True,
            (),
            None,
        ),
        (common("X-A: 1", "x-a: 2", "User-Agent: t/1 (x; y)", "Empty:"), True, (), None),
    ],
)
def test_common_requests_take_the_compiled_path(raw, compression, available, subprotocol):
    assert assert_agrees(raw, compression, available)
    assert upgrade(raw, compression, available)[3] == subprotocol
    # What follows the head (the client's first frames) is not part of it.
    assert upgrade(raw + b"\x81\x80abcd", compression, available)[5] == len(raw)


@needs_compiled
@pytest.mark.parametrize(
    "raw",
    [
        common(start="GET / HTTP/1.0"),  # RFC 6455 4.1: HTTP/1.1 or higher (400)
        common(drop="Host"),  # no Host (400)
        common("Host: other"),  # two Hosts
        common(start="POST / HTTP/1.1"),
        common(start="GET http://a/ HTTP/1.1"),  # absolute form: the general path decides
        common(start="GET /a#b HTTP/1.1"),
        common(start='GET /a"b HTTP/1.1'),
        common("Content-Length: 0"),
        common("Transfer-Encoding: chunked"),
        common("Sec-WebSocket-Extensions: permessage-deflate"),  # negotiated by websockets
        common("X-Trailing: a "),  # httptools keeps the space
        common("X-Folded: a", " b"),
        common("X-Latin: caf\xe9"),
        common("Bad Name: x"),
        common(PROTOCOL + "a,,b"),
        common("Sec-WebSocket-Key: " + KEY),  # two keys
        common("Sec-WebSocket-Version: 8", drop="Version"),
        common("Sec-WebSocket-Key: " + KEY[:-2] + "=A", drop="Key"),
        common("Upgrade: websocket, h2c", drop="Upgrade: "),
        common("Connection: close", drop="Connection"),
        common(*[f"X-{i}: {i}" for i in range(MAX_HEADERS)]),  # 431
        common(f"X-Long: {'a' * MAX_HEAD}"),  # 431
        common()[:-2],  # the head is not complete yet
    ],
)
def test_anything_else_is_left_to_the_general_path(raw):
    assert upgrade(raw) is None


_TOKEN = st.text("abcdefXYZ-_.~%!$&'()*+,;=:@/?", max_size=12)
_METHOD = st.sampled_from(["GET"] * 20 + ["POST", "get", "HEAD", "GET "])
_TARGET = st.one_of(
    *[_TOKEN.map(lambda t: "/" + t)] * 8,
    _TOKEN,
    st.sampled_from(["*", "http://a/x", "/a b", "/é", "/a#b", "//a"]),
)
_VERSION = st.sampled_from(["HTTP/1.1"] * 20 + ["HTTP/1.0", "HTTP/1.2", "http/1.1", "HTTP/2.0"])
_SEP = st.sampled_from([": "] * 12 + [":", ":\t", ": \t", " : ", ":  "])
_CASE = st.sampled_from([str.lower, str.title, str.upper, lambda s: s])
_EXTRA = st.sampled_from(
    ["Host: other", "Content-Length: 0", "X-A: 1", "X-A: 2", "X-B: v ", "x-b:", " folded", "X-C"]
)


#: Valid values for the "valid" heads (the others keep HEADER_FORMS' draw).
VALID_FORMS = {
    "connection": "Upgrade",
    "upgrade": "websocket",
    "sec-websocket-key": KEY,
    "sec-websocket-version": "13",
}


@st.composite
def heads(draw: Any) -> tuple[bytes, bool, tuple[str, ...]]:
    lines = []
    valid = draw(st.booleans())  # half the heads: the valid forms only (most are accepted)
    for name, form in HEADER_FORMS.items():
        value = draw(form)
        if valid:
            value = VALID_FORMS.get(name, value)
        if value is not None:
            lines.append(draw(_CASE)(name) + (": " if valid else draw(_SEP)) + value)
    if valid or draw(st.booleans()):
        lines.insert(0, "Host: 127.0.0.1:9502")
    lines += draw(st.lists(_EXTRA, max_size=0 if valid else 3))
    lines = draw(st.permutations(lines))
    start = f"{draw(_METHOD)} {draw(_TARGET)} {draw(_VERSION)}"
    raw = request(lines, start, draw(st.sampled_from(["\r\n"] * 8 + ["\n", ""])))
    raw += draw(st.sampled_from([b"", b"\x81\x80abcd", b"GET / HTTP/1.1\r\n\r\n"]))
    compression = draw(st.booleans())
    available = draw(st.sampled_from([(), ("hubbub.v1",), ("x", "hubbub.v1")]))
    return raw, compression, available


@needs_compiled
@settings(max_examples=1500, deadline=None)
@given(heads())
@example((request(COMMON), True, ()))
def test_generated_heads_never_disagree_with_the_general_path(case):
    assert_agrees(*case)


@needs_compiled
@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from([request(COMMON), request([*COMMON, "Sec-WebSocket-Protocol: hubbub.v1"])]),
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 255), st.sampled_from("rid")), max_size=3
    ),
)
def test_mutated_bytes_never_disagree_with_the_general_path(raw, edits):
    data = bytearray(raw)
    for pos, byte, kind in edits:
        pos %= len(data) + 1
        if kind == "r" and pos < len(data):
            data[pos] = byte
        elif kind == "i":
            data.insert(pos, byte)
        elif pos < len(data):
            del data[pos]
    assert_agrees(bytes(data), True, ("hubbub.v1",))


# -- real sockets ------------------------------------------------------------------------


async def _first_answer(server: Any, raw: bytes) -> bytes:
    reader, writer = await open_conn(server)
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    finally:
        writer.close()


@needs_compiled
async def test_a_real_handshake_takes_the_compiled_path(make_server, monkeypatch):
    calls: list[bytes] = []
    real = handshake.compiled_upgrade
    if real is None:
        pytest.skip("the compiled path is off (HUBBUB_NO_SPEEDUPS)")

    def spy(data: bytes, *args: Any) -> Any:
        found = real(data, *args)
        calls.append(found)
        return found

    def no_fast(*args: Any) -> Any:
        raise AssertionError("the general path ran for the common request")

    monkeypatch.setattr(handshake, "compiled_upgrade", spy)
    monkeypatch.setattr(handshake, "fast_handshake", no_fast)
    messages: list[Any] = []
    opened: list[Any] = []

    def setup(server: Any) -> None:
        server.on("open", lambda srv, req: opened.append((req.path, req.query_string)))
        server.on("message", lambda srv, frame: messages.append(frame.data))

    server = await make_server(setup, subprotocols=["hubbub.v1"])
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        *COMMON[:3],
        f"Sec-WebSocket-Key: {key}",
        COMMON[4],
        "Sec-WebSocket-Protocol: x, hubbub.v1",
    ]
    # The head and the client's first frame in one write: the frame is not lost.
    frame = Frame(Opcode.TEXT, b"first").serialize(mask=True)
    head = (await _first_answer(server, request(lines, "GET /chat?a=1 HTTP/1.1") + frame)).decode()
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {compiled.accept_key(key)}\r\n" in head
    assert "Sec-WebSocket-Protocol: hubbub.v1\r\n" in head
    assert calls and calls[0] is not None
    assert opened == [("/chat", "a=1")]
    for _ in range(200):
        if messages:
            break
        await asyncio.sleep(0.01)
    assert messages == ["first"]


@pytest.mark.parametrize("use_compiled", [True, False])
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (common(start="GET / HTTP/1.0"), "needs HTTP/1.1 or higher"),
        (common(drop="Host"), "needs a Host header"),
    ],
)
async def test_rfc_6455_4_1_http_rules_get_400_with_a_reason(
    make_server, monkeypatch, use_compiled, raw, reason
):
    if not use_compiled:
        monkeypatch.setattr(handshake, "compiled_upgrade", None)
    elif handshake.compiled_upgrade is None:
        pytest.skip("the _handshake extension is not built, or HUBBUB_NO_SPEEDUPS")
    opened: list[Any] = []
    server = await make_server(lambda s: s.on("open", lambda srv, req: opened.append(req)))
    reader, writer = await open_conn(server)
    try:
        writer.write(raw)
        reply = await read_reply(reader)
    finally:
        writer.close()
    assert reply.status == 400
    assert reason.encode() in reply.body
    assert opened == []
