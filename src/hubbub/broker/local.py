"""In-process fan-out: publish delivers at once, on this node only."""

from __future__ import annotations

import logging

from .base import (
    NODE_PAYLOAD_MAX,
    BrokerError,
    Deliver,
    Lost,
    NodeDeliver,
    hand_to_self,
    tell_lost,
)

log = logging.getLogger("hubbub.broker")


class LocalBroker:
    """One node: every published frame is delivered here, inside ``publish``.

    Subscriptions are counted (``subscribed``) but do not filter: there is no
    network to save, and the app delivers only to a room's local members.

    Node channels: this node (``node_id``, ``"local"`` unless given) is the only
    one; a payload sent to it is handed to ``on_node`` inside ``send_node``, a
    payload for any other node is lost at once (``on_lost``).
    """

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self._deliver: Deliver | None = None
        self._on_node: NodeDeliver | None = None
        self._counts: dict[str, int] = {}

    async def start(self, deliver: Deliver, on_node: NodeDeliver | None = None) -> None:
        self._deliver = deliver
        self._on_node = on_node

    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(self._counts)

    async def subscribe(self, room: str) -> None:
        if self._deliver is None:
            raise BrokerError("broker is not started")
        self._counts[room] = self._counts.get(room, 0) + 1

    def unsubscribe(self, room: str) -> None:
        count = self._counts.get(room, 0)
        if count > 1:
            self._counts[room] = count - 1
        elif count == 1:
            del self._counts[room]

    def publish(self, room: str, payload: bytes, seq: int | None = None) -> None:
        if self._deliver is not None:
            try:
                self._deliver(room, payload, seq)
            except Exception:
                log.exception("deliver failed for a frame of room %r", room)

    def send_node(self, node: str, payload: bytes, on_lost: Lost | None = None) -> None:
        if node != self.node_id or len(payload) > NODE_PAYLOAD_MAX:
            tell_lost(on_lost)
            return
        hand_to_self(self._on_node, self.node_id, payload, on_lost)

    async def close(self) -> None:
        self._deliver = None
        self._on_node = None
        self._counts.clear()
