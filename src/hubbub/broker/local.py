"""In-process fan-out: publish delivers at once, on this node only."""

from __future__ import annotations

import logging

from .base import BrokerError, Deliver

log = logging.getLogger("hubbub.broker")


class LocalBroker:
    """One node: every published frame is delivered here, inside ``publish``.

    Subscriptions are counted (``subscribed``) but do not filter: there is no
    network to save, and the app delivers only to a room's local members.
    """

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._counts: dict[str, int] = {}

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

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

    async def close(self) -> None:
        self._deliver = None
        self._counts.clear()
