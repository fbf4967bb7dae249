"""The seed's chat room, for plain WebSocket clients.

For any client that does not ask for a subprotocol this is the Swoole
tutorial's ``socket.php``, byte for byte: a greeting on open, every text
message pushed to every plain client as ``from <fd>: <text>``, the sender
answered ``server: <text>`` once, and ``client-<fd> closed`` logged when a
connection goes.
"""

from __future__ import annotations

import logging

from ..server import Frame, Server

log = logging.getLogger("hubbub.chat")

GREETING = "Hello, welcome\n"


class SeedRoom:
    """The plain-text room: every plain connection is in it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.fds: dict[int, None] = {}  # insertion-ordered set

    def open(self, fd: int) -> None:
        self.fds[fd] = None
        self.server.push(fd, GREETING)

    def message(self, frame: Frame) -> None:
        server = self.server
        if isinstance(frame.data, str):
            server.push_many(self.fds, f"from {frame.fd}: {frame.data}")
            server.push(frame.fd, f"server: {frame.data}")
        else:
            server.push_many(self.fds, b"from %d: " % frame.fd + frame.data)
            server.push(frame.fd, b"server: " + frame.data)

    def close(self, fd: int) -> None:
        self.fds.pop(fd, None)
        log.info("client-%d closed", fd)
