"""The clients of ``hubbub bench --transports``: one sender, N receivers per transport.

The sender is a hubbub.v1 WebSocket member of the room that sends message
``i`` (text ``bench <i, 8 digits> <filler>``) at a fixed rate and writes down
its send time. Each receiver gets the same messages by one carriage:

* :class:`WsReceiver`: a WebSocket member (picows); the server pushes.
* :class:`SseReceiver`: a fallback session (``POST /v1/sessions?transport=sse``),
  frames pushed as ``text/event-stream`` events on a GET that stays open.
* :class:`LongPollReceiver`: a fallback session (``transport=poll``), a GET
  ``/poll?after=n`` that the server holds until it has frames.
* :class:`ShortPollReceiver`: no session, no membership: it asks
  ``GET /api/rooms/{room}/messages?since=<seq>`` every ``interval`` seconds
  ("La la la, any news?"), whether or not there is news.

Every receipt goes to the cell's :class:`Tally`: exactly-once and order per
receiver, and the latency (receipt time minus the sender's send time, one
clock: ``time.monotonic_ns`` in one process). Every byte goes to a
:class:`~hubbub.bench.httpclient.Meter` (HTTP) or is read from the sockets'
kernel counters (WebSocket).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import random
import socket
import time
from typing import Any

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from .httpclient import HttpClient, HttpError, Meter, tcp_bytes

monotonic_ns = time.monotonic_ns
TEXT = WSMsgType.TEXT
PREFIX = "bench "
#: Largest SSE event (and unparsed stream tail) a receiver keeps: a frame is at most
#: the server's max_send_buffer, and the bench's frames are far smaller.
MAX_EVENT = 1024 * 1024
#: The history page a short poller asks for (the API's maximum).
PAGE = 200
_MAX_ERRORS = 10
#: Seconds a short poller waits for an answer before it counts a timeout and asks again.
POLL_WAIT = 30.0
#: Seconds a long poller waits between polls while the receivers are still joining.
SETUP_PAUSE = 1.0
#: JSON frames a receiver must decode; the others (presence: N joins make N^2 of them)
#: are skipped by their first bytes.
_WANTED = (b'{"type":"message"', b'{"type":"room"', b'{"type":"error"')


class Frame(msgspec.Struct):
    """The fields of a hubbub.v1 server frame the bench reads (the rest is skipped)."""

    type: str
    text: str = ""
    room: str = ""
    code: str = ""
    message: str = ""


class PollAnswer(msgspec.Struct):
    frames: list[Frame]
    last: int
    closed: dict[str, Any] | None = None


class PageMessage(msgspec.Struct):
    seq: int
    text: str


class Page(msgspec.Struct):
    messages: list[PageMessage]
    has_more: bool = False


class Opened(msgspec.Struct):
    session: str


_frame = msgspec.json.Decoder(Frame)
_poll = msgspec.json.Decoder(PollAnswer)
_page = msgspec.json.Decoder(Page)
_opened = msgspec.json.Decoder(Opened)
_encode = msgspec.json.encode


def message_text(index: int, size: int) -> str:
    """Message ``index``'s text, ``size`` characters: ``bench <8 digits> <filler>``."""
    head = f"{PREFIX}{index:08d} "
    return (head + "x" * size)[: max(size, len(head))]


class Tally:
    """Receipts of one cell: per receiver and message, how often it arrived; latencies."""

    def __init__(self, receivers: int, messages: int) -> None:
        self.counts = [bytearray(messages) for _ in range(receivers)]
        self.last = array.array("l", [-1]) * receivers
        self.sent_ns = array.array("q", [0]) * messages
        #: Latency (ns) of every receipt, and the message it was.
        self.lat = array.array("q")
        self.lat_index = array.array("l")
        self.deliveries = 0
        self.reordered = 0
        self.unknown = 0
        self.missing = receivers * messages
        self.complete = asyncio.Event()
        if self.missing == 0:
            self.complete.set()
        self.errors: list[str] = []
        #: Short pollers: pages that held messages at or before ``since`` (the server
        #: ignored ``since``, so pages were filtered here).
        self.since_ignored = 0
        #: Short polls the server did not answer within POLL_WAIT (it was saturated).
        self.timeouts = 0
        #: Short polls the server answered 503 (shedding load).
        self.refused = 0

    def error(self, text: str) -> None:
        if len(self.errors) < _MAX_ERRORS and text not in self.errors:
            self.errors.append(text)

    def deliver(self, rid: int, text: str) -> None:
        now = monotonic_ns()
        if not text.startswith(PREFIX):
            return
        try:
            idx = int(text[6:14])
            counts = self.counts[rid]
            seen = counts[idx]
        except (ValueError, IndexError):
            self.unknown += 1
            return
        if seen == 0:
            self.missing -= 1
            if self.missing == 0:
                self.complete.set()
        if seen < 255:
            counts[idx] = seen + 1
        if idx < self.last[rid]:
            self.reordered += 1
        self.last[rid] = idx
        self.deliveries += 1
        self.lat.append(now - self.sent_ns[idx])
        self.lat_index.append(idx)

    def check(self) -> dict[str, int]:
        """Lost (never arrived), duplicated (arrived more than once), reordered."""
        lost = sum(c.count(0) for c in self.counts)
        once = sum(c.count(1) for c in self.counts)
        total = sum(len(c) for c in self.counts)
        return {
            "expected": total,
            "received": self.deliveries,
            "lost": lost,
            "duplicated": total - lost - once,
            "reordered": self.reordered,
            "unknown": self.unknown,
        }


class Receiver:
    """What every receiver has: a number, the tally, a ready flag, the room."""

    kind = ""

    def __init__(self, rid: int, tally: Tally, host: str, port: int, room: str) -> None:
        self.rid = rid
        self.tally = tally
        self.host = host
        self.port = port
        self.room = room
        self.ready = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    def on_frame(self, frame: Frame) -> None:
        kind = frame.type
        if kind == "message":
            if frame.room == self.room:
                self.tally.deliver(self.rid, frame.text)
        elif kind == "room":
            self.ready.set()
        elif kind == "error":
            self.tally.error(f"{self.kind}: error frame {frame.code}: {frame.message}")

    def on_raw(self, data: bytes) -> None:
        """A frame's JSON text: decoded only if it is one the bench reads."""
        if data.startswith(_WANTED):
            try:
                self.on_frame(_frame.decode(data))
            except msgspec.DecodeError as exc:
                self.tally.error(f"{self.kind}: bad frame {data[:60]!r}: {exc}")

    def go_live(self) -> None:
        """Every receiver has joined: from now on, behave as a real client would."""

    def join_line(self) -> bytes:
        return _encode({"type": "join", "room": self.room, "nick": f"r{self.rid}"})

    async def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closing = True
        if self.task is not None:
            self.task.cancel()

    def wire(self) -> tuple[int, int]:
        """(bytes out, bytes in) not counted by a Meter (WebSocket sockets); else (0, 0)."""
        return 0, 0


class _WsListener(WSListener):  # type: ignore[misc]
    def __init__(self, owner: WsReceiver | Sender) -> None:
        super().__init__()
        self.owner = owner

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == TEXT and frame.fin:
            self.owner.on_raw(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            if not self.owner.closing:
                self.owner.tally.error(
                    f"ws: server closed {frame.get_close_code()} {frame.get_close_reason()!r}"
                )
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.owner.closing:
            self.owner.tally.error("ws: connection lost")


async def _ws_open(url: str, listener: _WsListener) -> tuple[WSTransport, socket.socket]:
    transport, _ = await ws_connect(
        lambda: listener,
        url,
        websocket_handshake_timeout=30,
        extra_headers={"Sec-WebSocket-Protocol": "hubbub.v1"},
    )
    sock = transport.underlying_transport.get_extra_info("socket")
    return transport, sock


class WsReceiver(Receiver):
    """A WebSocket member of the room: frames pushed by the server."""

    kind = "ws"
    transport: WSTransport | None = None
    sock: socket.socket | None = None

    async def open(self) -> None:
        self.transport, self.sock = await _ws_open(
            f"ws://{self.host}:{self.port}/", _WsListener(self)
        )
        self.transport.send(TEXT, self.join_line())

    def close(self) -> None:
        super().close()
        if self.transport is not None:
            self.transport.disconnect()

    def wire(self) -> tuple[int, int]:
        return (0, 0) if self.sock is None else tcp_bytes(self.sock)


class _SessionReceiver(Receiver):
    """A fallback transport session (the spec of docs/transports.md)."""

    transport = ""

    def __init__(self, rid: int, tally: Tally, host: str, port: int, room: str, meter: Meter):
        super().__init__(rid, tally, host, port, room)
        self.http = HttpClient(host, port, meter)
        self.session = ""

    async def _start_session(self) -> None:
        status, body = await self.http.request(
            "POST", f"/v1/sessions?transport={self.transport}&protocol=hubbub.v1", within=30
        )
        if status != 201:
            raise HttpError(f"POST /v1/sessions: {status} {body[:100]!r}")
        self.session = _opened.decode(body).session

    async def _post_join(self) -> None:
        status, body = await self.http.request(
            "POST",
            f"/v1/sessions/{self.session}/frames",
            self.join_line() + b"\n",
            within=30,
            retry=False,
        )
        if status != 202:
            raise HttpError(f"POST frames: {status} {body[:100]!r}")

    def close(self) -> None:
        super().close()
        self.http.close()


class SseReceiver(_SessionReceiver):
    """Frames pushed as server-sent events on one long GET; client frames by POST."""

    kind = "sse"
    transport = "sse"

    async def open(self) -> None:
        self.buf = b""
        self.last_id = 0
        await self._start_session()
        self.task = asyncio.create_task(self._stream())
        await self._post_join()
        # The join's connection would sit idle: the server closes idle keep-alive
        # connections anyway; a client frame later opens a new one.
        if self.http.conn is not None:
            self.http.conn.close()

    async def _stream(self) -> None:
        for _ in range(5):  # reconnects of the stream, with Last-Event-ID
            headers = b"Accept: text/event-stream\r\n"
            if self.last_id:
                headers += b"Last-Event-ID: %d\r\n" % self.last_id
            try:
                status = await self.http.stream(
                    f"/v1/sessions/{self.session}/events", self._chunk, headers
                )
            except (OSError, HttpError) as exc:
                status = 0
                self.tally.error(f"sse: stream failed: {exc}")
            if self.closing or status != 200:
                if status not in (0, 200):
                    self.tally.error(f"sse: GET events answered {status}")
                return
            self.buf = b""

    def _chunk(self, chunk: bytes) -> None:
        buf = self.buf + chunk if self.buf else chunk
        if b"\n\n" not in buf:
            if len(buf) > MAX_EVENT:
                self.tally.error("sse: event over MAX_EVENT bytes")
                buf = b""
            self.buf = buf
            return
        *events, self.buf = buf.split(b"\n\n")
        for event in events:
            self._event(event)

    def _event(self, event: bytes) -> None:
        name = b""
        data: list[bytes] = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"id:"):
                self.last_id = int(line[3:])
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data:
            return  # a comment (": ping")
        if name in (b"", b"message"):
            self.on_raw(b"\n".join(data))
        elif not self.closing:
            self.tally.error(f"sse: event {name.decode(errors='replace')}: {data[0][:80]!r}")


class LongPollReceiver(_SessionReceiver):
    """One GET at a time that the server holds until it has frames (or poll_timeout)."""

    kind = "longpoll"
    transport = "poll"

    async def open(self) -> None:
        self.after = 0
        self.live = asyncio.Event()
        await self._start_session()
        await self._post_join()
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        target = f"/v1/sessions/{self.session}/poll?after="
        while not self.closing:
            try:
                status, body = await self.http.request("GET", target + str(self.after), within=120)
            except (OSError, HttpError, TimeoutError) as exc:
                self.tally.error(f"longpoll: poll failed: {type(exc).__name__}: {exc}")
                return
            if status != 200:
                self.tally.error(f"longpoll: poll answered {status}: {body[:100]!r}")
                return
            answer = _poll.decode(body)
            for frame in answer.frames:
                self.on_frame(frame)
            self.after = answer.last
            if answer.closed is not None:
                if not self.closing:
                    self.tally.error(f"longpoll: session closed: {answer.closed}")
                return
            if not self.live.is_set():
                await self._pace()

    async def _pace(self) -> None:
        """During the setup, wait a little between polls: each join of N receivers
        wakes every held poll, N^2/2 answers in all; paced, the presence frames of a
        second's joins come in one answer (and the session stays alive)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.live.wait(), SETUP_PAUSE)

    def go_live(self) -> None:
        self.live.set()


class ShortPollReceiver(Receiver):
    """Asks the history API for news every ``interval`` seconds, news or not."""

    kind = "poll"

    def __init__(
        self, rid: int, tally: Tally, host: str, port: int, room: str, meter: Meter, interval: float
    ) -> None:
        super().__init__(rid, tally, host, port, room)
        self.http = HttpClient(host, port, meter)
        self.interval = interval
        self.since = 0

    async def open(self) -> None:
        # The keep-alive connection is opened now, a few receivers at a time like the
        # other transports' (N pollers opening theirs within one interval would be
        # refused by the server's max_pending_handshakes). The room is new: since=0
        # is "after everything", so the poller is ready without a first poll (a
        # saturated server must not stop the setup: the windows measure it).
        await self.http.connect()
        self.ready.set()
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        # A random phase: N pollers started together would otherwise ask in bursts.
        loop = asyncio.get_running_loop()
        due = loop.time() + random.uniform(0, self.interval)
        while not self.closing:
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                while await self._poll():
                    pass
            except TimeoutError:
                # The server is too slow to answer (saturated): counted, and asked
                # again on a new connection (the late answer is not waited for).
                self.tally.timeouts += 1
                self.http.close()
            except (OSError, HttpError) as exc:
                self.tally.error(f"poll: request failed: {type(exc).__name__}: {exc}")
                return
            # The next tick; one that passed while the answer was late is not made up.
            due = max(due + self.interval, loop.time())

    async def _poll(self) -> bool:
        """One request; True if the page said there is more right away."""
        status, body = await self.http.request(
            "GET",
            f"/api/rooms/{self.room}/messages?since={self.since}&limit={PAGE}",
            within=POLL_WAIT,
        )
        if status == 404:
            return False  # the room is not stored yet: no news
        if status == 503:
            # The server sheds load (too many connections opening): counted; asked
            # again at the next tick, as a browser's timer would.
            self.tally.refused += 1
            return False
        if status != 200:
            raise HttpError(f"GET messages answered {status}: {body[:100]!r}")
        page = _page.decode(body)
        since = self.since
        fresh = [m for m in page.messages if m.seq > since]
        if len(fresh) < len(page.messages):
            self.tally.since_ignored += 1
        for m in sorted(fresh, key=lambda m: m.seq):
            self.tally.deliver(self.rid, m.text)
            self.since = m.seq
        return page.has_more and bool(fresh)

    def close(self) -> None:
        super().close()
        self.http.close()


class Sender:
    """The room's one sender: a hubbub.v1 WebSocket member sending at a fixed rate."""

    kind = "sender"
    transport: WSTransport | None = None

    def __init__(self, tally: Tally, host: str, port: int, room: str, size: int) -> None:
        self.tally = tally
        self.url = f"ws://{host}:{port}/"
        self.room = room
        self.size = size
        self.ready = asyncio.Event()
        self.closing = False
        self.sent = 0

    def on_raw(self, data: bytes) -> None:
        if data.startswith(b'{"type":"room"'):
            self.ready.set()
        elif data.startswith(b'{"type":"error"'):
            self.tally.error(f"sender: {data[:120]!r}")

    async def open(self) -> None:
        self.transport, self.sock = await _ws_open(self.url, _WsListener(self))
        join = {"type": "join", "room": self.room, "nick": "sender"}
        self.transport.send(TEXT, _encode(join))
        await asyncio.wait_for(self.ready.wait(), 30)

    async def run(self, count: int, rate: float, start: float) -> None:
        """Send messages 0..count-1, message i at ``start + i / rate`` (loop time)."""
        loop = asyncio.get_running_loop()
        transport = self.transport
        assert transport is not None, "open() first"
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = {
                "type": "send",
                "room": self.room,
                "id": f"m{i}",
                "text": message_text(i, self.size),
            }
            data = _encode(frame)
            self.tally.sent_ns[i] = monotonic_ns()
            transport.send(TEXT, data)
            self.sent = i + 1

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.disconnect()
