"""An in-memory presence backend: the Redis manager's semantics in one process.

:class:`MemoryBackend` plays the part of Redis (one per cluster, shared by the
nodes' :class:`MemoryPresence` handles); ``clock`` decides when leases lapse,
so unit tests drive lease expiry with a fake clock. Events reach every other
handle's listener at once, in version order, like Redis pub/sub (a reaped
node's ``leave`` comes "from" the dead node: its own handle does not hear it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .base import Entry, Event, Listener


class _Room:
    __slots__ = ("claims", "members", "refs", "version")

    def __init__(self) -> None:
        self.members: dict[str, Entry] = {}
        self.claims: dict[str, str] = {}  # nick key -> owner
        self.refs: dict[str, int] = {}  # nick key -> members holding it
        self.version = 0


class MemoryBackend:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rooms: dict[str, _Room] = {}
        self.leases: dict[str, float] = {}  # node -> expiry
        self.nodes: set[str] = set()
        self.listeners: dict[str, Listener] = {}

    def room(self, name: str) -> _Room:
        return self.rooms.setdefault(name, _Room())

    def alive(self, node: str) -> bool:
        return self.leases.get(node, 0.0) > self.clock()

    def publish(self, origin: str, event: Event) -> None:
        for node, listener in list(self.listeners.items()):
            if node != origin:
                listener(event)

    def release(self, room: _Room, entry: Entry) -> None:
        left = room.refs.get(entry.key, 0) - 1
        if left > 0:
            room.refs[entry.key] = left
        else:
            room.refs.pop(entry.key, None)
            room.claims.pop(entry.key, None)


async def _value(value: Any) -> Any:
    return value


class MemoryPresence:
    """One node's handle on a :class:`MemoryBackend`."""

    def __init__(
        self,
        backend: MemoryBackend,
        node: str,
        lease_ttl: float = 10.0,
        renew_every: float = 3.0,
    ) -> None:
        self.backend = backend
        self.node = node
        self.lease_ttl = lease_ttl
        self.renew_every = renew_every
        self.closed = False

    async def start(self, listener: Listener | None) -> None:
        b = self.backend
        b.leases[self.node] = b.clock() + self.lease_ttl
        b.nodes.add(self.node)
        if listener is not None:
            b.listeners[self.node] = listener

    def join(self, room: str, entry: Entry) -> Any:
        return _value(self._join(room, entry))

    def _join(self, name: str, entry: Entry) -> int | None:
        b = self.backend
        room = b.room(name)
        holder = room.claims.get(entry.key)
        if holder is not None and holder != entry.owner:
            return None
        old = room.members.get(entry.mid)
        if old is not None:
            if old.key == entry.key:
                room.members[entry.mid] = entry
                if old.nick == entry.nick:
                    return room.version
            else:
                b.release(room, old)
        if old is None or old.key != entry.key:
            room.claims[entry.key] = entry.owner
            room.refs[entry.key] = room.refs.get(entry.key, 0) + 1
        room.members[entry.mid] = entry
        room.version += 1
        joined = [(entry.mid, entry.nick, entry.user)]
        b.publish(self.node, Event(name, "join", room.version, joined))
        return room.version

    def leave(self, room: str, mid: str) -> Any:
        return _value(self._leave(room, mid))

    def _leave(self, name: str, mid: str) -> int:
        b = self.backend
        room = b.room(name)
        old = room.members.pop(mid, None)
        if old is None:
            return 0
        b.release(room, old)
        room.version += 1
        b.publish(self.node, Event(name, "leave", room.version, ids=[mid]))
        return room.version

    def snapshot(self, name: str) -> Any:
        room = self.backend.room(name)
        return _value((room.version, list(room.members.values())))

    def versions(self, rooms: list[str]) -> Any:
        return _value({r: self.backend.room(r).version for r in rooms})

    def renew(self) -> Any:
        b = self.backend
        kept = b.alive(self.node)
        b.leases[self.node] = b.clock() + self.lease_ttl
        b.nodes.add(self.node)
        return _value(kept)

    def reap(self) -> Any:
        b = self.backend
        dead = sorted(n for n in b.nodes if n != self.node and not b.alive(n))
        for node in dead:
            self.backend.nodes.discard(node)
            remove_node(b, node)
        return _value(dead)

    async def close(self, retire: bool = True) -> None:
        b = self.backend
        b.listeners.pop(self.node, None)
        if retire and not self.closed:
            b.leases.pop(self.node, None)
            b.nodes.discard(self.node)
            remove_node(b, self.node, origin=self.node)
        self.closed = True


def remove_node(b: MemoryBackend, node: str, origin: str | None = None) -> None:
    """Every member of ``node`` out of every room, told as coming from ``origin``
    (the dead node itself by default)."""
    for name, room in b.rooms.items():
        ids = [mid for mid, e in room.members.items() if e.node == node]
        if not ids:
            continue
        for mid in ids:
            b.release(room, room.members.pop(mid))
        room.version += 1
        b.publish(origin or node, Event(name, "leave", room.version, ids=ids))
