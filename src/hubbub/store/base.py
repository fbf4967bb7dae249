"""The store interface (small on purpose: SQLite now, PostgreSQL for scale-out)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ..protocol import Message


class StoreError(Exception):
    """The store could not do what was asked (disk full, database gone...)."""


@dataclass(slots=True)
class PendingMessage:
    """A message accepted by the core, not yet durable."""

    room: str
    client_id: str | None
    nick: str
    text: str
    ts: float
    #: The sender's user id (its token's ``sub``), None for an anonymous sender: the
    #: stored message carries it as ``Message.user`` (left out when None).
    user: str | None = None


def stored_message(
    room: str,
    seq: int,
    epoch: str,
    id: str,
    nick: str,
    text: str,
    ts: float,
    client_id: str | None,
    user: str | None,
) -> Message:
    """The :class:`Message` of a stored row: ``user`` only when the sender had one (an
    anonymous sender's message has no ``user`` field at all, as before user ids)."""
    return Message(
        room, seq, epoch, id, nick, text, ts, client_id, msgspec.UNSET if user is None else user
    )


def user_of(msg: Message) -> str | None:
    """A message's user id for a store's nullable ``user`` column (None when unset)."""
    return msg.user if isinstance(msg.user, str) else None


@dataclass(slots=True)
class RoomMeta:
    name: str
    #: Changes when the room's history is reset; sequence numbers restart.
    epoch: str
    #: Sequence number of the newest message (0 for none yet).
    seq: int
    #: Sequence number of the oldest retained message (seq + 1 when empty).
    oldest: int
    #: History and member list for members only (kept across resets; a room
    #: deleted and created again is public).
    private: bool = False


class Store(Protocol):
    """Durable room history: the store of record for numbering and duplicates.

    Every implementation passes the same contract suite (tests/store/test_contract.py).
    Errors of the underlying engine surface as :class:`StoreError`, never as the
    engine's own exceptions.
    """

    async def open(self) -> None:
        """Create or migrate the schema; StoreError if it is newer than this code
        (nothing is changed then)."""
        ...

    async def close(self) -> None:
        """Idempotent; after it, every other call raises StoreError ('... not open')."""
        ...

    async def append(self, batch: list[PendingMessage]) -> list[tuple[Message, bool]]:
        """Make a batch durable in one transaction, in order.

        Returns, for each pending message, the stored message and whether it
        was a duplicate (same room and client_id as an earlier one, which is
        returned instead of storing a second copy). A stored message carries its
        pending message's ``user`` (``Message.user``, unset when None), here and in
        every read.

        One transaction: either the whole batch is stored or none of it
        (StoreError). Numbers are per room, start at 1 and have no gaps, also
        with several writers on one store; a duplicate takes no number. Creates
        missing rooms. An empty batch returns [] and creates nothing.
        """
        ...

    async def since(self, room: str, seq: int, limit: int) -> list[Message]:
        """Messages with sequence number > ``seq``, oldest first, at most ``limit``.

        A missing room gives []."""
        ...

    async def page(self, room: str, before: int | None, limit: int) -> tuple[list[Message], bool]:
        """Up to ``limit`` messages older than ``before`` (newest page if None),
        oldest first, and whether older ones exist. A missing room gives ([], False)."""
        ...

    async def room(self, room: str) -> RoomMeta | None:
        """The room's epoch and sequence range, or None if there is no such room.

        Reading never creates a room (a GET of any name must not leave a row behind).
        """
        ...

    async def create_room(self, room: str) -> RoomMeta:
        """The room's epoch and sequence range, creating the room if it does not exist
        (idempotent: a join creates its room; ``append`` creates rooms too)."""
        ...

    async def delete_room(self, room: str) -> bool:
        """Delete a room and all its history; False if there was no such room.

        A room created again later starts a new epoch (clients resuming into it get
        ``reset``)."""
        ...

    async def rooms(self, after: str | None = None, limit: int | None = None) -> list[RoomMeta]:
        """Rooms in byte order of name: those named after ``after`` (all if None), at
        most ``limit`` (all if None). Committed rooms only; runs off the commit path
        where the engine allows (SQLite: its own read-only connection and thread)."""
        ...

    async def reset(self, room: str) -> RoomMeta:
        """Delete a room's history and start a new epoch; creates the room (empty)
        if it does not exist. Returns its new meta (seq 0, oldest 1)."""
        ...

    async def set_private(self, room: str, private: bool) -> bool:
        """Mark a room private (or public again); False if there is no such room
        (it is not created). Durable when it returns."""
        ...

    def leader(self, name: str) -> AbstractAsyncContextManager[bool]:
        """``async with store.leader("retention") as leading:``: whether this process
        holds the cluster-wide lock ``name`` (held until the block ends; never waits).

        For once-per-cluster jobs: among every process on this store, at most one
        block per name runs with ``leading`` true at a time; the others get False
        and skip the job. A process that dies holding it releases it. The lock is
        per store (a PostgreSQL schema, an SQLite file), so clusters on other
        schemas do not contend."""
        ...

    async def enforce_retention(self, max_count: int, max_age: float, now: float) -> int:
        """Delete messages beyond ``max_count`` per room or older than ``max_age`` seconds
        (0 means no limit); returns how many were deleted. Rooms stay (an emptied
        room keeps its seq; oldest = seq + 1)."""
        ...
