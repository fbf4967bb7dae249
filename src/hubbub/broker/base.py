"""The broker interface: how a room's frames reach every node with members in it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("hubbub.broker")

#: ``deliver(room, payload, seq)``: hand an encoded frame to this node's
#: members of ``room``; ``seq`` is the message's sequence number, or None for
#: ephemeral frames (presence, typing).
Deliver = Callable[[str, bytes, int | None], None]
#: ``on_node(origin, payload)``: a payload node ``origin`` sent to this node alone
#: (:meth:`Broker.send_node`).
NodeDeliver = Callable[[str, bytes], None]
#: ``on_lost()``: a payload sent with :meth:`Broker.send_node` is known not to have
#: reached its node.
Lost = Callable[[], None]

#: Largest payload :meth:`Broker.send_node` sends (and a node accepts from its
#: node channel), in bytes: a direct message (at most 8000 characters of text)
#: and its envelope fit with room to spare.
NODE_PAYLOAD_MAX = 64 * 1024


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

    Node channels (one node talking to another, e.g. a direct message for a member
    connected there):

    * **Addressing**: every node has a ``node_id``. A broker started with ``on_node``
      listens on its own node channel (Redis: ``<prefix>node:{<node id>}``); once
      ``start`` returns, every payload sent to its node id reaches ``on_node``, with
      the sender's node id, exactly the bytes sent. A payload reaches the node it is
      sent to and no other; a payload for this node itself is handed to ``on_node``
      inside the call.
    * **Ordering**: one sender's payloads to one node arrive in the order sent. Node
      payloads and room frames are independent streams: no order between them.
    * **At most once**: a payload is never delivered twice (a round trip that failed
      is not sent again) and may be lost (a connection loss, a full queue).
    * **Lost payloads are told when known**: ``on_lost()`` is called (at most once,
      on the event loop, possibly inside the call) when the payload is known not to
      have been delivered: no node listens on that node's channel (it is dead, or
      cut off from Redis), the outgoing queue dropped it, it is larger than
      :data:`NODE_PAYLOAD_MAX`, or the broker is not started or closed. No call:
      delivered, or unknown (the connection failed during the round trip).
    * **Bounded**: payloads over :data:`NODE_PAYLOAD_MAX` bytes are neither sent nor
      accepted.
    """

    #: This node's id (what other nodes address it by with :meth:`send_node`).
    node_id: str

    async def start(self, deliver: Deliver, on_node: NodeDeliver | None = None) -> None:
        """Start delivering published frames (from any node) to ``deliver``, and, with
        ``on_node``, the payloads sent to this node (its node channel is followed
        before this returns).

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

    def send_node(self, node: str, payload: bytes, on_lost: Lost | None = None) -> None:
        """Send one payload to node ``node`` alone (see *Node channels*). Never blocks."""
        ...

    async def close(self) -> None:
        """Stop delivering; idempotent."""
        ...


def tell_lost(on_lost: Lost | None) -> None:
    """Call a :data:`Lost` callback (if any); its failure is logged, never raised."""
    if on_lost is None:
        return
    try:
        on_lost()
    except Exception:
        log.exception("on_lost callback failed")


def hand_to_self(
    on_node: NodeDeliver | None, node_id: str, payload: bytes, on_lost: Lost | None
) -> bool:
    """A node payload addressed to this node: given to ``on_node`` inside the call (no
    round trip). False, with ``on_lost`` told, when nobody listens here; a failing
    ``on_node`` is logged, never raised (the payload counts as delivered)."""
    if on_node is None:
        tell_lost(on_lost)
        return False
    try:
        on_node(node_id, payload)
    except Exception:
        log.exception("on_node failed for a payload from this node")
    return True
