"""The generator's fan-out and latency clients: picows WebSocket clients, one per connection.

:class:`Client` speaks the seed's plain text: it counts the greeting, checks
every ``from <fd>: …`` delivery against its sender's sequence (lost,
duplicated, reordered) and times it in the latency window. :class:`Sender`
is the sending side of the few clients that send (a window of messages in
flight, or a fixed rate). :class:`ChatClient` and :class:`ChatSender` do the
same work in hubbub's JSON protocol, ``hubbub.v1``. The socket.io clients are
in :mod:`hubbub.bench.sioclients`.
"""

from __future__ import annotations

import array
import asyncio
import os
import time

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport

from .checker import ECHO_PREFIX, GREETING, SeqChecker

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
monotonic_ns = time.monotonic_ns

_MAX_ERRORS = 8


class Shared:
    """State shared by all clients of one worker."""

    __slots__ = ("errors", "greet_target", "greeted", "greeted_event", "lat", "lat_from", "lost")

    def __init__(self) -> None:
        self.greeted = 0
        self.greet_target = 0
        self.greeted_event: asyncio.Event | None = None
        #: Latencies (ns) of deliveries sent at or after lat_from; None: not recorded.
        self.lat: array.array[int] | None = None
        self.lat_from = 0
        #: Connections that went away while they were supposed to be open.
        self.lost = 0
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        if len(self.errors) < _MAX_ERRORS and text not in self.errors:
            self.errors.append(text)


class Sender:
    """The sending side of one client: a window of messages in flight, or a fixed rate."""

    __slots__ = (
        "echo_bad",
        "echo_last",
        "echoes",
        "head",
        "inflight",
        "running",
        "seq",
        "sid",
        "transport",
        "windowed",
    )

    def __init__(self, sid: int, head: bytes) -> None:
        self.sid = sid
        self.head = head
        self.seq = 0
        self.inflight = 0
        self.echoes = 0
        self.echo_last = 0
        self.echo_bad = 0
        self.running = False
        self.windowed = False
        self.transport: WSTransport | None = None

    def send(self) -> None:
        seq = self.seq = self.seq + 1
        self.inflight += 1
        self.transport.send(TEXT, self.frame(seq))  # type: ignore[union-attr]

    def body(self, seq: int) -> bytes:
        """Message ``seq``'s text: the filler, then ``<send ns>|<sender>|<seq>``."""
        return self.head + b"%020d|%04d|%010d" % (monotonic_ns(), self.sid, seq)

    def frame(self, seq: int) -> bytes:
        """The text frame's payload that carries message ``seq`` (the seed: the body itself)."""
        return self.body(seq)

    def echo(self, seq: int) -> None:
        self.echoes += 1
        self.inflight -= 1
        if seq == self.echo_last + 1:
            self.echo_last = seq
        else:
            self.echo_bad += 1
        if self.running and self.windowed:
            self.send()


class Client(WSListener):  # type: ignore[misc]
    """One receiving client (and, for a few, a sender too)."""

    __slots__ = (
        "chk",
        "closing",
        "count",
        "dropped",
        "greeted",
        "malformed",
        "sender",
        "shared",
        "transport",
    )

    def __init__(self, shared: Shared, senders: int, sender: Sender | None) -> None:
        super().__init__()
        self.shared = shared
        self.chk = SeqChecker(senders)
        self.sender = sender
        self.count = 0
        self.malformed = 0
        self.greeted = False
        self.closing = False
        self.dropped = False
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.sender is not None:
            self.sender.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != TEXT or not frame.fin:
            self._other(transport, frame)
            return
        data = frame.get_payload_as_bytes()
        try:
            first = data[0]
            if first == 102:  # b"from <fd>: <body>": one delivery
                self._delivery(data)
                return
            if first == 115 and self.sender is not None and data.startswith(ECHO_PREFIX):
                self.sender.echo(int(data[-10:]))
                return
            if not self.greeted and data == GREETING:
                self._greet()
                return
        except (ValueError, IndexError):
            pass
        self.malformed += 1
        self.shared.error(f"unexpected frame: {data[:60]!r}")

    def _delivery(self, body: str | bytes) -> None:
        """One message of the run received; ``body`` ends ``<send ns>|<sender>|<seq>``.

        Checks the sender's sequence (lost, duplicated, reordered), counts the
        delivery and, in the latency window, records its latency.
        """
        s = int(body[-15:-11])
        q = int(body[-10:])
        chk = self.chk
        last = chk.last
        if q == last[s] + 1:
            last[s] = q
        else:
            chk.irregular(s, q)
        self.count += 1
        lat = self.shared.lat
        if lat is not None:
            ts = int(body[-36:-16])
            if ts >= self.shared.lat_from:
                lat.append(monotonic_ns() - ts)

    def _greet(self) -> None:
        """This client is ready (greeting, join answer or join ack received)."""
        self.greeted = True
        sh = self.shared
        sh.greeted += 1
        if sh.greeted >= sh.greet_target and sh.greeted_event is not None:
            sh.greeted_event.set()

    def _other(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == CLOSE:
            if not self.closing:
                self.shared.error(
                    f"server closed a connection: {frame.get_close_code()} "
                    f"{frame.get_close_reason()!r}"
                )
            if not transport.is_close_frame_sent:
                transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        self.malformed += 1
        self.shared.error(f"unexpected frame type {frame.msg_type} fin={frame.fin}")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closing:
            self.dropped = True
            self.shared.lost += 1
        if self.sender is not None:
            self.sender.running = False


class ChatSender(Sender):
    """A hubbub.v1 sender: ``send`` frames whose client id is ``<nonce>.<sender>-<seq>``.

    The nonce (random per sender) keeps ids unique across runs against the
    same server: the server acks an id it has already stored as a duplicate
    and does not deliver it again (its retry dedupe), which would otherwise
    make a second run look like message loss.
    """

    __slots__ = ("prefix",)

    def __init__(self, sid: int, head: bytes, room: str) -> None:
        super().__init__(sid, head)
        # The filler is plain ASCII without quotes or backslashes: it needs no
        # JSON escaping, so the frame is built with one bytes format.
        nonce = os.urandom(6).hex().encode()
        self.prefix = b'{"type":"send","room":"%s","id":"%s.%d-' % (room.encode(), nonce, sid)

    def frame(self, seq: int) -> bytes:
        return b'%s%d","text":"%s"}' % (self.prefix, seq, self.body(seq))


class _Frame(msgspec.Struct):
    """The fields of a hubbub.v1 server frame the generator looks at (others are ignored)."""

    type: str
    text: str = ""
    id: str = ""
    seq: int = 0
    code: str = ""
    message: str = ""


_decode_frame = msgspec.json.Decoder(_Frame).decode


class ChatClient(Client):
    """A hubbub.v1 client: joins the room on connect; checks ``message`` frames.

    Besides the per-sender check, every receiver checks the room's sequence
    numbers: each ``message`` must carry a higher ``seq`` than the one
    before (the server's total order), else it counts as malformed.
    """

    __slots__ = ("join", "room_seq")

    def __init__(
        self, shared: Shared, senders: int, sender: Sender | None, room: str, nick: str
    ) -> None:
        super().__init__(shared, senders, sender)
        self.join = b'{"type":"join","room":"%s","nick":"%s"}' % (room.encode(), nick.encode())
        self.room_seq = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        super().on_ws_connected(transport)
        transport.send(TEXT, self.join)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != TEXT or not frame.fin:
            self._other(transport, frame)
            return
        data = frame.get_payload_as_bytes()
        try:
            f = _decode_frame(data)
            kind = f.type
            if kind == "message":
                if f.seq <= self.room_seq:
                    self.malformed += 1
                    self.shared.error(f"room seq {f.seq} after {self.room_seq}")
                self.room_seq = f.seq
                self._delivery(f.text)
                return
            if kind == "ack" and self.sender is not None:
                self.sender.echo(int(f.id[f.id.rindex("-") + 1 :]))
                return
            if kind in ("joined", "left", "renamed", "presence", "welcome"):
                return
            if kind == "room" and not self.greeted:
                self._greet()
                return
            if kind == "error":
                self.malformed += 1
                self.shared.error(f"error frame: {f.code}: {f.message}")
                sender = self.sender
                if sender is not None and f.id:
                    # One of ours was refused (e.g. rate_limited): no ack will
                    # come for it, and the server would refuse more; stop.
                    sender.inflight -= 1
                    sender.running = False
                return
        except (ValueError, IndexError, msgspec.DecodeError):
            pass
        self.malformed += 1
        self.shared.error(f"unexpected frame: {data[:60]!r}")
