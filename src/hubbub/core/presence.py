"""Presence frames: a room's net membership changes as frames, and its member pages.

Two ways to tell a room's members who came and went (:class:`ChatCore` chooses
with ``coalesce_presence``):

* coalesced (:func:`presence_frame`): one frame per room per loop tick with
  every change of the tick (``presence``; a single change in a small room is
  the ``joined``/``left``/``renamed`` frame clients have always read); a room of more than
  ``ChatLimits.large_room`` members is *large*: its frames carry only the
  member count, at most one per ``ChatLimits.large_room_interval`` seconds, and
  members page through the list with ``who`` (docs/protocol.md, *presence*). It
  stays large until it has at most :func:`small_again` members (hysteresis: a
  room whose size wavers around the threshold does not change mode, and send
  every member a mode change and a list fetch, at every join or leave).
* one frame per change (:func:`event_frames`): ``joined``, ``left``,
  ``renamed``, as before coalescing (every join costs one frame per member:
  quadratic in a join storm).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from .. import protocol as p
from .effects import Effect, Publish
from .limits import ChatLimits
from .rooms import Room
from .users import User


def _user(user: User) -> str | msgspec.UnsetType:
    return msgspec.UNSET if user.user is None else user.user


def users_map(users: list[User]) -> dict[str, str] | msgspec.UnsetType:
    """nickname -> user id of the identified ones (UNSET when there is none)."""
    found = {u.nick: u.user for u in users if u.user is not None}
    return found or msgspec.UNSET


def presence_frame(room: Room, ts: float, large: bool) -> p.ServerFrame | None:
    """The room's noted changes as one frame (None when nothing to say).

    A tick with one change in a small room is told the way it always was, as
    ``joined``, ``left`` or ``renamed`` (clients written before ``presence`` keep
    their member list right outside of storms); more changes make one
    ``presence`` frame. A large room's frame carries only the count; the frame
    that says a room is no longer large is sent even without changes (its
    members fetch the list)."""
    if large:
        room.dirty.clear()
        room.large = True
        return p.Presence(room.name, room.count, ts, large=True)
    joined, left, renamed = room.diff()
    was_large, room.large = room.large, False
    if not was_large and len(joined) + len(left) + len(renamed) == 1:
        (frame,) = _changes(room.name, joined, left, renamed, ts)
        return frame
    if not (joined or left or renamed or was_large):
        return None
    return p.Presence(
        room.name,
        room.count,
        ts,
        joined=[p.Person(u.nick, _user(u)) for u in joined],
        left=[p.Person(nick, _user(u)) for u, nick in left],
        renamed=[p.Rename(old, u.nick, _user(u)) for u, old in renamed],
    )


def event_frames(room: Room, ts: float) -> list[p.ServerFrame]:
    """The room's noted changes as ``left``, ``renamed`` and ``joined`` frames."""
    return _changes(room.name, *room.diff(), ts)


def _changes(
    name: str,
    joined: list[User],
    left: list[tuple[User, str]],
    renamed: list[tuple[User, str]],
    ts: float,
) -> list[p.ServerFrame]:
    out: list[p.ServerFrame] = [p.Left(name, nick, ts, _user(u)) for u, nick in left]
    out.extend(p.Renamed(name, old, u.nick, ts, _user(u)) for u, old in renamed)
    out.extend(p.Joined(name, u.nick, ts, _user(u)) for u in joined)
    return out


def small_again(large_room: int) -> int:
    """The member count at or below which a large room is small again: 2 % below
    ``large_room`` (490 for 500), at least one below it. A room whose size wanders
    at random (as many joins as leaves) takes about 10 * 10 = 100 of them to cross
    a band of 10; one join and one leave in turn never cross it."""
    return large_room - max(1, large_room // 50)


def is_large(room: Room, large_room: int) -> bool:
    """Is the room large: more than ``large_room`` members, or large already (its
    last presence frame said so) and still more than :func:`small_again`."""
    count = room.count
    return count > large_room or (room.large and count > small_again(large_room))


def first_page(room: Room, large_room: int) -> tuple[list[User], bool]:
    """What a joiner (``room`` frame) or a ``who`` without ``limit`` gets: a small
    room's whole list, a large room's first ``MEMBERS_PAGE_DEFAULT`` (with the
    hysteresis of :func:`is_large`, so that a client that reads the list sees the
    mode its presence frames tell)."""
    if not is_large(room, large_room):
        return room.page(None, room.count)
    return room.page(None, p.MEMBERS_PAGE_DEFAULT)


def members_page(room: Room, who: p.Who, large_room: int) -> p.Members:
    """The answer to ``who``."""
    if who.after is None and who.limit is None:
        users, more = first_page(room, large_room)
    else:
        users, more = room.page(who.after, who.limit or p.MEMBERS_PAGE_DEFAULT)
    after: str | msgspec.UnsetType = msgspec.UNSET if who.after is None else who.after
    return p.Members(room.name, [u.nick for u in users], room.count, more, after, users_map(users))


class PresenceBuffer:
    """The presence part of :class:`~hubbub.core.ChatCore`: rooms with noted
    changes wait in ``_dirty`` until they are published; a large room whose next
    count is not due yet waits in ``_waiting`` (room -> the ``clock`` time it is due)."""

    limits: ChatLimits
    clock: Callable[[], float]
    wallclock: Callable[[], float]
    coalesce_presence: bool
    rooms: dict[str, Room]
    _dirty: dict[str, None]
    _waiting: dict[str, float]

    def flush_presence(self) -> list[Effect]:
        """The presence changes since the last call, one ``presence`` frame per room
        (the service calls it once per loop tick, after the tick's frames). A large
        room's count waits for its ``large_room_interval``: see :meth:`presence_due`."""
        out: list[Effect] = []
        now = self.clock()
        ready = list(self._dirty)
        self._dirty.clear()
        for name, due in list(self._waiting.items()):
            if due <= now:
                del self._waiting[name]
                ready.append(name)
        if not ready:
            return out
        ts = self.wallclock()
        big = self.limits.large_room
        for name in dict.fromkeys(ready):
            room = self.rooms.get(name)
            if room is None or name in self._waiting:
                continue  # gone, or a large room whose count is not due yet
            large = is_large(room, big)
            if large:
                if now < room.count_due:
                    self._waiting[name] = room.count_due
                    continue
                room.count_due = now + self.limits.large_room_interval
            frame = presence_frame(room, ts, large)
            if frame is not None:
                out.append(Publish(name, frame))
        return out

    def presence_pending(self) -> bool:
        """Is anything noted and not yet published (cheap: for every ``run``)?"""
        return bool(self._dirty or self._waiting)

    def presence_due(self) -> float | None:
        """When :meth:`flush_presence` has something to publish: a ``clock`` time (0.0:
        at once), or None when nothing waits. Cost: the number of large rooms waiting."""
        if self._dirty:
            return 0.0
        return min(self._waiting.values(), default=None)

    def _forget_presence(self, name: str) -> None:
        self._dirty.pop(name, None)
        self._waiting.pop(name, None)

    def _events(self) -> list[Effect]:
        """Without coalescing: the noted changes as ``joined``/``left``/``renamed``."""
        if self.coalesce_presence or not self._dirty:
            return []
        ts = self.wallclock()
        out: list[Effect] = []
        for name in self._dirty:
            room = self.rooms.get(name)
            if room is not None:
                out.extend(Publish(name, frame) for frame in event_frames(room, ts))
        self._dirty.clear()
        return out
