"""In-process fan-out: publish delivers at once, on this node only."""

from __future__ import annotations

from .base import Deliver


class LocalBroker:
    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    def publish(self, room: str, payload: bytes, seq: int | None = None) -> None:
        if self._deliver is not None:
            self._deliver(room, payload, seq)

    async def close(self) -> None:
        self._deliver = None
