"""Rooms, nicknames, presence and permissions, as a state machine without I/O."""

from __future__ import annotations

import bisect
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import protocol as p
from .effects import Catchup, Close, Effect, LoadHistory, Persist, Publish, Reply, RoomsQuery
from .identity import Identity
from .ratelimit import TokenBucket


@dataclass(frozen=True, slots=True)
class ChatLimits:
    #: Frames per second one connection may send (token bucket refill); 0 disables.
    rate: float = 20.0
    #: Frames one connection may send in a burst (bucket size).
    burst: float = 40.0
    #: Rooms one connection may be in at once.
    max_rooms_per_connection: int = 50
    #: Members one room may hold (joins beyond get ``unavailable``).
    max_members_per_room: int = 10_000
    #: Rooms the server holds; a join that would create one more gets ``room_limit``.
    #: 0: no limit.
    max_rooms: int = 10_000
    #: New rooms per second one connection may create (bucket refill); 0 disables.
    room_create_rate: float = 0.2
    #: New rooms one connection may create in a burst (bucket size).
    room_create_burst: float = 5.0
    #: Invalid frames (bad JSON, bad or unknown frame, binary) one connection may send
    #: in a burst, forgiven at ``max_invalid_frames`` per ``invalid_frame_window``
    #: seconds (at least 1); one more closes the connection with 1008. 0 disables.
    max_invalid_frames: int = 10
    invalid_frame_window: float = 60.0


#: Close code and reason for a connection that keeps sending invalid frames.
CLOSE_POLICY = 1008
TOO_MANY_INVALID = "too many invalid frames"


class Member:
    __slots__ = ("fd", "live", "nick")

    def __init__(self, fd: int, nick: str) -> None:
        self.fd = fd
        self.nick = nick
        # False while missed messages are replayed (see apps.chat catch-up).
        self.live = False


class Room:
    __slots__ = ("live_cache", "members", "name", "nicks")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[int, Member] = {}
        self.nicks: dict[str, int] = {}  # casefolded nick -> fd
        self.live_cache: tuple[int, ...] | None = None

    def live_fds(self) -> tuple[int, ...]:
        cache = self.live_cache
        if cache is None:
            cache = self.live_cache = tuple(fd for fd, m in self.members.items() if m.live)
        return cache


class Session:
    __slots__ = ("bucket", "creates", "fd", "identity", "nick", "rooms", "strikes")

    def __init__(
        self,
        fd: int,
        nick: str,
        bucket: TokenBucket,
        creates: TokenBucket,
        strikes: TokenBucket,
        identity: Identity | None = None,
    ) -> None:
        self.fd = fd
        self.nick = nick
        self.identity = identity
        self.rooms: set[str] = set()
        #: Every frame, valid or not, takes a token.
        self.bucket = bucket
        #: Every room this connection creates takes a token.
        self.creates = creates
        #: Every invalid frame takes a token; none left closes the connection.
        self.strikes = strikes


def _key(nick: str) -> str:
    return nick.casefold()


class ChatCore:
    """All chat state of one node.

    Identity: a connection's nickname defaults to ``user-<fd>`` (the seed's
    fd stays the fallback identity) and must be unique, case-insensitively,
    in every room the connection is in.
    """

    def __init__(
        self,
        limits: ChatLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits or ChatLimits()
        self.clock = clock
        self.wallclock = wallclock
        self.sessions: dict[int, Session] = {}
        self.rooms: dict[str, Room] = {}
        #: Rooms being deleted: joins and sends are refused until the delete is done.
        self.closing: set[str] = set()
        #: Every room that exists (in the store, or being created by a join), in
        #: byte order: what ``max_rooms`` counts. The service loads it when it
        #: starts (:meth:`load_rooms`).
        self.known: list[str] = []

    # -- connections -------------------------------------------------------

    def connect(
        self, fd: int, limits: dict[str, float] | None = None, identity: Identity | None = None
    ) -> list[Effect]:
        """A hubbub.v1 connection opens (after its ``auth``, if any): ``welcome``.

        With an ``identity`` the nickname is the token's name (else the user id)
        and frames about this connection carry ``user``."""
        nick = f"user-{fd}" if identity is None else (identity.name or identity.user)
        lim = self.limits
        now = self.clock()
        strikes = lim.max_invalid_frames
        window = max(lim.invalid_frame_window, 1.0)  # a window under 1 s counts as 1 s
        self.sessions[fd] = Session(
            fd,
            nick,
            TokenBucket(lim.rate, lim.burst, now),
            TokenBucket(lim.room_create_rate, lim.room_create_burst, now),
            TokenBucket(strikes / window if strikes else 0.0, strikes, now),
            identity,
        )
        welcome = p.Welcome(p.SUBPROTOCOL, fd, nick, dict(limits or {}))
        if identity is not None:
            welcome.user = identity.user
        return [Reply(fd, welcome)]

    def disconnect(self, fd: int) -> list[Effect]:
        session = self.sessions.pop(fd, None)
        if session is None:
            return []
        out: list[Effect] = []
        for name in sorted(session.rooms):
            out.extend(self._remove_member(name, fd, session.nick))
        return out

    # -- frames --------------------------------------------------------------

    def handle(self, fd: int, frame: p.ClientFrame) -> list[Effect]:
        session = self.sessions.get(fd)
        if session is None:
            return []
        if not session.bucket.take(self.clock()):
            wait = session.bucket.retry_after()
            return [
                self._error(fd, p.E_RATE_LIMITED, f"too many frames; retry in {wait:.2f}s", frame)
            ]
        method = _HANDLERS[type(frame)]
        return method(self, session, frame)

    def error(self, fd: int, exc: p.ProtocolError) -> list[Effect]:
        """The effects of a frame that failed to decode: it costs a token like any
        frame, and a strike; past ``max_invalid_frames`` the connection is closed."""
        return self._invalid(fd, p.Error(exc.code, exc.message, exc.ref, field=exc.field))

    def not_text(self, fd: int) -> list[Effect]:
        """A binary frame on a hubbub.v1 connection: an invalid frame like any other."""
        return self._invalid(fd, p.Error(p.E_NOT_TEXT, "hubbub.v1 frames are JSON text frames"))

    def _invalid(self, fd: int, error: p.Error) -> list[Effect]:
        session = self.sessions.get(fd)
        if session is None:
            return []
        now = self.clock()
        if not session.strikes.take(now):
            return [Close(fd, CLOSE_POLICY, TOO_MANY_INVALID)]
        if not session.bucket.take(now):
            wait = session.bucket.retry_after()
            error = p.Error(p.E_RATE_LIMITED, f"too many frames; retry in {wait:.2f}s", error.ref)
        return [Reply(fd, error)]

    def _error(
        self, fd: int, code: str, message: str, frame: p.ClientFrame, room: str | None = None
    ) -> Reply:
        ref = type(frame).__struct_config__.tag
        cid = getattr(frame, "id", None)
        return Reply(
            fd, p.Error(code, message, str(ref), room or getattr(frame, "room", None), cid)
        )

    def _join(self, s: Session, f: p.Join) -> list[Effect]:
        if f.room in s.rooms:
            return [self._error(s.fd, p.E_ALREADY_IN_ROOM, f"already in room {f.room!r}", f)]
        if len(s.rooms) >= self.limits.max_rooms_per_connection:
            return [
                self._error(
                    s.fd,
                    p.E_TOO_MANY_ROOMS,
                    f"at most {self.limits.max_rooms_per_connection} rooms",
                    f,
                )
            ]
        if f.room in self.closing:
            return [self._error(s.fd, p.E_UNAVAILABLE, f"room {f.room!r} is being deleted", f)]
        room = self.rooms.get(f.room)
        nick = f.nick if f.nick is not None else s.nick
        # Check the room first: a refused join must leave the nickname as it was.
        if room is not None and _key(nick) in room.nicks:
            return [
                self._error(s.fd, p.E_NICK_TAKEN, f"nickname {nick!r} is taken in {f.room!r}", f)
            ]
        if room is not None and len(room.members) >= self.limits.max_members_per_room:
            return [self._error(s.fd, p.E_UNAVAILABLE, f"room {f.room!r} is full", f)]
        creates = room is None and not self.room_exists(f.room)
        if creates:
            refused = self.creation_refused(f.room)
            if refused is None and not s.creates.take(self.clock()):
                wait = s.creates.retry_after()
                refused = (p.E_RATE_LIMITED, f"too many new rooms; retry in {wait:.2f}s")
            if refused is not None:
                return [self._error(s.fd, *refused, f)]
        out: list[Effect] = []
        if nick != s.nick:
            # Choosing a nickname on join renames the connection everywhere.
            renamed = self._rename(s, nick, f)
            if isinstance(renamed, Reply):
                return [renamed]
            out.extend(renamed)
        if room is None:
            room = self.rooms[f.room] = Room(f.room)
        if creates:
            self.room_created(f.room)
        room.members[s.fd] = Member(s.fd, s.nick)
        room.nicks[_key(s.nick)] = s.fd
        room.live_cache = None
        s.rooms.add(f.room)
        ts = self.wallclock()
        out.append(Publish(f.room, p.Joined(f.room, s.nick, ts)))
        # The joiner's RoomState is sent by the service with the room's
        # current epoch and seq, then the catch-up (if any), then live.
        out.append(Catchup(s.fd, f.room, f.since, f.epoch))
        return out

    def room_state(self, fd: int, room_name: str, epoch: str, seq: int) -> p.RoomState | None:
        room = self.rooms.get(room_name)
        session = self.sessions.get(fd)
        if room is None or session is None:
            return None
        members = sorted((m.nick for m in room.members.values()), key=str.casefold)
        return p.RoomState(room_name, session.nick, epoch, seq, members)

    def mark_live(self, fd: int, room_name: str) -> bool:
        """The member's catch-up is done: room deliveries now go to it directly."""
        room = self.rooms.get(room_name)
        member = room.members.get(fd) if room else None
        if member is None or room is None:
            return False
        member.live = True
        room.live_cache = None
        return True

    def drop_membership(self, fd: int, room_name: str) -> list[Effect]:
        """Undo a join the service could not complete (the client may join again)."""
        session = self.sessions.get(fd)
        if session is None or room_name not in session.rooms:
            return []
        return self._remove_member(room_name, fd, session.nick)

    # -- deleting a room (an operator's decision, carried out by the service) --

    def close_room(self, room_name: str) -> None:
        """A delete of the room begins: refuse joins and sends until :meth:`reopen_room`."""
        self.closing.add(room_name)

    def reopen_room(self, room_name: str) -> None:
        self.closing.discard(room_name)

    def remove_room(self, room_name: str) -> list[Effect]:
        """The room was deleted: every member is out of it and told so (``left_room``
        with ``reason: "deleted"``); nobody receives ``left`` for the others."""
        self._forget_room(room_name)
        room = self.rooms.pop(room_name, None)
        if room is None:
            return []
        out: list[Effect] = []
        for fd in sorted(room.members):
            session = self.sessions.get(fd)
            if session is not None:
                session.rooms.discard(room_name)
            out.append(Reply(fd, p.Left_(room_name, reason="deleted")))
        return out

    def live_fds(self, room_name: str) -> tuple[int, ...]:
        room = self.rooms.get(room_name)
        return room.live_fds() if room is not None else ()

    def is_member(self, fd: int, room_name: str) -> bool:
        room = self.rooms.get(room_name)
        return room is not None and fd in room.members

    def _leave(self, s: Session, f: p.Leave) -> list[Effect]:
        if f.room not in s.rooms:
            return [self._error(s.fd, p.E_NOT_IN_ROOM, f"not in room {f.room!r}", f)]
        return [*self._remove_member(f.room, s.fd, s.nick), Reply(s.fd, p.Left_(f.room))]

    def _remove_member(self, room_name: str, fd: int, nick: str) -> list[Effect]:
        room = self.rooms.get(room_name)
        session = self.sessions.get(fd)
        if session is not None:
            session.rooms.discard(room_name)
        if room is None or room.members.pop(fd, None) is None:
            return []
        room.nicks.pop(_key(nick), None)
        room.live_cache = None
        if not room.members:
            del self.rooms[room_name]
            return []
        return [Publish(room_name, p.Left(room_name, nick, self.wallclock()))]

    def _send(self, s: Session, f: p.Send) -> list[Effect]:
        if f.room not in s.rooms:
            return [self._error(s.fd, p.E_NOT_IN_ROOM, f"join {f.room!r} before sending to it", f)]
        if f.room in self.closing:
            # Nothing may be stored after the delete: the message would recreate the room.
            return [self._error(s.fd, p.E_UNAVAILABLE, f"room {f.room!r} is being deleted", f)]
        return [Persist(s.fd, f.room, f.id, s.nick, f.text)]

    def _nick(self, s: Session, f: p.SetNick) -> list[Effect]:
        result = self._rename(s, f.nick, f)
        if isinstance(result, Reply):
            return [result]
        return [*result, Reply(s.fd, p.NickSet(s.nick))]

    def _rename(self, s: Session, nick: str, f: p.ClientFrame) -> list[Effect] | Reply:
        new_key = _key(nick)
        for name in s.rooms:
            holder = self.rooms[name].nicks.get(new_key)
            if holder is not None and holder != s.fd:
                return self._error(
                    s.fd, p.E_NICK_TAKEN, f"nickname {nick!r} is taken in {name!r}", f, room=name
                )
        old = s.nick
        if old == nick:
            return []
        s.nick = nick
        ts = self.wallclock()
        out: list[Effect] = []
        for name in sorted(s.rooms):
            room = self.rooms[name]
            room.nicks.pop(_key(old), None)
            room.nicks[new_key] = s.fd
            room.members[s.fd].nick = nick
            out.append(Publish(name, p.Renamed(name, old, nick, ts)))
        return out

    def _dm(self, s: Session, f: p.Direct) -> list[Effect]:
        if f.room not in s.rooms:
            return [self._error(s.fd, p.E_NOT_IN_ROOM, f"not in room {f.room!r}", f)]
        target = self.rooms[f.room].nicks.get(_key(f.to))
        if target is None:
            return [
                self._error(s.fd, p.E_NO_SUCH_MEMBER, f"nobody called {f.to!r} in {f.room!r}", f)
            ]
        if target == s.fd:
            return [self._error(s.fd, p.E_DM_SELF, "you cannot send yourself a direct message", f)]
        member = self.rooms[f.room].members[target]
        dm = p.DirectMessage(
            f.room, uuid.uuid4().hex, member.nick, f.text, self.wallclock(), f.id, sender=s.nick
        )
        return [Reply(target, dm), Reply(s.fd, dm)]

    def _typing(self, s: Session, f: p.Typing) -> list[Effect]:
        if f.room not in s.rooms:
            return [self._error(s.fd, p.E_NOT_IN_ROOM, f"not in room {f.room!r}", f)]
        return [Publish(f.room, p.TypingEvent(f.room, s.nick, f.active))]

    def _history(self, s: Session, f: p.History) -> list[Effect]:
        return [LoadHistory(s.fd, f.room, f.before, f.limit)]

    def _rooms(self, s: Session, f: p.ListRooms) -> list[Effect]:
        return [RoomsQuery(s.fd, f.after, f.limit)]

    def _who(self, s: Session, f: p.Who) -> list[Effect]:
        return [Reply(s.fd, p.Members(f.room, self.members(f.room)))]

    def _auth(self, s: Session, f: p.Auth) -> list[Effect]:
        # The service layer takes the one ``auth`` a connection may send before
        # ``welcome``; one that reaches the core came too late.
        return [self._error(s.fd, p.E_BAD_FRAME, "auth is the first frame, sent once", f)]

    def _ping(self, s: Session, f: p.Ping) -> list[Effect]:
        return [Reply(s.fd, p.Pong(f.id, self.wallclock()))]

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
        cap = self.limits.max_rooms
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

    # -- queries -------------------------------------------------------------

    def members(self, room_name: str) -> list[str]:
        room = self.rooms.get(room_name)
        if room is None:
            return []
        return sorted((m.nick for m in room.members.values()), key=str.casefold)

    def member_count(self, room_name: str) -> int:
        room = self.rooms.get(room_name)
        return len(room.members) if room is not None else 0

    def known_after(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` names of existing rooms after ``after``, in byte order."""
        start = 0 if after is None else bisect.bisect_right(self.known, after)
        return self.known[start : start + limit]

    def member_counts(self) -> dict[str, int]:
        return {name: len(room.members) for name, room in self.rooms.items()}

    def nick_of(self, fd: int) -> str | None:
        s = self.sessions.get(fd)
        return s.nick if s else None

    def fds(self) -> Iterable[int]:
        return self.sessions.keys()


_HANDLERS: dict[type, Callable[[ChatCore, Session, object], list[Effect]]] = {
    p.Join: ChatCore._join,  # type: ignore[dict-item]
    p.Leave: ChatCore._leave,  # type: ignore[dict-item]
    p.Send: ChatCore._send,  # type: ignore[dict-item]
    p.SetNick: ChatCore._nick,  # type: ignore[dict-item]
    p.Direct: ChatCore._dm,  # type: ignore[dict-item]
    p.Typing: ChatCore._typing,  # type: ignore[dict-item]
    p.History: ChatCore._history,  # type: ignore[dict-item]
    p.ListRooms: ChatCore._rooms,  # type: ignore[dict-item]
    p.Who: ChatCore._who,  # type: ignore[dict-item]
    p.Ping: ChatCore._ping,  # type: ignore[dict-item]
    p.Auth: ChatCore._auth,  # type: ignore[dict-item]
}
