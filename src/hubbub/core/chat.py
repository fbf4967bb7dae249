"""Rooms, nicknames, presence and permissions, as a state machine without I/O."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

from .. import protocol as p
from .effects import Catchup, Close, Effect, LoadHistory, Persist, Publish, Reply, RoomsQuery
from .identity import Identity
from .known import KnownRooms
from .limits import ChatLimits
from .nicknames import nick_key, same_text, valid_nick
from .presence import PresenceBuffer, first_page, members_page, users_map
from .ratelimit import TokenBucket
from .remote import RemoteMembers
from .rooms import Member, Room
from .users import Owners, User

#: Close code and reason for a connection that keeps sending invalid frames.
CLOSE_POLICY = 1008
TOO_MANY_INVALID = "too many invalid frames"


class Session:
    """One hubbub.v1 connection; ``user`` is the member it speaks for."""

    __slots__ = ("bucket", "creates", "fd", "identity", "rooms", "strikes", "user")

    def __init__(
        self,
        fd: int,
        user: User,
        bucket: TokenBucket,
        creates: TokenBucket,
        strikes: TokenBucket,
        identity: Identity | None = None,
    ) -> None:
        self.fd = fd
        self.user = user
        self.identity = identity
        self.rooms: set[str] = set()
        #: Every frame, valid or not, takes a token.
        self.bucket = bucket
        #: Every room this connection creates takes a token.
        self.creates = creates
        #: Every invalid frame takes a token; none left closes the connection.
        self.strikes = strikes

    @property
    def nick(self) -> str:
        return self.user.nick


class ChatCore(KnownRooms, PresenceBuffer, RemoteMembers):
    """All chat state of one node.

    Identity: an anonymous connection's nickname defaults to ``user-<fd>`` (the
    seed's fd stays the fallback identity). A connection with an
    :class:`Identity` starts with its token's name (else its user id; else, when
    neither is a valid nickname or another user owns it, ``user-<fd>``); all
    connections of one user share one nickname and are one member of a room.

    Nicknames: compared after NFKC + casefold, unique in every room their holder
    is in, and a nickname that looks like another member's (TR39 skeleton) is
    refused (``nick_confusable``). A user owns its token's name and the nickname
    it holds, connected or away (:class:`~hubbub.core.users.Owners`): nobody else
    may take either. A user may change its nickname (``nick``, ``join`` with
    ``nick``) to one nobody else owns or holds in its rooms; the change reaches
    all its connections (each gets ``nick``) and all their rooms.

    Several nodes: members of other nodes are mirrored in as users without a
    connection here (:mod:`hubbub.core.remote`): listed, counted, clashing.

    Presence: with ``coalesce_presence`` the changes wait for
    :meth:`flush_presence` (one ``presence`` frame per room per loop tick); without,
    each change is published at once as ``joined``/``left``/``renamed``.
    """

    def __init__(
        self,
        limits: ChatLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        coalesce_presence: bool = False,
    ) -> None:
        self.limits = limits or ChatLimits()
        self.clock = clock
        self.wallclock = wallclock
        self.coalesce_presence = coalesce_presence
        self.sessions: dict[int, Session] = {}
        self.rooms: dict[str, Room] = {}
        self.owners = Owners(self.limits.max_nick_owners)
        #: Rooms whose history and member list are for their members only.
        self.private: set[str] = set()
        #: Rooms with presence changes not yet published (in order of first change).
        self._dirty: dict[str, None] = {}
        self._waiting: dict[str, float] = {}
        #: Rooms being deleted: joins and sends are refused until the delete is done.
        self.closing: set[str] = set()
        #: Every room that exists (in the store, or being created by a join), in
        #: byte order: what ``max_rooms`` counts. The service loads it when it
        #: starts (:meth:`load_rooms`).
        self.known: list[str] = []
        #: Appended to ``user-<fd>`` (several nodes: fds repeat from node to node,
        #: so each node sets its own tag, e.g. ``.b7f3``; empty on one node).
        self.nick_suffix = ""

    def default_nick(self, fd: int) -> str:
        """A connection's nickname until it picks one."""
        return f"user-{fd}{self.nick_suffix}"

    # -- connections -------------------------------------------------------

    def connect(
        self, fd: int, limits: dict[str, float] | None = None, identity: Identity | None = None
    ) -> list[Effect]:
        """A hubbub.v1 connection opens (after its ``auth``, if any): ``welcome``.

        With an ``identity`` the connection speaks for its user (see the class
        docstring for its nickname) and frames about it carry ``user``."""
        if identity is None:
            user = User(None, self.default_nick(fd))
        else:
            user = self._user_for(identity, fd)
        user.fds.add(fd)
        lim = self.limits
        now = self.clock()
        strikes = lim.max_invalid_frames
        window = max(lim.invalid_frame_window, 1.0)  # a window under 1 s counts as 1 s
        self.sessions[fd] = Session(
            fd,
            user,
            TokenBucket(lim.rate, lim.burst, now),
            TokenBucket(lim.room_create_rate, lim.room_create_burst, now),
            TokenBucket(strikes / window if strikes else 0.0, strikes, now),
            identity,
        )
        welcome = p.Welcome(p.SUBPROTOCOL, fd, user.nick, dict(limits or {}))
        if identity is not None:
            welcome.user = identity.user
        return [Reply(fd, welcome)]

    def _user_for(self, identity: Identity, fd: int) -> User:
        """The user of a new connection. A guest (``--auth optional``: one user per
        connection) owns no nickname: guests come and go, and remembering them
        would push real users out of the owner table."""
        user = None if identity.guest else self.owners.get(identity.user)
        if user is None:
            name = identity.name if identity.name and valid_nick(identity.name) else None
            nick = self.default_nick(fd)
            for wanted in (name, identity.user):
                if wanted is not None and valid_nick(wanted) and self._free(wanted):
                    nick = wanted
                    break
            user = User(identity.user, nick, name if name and self._free(name) else None)
        if not identity.guest:
            self.owners.add(user)
        return user

    def _free(self, nick: str) -> bool:
        return self.owners.owner(nick) is None

    def disconnect(self, fd: int) -> list[Effect]:
        session = self.sessions.pop(fd, None)
        if session is None:
            return []
        for name in sorted(session.rooms):
            self._remove_member(name, fd, session)
        session.user.fds.discard(fd)
        if session.user.user is not None and not session.user.fds:
            self.owners.seen(session.user)
        return self._events()

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

    def _join_refused(self, s: Session, f: p.Join) -> Reply | None:
        """Why ``s`` may not join ``f.room`` (before nicknames and room creation)."""
        if f.room in s.rooms:
            return self._error(s.fd, p.E_ALREADY_IN_ROOM, f"already in room {f.room!r}", f)
        if len(s.rooms) >= self.limits.max_rooms_per_connection:
            n = self.limits.max_rooms_per_connection
            return self._error(s.fd, p.E_TOO_MANY_ROOMS, f"at most {n} rooms", f)
        if s.identity is not None and not s.identity.may_join(f.room):
            return self._error(s.fd, p.E_FORBIDDEN, f"your token does not allow {f.room!r}", f)
        if f.room in self.closing:
            return self._error(s.fd, p.E_UNAVAILABLE, f"room {f.room!r} is being deleted", f)
        room = self.rooms.get(f.room)
        if room is not None and len(room.members) >= self.limits.max_members_per_room:
            return self._error(s.fd, p.E_UNAVAILABLE, f"room {f.room!r} is full", f)
        return None

    def _join(self, s: Session, f: p.Join) -> list[Effect]:
        refused = self._join_refused(s, f)
        if refused is not None:
            return [refused]
        user = s.user
        room = self.rooms.get(f.room)
        nick = f.nick if f.nick is not None else user.nick
        # Check the room first: a refused join must leave the nickname as it was.
        if room is not None and not room.has(user):
            holder = room.holder(nick)
            if self.deferred(holder, nick):
                holder = None  # the cluster's claim decides (see hubbub.core.remote)
            clash = self._clash(s, nick, holder, f, f.room)
            if clash is not None:
                return [clash]
        creates = room is None and not self.room_exists(f.room)
        if creates:
            why = self.creation_refused(f.room)
            if why is None and not s.creates.take(self.clock()):
                wait = s.creates.retry_after()
                why = (p.E_RATE_LIMITED, f"too many new rooms; retry in {wait:.2f}s")
            if why is not None:
                return [self._error(s.fd, *why, f)]
        out: list[Effect] = []
        if nick != user.nick:
            # Choosing a nickname on join renames the user everywhere.
            renamed = self._rename(s, nick, f)
            if isinstance(renamed, Reply):
                return [renamed]
            out.extend(renamed)
        if room is None:
            room = self.rooms[f.room] = Room(f.room)
        if creates:
            self.room_created(f.room)
        room.members[s.fd] = Member(s.fd, user)
        s.rooms.add(f.room)
        if user.rooms.get(f.room, 0) == 0:
            self.displace(room, user)  # the same user, already in from another node
            room.add_person(user)
            self._dirty[f.room] = None
        user.rooms[f.room] = user.rooms.get(f.room, 0) + 1
        out.extend(self._events())
        # The joiner's RoomState is sent by the service with the room's
        # current epoch and seq, then the catch-up (if any), then live.
        out.append(Catchup(s.fd, f.room, f.since, f.epoch))
        return out

    def _clash(
        self, s: Session, nick: str, holder: User | None, f: p.ClientFrame, where: str | None
    ) -> Reply | None:
        """The error for taking ``nick`` when ``holder`` has it or a lookalike."""
        if holder is None or holder is s.user:
            return None
        if holder.user is not None and holder.user == s.user.user:
            return None  # the same user, on another node
        names = [holder.nick] if holder.name is None else [holder.nick, holder.name]
        place = f" in {where!r}" if where else ""
        if any(same_text(nick, name) for name in names):
            return self._error(
                s.fd, p.E_NICK_TAKEN, f"nickname {nick!r} is taken{place}", f, room=where
            )
        return self._error(
            s.fd,
            p.E_NICK_CONFUSABLE,
            f"nickname {nick!r} looks like {holder.nick!r}{place}",
            f,
            room=where,
        )

    def room_state(self, fd: int, room_name: str, epoch: str, seq: int) -> p.RoomState | None:
        """The ``room`` frame for a joiner: the whole member list of a small room,
        the first page and the count of a large one."""
        room = self.rooms.get(room_name)
        session = self.sessions.get(fd)
        if room is None or session is None:
            return None
        users, more = first_page(room, self.limits.large_room)
        user = session.user.user
        return p.RoomState(
            room_name,
            session.nick,
            epoch,
            seq,
            [u.nick for u in users],
            room.count,
            more,
            users_map(users),
            *(() if user is None else (user,)),
        )

    def mark_live(self, fd: int, room_name: str) -> bool:
        """The member's catch-up is done: room deliveries now go to it directly."""
        room = self.rooms.get(room_name)
        member = room.members.get(fd) if room else None
        if member is None or room is None:
            return False
        room.go_live(member)
        return True

    def drop_membership(self, fd: int, room_name: str) -> list[Effect]:
        """Undo a join the service could not complete (the client may join again)."""
        session = self.sessions.get(fd)
        if session is None or room_name not in session.rooms:
            return []
        self._remove_member(room_name, fd, session)
        return self._events()

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
        self.private.discard(room_name)
        self._forget_presence(room_name)
        room = self.rooms.pop(room_name, None)
        if room is None:
            return []
        out: list[Effect] = []
        for fd, member in sorted(room.members.items()):
            session = self.sessions.get(fd)
            if session is not None:
                session.rooms.discard(room_name)
            member.user.rooms.pop(room_name, None)
            out.append(Reply(fd, p.Left_(room_name, reason="deleted")))
        return out

    def set_private(self, room_name: str, private: bool) -> None:
        """A private room's history and member list are for its members only (the
        service loads and stores the flag)."""
        if private:
            self.private.add(room_name)
        else:
            self.private.discard(room_name)

    def live_fds(self, room_name: str) -> tuple[int, ...]:
        room = self.rooms.get(room_name)
        return room.live_fds() if room is not None else ()

    def is_member(self, fd: int, room_name: str) -> bool:
        room = self.rooms.get(room_name)
        return room is not None and fd in room.members

    def _leave(self, s: Session, f: p.Leave) -> list[Effect]:
        if f.room not in s.rooms:
            return [self._error(s.fd, p.E_NOT_IN_ROOM, f"not in room {f.room!r}", f)]
        self._remove_member(f.room, s.fd, s)
        return [*self._events(), Reply(s.fd, p.Left_(f.room))]

    def _remove_member(self, room_name: str, fd: int, session: Session) -> None:
        """Connection ``fd`` is out of the room; its user too if it was the last one."""
        session.rooms.discard(room_name)
        room = self.rooms.get(room_name)
        if room is None or room.drop(fd) is None:
            return
        user = session.user
        left = user.rooms.get(room_name, 1) - 1
        if left > 0:
            user.rooms[room_name] = left
        else:
            user.rooms.pop(room_name, None)
            room.remove_person(user)
            self._dirty[room_name] = None
            self.unshadow(room, nick_key(user.nick), user)
        if not room.members:
            del self.rooms[room_name]
            self._forget_presence(room_name)

    def _read_only(self, s: Session, f: p.ClientFrame) -> Reply | None:
        if s.identity is None or s.identity.can_write:
            return None
        return self._error(s.fd, p.E_READ_ONLY, "guests may read, not write, here", f)

    def _send(self, s: Session, f: p.Send) -> list[Effect]:
        refused = self._read_only(s, f)
        if refused is not None:
            return [refused]
        if f.room not in s.rooms:
            return [self._error(s.fd, p.E_NOT_IN_ROOM, f"join {f.room!r} before sending to it", f)]
        if f.room in self.closing:
            # Nothing may be stored after the delete: the message would recreate the room.
            return [self._error(s.fd, p.E_UNAVAILABLE, f"room {f.room!r} is being deleted", f)]
        return [Persist(s.fd, f.room, f.id, s.nick, f.text, s.user.user)]

    def _nick(self, s: Session, f: p.SetNick) -> list[Effect]:
        result = self._rename(s, f.nick, f)
        if isinstance(result, Reply):
            return [result]
        # Every connection of the user learns its new nickname (this one first).
        fds = [s.fd, *sorted(s.user.fds - {s.fd})]
        return [*result, *self._events(), *(Reply(fd, p.NickSet(s.nick)) for fd in fds)]

    def _rename(self, s: Session, nick: str, f: p.ClientFrame) -> list[Effect] | Reply:
        user = s.user
        clash = self._clash(s, nick, self.owners.owner(nick), f, None)
        if clash is not None:
            return clash
        for name in user.rooms:
            clash = self._clash(s, nick, self.rooms[name].holder(nick), f, name)
            if clash is not None:
                return clash
        old = user.nick
        if old == nick:
            return []
        for name in sorted(user.rooms):
            self.rooms[name].rename_person(user, old, nick)
            self._dirty[name] = None
        user.nick = nick
        if user.user is not None and self.owners.get(user.user) is user:
            self.owners.claim(user)
        return []

    def _dm(self, s: Session, f: p.Direct) -> list[Effect]:
        refused = self._read_only(s, f)
        if refused is not None:
            return [refused]
        if f.room not in s.rooms:
            return [self._error(s.fd, p.E_NOT_IN_ROOM, f"not in room {f.room!r}", f)]
        room = self.rooms[f.room]
        target = room.by_key.get(nick_key(f.to))
        if target is None:
            return [
                self._error(s.fd, p.E_NO_SUCH_MEMBER, f"nobody called {f.to!r} in {f.room!r}", f)
            ]
        if target is s.user or (target.user is not None and target.user == s.user.user):
            return [self._error(s.fd, p.E_DM_SELF, "you cannot send yourself a direct message", f)]
        dm = p.DirectMessage(
            f.room, uuid.uuid4().hex, target.nick, f.text, self.wallclock(), f.id, sender=s.nick
        )
        if s.user.user is not None:
            dm.user = s.user.user
        if target.user is not None:
            dm.to_user = target.user
        # Every connection of the recipient in the room, here and on other nodes, then
        # the sender's here (this one first): its echo says the message went out.
        to = sorted(fd for fd in target.fds if fd in room.members)
        mine = [s.fd, *sorted(fd for fd in s.user.fds if fd != s.fd and fd in room.members)]
        away = self.relays(room, target, dm, s.fd)
        return [*(Reply(fd, dm) for fd in to), *away, *(Reply(fd, dm) for fd in mine)]

    def _typing(self, s: Session, f: p.Typing) -> list[Effect]:
        refused = self._read_only(s, f)
        if refused is not None:
            return [refused]
        if f.room not in s.rooms:
            return [self._error(s.fd, p.E_NOT_IN_ROOM, f"not in room {f.room!r}", f)]
        frame = p.TypingEvent(f.room, s.nick, f.active)
        if s.user.user is not None:
            frame.user = s.user.user
        return [Publish(f.room, frame)]

    def may_read(self, identity: Identity | None, room_name: str) -> bool:
        """May ``identity`` read ``room_name``'s history and member list? Anyone may
        read a room that is not private; a private one is for its members: users
        whose token names the room in its ``rooms`` claim, or with a connection in
        it (on this node). The HTTP API asks the same."""
        if room_name not in self.private:
            return True
        if identity is None:
            return False
        if identity.rooms is not None and room_name in identity.rooms:
            return True
        user = self.owners.get(identity.user)
        return user is not None and user.rooms.get(room_name, 0) > 0

    def _members_only(self, s: Session, f: p.History | p.Who) -> Reply | None:
        """A private room's history and member list: for its members only."""
        if f.room not in s.user.rooms and not self.may_read(s.identity, f.room):
            return self._error(s.fd, p.E_FORBIDDEN, f"room {f.room!r} is private", f)
        return None

    def _history(self, s: Session, f: p.History) -> list[Effect]:
        refused = self._members_only(s, f)
        if refused is not None:
            return [refused]
        return [LoadHistory(s.fd, f.room, f.before, f.limit)]

    def _rooms(self, s: Session, f: p.ListRooms) -> list[Effect]:
        return [RoomsQuery(s.fd, f.after, f.limit)]

    def _who(self, s: Session, f: p.Who) -> list[Effect]:
        refused = self._members_only(s, f)
        if refused is not None:
            return [refused]
        room = self.rooms.get(f.room)
        if room is None:
            return [Reply(s.fd, p.Members(f.room, [], 0))]
        return [Reply(s.fd, members_page(room, f, self.limits.large_room))]

    def _auth(self, s: Session, f: p.Auth) -> list[Effect]:
        # The service layer takes the one ``auth`` a connection may send before
        # ``welcome``; one that reaches the core came too late.
        return [self._error(s.fd, p.E_BAD_FRAME, "auth is the first frame, sent once", f)]

    def _ping(self, s: Session, f: p.Ping) -> list[Effect]:
        return [Reply(s.fd, p.Pong(f.id, self.wallclock()))]

    # -- queries -------------------------------------------------------------

    @property
    def max_rooms(self) -> int:  # type: ignore[override]
        return self.limits.max_rooms

    def members(self, room_name: str) -> list[str]:
        """Every member's nickname, in nickname order (a user with two connections
        in the room is one member)."""
        room = self.rooms.get(room_name)
        if room is None:
            return []
        return [room.by_key[key].nick for key in room.order]

    def member_count(self, room_name: str) -> int:
        room = self.rooms.get(room_name)
        return room.count if room is not None else 0

    def member_counts(self) -> dict[str, int]:
        return {name: room.count for name, room in self.rooms.items()}

    def nick_of(self, fd: int) -> str | None:
        s = self.sessions.get(fd)
        return s.nick if s else None

    def user_of(self, fd: int) -> str | None:
        """The user id connection ``fd`` speaks for (None: anonymous or gone)."""
        s = self.sessions.get(fd)
        return s.user.user if s else None

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
