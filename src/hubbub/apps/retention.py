"""Retention: old messages are deleted at start and every minute after
(``--retention-count`` per room, ``--retention-days`` of age; 0 is no limit)."""

from __future__ import annotations

import logging
import time

from ..store import Store, StoreError

log = logging.getLogger("hubbub.chat")

#: Seconds between two retention runs.
RETENTION_PERIOD = 60.0


class Retention:
    def __init__(self, store: Store, count: int, days: float) -> None:
        self.store = store
        self.count = count
        self.days = days

    async def run(self) -> None:
        """Delete what the limits say; a store failure is logged, not raised."""
        if self.count <= 0 and self.days <= 0:
            return
        try:
            deleted = await self.store.enforce_retention(
                self.count, self.days * 86400.0, time.time()
            )
        except StoreError as exc:
            log.error("retention failed: %s", exc)
            return
        if deleted:
            log.info("retention: deleted %d old messages", deleted)
