"""The handshake fast path (hubbub.transport.handshake.fast_handshake).

It may only ever accept what websockets' ServerProtocol.process_request
accepts, with the same Sec-WebSocket-Accept and subprotocol (and no
extension); everything else falls back to websockets, which accepts or
refuses with its reason. Checked against websockets itself on generated
requests, and on real sockets that the common request takes the fast path.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.http11 import Request as WSRequest
from websockets.server import ServerProtocol

from hubbub.config import Settings
from hubbub.transport import handshake
from hubbub.transport.handshake import fast_handshake, ws_protocol

from .test_http import open_conn

KEY = base64.b64encode(b"0123456789abcdef").decode()


def _websockets(
    method: str, headers: dict[str, str], compression: bool, available: list[str]
) -> tuple[str, str | None, str | None] | None:
    """websockets' own answer: (accept, extensions, subprotocol), or None if refused."""
    proto = ws_protocol(Settings(compression=compression), available)
    request = WSRequest("/", Headers(headers.items()), method=method)
    try:
        return proto.process_request(request)
    except Exception:
        return None


#: What httptools lets through in a header value (it refuses control
#: characters), decoded as latin-1 the way hubbub's HTTP layer does.
HEADER_TEXT = st.text(
    alphabet=st.sampled_from(["\t", *map(chr, range(0x20, 0x7F)), *map(chr, range(0x80, 0x100))]),
    max_size=30,
)


def _variants(valid: list[str], invalid: list[str]) -> st.SearchStrategy[str | None]:
    """Mostly valid forms (so that many requests are accepted), some invalid ones."""
    kinds: list[st.SearchStrategy[str | None]] = [
        st.sampled_from(valid),
        st.sampled_from(invalid),
        HEADER_TEXT,
        st.none(),
    ]
    return st.sampled_from([0] * 12 + [1, 1, 2, 3]).flatmap(lambda kind: kinds[kind])


HEADER_FORMS = {
    "connection": _variants(
        ["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade, keep-alive", "UPGRADE"],
        ["close", "Upgrade,", " Upgrade", "keep-alive,,Upgrade", "keep-alive", "Upgrade foo"],
    ),
    "upgrade": _variants(
        ["websocket", "WebSocket", "WEBSOCKET"],
        ["websocket, h2c", "websocket/13", " websocket", "websocket ", "h2c"],
    ),
    "sec-websocket-key": _variants(
        [KEY, base64.b64encode(bytes(range(16))).decode(), "AAAAAAAAAAAAAAAAAAAAAB=="],
        [
            KEY[:-2],
            KEY + "=",
            KEY + " ",
            "A" * 24,
            base64.b64encode(b"x" * 17).decode(),
            f"{KEY}, {KEY}",
            KEY.replace("=", "*"),
        ],
    ),
    "sec-websocket-version": _variants(["13"], ["8", "13, 8", " 13", "14"]),
    "sec-websocket-protocol": _variants(
        ["hubbub.v1", "chat, hubbub.v1", "x", "a,b", "hubbub.v1 ,\tx"],
        ["", ",hubbub.v1", "hubbub.v1,", " hubbub.v1", "a,,b", "a b", "h\xe9"],
    ),
    "sec-websocket-extensions": _variants(
        ["permessage-deflate", "permessage-deflate; client_max_window_bits"],
        ["permessage-deflate;;", "x-unknown", ""],
    ),
    "origin": _variants(["http://localhost", "null"], ["http://a, http://b"]),
}


@st.composite
def requests(draw: Any) -> tuple[str, dict[str, str], bool, list[str]]:
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "get", "HEAD"]))
    headers = {}
    for name, form in HEADER_FORMS.items():
        value = draw(form)
        if value is not None:
            headers[name] = value
    compression = draw(st.booleans())
    available = draw(st.sampled_from([[], ["hubbub.v1"], ["x", "hubbub.v1"]]))
    return method, headers, compression, available


@settings(max_examples=800, deadline=None)
@given(requests())
def test_fast_path_never_disagrees_with_websockets(case):
    method, headers, compression, available = case
    fast = fast_handshake(method, headers, compression, available)
    if fast is None:
        return  # websockets decides
    accept, subprotocol = fast
    assert _websockets(method, headers, compression, available) == (accept, None, subprotocol)


def _common(**extra: str) -> dict[str, str]:
    return {
        "host": "localhost:9502",
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-key": KEY,
        "sec-websocket-version": "13",
        **extra,
    }


@pytest.mark.parametrize(
    ("headers", "compression", "available", "subprotocol"),
    [
        (_common(), True, [], None),
        (_common(), False, ["hubbub.v1"], None),
        (_common(**{"sec-websocket-protocol": "hubbub.v1"}), True, ["hubbub.v1"], "hubbub.v1"),
        (_common(**{"sec-websocket-protocol": "chat, x"}), True, ["hubbub.v1", "x"], "x"),
        (_common(**{"sec-websocket-protocol": "chat"}), True, ["hubbub.v1"], None),
        # Compression off: websockets ignores offered extensions, and so do we.
        (_common(**{"sec-websocket-extensions": "permessage-deflate"}), False, [], None),
        (_common(connection="keep-alive, Upgrade", origin="http://a"), True, [], None),
    ],
)
def test_common_requests_take_the_fast_path(headers, compression, available, subprotocol):
    fast = fast_handshake("GET", headers, compression, available)
    assert fast is not None
    # RFC 6455 1.3's own example key and answer.
    example = fast_handshake(
        "GET", {**headers, "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}, compression, available
    )
    assert example is not None and example[0] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert fast == (_websockets("GET", headers, compression, available) or ("?",))[::2]
    assert fast[1] == subprotocol


def test_an_offered_extension_with_compression_on_goes_to_websockets():
    headers = _common(**{"sec-websocket-extensions": "permessage-deflate"})
    assert fast_handshake("GET", headers, True, []) is None
    answer = _websockets("GET", headers, True, [])
    assert answer is not None and answer[1] is not None and "permessage-deflate" in answer[1]


async def test_a_real_handshake_takes_the_fast_path(make_server, monkeypatch):
    calls: list[Any] = []
    real = ServerProtocol.process_request

    def spy(self: ServerProtocol, request: WSRequest) -> Any:
        calls.append(request)
        return real(self, request)

    monkeypatch.setattr(ServerProtocol, "process_request", spy)
    opened: list[Any] = []
    server = await make_server(
        lambda s: s.on("open", lambda srv, req: opened.append(req.subprotocol)),
        compression=False,
        subprotocols=["hubbub.v1"],
    )
    for protocol_line, expect in (
        ("", None),
        ("Sec-WebSocket-Protocol: hubbub.v1\r\n", "hubbub.v1"),
    ):
        reader, writer = await open_conn(server)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{protocol_line}\r\n".encode()
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)).decode()
        writer.close()
        assert head.startswith("HTTP/1.1 101 ")
        expected_accept = fast_handshake("GET", _common(**{"sec-websocket-key": key}), False, [])
        assert expected_accept is not None
        assert f"Sec-WebSocket-Accept: {expected_accept[0]}\r\n" in head
        assert ("Sec-WebSocket-Protocol: hubbub.v1" in head) == (expect is not None)
    assert opened == [None, "hubbub.v1"]
    assert calls == [], "websockets' process_request ran for the common request"
    # An invalid one still gets websockets' refusal with its reason.
    reader, writer = await open_conn(server)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = (await asyncio.wait_for(reader.read(), 5.0)).decode()
    writer.close()
    assert answer.startswith("HTTP/1.1 400 ")
    assert "Sec-WebSocket-Key" in answer
    assert calls, "the invalid request did not reach websockets"


def test_protocol_ids_are_unique_version_4_uuids_without_a_system_call(monkeypatch):
    def no_urandom(n: int) -> bytes:
        raise AssertionError("os.urandom called for a protocol id")

    monkeypatch.setattr(os, "urandom", no_urandom)
    ids = {ws_protocol(Settings(), []).id for _ in range(2000)}
    assert len(ids) == 2000
    assert {i.version for i in ids} == {4}
    assert isinstance(handshake.websockets.protocol.uuid, handshake._Ids)
