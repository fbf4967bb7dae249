"""The storm scenarios' clients and worker commands: many clients joining (or resuming) at once.

:class:`StormClient` is one picows client that, in ``hubbub.v1``, joins one
room on connect (with ``since`` and ``epoch`` when it resumes) and checks its
room's sequence numbers with a :class:`~hubbub.bench.checker.RoomSeqCheck`;
it keeps the member count the server last told it (``room``, ``presence``)
and can walk the member list with ``who``. In ``seed`` mode (the baseline,
any plain WebSocket server) it only waits for the greeting.

:class:`Poster` is one extra connection per room that posts messages (the
room's history, and what the reconnecting clients missed) and waits for
their acks. :class:`StormCommands` are the worker commands
(:mod:`hubbub.bench.worker` mixes them into its command loop).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from .checker import GREETING, RoomSeqCheck
from .closing import close_all

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
_MAX_ERRORS = 8
#: Members asked for per ``who`` page (the protocol's largest page).
WHO_PAGE = 1000


class _Frame(msgspec.Struct):
    """The fields of a hubbub.v1 server frame the storm clients look at."""

    type: str
    room: str = ""
    seq: int = 0
    since: int = 0
    count: int = -1
    epoch: str = ""
    members: list[str] = msgspec.field(default_factory=list)
    has_more: bool = False
    id: str = ""
    code: str = ""
    message: str = ""
    nick: str = ""
    old: str = ""
    joined: list[dict[str, str]] = msgspec.field(default_factory=list)
    left: list[dict[str, str]] = msgspec.field(default_factory=list)
    renamed: list[dict[str, str]] = msgspec.field(default_factory=list)
    large: bool = False


_decode = msgspec.json.Decoder(_Frame).decode
_encode = msgspec.json.encode


class StormShared:
    """What the storm clients of one worker share: readiness count, errors."""

    __slots__ = ("errors", "last_ready_ns", "ready", "ready_event", "target")

    def __init__(self) -> None:
        self.ready = 0
        self.target = 0
        self.ready_event: asyncio.Event | None = None
        self.last_ready_ns = 0
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        if len(self.errors) < _MAX_ERRORS and text not in self.errors:
            self.errors.append(text)


class StormClient(WSListener):  # type: ignore[misc]
    """One storm client: joins ``room`` (or resumes it), checks its seqs, keeps the count."""

    __slots__ = (
        "chat",
        "chk",
        "closing",
        "count",
        "dropped",
        "epoch",
        "known",
        "members",
        "nick",
        "ready",
        "resets",
        "room",
        "shared",
        "transport",
        "who_done",
    )

    def __init__(self, shared: StormShared, chat: bool, room: str, nick: str) -> None:
        super().__init__()
        self.shared = shared
        self.chat = chat
        self.room = room
        self.nick = nick
        self.chk = RoomSeqCheck()
        self.epoch = ""
        self.count = -1
        #: The member list of a small room, kept from `room` and the changes
        #: (joined, left, renamed, presence: applied idempotently, as
        #: docs/protocol.md says); None for a large room (its count only).
        self.known: set[str] | None = None
        self.ready = False
        self.closing = False
        self.dropped = False
        self.resets = 0
        self.members: list[str] = []
        self.who_done: asyncio.Future[list[str]] | None = None
        self.transport: WSTransport | None = None

    def reset_connection(self) -> None:
        """Before a reconnect: not ready, not dropped, the same room and check."""
        self.ready = False
        self.closing = False
        self.dropped = False
        self.transport = None

    def join_frame(self) -> bytes:
        frame: dict[str, Any] = {"type": "join", "room": self.room, "nick": self.nick}
        if self.chk.resuming:
            frame["since"] = self.chk.since
            frame["epoch"] = self.epoch
        return _encode(frame)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.chat:
            transport.send(TEXT, self.join_frame())

    def _ready(self) -> None:
        if self.ready:
            return
        self.ready = True
        sh = self.shared
        sh.ready += 1
        sh.last_ready_ns = time.monotonic_ns()
        if sh.ready >= sh.target and sh.ready_event is not None:
            sh.ready_event.set()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == CLOSE:
            self._closed(transport, frame)
            return
        data = frame.get_payload_as_bytes()
        if not self.chat:
            if data == GREETING:
                self._ready()
            return  # the seed baseline only waits for its greeting
        try:
            f = _decode(data)
        except (msgspec.DecodeError, ValueError):
            self.shared.error(f"unexpected frame: {data[:60]!r}")
            return
        self._chat_frame(f)

    def _chat_frame(self, f: _Frame) -> None:
        kind = f.type
        chk = self.chk
        if kind == "message":
            chk.message(f.seq)
        elif kind in ("presence", "joined", "left", "renamed"):
            self._presence(f)
        elif kind == "room":
            self.epoch = f.epoch
            self.count = f.count
            self.known = None if f.has_more else set(f.members)
            chk.room(f.seq)
            if not chk.resuming:
                self._ready()
        elif kind == "resumed":
            chk.resumed(f.since, f.seq, f.count)
            self._ready()
        elif kind == "members":
            self._members(f)
        elif kind == "reset":
            self.resets += 1
            self.shared.error(f"reset instead of a replay: {f.message or f.code}")
            chk.resuming = False
            self._ready()
        elif kind == "error":
            self.shared.error(f"error frame: {f.code}: {f.message}")
            if not self.ready:
                self._ready()  # counted as an error, not waited for
        # welcome, typing: nothing to check

    def _presence(self, f: _Frame) -> None:
        """Apply a change of the members: remove, then add; a large room's count as told."""
        if f.type == "presence" and (f.large or self.known is None):
            self.known = None
            self.count = f.count
            return
        if self.known is None:
            return  # a large room: single changes do not come, its count does
        gone = [m["nick"] for m in f.left] + [r["old"] for r in f.renamed]
        came = [r["nick"] for r in f.renamed] + [m["nick"] for m in f.joined]
        if f.type == "joined":
            came.append(f.nick)
        elif f.type == "left":
            gone.append(f.nick)
        elif f.type == "renamed":
            gone.append(f.old)
            came.append(f.nick)
        self.known.difference_update(gone)
        self.known.update(came)
        self.count = len(self.known)

    def who(self) -> asyncio.Future[list[str]]:
        """Walk the room's member list with ``who`` pages; the future gets every nickname."""
        loop = asyncio.get_running_loop()
        self.members = []
        self.who_done = loop.create_future()
        self._ask_who(None)
        return self.who_done

    def _ask_who(self, after: str | None) -> None:
        frame: dict[str, Any] = {"type": "who", "room": self.room, "limit": WHO_PAGE}
        if after is not None:
            frame["after"] = after
        assert self.transport is not None
        self.transport.send(TEXT, _encode(frame))

    def _members(self, f: _Frame) -> None:
        self.members += f.members
        if f.has_more and f.members:
            self._ask_who(f.members[-1])
        elif self.who_done is not None and not self.who_done.done():
            self.who_done.set_result(self.members)

    def _closed(self, transport: WSTransport, frame: WSFrame) -> None:
        if not self.closing:
            self.shared.error(
                f"server closed a connection: {frame.get_close_code()} {frame.get_close_reason()!r}"
            )
        if not transport.is_close_frame_sent:
            transport.send_close(frame.get_close_code())
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closing:
            self.dropped = True
        self.transport = None


class Poster(StormClient):
    """One extra connection per room that posts messages and waits for their acks."""

    __slots__ = ("acked", "nonce", "sent", "top", "waiter")

    def __init__(self, shared: StormShared, room: str, nick: str) -> None:
        super().__init__(shared, True, room, nick)
        self.nonce = os.urandom(6).hex()
        self.sent = 0
        self.acked = 0
        self.top = 0
        self.waiter: asyncio.Future[None] | None = None

    def post(self, n: int) -> asyncio.Future[None]:
        """Send ``n`` messages; the future is done when all are acked."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        assert self.transport is not None
        target = self.sent + n
        for _ in range(n):
            self.sent += 1
            self.transport.send(
                TEXT,
                _encode(
                    {
                        "type": "send",
                        "room": self.room,
                        "id": f"{self.nonce}-{self.sent}",
                        "text": f"history {self.sent} of {self.room}",
                    }
                ),
            )
        if self.acked >= target:
            self.waiter.set_result(None)
        return self.waiter

    def _chat_frame(self, f: _Frame) -> None:
        if f.type == "ack":
            self.acked += 1
            self.top = max(self.top, f.seq)
            if self.acked >= self.sent and self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
            return
        if f.type == "room":
            self.top = max(self.top, f.seq)
        super()._chat_frame(f)


async def _open(
    client: StormClient, url: str, headers: dict[str, str] | None, wait_s: float
) -> str | None:
    """Connect one client; None, or why it failed."""
    try:
        await ws_connect(
            lambda: client,
            url,
            websocket_handshake_timeout=wait_s,
            read_buffer_init_size=4096,
            extra_headers=headers,
        )
    except Exception as exc:
        return f"connect failed: {type(exc).__name__}: {exc}"
    return None


async def _open_all(
    clients: list[StormClient],
    url: str,
    headers: dict[str, str] | None,
    wait_s: float,
    concurrency: int,
    failures: list[str],
    shared: StormShared,
) -> None:
    """Connect ``clients``, ``concurrency`` handshakes in flight: that many tasks,
    each taking the next client when its last one is connected (no task and no
    semaphore per client: Python work on the generator's one core)."""
    todo = iter(clients)

    async def opener() -> None:
        for c in todo:
            why = await _open(c, url, headers, wait_s)
            if why is not None:
                failures.append(why)
                shared.target -= 1

    await asyncio.gather(*(opener() for _ in range(max(1, min(concurrency, len(clients))))))


class StormCommands:
    """The storm scenarios' worker commands (mixed into :class:`hubbub.bench.worker.Worker`)."""

    storm: list[StormClient]
    posters: dict[str, Poster]
    storm_shared: StormShared

    def _storm_init(self) -> None:
        self.storm = []
        self.posters = {}
        self.storm_shared = StormShared()

    async def cmd_storm_open(
        self,
        url: str,
        protocol: str,
        rooms: list[str] | None = None,
        count: int = 0,
        first: int = 0,
        concurrency: int = 512,
        wait_s: float = 60.0,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Open ``count`` new clients (client i joins ``rooms[i % len(rooms)]`` as
        ``s<first + i>``), or with ``resume`` reconnect every existing one (``join``
        with ``since`` and ``epoch``), all at once (``concurrency`` handshakes in
        flight); answer when every one is ready (its ``room``, its ``resumed``, or the
        seed's greeting) or after ``wait_s``."""
        chat = protocol == "hubbub.v1"
        headers = {"Sec-WebSocket-Protocol": "hubbub.v1"} if chat else None
        sh = self.storm_shared = StormShared()
        if resume:
            clients = self.storm
            for c in clients:
                c.shared = sh
                c.reset_connection()
                if chat and c.chk.last >= 0:
                    c.chk.resume_from(c.chk.last)
        else:
            names = rooms or ["storm"]
            clients = [
                StormClient(sh, chat, names[i % len(names)], f"s{first + i}") for i in range(count)
            ]
            self.storm += clients
        sh.target = len(clients)
        sh.ready_event = asyncio.Event()
        failures: list[str] = []
        t0 = time.monotonic_ns()
        await _open_all(clients, url, headers, wait_s, concurrency, failures, sh)
        if sh.ready < sh.target:
            try:
                await asyncio.wait_for(sh.ready_event.wait(), wait_s)
            except TimeoutError:
                sh.error(f"only {sh.ready} of {sh.target} clients were ready after {wait_s:g} s")
        for why in failures[:3]:
            sh.error(why)
        return {
            "clients": len(clients),
            "failed": len(failures),
            "ready": sh.ready,
            "seconds": (sh.last_ready_ns - t0) / 1e9 if sh.ready else None,
            "errors": list(sh.errors),
        }

    async def cmd_storm_post(
        self, url: str, rooms: list[str], count: int, wait_s: float = 30.0
    ) -> dict[str, Any]:
        """Post ``count`` messages in each room (one poster connection per room, opened
        again if the server restarted); answer each room's newest seq."""
        headers = {"Sec-WebSocket-Protocol": "hubbub.v1"}
        sh = StormShared()
        sh.ready_event = asyncio.Event()
        for room in rooms:
            p = self.posters.get(room)
            if p is None or p.transport is None:
                p = self.posters[room] = Poster(sh, room, f"poster-{room}")
                sh.target += 1
                why = await _open(p, url, headers, wait_s)
                if why is not None:
                    raise RuntimeError(f"the poster of {room} could not connect: {why}")
        deadline = time.monotonic() + wait_s
        while sh.ready < sh.target:
            if time.monotonic() > deadline:
                raise RuntimeError("the posters' joins were not answered")
            await asyncio.sleep(0.01)
        waits = [self.posters[room].post(count) for room in rooms]
        await asyncio.wait_for(asyncio.gather(*waits), wait_s)
        return {"tops": {room: self.posters[room].top for room in rooms}}

    async def cmd_storm_sync(self, tops: dict[str, int], wait_s: float = 30.0) -> dict[str, Any]:
        """Wait until every client has its room's newest message (``tops``)."""
        deadline = time.monotonic() + wait_s
        behind = self.storm
        while time.monotonic() < deadline:
            behind = [c for c in behind if not c.dropped and c.chk.last < tops.get(c.room, 0)]
            if not behind:
                break
            await asyncio.sleep(0.02)
        return {"behind": len(behind)}

    async def cmd_storm_counts(
        self, expected: dict[str, int], wait_s: float = 5.0
    ) -> dict[str, Any]:
        """Wait until every client's last known member count is its room's ``expected``;
        answer how many are not, and the counts they hold."""
        deadline = time.monotonic() + wait_s
        t0 = time.monotonic()
        off = self.storm
        while True:
            off = [c for c in off if c.count != expected.get(c.room, -1)]
            if not off or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        return {
            "off": len(off),
            "seconds": time.monotonic() - t0,
            "counts": dict(Counter(c.count for c in off).most_common(5)),
        }

    async def cmd_storm_who(self, rooms: list[str], wait_s: float = 30.0) -> dict[str, Any]:
        """Each room's member list, walked with ``who`` by one of its ready clients."""
        out: dict[str, list[str]] = {}
        for room in rooms:
            c = next((c for c in self.storm if c.room == room and c.transport), None)
            if c is None:
                out[room] = []
                continue
            out[room] = await asyncio.wait_for(c.who(), wait_s)
        return {"members": out}

    async def cmd_storm_expect_close(self) -> dict[str, Any]:
        """The server is about to restart: closes from it are expected, not errors."""
        for c in [*self.storm, *self.posters.values()]:
            c.closing = True
        return {"ok": True}

    async def cmd_storm_wait_disconnected(self, wait_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + wait_s
        everyone = [*self.storm, *self.posters.values()]
        while time.monotonic() < deadline:
            if all(c.transport is None for c in everyone):
                break
            await asyncio.sleep(0.02)
        return {"connected": sum(1 for c in everyone if c.transport is not None)}

    async def cmd_storm_check(self, tops: dict[str, int]) -> dict[str, Any]:
        """Every client's check against its room's newest seq (``tops``)."""
        clients = self.storm
        return {
            "clients": len(clients),
            "gaps": sum(c.chk.gaps for c in clients),
            "duplicated": sum(c.chk.duplicated for c in clients),
            "bad_resume": sum(c.chk.bad_resume for c in clients),
            "lost": sum(c.chk.lost(tops[c.room]) for c in clients if c.room in tops),
            "resets": sum(c.resets for c in clients),
            "dropped": sum(1 for c in clients if c.dropped),
            "errors": list(self.storm_shared.errors),
        }

    async def cmd_storm_close(self, wait_s: float = 10.0) -> dict[str, Any]:
        """Close every storm client and poster (Close frame, then the end of TCP)."""
        everyone = [*self.storm, *self.posters.values()]
        self._storm_init()
        await close_all(everyone, wait_s)
        return {"closed": len(everyone)}
