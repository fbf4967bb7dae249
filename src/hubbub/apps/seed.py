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
"""

from __future__ import annotations

import logging
import time

from .. import metrics
from ..core.ratelimit import TokenBucket
from ..server import Frame, Server

log = logging.getLogger("hubbub.chat")

GREETING = "Hello, welcome\n"
#: What a plain client over --seed-rate gets instead of its message's echo.
RATE_LIMITED = "server: rate limited"


class SeedRoom:
    """The plain-text room: every plain connection is in it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.fds: dict[int, None] = {}  # insertion-ordered set
        # --seed-rate: a bucket per plain client, and when it was last told.
        self.buckets: dict[int, TokenBucket] = {}
        self.told: dict[int, float] = {}
        self.clock = time.monotonic

    def open(self, fd: int) -> None:
        self.fds[fd] = None
        settings = self.server.settings
        if settings.seed_rate > 0:
            self.buckets[fd] = TokenBucket(
                settings.seed_rate, max(1.0, settings.seed_burst), self.clock()
            )
        self.server.push(fd, GREETING)

    def message(self, frame: Frame) -> None:
        server = self.server
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
            server.push_many(self.fds, f"from {frame.fd}: {frame.data}")
            server.push(frame.fd, f"server: {frame.data}")
        else:
            server.push_many(self.fds, b"from %d: " % frame.fd + frame.data)
            server.push(frame.fd, b"server: " + frame.data)

    def close(self, fd: int) -> None:
        self.fds.pop(fd, None)
        self.buckets.pop(fd, None)
        self.told.pop(fd, None)
        log.info("client-%d closed", fd)
