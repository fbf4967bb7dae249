"""The broker interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: ``deliver(room, payload, seq)``: hand an encoded frame to this node's
#: members of ``room``; ``seq`` is the message's sequence number, or None for
#: ephemeral frames (presence, typing).
Deliver = Callable[[str, bytes, int | None], None]


class Broker(Protocol):
    async def start(self, deliver: Deliver) -> None:
        """Start delivering published frames (from any node) to ``deliver``."""
        ...

    def publish(self, room: str, payload: bytes, seq: int | None = None) -> None:
        """Publish one encoded frame to a room, on every node.

        Invariant: frames published by one node for one room are delivered
        in the order they were published.
        """
        ...

    async def close(self) -> None: ...
