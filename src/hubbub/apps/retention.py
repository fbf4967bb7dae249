"""Retention: old messages are deleted at start and every minute after
(``--retention-count`` per room, ``--retention-days`` of age; 0 is no limit).

Once per cluster: every node ticks, but a run happens only on the node that
holds the store's ``retention`` leader lock (:meth:`hubbub.store.Store.leader`:
a PostgreSQL advisory lock; always this process on SQLite). The others skip
that tick; a node that dies mid-run releases the lock with its connection, and
the next tick runs wherever the lock is free. Deleting is idempotent, so a run
that overlaps nothing and a run that was cut short are both harmless."""

from __future__ import annotations

import logging
import time

from ..store import Store, StoreError

log = logging.getLogger("hubbub.chat")

#: Seconds between two retention runs.
RETENTION_PERIOD = 60.0
#: The leader lock's name (one per job kind).
LOCK_NAME = "retention"


class Retention:
    def __init__(self, store: Store, count: int, days: float) -> None:
        self.store = store
        self.count = count
        self.days = days
        #: Runs this node did, and ticks it skipped because another node held the lock.
        self.runs = 0
        self.skipped = 0

    async def run(self) -> None:
        """Delete what the limits say, if this node leads; a store failure is
        logged, not raised."""
        if self.count <= 0 and self.days <= 0:
            return
        try:
            async with self.store.leader(LOCK_NAME) as leading:
                if not leading:
                    self.skipped += 1
                    log.debug("retention: another node runs it")
                    return
                self.runs += 1
                deleted = await self.store.enforce_retention(
                    self.count, self.days * 86400.0, time.time()
                )
        except StoreError as exc:
            log.error("retention failed: %s", exc)
            return
        if deleted:
            log.info("retention: deleted %d old messages", deleted)
