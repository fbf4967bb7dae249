"""The generator's socket.io clients: Engine.IO v4 / Socket.IO v5 over a WebSocket, spoken
directly by picows clients (the same work as :mod:`hubbub.bench.clients` as socket.io
events)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import msgspec
from picows import WSFrame, WSTransport

from .clients import TEXT, Client, Sender, Shared

# Engine.IO v4 / Socket.IO v5 over a WebSocket, one packet per text frame: the
# Engine.IO packet type is the first character (0 open, 1 close, 2 ping,
# 3 pong, 4 message), a message's Socket.IO packet type the second (0
# connect, 1 disconnect, 2 event, 3 ack, 4 connect error), then an optional
# ack id (decimal) and the JSON data. The session:
#
#   server 0{"sid":..,"pingInterval":..}   client 40 (connect namespace "/")
#   server 40{"sid":..}                    client 420["join",{"room":..,"nick":..}]
#   server 430[{"room":..,"members":..}]   the client's greeting
#   client 42<seq>["send",{"room":..,"id":"<seq>","text":..}]
#   server 42["message",{"room":..,"seq":..,"id":..,"nick":..,"text":..,..}]
#          to every member of the room, then 43<seq>[{"id":"<seq>","seq":..}]
#   server 2 (ping, every pingInterval)    client 3 (pong; else the server
#                                          drops the client after pingTimeout)

SOCKETIO_PATH = "/socket.io/"
SOCKETIO_QUERY = "EIO=4&transport=websocket"
_SIO_MESSAGE = b'42["message",'
_SIO_ACK = b"43"
_SIO_OPEN = b"0{"
_SIO_CONNECTED = b"40"
_SIO_PING = b"2"
_SIO_PONG = b"3"
#: The ack id of ``join``; a sender's ``send`` number n has ack id n (from 1).
_JOIN_ACK_ID = 0


def socketio_url(url: str) -> str:
    """``url`` with its path and query replaced by Engine.IO v4's WebSocket endpoint."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, SOCKETIO_PATH, SOCKETIO_QUERY, ""))


class _SioMessage(msgspec.Struct):
    """The fields of a ``message`` event the generator looks at (others are ignored)."""

    room: str
    seq: int
    text: str


class _SioEvent(msgspec.Struct, array_like=True):
    """``["message", {...}]``: an event packet's JSON array (after ``42``)."""

    name: str
    data: _SioMessage


class _SioJoinAck(msgspec.Struct):
    room: str
    members: int


class _SioSendAck(msgspec.Struct):
    id: str
    seq: int


_decode_sio_event = msgspec.json.Decoder(_SioEvent).decode
_decode_sio_join_ack = msgspec.json.Decoder(tuple[_SioJoinAck]).decode
_decode_sio_send_ack = msgspec.json.Decoder(tuple[_SioSendAck]).decode


class SocketIOSender(Sender):
    """A socket.io sender: ``42<n>["send",{"room":..,"id":"<n>","text":..}]`` for message n.

    The ack id and the client id are both the sender's sequence number: the
    ack ``43<n>[{"id":"<n>","seq":..}]`` is this sender's echo (acks must
    come back in order, see :meth:`Sender.echo`).
    """

    __slots__ = ("prefix",)

    def __init__(self, sid: int, head: bytes, room: str) -> None:
        super().__init__(sid, head)
        # The filler is plain ASCII without quotes or backslashes: it needs no
        # JSON escaping, so the frame is built with one bytes format.
        self.prefix = b'["send",{"room":%s,"id":"' % msgspec.json.encode(room)

    def frame(self, seq: int) -> bytes:
        return b'42%d%s%d","text":"%s"}]' % (seq, self.prefix, seq, self.body(seq))


class SocketIOClient(Client):
    """A socket.io client: connects the default namespace, joins the room, checks ``message``.

    Counts as greeted once the ``join`` is acknowledged. Like
    :class:`ChatClient`, every receiver also checks the room's sequence
    numbers (each ``message`` must carry a higher ``seq`` than the one before,
    and the client's room), and answers every Engine.IO ping.
    """

    __slots__ = ("join", "room", "room_seq")

    def __init__(
        self, shared: Shared, senders: int, sender: Sender | None, room: str, nick: str
    ) -> None:
        super().__init__(shared, senders, sender)
        self.room = room
        self.join = b"42%d%s" % (
            _JOIN_ACK_ID,
            msgspec.json.encode(("join", {"room": room, "nick": nick})),
        )
        self.room_seq = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != TEXT or not frame.fin:
            self._other(transport, frame)
            return
        data = frame.get_payload_as_bytes()
        try:
            if data.startswith(_SIO_MESSAGE):
                m = _decode_sio_event(data[2:]).data
                if m.seq <= self.room_seq or m.room != self.room:
                    self.malformed += 1
                    self.shared.error(f"room {m.room!r} seq {m.seq} after {self.room_seq}")
                self.room_seq = m.seq
                self._delivery(m.text)
                return
            if data.startswith(_SIO_ACK):
                if self._ack(data):
                    return
            elif data == _SIO_PING:
                transport.send(TEXT, _SIO_PONG)
                return
            elif data.startswith(_SIO_OPEN):
                transport.send(TEXT, _SIO_CONNECTED)
                return
            elif data.startswith(_SIO_CONNECTED):
                transport.send(TEXT, self.join)
                return
        except (ValueError, IndexError, msgspec.DecodeError):
            pass
        self.malformed += 1
        self.shared.error(f"unexpected frame: {data[:60]!r}")

    def _ack(self, data: bytes) -> bool:
        """One ack packet, ``43<id>[...]``: False if it is not one we expect."""
        start = data.index(b"[", 2)
        ack_id = int(data[2:start])
        sender = self.sender
        if ack_id == _JOIN_ACK_ID:
            (join,) = _decode_sio_join_ack(data[start:])
            if self.greeted or join.room != self.room:
                return False
            self._greet()
            return True
        if sender is None:
            return False
        (ack,) = _decode_sio_send_ack(data[start:])
        if ack.id != str(ack_id):
            return False
        sender.echo(ack_id)
        return True
