"""The presence manager interface: a cluster-wide member list per room.

Every node registers its members of each room (``join``) under a *member id*
(``<node>/<local key>``); a member's nickname is claimed atomically in the room
(an ``owner`` string: the same owner may hold a nickname on several nodes, as
one user connected twice). Every change bumps the room's *version* and is told
to every other node as an :class:`Event` carrying that version, in version
order per room (a node applies a room's events after the snapshot it read,
skipping those the snapshot already had).

A node holds a *lease* (:meth:`PresenceManager.renew`): when it lapses, any
other node may remove the dead node's members (:meth:`PresenceManager.reap`:
one node does it, under a lock per dead node), which is told as a ``leave``
event coming from the dead node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec

#: An ephemeral broker payload starting with this is a presence event for the
#: nodes, never for clients (see :func:`encode_event`).
MARKER = b'{"type":"~presence"'


class PresenceError(Exception):
    """The presence backend could not be reached (the caller tells ``unavailable``)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of a room on one node."""

    mid: str
    nick: str
    user: str | None
    node: str
    #: The nickname as compared (NFKC + casefold): what the claim is on.
    key: str
    #: Who holds the claim: ``u:<user id>`` for a user (the same on every node),
    #: ``c:<member id>`` for an anonymous connection or a guest.
    owner: str


@dataclass(slots=True)
class Event:
    """A change of a room's cluster member list, with the version it made."""

    room: str
    op: Literal["join", "leave"]
    version: int
    #: join: the entries (a join of a known member id is a rename); leave: ids only.
    entries: list[tuple[str, str, str | None]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


class _Wire(msgspec.Struct):
    op: str
    v: int
    e: list[Any]


_decoder = msgspec.json.Decoder(_Wire)


def event_head(op: str) -> bytes:
    """The start of a presence event's JSON, up to its list of entries or ids."""
    return MARKER + b',"op":"' + op.encode() + b'","e":'


def join_head(entries: Iterable[Entry]) -> bytes:
    """A join event's JSON up to its version, which the backend appends (then ``}``)."""
    body = msgspec.json.encode([[e.mid, e.nick, e.user] for e in entries])
    return event_head("join") + body + b',"v":'


def leave_head(ids: list[str]) -> bytes:
    return event_head("leave") + msgspec.json.encode(ids) + b',"v":'


def encode_event(event: Event) -> bytes:
    if event.op == "leave":
        head = leave_head(event.ids)
    else:
        head = event_head("join") + msgspec.json.encode([list(e) for e in event.entries])
        head += b',"v":'
    return head + str(event.version).encode() + b"}"


def decode_event(room: str, payload: bytes) -> Event | None:
    """The event in a broker payload (None for anything malformed: logged by the caller)."""
    try:
        wire = _decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    if wire.op == "leave" and all(isinstance(i, str) for i in wire.e):
        return Event(room, "leave", wire.v, ids=list(wire.e))  # type: ignore[arg-type]
    if wire.op == "join":
        entries: list[tuple[str, str, str | None]] = []
        for item in wire.e:
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                return None
            mid, nick, user = item
            if not isinstance(mid, str) or not isinstance(nick, str):
                return None
            entries.append((mid, nick, user if isinstance(user, str) else None))
        return Event(room, "join", wire.v, entries=entries)
    return None


Listener = Callable[[Event], None]


class PresenceManager(Protocol):
    """What :class:`~hubbub.presence.ClusterPresence` needs from a backend.

    Every method that returns an awaitable is *queued* when called (not when
    awaited): a node's operations reach the backend in call order, so a leave
    called after a join is never applied before it.
    """

    node: str
    #: Seconds a lease lasts without renewal; seconds between renewals.
    lease_ttl: float
    renew_every: float

    async def start(self, listener: Listener | None) -> None:
        """Take this node's lease. ``listener`` receives other nodes' events when
        the backend delivers them itself (the in-memory one); the Redis one
        publishes them on the broker's room channels instead."""
        ...

    def join(self, room: str, entry: Entry) -> Awaitable[int | None]:
        """Register (or rename) a member: the new version, or None when another
        owner holds ``entry.key`` in the room (nick taken)."""
        ...

    def leave(self, room: str, mid: str) -> Awaitable[int]: ...

    def snapshot(self, room: str) -> Awaitable[tuple[int, list[Entry]]]:
        """The room's version and every member on every node (at most
        ``limit`` entries: see the implementation)."""
        ...

    def versions(self, rooms: list[str]) -> Awaitable[dict[str, int]]: ...

    def renew(self) -> Awaitable[bool]:
        """Renew the lease; False if it had lapsed (it is taken again: the caller
        registers its members again, the others may have removed them)."""
        ...

    def reap(self) -> Awaitable[list[str]]:
        """Remove the members of nodes whose lease lapsed; the nodes reaped here."""
        ...

    async def close(self, retire: bool = True) -> None:
        """Stop. ``retire``: remove this node's members and lease first (a clean
        shutdown); without, the node just goes silent (its lease lapses)."""
        ...
