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

Direct messages across nodes: a ``dm`` whose recipient has connections on other
nodes (its indexed entry is a :class:`RemoteUser`, or the same user waits in
``Room.shadow`` from other nodes) yields one
:class:`~hubbub.core.effects.RemoteDirect` per node, naming the member ids there;
the service sends it over the broker to that node, whose core turns it into
replies to its own connections of those members (:meth:`RemoteMembers.direct_in`),
if they are still in the room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from .. import protocol as p
from .effects import Effect, RemoteDirect, Reply
from .nicknames import nick_key
from .rooms import Room
from .users import Owners, User

#: Member ids named in one relayed direct message (one user has one id per node;
#: the bound keeps a malformed relay cheap).
MAX_RELAY_IDS = 16


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
    sessions: dict[int, Any]
    owners: Owners

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

    # -- direct messages across nodes -------------------------------------------------

    def member_key(self, fd: int) -> str | None:
        """Connection ``fd``'s member id on this node without the node part, as cluster
        presence registers it: ``u:<user id>`` for a user with a token, ``c:<fd>`` for
        an anonymous connection or a guest (None: no such connection)."""
        session = self.sessions.get(fd)
        if session is None:
            return None
        user, identity = session.user, session.identity
        if user.user is not None and identity is not None and not identity.guest:
            return f"u:{user.user}"
        return f"c:{fd}"

    @staticmethod
    def remote_targets(room: Room, target: User) -> dict[str, list[str]]:
        """Where ``target`` (the member a ``dm`` names) is connected on other nodes:
        node id -> member ids there. Its indexed entry if it is another node's member,
        and every shadowed entry of the same user (one user on several nodes is one
        member: the entries wait in ``Room.shadow`` behind the indexed one)."""
        out: dict[str, list[str]] = {}
        mids = [target.mid] if isinstance(target, RemoteUser) else []
        if target.user is not None:
            for mid in room.shadow.get(nick_key(target.nick), ()):
                other = room.remote.get(mid)
                if other is not None and other.user == target.user:
                    mids.append(mid)
        for mid in mids:
            node, sep, _ = mid.partition("/")
            if sep and node:
                out.setdefault(node, []).append(mid)
        return out

    def relays(
        self, room: Room, target: User, frame: p.DirectMessage, fd: int
    ) -> list[RemoteDirect]:
        """``frame`` for ``target``'s connections on other nodes: one effect per node
        (``fd`` is the sender's connection)."""
        away = self.remote_targets(room, target)
        return [
            RemoteDirect(n, room.name, tuple(ids), frame, fd) for n, ids in sorted(away.items())
        ]

    def direct_in(
        self, room_name: str, keys: Iterable[str], frame: p.DirectMessage
    ) -> list[Effect]:
        """A direct message another node relayed for this node's members ``keys``
        (member ids without the node part) of ``room_name``: one reply per connection
        of those members in the room, in fd order. Members no longer in the room (or
        connections whose member id changed) get nothing: an empty list."""
        room = self.rooms.get(room_name)
        if room is None:
            return []
        fds: set[int] = set()
        for key in islice(keys, MAX_RELAY_IDS):
            kind, _, rest = key.partition(":")
            if kind == "u":
                user = self.owners.get(rest)
                candidates = user.fds if user is not None else ()
            elif kind == "c" and rest.isascii() and rest.isdigit() and len(rest) <= 18:
                candidates = (int(rest),)
            else:
                continue
            fds.update(fd for fd in candidates if fd in room.members and self.member_key(fd) == key)
        return [Reply(fd, frame) for fd in sorted(fds)]

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
