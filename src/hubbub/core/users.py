"""Who holds a nickname: a room member is a *user*, whatever its connections.

A connection with an :class:`Identity` speaks for its user (the token's ``sub``):
all connections of one user share one :class:`User` (one nickname, one member of
each room they are in). An anonymous connection (``--auth none``) is a user of
its own (``user`` None).

Nickname ownership (:class:`Owners`): a user owns its token's name and the
nickname it holds, whether connected or not, so nobody else can take either
(nor a lookalike) while the owner is away. The table is bounded: it holds the
users seen since the node started, at most ``capacity`` of them; past that,
the user gone longest (no connection) is forgotten first, releasing its names.
Users with a connection are never evicted (they are bounded by the connection
limits). Memory: about 800 bytes per user (the User object, its ids, nicknames
and two to four skeletons and the table entries), so 100,000 users cost about
80 MB (tracemalloc measured 780 bytes a user); ``ChatLimits.max_nick_owners``
sets the capacity.
"""

from __future__ import annotations

from collections import OrderedDict

from .nicknames import lookalike_keys


class User:
    """A user as the chat core sees it: one nickname, its connections and rooms."""

    __slots__ = ("fds", "name", "nick", "rooms", "user")

    def __init__(self, user: str | None, nick: str, name: str | None = None) -> None:
        #: The user id (token ``sub``), or None for an anonymous connection.
        self.user = user
        self.nick = nick
        #: The token's name (a nickname this user owns even after a rename).
        self.name = name
        self.fds: set[int] = set()
        #: Room name -> how many of this user's connections are in it.
        self.rooms: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"User({self.user!r}, {self.nick!r})"


class Owners:
    """Skeleton of a nickname -> the user that owns it (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1)
        #: User id -> User, oldest seen first (moved to the end when seen).
        self.users: OrderedDict[str, User] = OrderedDict()
        self._by_key: dict[str, User] = {}
        self._keys: dict[str, tuple[str, ...]] = {}  # user id -> keys it holds

    def get(self, user: str) -> User | None:
        return self.users.get(user)

    def owner(self, nick: str) -> User | None:
        """The user that owns ``nick`` or a lookalike of it, if any."""
        for key in lookalike_keys(nick):
            found = self._by_key.get(key)
            if found is not None:
                return found
        return None

    def add(self, user: User) -> None:
        """``user`` is seen (connects): remember it, evicting the longest gone."""
        assert user.user is not None
        self.users[user.user] = user
        self.users.move_to_end(user.user)
        self.claim(user)
        self._evict()

    def seen(self, user: User) -> None:
        """``user`` was active now (its last connection closed): gone the shortest."""
        if user.user in self.users:
            self.users.move_to_end(user.user)

    def claim(self, user: User) -> None:
        """Own the user's current nickname and token name (what is free of them)."""
        assert user.user is not None
        for key in self._keys.pop(user.user, ()):
            if self._by_key.get(key) is user:
                del self._by_key[key]
        names = [user.nick] if user.name is None else [user.nick, user.name]
        held: list[str] = []
        for name in names:
            for key in lookalike_keys(name):
                if self._by_key.setdefault(key, user) is user and key not in held:
                    held.append(key)
        self._keys[user.user] = tuple(held)

    def _evict(self) -> None:
        # Oldest first; a connected user found at the front is moved to the end
        # (each at most once per call), so a call costs O(evicted + skipped).
        for _ in range(len(self.users)):
            if len(self.users) <= self.capacity:
                return
            uid, user = next(iter(self.users.items()))
            if user.fds:
                self.users.move_to_end(uid)  # connected: kept
                continue
            del self.users[uid]
            for key in self._keys.pop(uid, ()):
                if self._by_key.get(key) is user:
                    del self._by_key[key]
