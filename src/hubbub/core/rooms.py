"""A room's members: its connections, its people, their nicknames, its presence buffer.

A room has *connections* (what room frames are delivered to) and *people*
(:class:`~hubbub.core.users.User`: what presence and the member list show): a
user with two connections in the room is one member.

Presence is coalesced: every change of the room's people is noted in ``dirty``
(the member's nickname when the tick began, or None if it was not in the room),
and :meth:`Room.diff` turns the notes into the tick's net changes at once, so N
joins in a tick cost one frame per member, not N.
"""

from __future__ import annotations

import bisect

from .nicknames import lookalike_keys, nick_key
from .users import User


class Member:
    """One connection in a room."""

    __slots__ = ("fd", "live", "user")

    def __init__(self, fd: int, user: User) -> None:
        self.fd = fd
        self.user = user
        # False while missed messages are replayed (see apps.chat catch-up).
        self.live = False


class Room:
    __slots__ = (
        "by_key",
        "by_look",
        "count_due",
        "dirty",
        "large",
        "live",
        "live_cache",
        "members",
        "name",
        "order",
        "remote",
        "shadow",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        #: Connections: fd -> Member.
        self.members: dict[int, Member] = {}
        #: People: nickname key (NFKC + casefold) -> user; ``order`` has the keys sorted.
        self.by_key: dict[str, User] = {}
        self.order: list[str] = []
        #: Lookalike keys (TR39 skeletons) of every member's nickname -> its user.
        self.by_look: dict[str, User] = {}
        #: The live connections (catch-up done), in the order they went live, and
        #: their tuple as deliveries use it (rebuilt, in C, after a change).
        self.live: dict[int, None] = {}
        self.live_cache: tuple[int, ...] | None = None
        #: Presence notes of this tick: user -> its nickname when the tick began
        #: (None: it was not in the room).
        self.dirty: dict[User, str | None] = {}
        #: The last presence frame said ``large``; the clock time the next count
        #: of a large room may be sent.
        self.large = False
        self.count_due = 0.0
        #: Members on other nodes (cluster presence): member id -> its user (no
        #: connection here). One user seen on several nodes is indexed once.
        self.remote: dict[str, User] = {}
        #: Nickname key -> ids of remote members not indexed because someone else
        #: (the same user elsewhere, or a stale clash) holds that nickname here.
        self.shadow: dict[str, dict[str, None]] = {}

    def live_fds(self) -> tuple[int, ...]:
        cache = self.live_cache
        if cache is None:
            cache = self.live_cache = tuple(self.live)
        return cache

    def go_live(self, member: Member) -> None:
        member.live = True
        self.live[member.fd] = None
        self.live_cache = None

    def drop(self, fd: int) -> Member | None:
        """Connection ``fd`` is out of the room (its member, if it was in)."""
        member = self.members.pop(fd, None)
        if fd in self.live:
            del self.live[fd]
            self.live_cache = None
        return member

    @property
    def count(self) -> int:
        """Members (people, not connections)."""
        return len(self.by_key)

    def has(self, user: User) -> bool:
        return self.by_key.get(nick_key(user.nick)) is user

    def holder(self, nick: str) -> User | None:
        """The member whose nickname is ``nick`` or looks like it, if any."""
        for key in lookalike_keys(nick):
            found = self.by_look.get(key)
            if found is not None:
                return found
        return None

    # -- changes (each noted for presence) ---------------------------------------

    def add_person(self, user: User, quiet: bool = False) -> None:
        if not quiet:
            self.dirty.setdefault(user, None)
        self._index(user, user.nick)

    def remove_person(self, user: User, quiet: bool = False) -> None:
        if not quiet:
            self.dirty.setdefault(user, user.nick)
        self._unindex(user, user.nick)

    def rename_person(self, user: User, old: str, new: str) -> None:
        self.dirty.setdefault(user, old)
        self._unindex(user, old)
        self._index(user, new)

    def _index(self, user: User, nick: str) -> None:
        key = nick_key(nick)
        self.by_key[key] = user
        bisect.insort(self.order, key)
        for look in lookalike_keys(nick):
            self.by_look.setdefault(look, user)

    def _unindex(self, user: User, nick: str) -> None:
        key = nick_key(nick)
        if self.by_key.get(key) is user:
            del self.by_key[key]
            i = bisect.bisect_left(self.order, key)
            if i < len(self.order) and self.order[i] == key:
                del self.order[i]
        for look in lookalike_keys(nick):
            if self.by_look.get(look) is user:
                del self.by_look[look]

    # -- reading -----------------------------------------------------------------

    def diff(self) -> tuple[list[User], list[tuple[User, str]], list[tuple[User, str]]]:
        """The net changes noted since the last call (and forget them): joined users,
        (user, nickname) of those who left, (user, old nickname) of those renamed."""
        joined: list[User] = []
        left: list[tuple[User, str]] = []
        renamed: list[tuple[User, str]] = []
        for user, before in self.dirty.items():
            now = user.nick if self.has(user) else None
            if before is None:
                if now is not None:
                    joined.append(user)
            elif now is None:
                left.append((user, before))
            elif now != before:
                renamed.append((user, before))
        self.dirty.clear()
        return joined, left, renamed

    def page(self, after: str | None, limit: int) -> tuple[list[User], bool]:
        """Up to ``limit`` members after the nickname ``after``, in nickname order,
        and whether more follow."""
        start = 0 if after is None else bisect.bisect_right(self.order, nick_key(after))
        keys = self.order[start : start + limit]
        return [self.by_key[k] for k in keys], start + limit < len(self.order)
