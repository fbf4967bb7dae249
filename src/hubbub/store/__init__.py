"""History stores: the durable, ordered log of every room's messages.

Sequence numbers are assigned by the store, inside the transaction that
writes the message: the log is the one place every node shares, so the
numbering stays strictly increasing per room whatever runs in front of it.
"""

from .base import PendingMessage, RoomMeta, Store, StoreError

__all__ = ["PendingMessage", "RoomMeta", "Store", "StoreError"]
