"""History stores: the durable, ordered log of every room's messages.

Sequence numbers are assigned by the store, inside the transaction that
writes the message. The SQLite store caches each room's epoch and last
sequence number, so one process owns a database file (it takes a lock on
open; :class:`~hubbub.store.sqlite.StoreLocked` otherwise). Sharing one log
between several nodes needs a store built for it (the scale-out work).
"""

from .base import PendingMessage, RoomMeta, Store, StoreError

__all__ = ["PendingMessage", "RoomMeta", "Store", "StoreError"]
