"""One generator process: many WebSocket clients on one uvloop event loop.

The parent (:mod:`hubbub.bench.scenarios`) starts one or more of these with
``multiprocessing`` and drives them through a pipe, one command at a time:
``connect`` (open clients and wait for each greeting), ``run`` (send for a
while, sample delivery counters), ``finish`` (wait until every receiver has
everything that was sent, then report the ordering check), ``churn``
(connect / greet / close in a loop), ``close`` and ``exit``.

Fan-out and latency clients are picows clients (Cython frame parsing, one
Python callback per received frame). They speak the seed's plain text
(:class:`Client`) or hubbub's JSON protocol, ``hubbub.v1``
(:class:`ChatClient`: join a room, ``send`` with a client id, wait for the
``ack``; receivers check the ``message`` frames) or the same work as
socket.io events, Engine.IO v4 / Socket.IO v5 over WebSocket spoken
directly (:class:`SocketIOClient`). The connection-rate client is a raw
asyncio protocol: it writes a fixed upgrade request, checks the 101 answer
and ``Sec-WebSocket-Accept``, reads the greeting frame, sends a masked Close
frame and waits for the server's Close and end of stream.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import logging
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from . import proc
from .checker import ECHO_PREFIX, GREETING, SeqChecker, filler

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
monotonic_ns = time.monotonic_ns

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A masked Close frame, code 1000 (RFC 6455 5.5.1): FIN+close, MASK+len 2,
# a fixed masking key, then 0x03e8 xor the key.
_MASK = b"\x5a\xa5\x3c\xc3"
_CLOSE_FRAME = b"\x88\x82" + _MASK + bytes([0x03 ^ 0x5A, 0xE8 ^ 0xA5])
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
            if kind in ("joined", "left", "welcome"):
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


# -- socket.io ---------------------------------------------------------------
#
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


class Handshake(asyncio.Protocol):
    """Connect, upgrade, read the greeting, close: one connection-rate cycle."""

    def __init__(self, request: bytes, accept: bytes, done: asyncio.Future[str]) -> None:
        self.request = request
        self.accept = accept
        self.done = done
        self.buf = b""
        self.state = 0  # 0 response head, 1 greeting, 2 closing, 3 close received
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if self.state == 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end]
            buf = buf[end + 4 :]
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self._finish("bad upgrade response: " + head[:80].decode("latin-1"))
                return
            self.state = 1
        while buf:
            if len(buf) < 2:
                break
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + n:
                break
            payload = buf[pos : pos + n]
            buf = buf[pos + n :]
            opcode = b0 & 0x0F
            if self.state == 1:
                if b0 != 0x81 or payload != GREETING:
                    self._finish(f"bad greeting: {payload[:60]!r}")
                    return
                self.state = 2
                assert self.transport is not None
                self.transport.write(_CLOSE_FRAME)
            elif opcode == 0x8 and self.state == 2:
                self.state = 3
                # The server closes TCP next (RFC 6455 7.1.1); don't wait forever.
                loop = asyncio.get_running_loop()
                self.timer = loop.call_later(1.0, self._finish, "ok-unclean")
        self.buf = buf

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == 3:
            self._finish("ok")
        elif self.state == 2:
            self._finish("ok-unclean")
        else:
            self._finish(f"connection closed before the greeting: {exc or 'EOF'}")

    def _finish(self, outcome: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.done.done():
            self.done.set_result(outcome)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _upgrade_request(host: str, path: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    request = (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode(), host.encode(), key)
    )
    return request, accept


class Worker:
    def __init__(self, conn: Connection, index: int, progress: Any) -> None:
        self.conn = conn
        self.index = index
        self.progress = progress
        self.shared = Shared()
        self.clients: list[Client] = []
        self.senders: list[Sender] = []

    def report(self, value: int) -> None:
        self.progress[self.index] = value

    async def serve(self) -> None:
        while True:
            try:
                cmd, args = await self._recv()
            except (EOFError, OSError):
                return
            if cmd == "exit":
                self.conn.send({"ok": True})
                return
            try:
                result = await getattr(self, "cmd_" + cmd)(**args)
            except Exception as exc:  # reported to the parent, which raises
                logging.getLogger("hubbub.bench").debug("command %s failed", cmd, exc_info=True)
                result = {"error": f"{cmd}: {type(exc).__name__}: {exc}"}
            self.conn.send(result)

    async def _recv(self) -> tuple[str, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        if not self.conn.poll():
            ready = loop.create_future()
            fd = self.conn.fileno()
            loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(fd)
                # add_reader made the pipe non-blocking; big answers need blocking writes.
                os.set_blocking(fd, True)
        msg: tuple[str, dict[str, Any]] = self.conn.recv()
        return msg

    # -- fan-out / latency --------------------------------------------------

    async def cmd_connect(
        self,
        url: str,
        count: int,
        senders: dict[int, int],
        nsenders: int,
        size: int = 100,
        concurrency: int = 128,
        read_buffer: int = 16 * 1024,
        wait_s: float = 30.0,
        protocol: str = "seed",
        room: str = "bench",
        first: int = 0,
    ) -> dict[str, Any]:
        """Open ``count`` clients; client i sends as sender ``senders[i]``.

        ``protocol`` ``hubbub.v1``: each client asks for that subprotocol and
        joins ``room`` as nickname ``c<first + i>``; it counts as greeted
        once the server's ``room`` frame (the join's answer) arrives.
        ``socket.io``: each client connects to ``url``'s host and port at
        ``/socket.io/?EIO=4&transport=websocket`` (whatever path ``url`` has),
        connects the default namespace and joins ``room`` as ``c<first + i>``;
        it counts as greeted once the join is acknowledged.
        """
        chat = protocol == "hubbub.v1"
        sio = protocol == "socket.io"
        if protocol not in ("seed", "hubbub.v1", "socket.io"):
            raise ValueError(f"this worker speaks seed, hubbub.v1 or socket.io, not {protocol!r}")
        headers = {"Sec-WebSocket-Protocol": "hubbub.v1"} if chat else None
        if sio:
            url = socketio_url(url)
        head = filler(size) if senders else b""
        sh = self.shared
        sh.greeted_event = asyncio.Event()
        sh.greet_target = sh.greeted + count
        sem = asyncio.Semaphore(concurrency)
        failed = 0
        base = len(self.clients)
        t_start = time.monotonic()

        async def one(i: int) -> None:
            nonlocal failed
            sender: Sender | None = None
            if i in senders:
                if chat:
                    sender = ChatSender(senders[i], head, room)
                elif sio:
                    sender = SocketIOSender(senders[i], head, room)
                else:
                    sender = Sender(senders[i], head)
                self.senders.append(sender)
            client: Client
            if chat:
                client = ChatClient(sh, nsenders, sender, room, f"c{first + i}")
            elif sio:
                client = SocketIOClient(sh, nsenders, sender, room, f"c{first + i}")
            else:
                client = Client(sh, nsenders, sender)
            async with sem:
                try:
                    await ws_connect(
                        lambda: client,
                        url,
                        websocket_handshake_timeout=wait_s,
                        read_buffer_init_size=read_buffer,
                        extra_headers=headers,
                    )
                except Exception as exc:
                    failed += 1
                    sh.error(f"connect failed: {type(exc).__name__}: {exc}")
                    if sender is not None:
                        self.senders.remove(sender)
                    return
            self.clients.append(client)
            self.report(len(self.clients) - base)

        await asyncio.gather(*(one(i) for i in range(count)))
        connected = len(self.clients) - base
        sh.greet_target -= failed
        if sh.greeted < sh.greet_target:
            try:
                await asyncio.wait_for(sh.greeted_event.wait(), wait_s)
            except TimeoutError:
                sh.error(
                    "not every client got the answer to its join (a 'room' frame)"
                    if chat
                    else "not every client got the ack of its join"
                    if sio
                    else "not every client got the greeting 'Hello, welcome\\n'"
                )
        return {
            "connected": connected,
            "failed": failed,
            "greeted": sum(1 for c in self.clients[base:] if c.greeted),
            "seconds": time.monotonic() - t_start,
            "errors": list(sh.errors),
        }

    async def cmd_run(
        self,
        t_start: int,
        warmup: float,
        duration: float,
        dt: float,
        window: int = 0,
        interval: float = 0.0,
        offsets: dict[int, float] | None = None,
        latency: bool = False,
        drain: float = 10.0,
    ) -> dict[str, Any]:
        """Send from ``t_start`` (monotonic ns) for warmup + duration seconds.

        ``window > 0``: each sender keeps ``window`` messages in flight (a new
        one on each ``server:`` echo). Otherwise each sender sends one
        message every ``interval`` seconds, starting ``offsets[sid]`` after
        ``t_start``. Delivery counters are sampled every ``dt`` seconds.
        """
        loop = asyncio.get_running_loop()
        sh = self.shared
        t0 = t_start + int(warmup * 1e9)
        t_end = t0 + int(duration * 1e9)
        if latency:
            sh.lat = array.array("q")
            sh.lat_from = t0
        step = int(dt * 1e9)
        times = sorted({*range(t_start, t_end, step), t0, t_end})
        samples: list[tuple[int, int]] = []
        finished = loop.create_future()
        clients = self.clients
        lag_max = 0

        def later(when_ns: int, fn: Callable[..., Any], *args: Any) -> None:
            loop.call_later(max(0.0, (when_ns - monotonic_ns()) / 1e9), fn, *args)

        def sample(k: int) -> None:
            total = 0
            for c in clients:
                total += c.count
            samples.append((monotonic_ns(), total))
            self.report(total)
            if k + 1 < len(times):
                later(times[k + 1], sample, k + 1)
            else:
                for s in self.senders:
                    s.running = False
                finished.set_result(None)

        def tick(sender: Sender, k: int) -> None:
            nonlocal lag_max
            if not sender.running:
                return
            due = t_start + int((offsets_[sender.sid] + k * interval) * 1e9)
            if due >= t_end:
                return
            lag_max = max(lag_max, monotonic_ns() - due)
            sender.send()
            later(due + int(interval * 1e9), tick, sender, k + 1)

        def start() -> None:
            for s in self.senders:
                s.running = True
                if window > 0:
                    s.windowed = True
                    for _ in range(window):
                        s.send()
            if window <= 0:
                for s in self.senders:
                    tick(s, 0)

        offsets_ = {int(k): v for k, v in (offsets or {}).items()}
        later(t_start, start)
        later(times[0], sample, 0)
        await finished
        # Let every sender's last messages come back (their echoes).
        deadline = time.monotonic() + drain
        while any(s.inflight > 0 and s.transport is not None for s in self.senders):
            if time.monotonic() > deadline:
                sh.error("some echoes ('server: ...') never came back")
                break
            await asyncio.sleep(0.01)
        return {
            "sent": {s.sid: s.seq for s in self.senders},
            "samples": samples,
            "send_lag_max_ns": lag_max,
        }

    async def cmd_finish(
        self, sent: list[int], wait_s: float = 10.0, quiet_s: float = 1.0
    ) -> dict[str, Any]:
        """Wait until every receiver has the last message of every sender; report.

        Gives up after ``wait_s``, or once nothing has arrived for ``quiet_s``
        (what is still missing then is lost, not late).
        """
        now = time.monotonic()
        deadline = now + wait_s
        sh = self.shared
        seen, seen_at = -1, now
        while True:
            pending = [c for c in self.clients if not c.dropped and not c.chk.complete(sent)]
            now = time.monotonic()
            if not pending or now > deadline:
                break
            total = sum(c.count for c in self.clients)
            if total != seen:
                seen, seen_at = total, now
            elif now - seen_at > quiet_s:
                break
            await asyncio.sleep(0.02)
        expected = sum(sent)
        lat = sh.lat
        sh.lat = None
        return {
            "receivers": len(self.clients),
            "deliveries": sum(c.count for c in self.clients),
            "expected": expected * len(self.clients),
            "lost": sum(c.chk.lost(sent) for c in self.clients),
            "duplicated": sum(c.chk.duplicated for c in self.clients),
            "reordered": sum(c.chk.reordered for c in self.clients),
            "malformed": sum(c.malformed for c in self.clients),
            "disconnected": sum(1 for c in self.clients if c.dropped),
            "echo_errors": sum(s.echo_bad for s in self.senders)
            + sum(s.seq - s.echoes for s in self.senders),
            "incomplete": len(pending),
            "latencies": lat.tobytes() if lat is not None else b"",
            "errors": list(sh.errors),
        }

    async def cmd_close(self, wait_s: float = 5.0) -> dict[str, Any]:
        """Close every client (Close frame, then wait for the server to end TCP)."""
        clients = self.clients
        self.clients = []
        self.senders = []
        transports = []
        for c in clients:
            c.closing = True
            t = c.transport
            if t is not None and not t.is_disconnected:
                if not t.is_close_frame_sent:
                    t.send_close(WSCloseCode.OK)
                transports.append(t)
        if transports:
            waits = [asyncio.ensure_future(t.wait_disconnected()) for t in transports]
            _, pending = await asyncio.wait(waits, timeout=wait_s)
            for fut in pending:
                fut.cancel()
            for t in transports:
                if not t.is_disconnected:
                    t.disconnect(graceful=False)
            # Collect results (wait_disconnected re-raises local failures).
            for fut in waits:
                if not fut.cancelled():
                    fut.exception()
        self.shared = Shared()
        self.report(0)
        return {"closed": len(clients)}

    # -- connection rate -----------------------------------------------------

    async def cmd_churn(
        self,
        url: str,
        t_start: int,
        warmup: float,
        duration: float,
        dt: float,
        concurrency: int = 64,
        cycle_s: float = 5.0,
    ) -> dict[str, Any]:
        """``concurrency`` loops of connect, upgrade, greeting, close until the end."""
        loop = asyncio.get_running_loop()
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host_header = parts.netloc
        # Over loopback, spread the connections over many source addresses: one
        # address has ~28k ephemeral ports, fewer than this scenario opens within
        # TIME_WAIT's 60 s, and a SYN that lands on a 4-tuple still in TIME_WAIT
        # on the server side is sometimes answered late (a 1 s SYN retransmit).
        sources = [f"127.0.0.{i}" for i in range(2, 64)] if host.startswith("127.") else [None]
        source_index = 0
        t0 = t_start + int(warmup * 1e9)
        t_end = t0 + int(duration * 1e9)
        step = int(dt * 1e9)
        times = sorted({*range(t_start, t_end, step), t0, t_end})
        samples: list[tuple[int, int]] = []
        sh = self.shared
        done = 0
        unclean = 0
        failed = 0

        async def cycle() -> None:
            nonlocal done, unclean, failed, source_index
            while monotonic_ns() < t_end:
                request, accept = _upgrade_request(host_header, path)
                fut: asyncio.Future[str] = loop.create_future()
                transport = None
                source = sources[source_index % len(sources)]
                source_index += 1
                try:
                    async with asyncio.timeout(cycle_s):
                        transport, _ = await loop.create_connection(
                            lambda: Handshake(request, accept, fut),  # noqa: B023
                            host,
                            port,
                            local_addr=(source, 0) if source else None,
                        )
                        outcome = await fut
                except (TimeoutError, OSError) as exc:
                    if transport is not None:
                        transport.abort()
                    failed += 1
                    sh.error(f"handshake cycle failed: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.01)
                    continue
                if outcome == "ok":
                    done += 1
                elif outcome == "ok-unclean":
                    done += 1
                    unclean += 1
                else:
                    failed += 1
                    sh.error(outcome)

        def sample(k: int) -> None:
            samples.append((monotonic_ns(), done))
            self.report(done)
            if k + 1 < len(times):
                loop.call_later(max(0.0, (times[k + 1] - monotonic_ns()) / 1e9), sample, k + 1)

        await asyncio.sleep(max(0.0, (t_start - monotonic_ns()) / 1e9))
        loop.call_later(max(0.0, (times[0] - monotonic_ns()) / 1e9), sample, 0)
        await asyncio.gather(*(cycle() for _ in range(concurrency)))
        # The last sample fires at t_end; cycles may still finish just after.
        while True:
            if len(samples) >= len(times):
                break
            await asyncio.sleep(0.005)
        return {
            "samples": samples,
            "completed": done,
            "unclean": unclean,
            "failed": failed,
            "errors": list(sh.errors),
        }


def worker_main(
    conn: Connection,
    index: int,
    progress: Any,
    cpus: list[int] | None,
    nofile: int | None,
) -> None:
    """Entry point of a generator process (multiprocessing target)."""
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    proc.raise_nofile(nofile)
    logging.getLogger("picows").setLevel(logging.CRITICAL)
    try:
        uvloop.run(Worker(conn, index, progress).serve())
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
