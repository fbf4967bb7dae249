"""Frames in and out without websockets' per-frame machinery, checked against it.

* ``HubbubServerProtocol.receive_frames`` reads whole frames directly (hubbub's
  direct path) and hands everything else to websockets' parser: whatever the
  bytes and however they are split into reads, the protocol must end up where
  ``receive_data`` alone takes it (the same events, bytes to send, state, close
  frames and error).
* ``encode_frame`` builds data frames itself: the same bytes as websockets'
  ``Frame.serialize``.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WSRequest

from hubbub.config import Settings
from hubbub.transport.handshake import ws_protocol
from hubbub.transport.websocket import encode_frame

MAX = 1000  # max_message_size of the protocols compared


def _frame(op: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True,
           length_form: int = 0, key: bytes = b"\x0f\xf0\x5a\xa5") -> bytes:  # fmt: skip
    """One client frame, byte by byte (so that invalid ones can be made too)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | op])
    n = len(payload)
    bit = 0x80 if mask else 0
    if length_form == 0 and n < 126:
        head += bytes([bit | n])
    elif length_form <= 1 and n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _protocol(direct: bool) -> Any:
    proto = ws_protocol(Settings(max_message_size=MAX, compression=False), [])
    proto.direct = direct
    return proto


def _state(proto: Any) -> tuple[Any, ...]:
    return (
        [(f.opcode, f.data, f.fin) for f in proto.events_received()],
        proto.data_to_send(),
        proto.state,
        proto.close_rcvd,
        proto.close_sent,
        proto.close_rcvd_then_sent,
        type(proto.parser_exc),
        proto.current_size,
    )


def _compare(chunks: list[bytes], eof: bool) -> None:
    direct, general = _protocol(True), _protocol(False)
    for chunk in chunks:
        direct.receive_frames(chunk)
        general.receive_data(chunk)
        assert _state(direct) == _state(general), chunk
    if eof:
        direct.receive_eof()
        general.receive_eof()
        assert _state(direct) == _state(general)


_PAYLOAD = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.sampled_from([b"\xff\xfe", b"\xe2\x82", b"x" * 130, b"y" * (MAX + 1)]),
)
_CLOSE = st.one_of(
    st.sampled_from([b"", b"\x03", b"\x03\xe8", b"\x03\xe8bye", b"\x03\xe8\xff", b"\x03\xed"]),
    st.integers(0, 5000).map(lambda c: struct.pack("!H", c)),
)


@st.composite
def _frames(draw: Any) -> bytes:
    op = draw(st.sampled_from([1, 1, 1, 2, 8, 9, 10, 0, 3, 11]))
    payload = draw(_CLOSE if op == 8 else _PAYLOAD)
    odd = draw(st.integers(0, 9)) == 0  # now and then: FIN, RSV, mask or length form off
    return _frame(
        op,
        payload,
        key=draw(st.binary(min_size=4, max_size=4)),
        fin=not odd or draw(st.booleans()),
        rsv=draw(st.integers(0, 7)) if odd else 0,
        mask=not odd or draw(st.booleans()),
        length_form=draw(st.integers(0, 2)) if odd else 0,
    )


@settings(max_examples=1000, deadline=None)
@given(st.lists(_frames(), max_size=6), st.lists(st.integers(0, 400), max_size=4), st.booleans())
@example([_frame(1, b'{"type":"join"}'), _frame(8, b"\x03\xe8")], [], True)
def test_direct_frames_end_where_websockets_ends(frames, cuts, eof):
    stream = b"".join(frames)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    _compare([c for c in chunks if c], eof)


def test_the_common_frames_take_the_direct_path(monkeypatch):
    proto = _protocol(True)

    def no_parser(self: Any, data: bytes) -> None:
        raise AssertionError("websockets' parser ran")

    monkeypatch.setattr(type(proto), "receive_data", no_parser)
    proto.receive_frames(_frame(1, b"hello") + _frame(2, b"\x00" * 300) + _frame(9, b"p"))
    assert [(f.opcode, f.data) for f in proto.events_received()] == [
        (Opcode.TEXT, b"hello"),
        (Opcode.BINARY, b"\x00" * 300),
        (Opcode.PING, b"p"),
    ]
    assert proto.data_to_send() == [Frame(Opcode.PONG, b"p").serialize(mask=False)]
    proto.receive_frames(_frame(8, b"\x03\xe8bye"))
    assert proto.close_rcvd.code == 1000 and proto.close_rcvd.reason == "bye"
    assert proto.data_to_send() == [Frame(Opcode.CLOSE, b"\x03\xe8bye").serialize(mask=False), b""]
    assert proto.direct  # every byte so far was read directly


def test_a_connection_with_an_extension_reads_through_websockets(monkeypatch):
    """permessage-deflate decodes frames in websockets' parser: no direct path."""
    proto = ws_protocol(Settings(compression=True), [])
    request = WSRequest(
        "/",
        Headers(
            {
                "Host": "t",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Extensions": "permessage-deflate",
            }
        ),
    )
    proto.process_request(request)
    assert proto.extensions
    seen: list[bytes] = []
    real = type(proto).receive_data

    def spy(self: Any, data: bytes) -> None:
        seen.append(data)
        real(self, data)

    monkeypatch.setattr(type(proto), "receive_data", spy)
    data = _frame(1, b"plain")
    proto.receive_frames(data)
    assert seen == [data]
    assert [(f.opcode, f.data) for f in proto.events_received()] == [(Opcode.TEXT, b"plain")]


@pytest.mark.parametrize(
    "data",
    [
        _frame(1, b"part", fin=False),  # a fragment
        _frame(1, b"x", mask=False),  # unmasked: websockets fails it (1002)
        _frame(1, b"x", rsv=4),  # RSV1 without an extension
        _frame(1, b"x" * (MAX + 1)),  # too big: 1009
        _frame(8, b"\x03"),  # a close frame of one byte
        _frame(8, b"\x03\xe8\xff"),  # a reason that is not UTF-8
        _frame(1, b"whole")[:5],  # not complete yet
    ],
)
def test_anything_else_goes_to_websockets_for_good(data):
    proto = _protocol(True)
    proto.receive_frames(data)
    assert not proto.direct
    general = _protocol(False)
    general.receive_data(data)
    assert _state(proto) == _state(general)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
@pytest.mark.parametrize("kind", ["text", "bytes", "opcode"])
def test_encode_frame_is_websockets_serialize(size, kind):
    if kind == "text":
        data: Any = "é" * (size // 2) + "x" * (size % 2)
        expected = Frame(Opcode.TEXT, data.encode())
        assert encode_frame(data) == expected.serialize(mask=False)
    elif kind == "bytes":
        data = os.urandom(size)
        assert encode_frame(data) == Frame(Opcode.BINARY, data).serialize(mask=False)
        assert encode_frame(bytearray(data)) == Frame(Opcode.BINARY, data).serialize(mask=False)
    else:
        data = os.urandom(size)
        assert encode_frame(data, Opcode.TEXT) == Frame(Opcode.TEXT, data).serialize(mask=False)


def test_encode_frame_control_frames_keep_websockets_checks():
    assert encode_frame(b"ab", Opcode.PING) == Frame(Opcode.PING, b"ab").serialize(mask=False)
    with pytest.raises(Exception, match="control frame too long"):
        encode_frame(b"a" * 126, Opcode.PING)
