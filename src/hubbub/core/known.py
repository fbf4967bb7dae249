"""Which rooms exist on the server: what ``max_rooms`` counts (part of :class:`ChatCore`)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from .. import protocol as p


class KnownRooms:
    """The names of every room that exists (in the store, or being created by a
    join), in byte order. The service loads them when it starts (:meth:`load_rooms`)."""

    known: list[str]
    closing: set[str]
    max_rooms: int

    # -- which rooms exist (for max_rooms) ----------------------------------

    def load_rooms(self, names: Iterable[str]) -> None:
        """The rooms the store holds, when the service starts."""
        self.known = sorted(set(self.known).union(names))

    def room_exists(self, name: str) -> bool:
        i = bisect.bisect_left(self.known, name)
        return i < len(self.known) and self.known[i] == name

    def creation_refused(self, name: str) -> tuple[str, str] | None:
        """Why a new room ``name`` may not be created now (error code, message), or
        None. Used for joins and for HTTP posts (which have no per-connection bucket)."""
        if name in self.closing:
            return p.E_UNAVAILABLE, f"room {name!r} is being deleted"
        cap = self.max_rooms
        if cap and len(self.known) >= cap and not self.room_exists(name):
            return p.E_ROOM_LIMIT, f"this server holds its maximum of {cap} rooms"
        return None

    def room_created(self, name: str) -> None:
        """``name`` exists from now on (a join or an HTTP post created it)."""
        i = bisect.bisect_left(self.known, name)
        if i == len(self.known) or self.known[i] != name:
            self.known.insert(i, name)

    def _forget_room(self, name: str) -> None:
        i = bisect.bisect_left(self.known, name)
        if i < len(self.known) and self.known[i] == name:
            del self.known[i]

    def known_after(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` names of existing rooms after ``after``, in byte order."""
        start = 0 if after is None else bisect.bisect_right(self.known, after)
        return self.known[start : start + limit]
