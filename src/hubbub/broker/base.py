"""The broker interface: how a room's frames reach every node with members in it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: ``deliver(room, payload, seq)``: hand an encoded frame to this node's
#: members of ``room``; ``seq`` is the message's sequence number, or None for
#: ephemeral frames (presence, typing).
Deliver = Callable[[str, bytes, int | None], None]


class BrokerError(Exception):
    """The broker could not do what was asked (not started, Redis unreachable...)."""


class Broker(Protocol):
    """Fan-out of encoded frames to every node, in publication order per publisher.

    Contract, for every implementation (tests/broker/test_contract.py):

    * **Local delivery**: ``publish`` hands the frame to this node's ``deliver``
      at once, inside the call, whatever the state of any network behind the broker
      (members on the publishing node never wait for, or depend on, a round trip).
    * **Remote delivery**: a frame published on one node reaches ``deliver`` on
      every other node subscribed to its room, exactly the bytes published, with
      the same room and ``seq``, once in normal operation.
    * **Ordering**: frames one node publishes to one room reach every node in the
      order they were published. Frames of different publishers may interleave
      differently on different nodes: message order across nodes comes from
      ``seq`` (assigned by the store), not from the broker.
    * **Subscriptions**: a node may be sent only the rooms it subscribed to. Once
      ``await subscribe(room)`` returns, every frame published to ``room`` afterwards
      is delivered to this node, until the matching ``unsubscribe`` or a connection
      loss. Subscriptions are counted: a room stays subscribed while ``subscribe``
      calls outnumber ``unsubscribe`` calls (so the app may call them once per local
      member's join and leave). A node may also receive rooms it did not subscribe
      to (the in-process broker delivers everything): ``deliver`` must filter.
    * **Gaps**: a broker that can lose frames (a connection loss, a full outgoing
      queue) says so through its own means (``RedisBroker(on_reconnect=...)``), after
      which the app re-reads positions from the store. A frame may then arrive twice;
      ``seq`` tells duplicates apart.
    * A ``deliver`` that raises is logged; delivery of later frames goes on.
    * ``publish`` before ``start`` or after ``close`` does nothing.
    """

    async def start(self, deliver: Deliver) -> None:
        """Start delivering published frames (from any node) to ``deliver``.

        Raises :class:`BrokerError` if the broker's service cannot be reached at all;
        once started, connection losses are handled inside (reconnect, resubscribe).
        """
        ...

    async def subscribe(self, room: str) -> None:
        """Count one more local interest in ``room``; returns once frames published to
        it from now on will be delivered here. :class:`BrokerError` if that cannot be
        confirmed in time (the count is then left unchanged)."""
        ...

    def unsubscribe(self, room: str) -> None:
        """Count one interest less in ``room``; at zero, stop receiving it. Never blocks;
        more unsubscribes than subscribes are ignored."""
        ...

    def publish(self, room: str, payload: bytes, seq: int | None = None) -> None:
        """Publish one encoded frame to a room, on every node. Never blocks.

        Invariant: frames published by one node for one room are delivered
        in the order they were published.
        """
        ...

    async def close(self) -> None:
        """Stop delivering; idempotent."""
        ...
