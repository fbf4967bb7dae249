"""The seed's chat room, for plain WebSocket clients.

For any client that does not ask for a subprotocol this is the Swoole
tutorial's ``socket.php``, byte for byte: a greeting on open, every text
message pushed to every plain client as ``from <fd>: <text>``, the sender
answered ``server: <text>`` once, and ``client-<fd> closed`` logged when a
connection goes.

Amplification: one message of a plain client makes the server send
``1 + N`` frames (N plain clients), so a client sending as fast as it can
makes the server send N+1 times what it sends. ``--seed-rate`` (messages per
second per client, token bucket of ``--seed-burst``) bounds that; a message
over the rate is dropped and its sender alone gets ``server: rate limited``
(at most once per second, so the reply cannot amplify either). Off (0) by
default: then the room is the seed's, byte for byte.

Several processes (``--broker redis://...``: several nodes, or ``hubbub serve
--workers N``). The room is one across them: a plain message is pushed to
this process's plain clients at once (exactly as with one process) and
published on the broker channel :data:`CHANNEL` (``-seed``: never a room, room
names start with a letter or digit); every other process pushes what it
receives to its own plain clients. The payload is one byte (``t`` text, ``b``
binary), then the ``from <fd>: <text>`` line as it goes on the wire. Per
sender the order holds everywhere (the broker keeps one publisher's order);
messages of senders on different processes may interleave differently on
different processes. Delivery across processes is the broker's: at most once
while Redis is unreachable (there is no history to fill a gap from). The
first plain client of a process is greeted once the process follows the
channel (one Redis round trip; at most the broker's ``subscribe_timeout``),
so a greeted client misses nothing published afterwards; a client that sends
before its greeting is greeted at once. ``<fd>`` is unique within one
``hubbub serve --workers N`` (each worker numbers its connections
``i+1, i+1+N, ...``), not across separately started nodes. With the local
broker none of this runs: no payload is built, nothing is published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .. import metrics
from ..broker import Broker, BrokerError, Deliver, LocalBroker
from ..core.ratelimit import TokenBucket
from ..server import WEBSOCKET_OPCODE_BINARY, WEBSOCKET_OPCODE_TEXT, Frame, Server

log = logging.getLogger("hubbub.chat")

GREETING = "Hello, welcome\n"
#: What a plain client over --seed-rate gets instead of its message's echo.
RATE_LIMITED = "server: rate limited"
#: The broker channel of the plain room (not a valid room name: never a real room).
CHANNEL = "-seed"
_TEXT, _BINARY = b"t", b"b"
_OPCODE = {_TEXT[0]: WEBSOCKET_OPCODE_TEXT, _BINARY[0]: WEBSOCKET_OPCODE_BINARY}


class SeedRoom:
    """The plain-text room: every plain connection is in it.

    ``SeedRoom(server)`` is one process's room; ``SeedRoom(server, broker)`` or
    :meth:`attach_broker` spans every process on a shared broker.
    """

    def __init__(self, server: Server, broker: Broker | None = None) -> None:
        self.server = server
        self.fds: dict[int, None] = {}  # insertion-ordered set
        # --seed-rate: a bucket per plain client, and when it was last told.
        self.buckets: dict[int, TokenBucket] = {}
        self.told: dict[int, float] = {}
        self.clock = time.monotonic
        #: The shared broker (None: this process is the whole room).
        self.broker: Broker | None = None
        #: Plain clients waiting for the channel subscription before their greeting.
        self.waiting: dict[int, None] = {}
        self.following = False
        self._subscribing: asyncio.Task[None] | None = None
        self._publishing = False
        #: Frames from other processes that were not a seed payload (dropped).
        self.bad_frames = 0
        if broker is not None:
            self.attach_broker(broker)

    def attach_broker(self, broker: Broker, deliver: Deliver | None = None) -> Deliver:
        """Span every process on ``broker`` (nothing changes for the local broker).

        Returns what to start the broker with: ``deliver`` with :data:`CHANNEL`'s
        frames taken out for this room (``broker.start(seed.attach_broker(broker,
        app.deliver))``); :meth:`deliver` itself when ``deliver`` is None.
        """
        if not isinstance(broker, LocalBroker):
            self.broker = broker
        if deliver is None:
            return self.deliver
        if self.broker is None:
            return deliver
        rest = deliver

        def route(room: str, payload: bytes, seq: int | None) -> None:
            if room == CHANNEL:
                self.deliver(room, payload, seq)
            else:
                rest(room, payload, seq)

        return route

    # -- the plain clients ---------------------------------------------------------

    def open(self, fd: int) -> None:
        if self.broker is not None and not self.following:
            self.waiting[fd] = None
            if self._subscribing is None:
                self._subscribing = asyncio.ensure_future(self._follow())
            return
        self._admit(fd)

    def _admit(self, fd: int) -> None:
        self.fds[fd] = None
        settings = self.server.settings
        if settings.seed_rate > 0:
            self.buckets[fd] = TokenBucket(
                settings.seed_rate, max(1.0, settings.seed_burst), self.clock()
            )
        self.server.push(fd, GREETING)

    async def _follow(self) -> None:
        assert self.broker is not None
        try:
            await self.broker.subscribe(CHANNEL)
            self.following = True
        except BrokerError as exc:
            # Greet them anyway (this process's room works); the next open retries.
            log.warning("plain room: cannot follow the other processes: %s", exc)
        finally:
            self._subscribing = None
            waiting, self.waiting = self.waiting, {}
            for fd in waiting:
                self._admit(fd)

    def message(self, frame: Frame) -> None:
        server = self.server
        if frame.fd in self.waiting:  # spoke before its greeting: greet it now
            del self.waiting[frame.fd]
            self._admit(frame.fd)
        bucket = self.buckets.get(frame.fd)
        if bucket is not None:
            now = self.clock()
            if not bucket.take(now):
                if now - self.told.get(frame.fd, -1.0) >= 1.0:
                    self.told[frame.fd] = now
                    metrics.rate_limited.inc("seed")
                    server.push(frame.fd, RATE_LIMITED)
                return
        if isinstance(frame.data, str):
            line = f"from {frame.fd}: {frame.data}"
            server.push_many(self.fds, line)
            if self.broker is not None:
                self._publish(_TEXT + line.encode())
            server.push(frame.fd, f"server: {frame.data}")
        else:
            data = b"from %d: " % frame.fd + frame.data
            server.push_many(self.fds, data)
            if self.broker is not None:
                self._publish(_BINARY + data)
            server.push(frame.fd, b"server: " + frame.data)

    def close(self, fd: int) -> None:
        self.fds.pop(fd, None)
        self.waiting.pop(fd, None)
        self.buckets.pop(fd, None)
        self.told.pop(fd, None)
        log.info("client-%d closed", fd)

    # -- other processes -------------------------------------------------------------

    def _publish(self, payload: bytes) -> None:
        assert self.broker is not None
        # The broker hands the frame to this process's deliver inside publish
        # (base.Broker's contract): it was pushed here already, deliver skips it.
        self._publishing = True
        try:
            self.broker.publish(CHANNEL, payload, None)
        finally:
            self._publishing = False

    def deliver(self, room: str, payload: bytes, seq: Any = None) -> None:
        """A plain message from another process: push it to this one's plain clients."""
        if self._publishing or room != CHANNEL:
            return
        opcode = _OPCODE.get(payload[0]) if payload else None
        if opcode is None:
            self.bad_frames += 1
            if self.bad_frames == 1 or self.bad_frames % 1000 == 0:
                log.warning("plain room: dropped %d malformed frame(s)", self.bad_frames)
            return
        self.server.push_many(self.fds, payload[1:], opcode)
