"""Who a connection is: the verified claims of its token, as plain values.

The adapters (:mod:`hubbub.auth`) verify a token and make an :class:`Identity`;
the chat core only reads it (room access, nickname ownership, roles). A
connection without one (``--auth none``) is anonymous: any nickname, any room.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Identity:
    """A user, as its token (or the guest rules) says.

    ``user`` is the token's ``sub`` (``guest-<n>`` for guests): the same user on
    two connections is one member. ``rooms`` is ``None`` for every room (the
    claim ``*`` or no claim), else the names the user may join. ``expires`` is
    the token's ``exp`` (seconds since the epoch), ``None`` if it has none.
    """

    user: str
    name: str | None = None
    rooms: frozenset[str] | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    expires: float | None = None
    guest: bool = False
    can_write: bool = True

    def may_join(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms

    @property
    def admin(self) -> bool:
        return "admin" in self.roles
