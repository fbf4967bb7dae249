"""Presence across nodes: who is in which room on every node, nick claims, leases.

* :mod:`.base`: the :class:`PresenceManager` interface (like Centrifuge's
  PresenceManager), the member :class:`Entry` and the change :class:`Event`.
* :mod:`.memory`: an in-memory manager (one shared backend; a fake clock drives
  its leases in unit tests).
* :mod:`.redis`: the Redis manager (hashes per room under the ``{room}`` hash
  tag, Lua scripts for atomic claims, a lease key per node).
* :mod:`.cluster`: :class:`ClusterPresence`, what the chat app runs: it mirrors
  other nodes' members into the chat core, claims this node's, renews the
  lease and removes dead nodes' members.

docs/presence.md describes the design, the limits and the timings.
"""

from .base import Entry, Event, PresenceManager
from .cluster import ClusterPresence
from .memory import MemoryBackend, MemoryPresence

__all__ = [
    "ClusterPresence",
    "Entry",
    "Event",
    "MemoryBackend",
    "MemoryPresence",
    "PresenceManager",
]
