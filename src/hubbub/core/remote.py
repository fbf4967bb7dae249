"""Members on other nodes (part of :class:`~hubbub.core.ChatCore`): cluster presence.

With several nodes, the service layer (:mod:`hubbub.presence`) mirrors every
other node's members of the rooms this node follows into the core, as users
without a connection here (:class:`RemoteUser`). They are people of the room
like the local ones: the ``room`` frame, ``who`` pages and counts list them,
a local join or rename that clashes with one of them is refused
(``nick_taken`` / ``nick_confusable``), and their comings and goings are noted
for presence, so this node's coalesced ``presence`` frames tell its own
members about them. They never get a frame: they have no connection here.

A nickname is indexed once per room. One user connected on two nodes is one
member: the second entry of the same nickname waits in ``Room.shadow`` and
takes over when the first leaves (no ``left``/``joined`` pair for a user still
in the room).

A local join whose nickname is exactly a remote member's is not refused here
(:meth:`RemoteMembers.deferred`): the cluster's atomic claim decides, after
waiting a little for the remote entry to go. That is a client reconnecting to
another node before the old node has seen its connection end: the local member
takes the name (the remote entry is shadowed, nobody sees a change), and the
old entry's ``leave`` follows. If the claim is lost, the local member is taken
out and the remote one is back. Lookalikes of remote members are refused at
once, like local ones. Memory: one :class:`RemoteUser` per remote member of a followed
room (about 800 bytes, like a local user), so at most
``max_members_per_room`` of them per room.
"""

from __future__ import annotations

from collections.abc import Mapping

from .nicknames import nick_key
from .rooms import Room
from .users import User


class RemoteUser(User):
    """A member of another node: ``mid`` is its cluster member id."""

    __slots__ = ("mid",)

    def __init__(self, mid: str, user: str | None, nick: str) -> None:
        super().__init__(user, nick)
        self.mid = mid


class RemoteMembers:
    """Apply other nodes' membership changes to the rooms this node follows."""

    rooms: dict[str, Room]
    _dirty: dict[str, None]

    def remote_join(
        self, room_name: str, mid: str, nick: str, user: str | None, quiet: bool = False
    ) -> bool:
        """Member ``mid`` of another node is in the room as ``nick``. ``quiet``: no
        presence note (the room's first load: the joiner's ``room`` frame lists it)."""
        room = self.rooms.get(room_name)
        if room is None:
            return False  # not followed here
        known = room.remote.get(mid)
        if known is not None:
            return self.remote_rename(room_name, mid, nick, quiet)
        u = room.remote[mid] = RemoteUser(mid, user, nick)
        self._place(room, u, None, quiet)
        return True

    def remote_leave(self, room_name: str, mid: str, quiet: bool = False) -> bool:
        room = self.rooms.get(room_name)
        u = room.remote.pop(mid, None) if room is not None else None
        if room is None or u is None:
            return False
        self._unplace(room, u, quiet)
        return True

    def remote_rename(self, room_name: str, mid: str, nick: str, quiet: bool = False) -> bool:
        room = self.rooms.get(room_name)
        u = room.remote.get(mid) if room is not None else None
        if room is None or u is None or u.nick == nick:
            return False
        before = u.nick if room.by_key.get(nick_key(u.nick)) is u else None
        self._unplace(room, u, quiet)
        u.nick = nick
        self._place(room, u, before, quiet)
        return True

    def remote_sync(
        self,
        room_name: str,
        entries: Mapping[str, tuple[str, str | None]],
        quiet: bool = False,
    ) -> int:
        """The room's remote members are exactly ``entries`` (member id -> (nick,
        user)): a fresh read of the cluster's list. Returns the changes applied."""
        room = self.rooms.get(room_name)
        if room is None:
            return 0
        changed = 0
        for mid in [m for m in room.remote if m not in entries]:
            changed += self.remote_leave(room_name, mid, quiet)
        for mid, (nick, user) in entries.items():
            changed += self.remote_join(room_name, mid, nick, user, quiet)
        return changed

    def remote_ids(self, room_name: str) -> list[str]:
        room = self.rooms.get(room_name)
        return list(room.remote) if room is not None else []

    # -- the index ------------------------------------------------------------------

    def _place(self, room: Room, u: RemoteUser, before: str | None, quiet: bool) -> None:
        """Index ``u`` under its nickname, or shadow it if the nickname is held."""
        key = nick_key(u.nick)
        if key in room.by_key:
            room.shadow.setdefault(key, {})[u.mid] = None
            return
        if not quiet:
            room.dirty.setdefault(u, before)
            self._dirty[room.name] = None
        room.add_person(u, quiet=True)

    def _unplace(self, room: Room, u: RemoteUser, quiet: bool) -> None:
        key = nick_key(u.nick)
        waiting = room.shadow.get(key)
        if waiting is not None and u.mid in waiting:
            del waiting[u.mid]
            if not waiting:
                del room.shadow[key]
            return
        if room.by_key.get(key) is not u:
            return
        room.remove_person(u, quiet=quiet)
        if not quiet:
            self._dirty[room.name] = None
        self.unshadow(room, key, u)

    def unshadow(self, room: Room, key: str, gone: User) -> None:
        """``gone`` no longer holds nickname ``key`` here: a shadowed remote member of
        that nickname takes it. The same user taking over inherits ``gone``'s
        presence note, so its clients see no change."""
        waiting = room.shadow.get(key)
        if not waiting or key in room.by_key:
            return
        mid = next(iter(waiting))
        del waiting[mid]
        if not waiting:
            del room.shadow[key]
        u = room.remote[mid]
        same = gone.user is not None and gone.user == u.user
        note = room.dirty.pop(gone, gone.nick) if same else None
        room.dirty.setdefault(u, note)
        self._dirty[room.name] = None
        room.add_person(u, quiet=True)

    @staticmethod
    def deferred(holder: User | None, nick: str) -> bool:
        """Is a join's clash with ``holder`` left to the cluster claim? (A remote
        member with exactly this nickname.)"""
        return isinstance(holder, RemoteUser) and nick_key(holder.nick) == nick_key(nick)

    def displace(self, room: Room, user: User) -> None:
        """Local ``user`` joins ``room`` where its nickname is held by a member of
        another node (the same user, or one the claim decides about): the local one
        takes the nickname, the remote entry waits (no change shown)."""
        key = nick_key(user.nick)
        held = room.by_key.get(key)
        if not isinstance(held, RemoteUser):
            return
        room.remove_person(held, quiet=True)
        note = room.dirty.pop(held, held.nick)
        room.shadow.setdefault(key, {})[held.mid] = None
        room.dirty.setdefault(user, note)
