"""The per-connection protocol object and the closing handshake's direct path.

* ``ws_protocol`` copies the attributes ``__init__`` gives a protocol (made once
  per set of arguments) instead of running it per connection: the copy must be
  what ``__init__`` makes, with its own id and its own mutable parts.
* A whole Close frame of an open connection is answered without websockets'
  frame serializer and discard parser; what it ends up with is checked against
  websockets in test_websocket_frames.py (``test_direct_frames_end_where_...``).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import websockets.protocol
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from hubbub.config import Settings
from hubbub.transport import handshake
from hubbub.transport.handshake import HubbubServerProtocol, ws_protocol

_MUTABLE = ("reader", "events", "writes", "extensions")


def _masked_close(payload: bytes, key: bytes = b"\x5a\xa5\x3c\xc3") -> bytes:
    return (
        bytes([0x88, 0x80 | len(payload)])
        + key
        + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    )


@pytest.mark.parametrize("compression", [False, True])
@pytest.mark.parametrize("subprotocols", [[], ["hubbub.v1", "x"]])
def test_a_copied_protocol_is_what_init_makes(compression, subprotocols):
    s = Settings(compression=compression, max_message_size=4321)
    made = HubbubServerProtocol(
        extensions=ws_protocol(s, subprotocols).available_extensions,
        subprotocols=list(subprotocols) or None,
        max_size=s.max_message_size,
        logger=ws_protocol(s, subprotocols).logger,
        state=State.OPEN,
    )
    one, two = ws_protocol(s, subprotocols), ws_protocol(s, subprotocols)
    assert type(one) is HubbubServerProtocol
    assert one.__dict__.keys() | {"_id"} == made.__dict__.keys()
    for name, value in made.__dict__.items():
        if name == "_id":  # HubbubServerProtocol.id
            assert one.id != two.id and one.id.version == 4 and one.id == one.id
            assert made.id == value and "_id" in one.__dict__
        elif name == "reader":
            assert type(one.reader) is StreamReader and one.reader is not two.reader
            assert (one.reader.buffer, one.reader.eof) == (bytearray(), False)
        else:
            assert one.__dict__[name] == value, name
    for name in _MUTABLE:
        assert one.__dict__[name] is not two.__dict__[name], name
    # One connection's events and writes never show in another's.
    one.receive_frames(_masked_close(b"\x03\xe8"))
    assert two.events_received() == [] and two.data_to_send() == []
    assert two.state is State.OPEN


def test_init_runs_once_per_set_of_arguments(monkeypatch):
    s = Settings(compression=False, max_message_size=1234)
    ws_protocol(s, ["a"])

    def no_init(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("__init__ ran for a second connection")

    monkeypatch.setattr(ServerProtocol, "__init__", no_init)
    proto = ws_protocol(s, ["a"])
    assert proto.state is State.OPEN and proto.max_message_size == 1234


def test_the_id_is_made_when_read(monkeypatch):
    s = Settings(compression=False, max_message_size=2345)
    ws_protocol(s, [])

    def no_uuid() -> Any:
        raise AssertionError("a UUID was made for a new protocol")

    monkeypatch.setattr(websockets.protocol.uuid, "uuid4", no_uuid)
    monkeypatch.setattr(handshake, "_new_id", no_uuid)
    proto = ws_protocol(s, [])
    monkeypatch.undo()
    first = proto.id
    assert first.version == 4 and proto.id is first


@pytest.mark.parametrize(
    "payload", [b"", b"\x03\xe8", b"\x03\xe8bye", b"\x0f\xa0" + "é".encode() * 61]
)
def test_a_close_frame_is_answered_without_websockets_machinery(monkeypatch, payload):
    proto = ws_protocol(Settings(compression=False), [])

    def no(self: Any, *args: Any) -> Any:
        raise AssertionError("websockets' generic close handling ran")

    monkeypatch.setattr(Protocol, "send_frame", no)
    monkeypatch.setattr(Protocol, "discard", no)
    proto.receive_frames(_masked_close(payload))
    assert [(f.opcode, f.data) for f in proto.events_received()] == [(Opcode.CLOSE, payload)]
    echo = Frame(Opcode.CLOSE, payload).serialize(mask=False)
    assert proto.data_to_send() == [echo, b""]
    assert proto.state is State.CLOSING and proto.eof_sent
    assert proto.close_sent is proto.close_rcvd and proto.close_rcvd_then_sent
    code = struct.unpack("!H", payload[:2])[0] if payload else 1005
    assert proto.close_rcvd.code == code
    monkeypatch.undo()
    # What follows is discarded, and the end of the stream closes it, as in websockets.
    proto.receive_frames(b"\x81\x85anything")
    assert proto.events_received() == [] and proto.data_to_send() == []
    proto.receive_eof()
    assert proto.state is State.CLOSED and proto.data_to_send() == []
