"""What the chat app runs for presence across nodes (with a shared broker).

:class:`ClusterPresence` keeps three things true:

* **This node's members are registered** in the cluster list of each room
  (:meth:`claim` when one joins, :meth:`release` when its last connection
  leaves, :meth:`rename`), in call order (the manager queues operations).
* **Other nodes' members are mirrored** into the chat core
  (:mod:`hubbub.core.remote`) for every room this node follows: the first local
  join reads the room's list (:meth:`follow`), then each event with a version
  above the last one applied is applied; events that come while the list is
  read wait and are applied after it. The core's coalesced presence frames then
  tell this node's members about them (each node computes its own frames: they
  are no longer relayed between nodes).
* **The lease**: :meth:`tick` (every ``renew_every`` seconds, and at once when
  the broker reconnects) renews it, removes dead nodes' members (one node per
  dead node), and compares each room's version with the changes seen here:
  every version up to it must have been either applied (another node's event)
  or made by this node; a room with one missing at two ticks in a row is read
  again (a lost event), one whose version went back (Redis lost its data) at
  once. A join that changes nothing in Redis (the member was registered already:
  registered again after an error, or back before its leave was sent) answers
  the room's version, not a change of this node's: that answer is compared the
  same way (:meth:`_read`), so it cannot pass another node's lost event off as
  this node's own. A join that failed with a Redis error (a timeout, the
  connection lost after the command went out) may have been applied: its
  member, refused here, is taken out again at the next tick, as a leave that
  failed is (:meth:`_uncertain`). A lease found lapsed (the node was paused,
  cut off from Redis, or Redis restarted empty) is taken again, every local
  member is registered again (and its nickname claimed) and every followed room
  is read again.

Convergence after a node dies: its lease lapses within ``lease_ttl`` seconds,
the next tick of a surviving node removes its members (``renew_every``
later at most) and every node's next loop tick tells its clients: at most
``lease_ttl + renew_every`` seconds (13 s by default), plus Redis round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..core import ChatCore, Effect
from ..core.nicknames import nick_key
from .base import Entry, Event, PresenceError, PresenceManager, decode_event

log = logging.getLogger("hubbub.presence")

#: Events held for a room while its list is read; past it the room is read again.
MAX_HELD = 10_000
#: Seconds a join waits for another node's member to give up its nickname (a
#: client reconnecting to another node before the old one saw it go), and
#: seconds between tries.
CLAIM_PATIENCE = 1.0
CLAIM_RETRY = 0.05
#: Leaves kept to be sent again once Redis answers (failed leaves, and failed joins
#: that Redis may have applied); past it one is dropped (logged).
MAX_UNSENT = 100_000


class ClusterPresence:
    """``ClusterPresence(core, manager, run, spawn, lost)``: ``run`` carries out
    core effects (and schedules the presence flush), ``spawn`` runs a background
    coroutine, ``lost(fd, room)`` is told when a member's nickname in a room was
    taken while this node was cut off (the app takes it out of the room)."""

    def __init__(
        self,
        core: ChatCore,
        manager: PresenceManager,
        run: Callable[[list[Effect]], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]],
        lost: Callable[[int, str], None],
    ) -> None:
        self.core = core
        self.manager = manager
        self.node = manager.node
        self._run = run
        self._spawn = spawn
        self._lost = lost
        self._mine = f"{self.node}/"
        #: Followed rooms whose list was read: the last version applied.
        self._ver: dict[str, int] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._held: dict[str, list[Event]] = {}
        #: Followed rooms: every version up to ``_base`` is accounted for; the
        #: versions above it seen here (events applied, this node's changes).
        self._base: dict[str, int] = {}
        self._seen: dict[str, set[int]] = {}
        self._behind: set[str] = set()
        self._retry: set[str] = set()
        #: This node's registered members: (room, member id) -> entry, and their connections.
        self._claims: dict[tuple[str, str], Entry] = {}
        self._holders: dict[tuple[str, str], set[int]] = {}
        self._mid_of: dict[tuple[int, str], str] = {}
        #: What this node last registered in Redis per (room, member id), as far as it
        #: knows (a join that failed may have been applied): a join of the same entry
        #: changes nothing there, and its answer is a reading of the room's version.
        self._sent: dict[tuple[str, str], Entry] = {}
        #: Keys whose last join failed: what Redis holds for them is unknown, so the
        #: next answer is taken as a reading (at worst one room read too many), never
        #: as this node's change (which could hide another node's lost event).
        self._unknown: set[tuple[str, str]] = set()
        self._unsent_leaves: set[tuple[str, str]] = set()
        self._stale = False
        self.claim_patience = CLAIM_PATIENCE
        self._ticking = False
        self._again = False
        self.halted = False
        self.bad_events = 0
        self.unsent_dropped = 0

    async def start(self) -> None:
        await self.manager.start(self.on_event)

    async def close(self) -> None:
        await self.manager.close(retire=not self.halted)

    async def halt(self) -> None:
        """Go silent as a crashed node would: no renewal, no goodbye (for tests
        and drills; a real crash needs nothing)."""
        self.halted = True
        await self.manager.close(retire=False)

    # -- this node's members ------------------------------------------------------------

    def _entry(self, fd: int, room: str) -> Entry | None:
        session = self.core.sessions.get(fd)
        if session is None:
            return None
        user, identity = session.user, session.identity
        if user.user is not None and identity is not None and not identity.guest:
            mid = f"{self.node}/u:{user.user}"
            owner = f"u:{user.user}"
        else:
            mid = f"{self.node}/c:{fd}"
            owner = f"c:{mid}"
        return Entry(mid, user.nick, user.user, self.node, nick_key(user.nick), owner)

    async def claim(self, fd: int, room: str) -> bool:
        """Register ``fd``'s member in ``room`` (once per member): False when another
        node's member holds the nickname there. :class:`PresenceError` when Redis
        cannot say (the join is then refused as ``unavailable``)."""
        entry = self._entry(fd, room)
        if entry is None:
            return False
        key = (room, entry.mid)
        self._mid_of[(fd, room)] = entry.mid
        holders = self._holders.setdefault(key, set())
        holders.add(fd)
        if key in self._claims:
            return True  # another connection of the user registered it
        self._claims[key] = entry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.claim_patience
        try:
            while (version := await self._join(room, entry)) is None:
                if loop.time() >= deadline or self._claims.get(key) is not entry:
                    break
                await asyncio.sleep(CLAIM_RETRY)
        except PresenceError:
            self._uncertain(fd, room, entry.mid)
            raise
        if version is None:
            self.release(fd, room, send=False)
            return False
        return True

    def _uncertain(self, fd: int, room: str, mid: str) -> None:
        """The join of ``fd``'s member failed with a Redis error: the join is refused,
        but Redis may have applied it (the reply was lost). A member no longer held
        here has its leave sent at the next tick (:meth:`_retry_leaves`: nothing
        changes if it was not applied), else other nodes would list it until this
        node's lease lapsed; one another connection still holds is registered again
        then (:meth:`_register_all`)."""
        self.release(fd, room, send=False)
        key = (room, mid)
        if key in self._claims:
            self._stale = True
        else:
            self._note_unsent(key)

    def _note_unsent(self, key: tuple[str, str]) -> None:
        """Remember a leave to send at the next tick (at most MAX_UNSENT of them)."""
        if len(self._unsent_leaves) < MAX_UNSENT or key in self._unsent_leaves:
            self._unsent_leaves.add(key)
            return
        self.unsent_dropped += 1
        if self.unsent_dropped == 1 or self.unsent_dropped % 1000 == 0:
            log.warning(
                "presence: %d leave(s) not kept for a retry (more than %d waiting); other "
                "nodes may list such a member until this node stops",
                self.unsent_dropped,
                MAX_UNSENT,
            )

    def _join(self, room: str, entry: Entry) -> asyncio.Future[int | None]:
        """Register ``entry`` in ``room`` (queued now, in call order): the version, or
        None when its nickname is another owner's. The answer is noted as it comes,
        in the order of the operations (:meth:`_joined`)."""
        fut = asyncio.ensure_future(self.manager.join(room, entry))
        fut.add_done_callback(lambda f: self._joined(room, entry, f))
        return fut

    def _joined(self, room: str, entry: Entry, fut: asyncio.Future[int | None]) -> None:
        """A join's answer. One of what this node registered last changed nothing in
        Redis: its version is the room's, compared as the version check compares it
        (:meth:`_read`); any other is this node's change (:meth:`_own`)."""
        key = (room, entry.mid)
        if fut.cancelled() or fut.exception() is not None:
            # Perhaps applied, perhaps not: the next answer for it is a reading.
            self._sent.pop(key, None)
            self._unknown.add(key)
            return
        version = fut.result()
        if version is None:
            return  # refused: Redis holds what it held
        same = self._sent.get(key) == entry or key in self._unknown
        self._unknown.discard(key)
        self._sent[key] = entry
        if same:
            self._read(room, version)
        else:
            self._own(room, version)

    def _leave_op(self, room: str, mid: str) -> asyncio.Future[int]:
        """Take ``mid`` out of ``room`` in Redis (queued now, in call order)."""
        fut = asyncio.ensure_future(self.manager.leave(room, mid))
        fut.add_done_callback(lambda f: self._left(room, mid, f))
        return fut

    def release(self, fd: int, room: str, send: bool = True) -> None:
        """Connection ``fd`` is out of ``room``: the member leaves the cluster list
        with its last connection."""
        mid = self._mid_of.pop((fd, room), None)
        if mid is None:
            return
        key = (room, mid)
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(fd)
            if holders:
                return
            del self._holders[key]
        if self._claims.pop(key, None) is None or not send:
            return
        self._spawn(self._leave(room, mid, self._leave_op(room, mid)))

    async def _leave(self, room: str, mid: str, pending: Any) -> None:
        try:
            await pending
        except PresenceError as exc:
            log.warning("presence: %s could not leave %s (retried): %s", mid, room, exc)
            self._note_unsent((room, mid))

    async def rename(self, fd: int) -> list[str]:
        """The user of ``fd`` has a new nickname (in every room): claim it in each.
        Returns the rooms where another node's member holds it."""
        session = self.core.sessions.get(fd)
        if session is None:
            return []
        pending = []
        for (f, room), mid in list(self._mid_of.items()):
            entry = self._entry(f, room) if f == fd else None
            if entry is None or (room, mid) not in self._claims:
                continue
            self._claims[(room, mid)] = entry
            pending.append((room, self._join(room, entry)))
        taken = []
        for room, result in pending:
            try:
                version = await result
            except PresenceError as exc:
                log.warning("presence: rename in %s not registered (retried): %s", room, exc)
                self._stale = True
                continue
            if version is None:
                taken.append(room)
        return taken

    def _own(self, room: str, version: int) -> None:
        """A change of this node's made ``version`` (its event is not heard here)."""
        if (room in self._ver or room in self._loading) and version > self._base.get(room, 0):
            self._seen.setdefault(room, set()).add(version)

    def _left(self, room: str, mid: str, fut: asyncio.Future[int]) -> None:
        """A leave's answer: the version it made (0: the member was not there)."""
        if fut.cancelled() or fut.exception() is not None:
            return  # perhaps not applied: Redis may still hold the member
        self._sent.pop((room, mid), None)
        self._unknown.discard((room, mid))
        self._own(room, fut.result())

    def _read(self, room: str, version: int) -> None:
        """Redis answered ``room``'s version without a change of this node's: compared
        as :meth:`_check_versions` compares (it counts as one check: missing at the
        next check too, a version is lost)."""
        if room not in self._ver or room in self._loading:
            return  # not followed, or being read (the read covers it)
        if version < self._base.get(room, 0):
            log.info("presence: the version of %s went back; reading its members", room)
            self.reload(room)
        elif not self._accounted(room, version):
            self._behind.add(room)

    # -- other nodes' members -------------------------------------------------------------

    async def follow(self, room: str) -> None:
        """Make sure ``room``'s list was read (before its joiner's ``room`` frame)."""
        if room in self._ver:
            return
        fut = self._loading.get(room)
        if fut is None:
            fut = self._loading[room] = self._spawn(self._load(room))
        await asyncio.shield(fut)
        if room not in self._ver and room in self.core.rooms:
            raise PresenceError(f"the member list of {room!r} could not be read")

    async def _load(self, room: str) -> None:
        held = self._held.setdefault(room, [])
        try:
            version, entries = await self.manager.snapshot(room)
        except PresenceError as exc:
            log.warning("presence: the member list of %s could not be read: %s", room, exc)
            self._retry.add(room)  # a followed room is read again at the next tick
            return
        finally:
            self._loading.pop(room, None)
            self._held.pop(room, None)
        if room not in self.core.rooms:
            self.forget(room)
            return
        quiet = room not in self._ver and not self.core.live_fds(room)
        others = {e.mid: (e.nick, e.user) for e in entries if e.node != self.node}
        self.core.remote_sync(room, others, quiet=quiet)
        applied = version
        seen = {v for v in self._seen.get(room, ()) if v > version}
        for event in held:
            if event.version > applied:
                self._apply(event)
                applied = event.version
                seen.add(applied)
        self._ver[room] = applied
        self._base[room], self._seen[room] = version, seen
        self._run([])  # schedule the presence flush

    def reload(self, room: str) -> None:
        if room in self._loading or room not in self.core.rooms:
            return
        self._loading[room] = self._spawn(self._load(room))

    def forget(self, room: str) -> None:
        """This node no longer follows ``room``."""
        self._ver.pop(room, None)
        self._base.pop(room, None)
        self._seen.pop(room, None)
        self._behind.discard(room)
        self._retry.discard(room)

    def on_payload(self, room: str, payload: bytes) -> None:
        """A presence event on the room's broker channel."""
        event = decode_event(room, payload)
        if event is None:
            self.bad_events += 1
            if self.bad_events == 1 or self.bad_events % 1000 == 0:
                log.warning("presence: %d malformed event(s), last in %s", self.bad_events, room)
            return
        self.on_event(event)

    def on_event(self, event: Event) -> None:
        room = event.room
        if room not in self.core.rooms:
            return  # not followed here
        held = self._held.get(room)
        if held is not None:
            if len(held) < MAX_HELD:
                held.append(event)
            else:
                self._behind.add(room)
            return
        last = self._ver.get(room)
        if last is None or event.version <= last:
            return
        self._ver[room] = event.version
        self._seen.setdefault(room, set()).add(event.version)
        self._apply(event)
        self._run([])

    def _apply(self, event: Event) -> None:
        room, mine = event.room, self._mine
        if event.op == "leave":
            for mid in event.ids:
                if not mid.startswith(mine):
                    self.core.remote_leave(room, mid)
        else:
            for mid, nick, user in event.entries:
                if not mid.startswith(mine):
                    self.core.remote_join(room, mid, nick, user)

    # -- the lease ------------------------------------------------------------------------

    async def tick(self) -> None:
        """Renew the lease, remove dead nodes' members, look for lost events (one
        tick at a time: a slow Redis does not pile them up; one asked for during
        a tick runs right after it)."""
        if self.halted:
            return
        if self._ticking:
            self._again = True
            return
        self._ticking = True
        try:
            self._again = True
            while self._again and not self.halted:
                self._again = False
                await self._tick()
        finally:
            self._ticking = False

    async def _tick(self) -> None:
        try:
            kept = await self.manager.renew()
            if not kept:
                log.warning("presence: this node's lease had lapsed; registering its members again")
                # Versions seen before may be of a Redis that lost its data since.
                self._seen.clear()
            if not kept or self._stale:
                self._stale = False
                await self._register_all()
            await self._retry_leaves()
            reaped = await self.manager.reap()
            if reaped:
                log.info("presence: removed the members of %s (lease lapsed)", ", ".join(reaped))
            retry, self._retry = self._retry, set()
            for room in self._ver if not kept else retry:
                self.reload(room)
            if not kept:
                return
            await self._check_versions()
        except PresenceError as exc:
            log.warning("presence: lease renewal or check failed: %s", exc)
            self._stale = True

    async def _register_all(self) -> None:
        pending = [(key, self._join(key[0], e)) for key, e in list(self._claims.items())]
        for (room, mid), result in pending:
            version = await result
            if version is not None:
                continue
            # Taken by another node's member while this node was away: out of the room.
            log.warning("presence: %s lost its nickname in %s while cut off", mid, room)
            for fd in sorted(self._holders.get((room, mid), ())):
                self._lost(fd, room)

    async def _retry_leaves(self) -> None:
        for room, mid in list(self._unsent_leaves):
            if (room, mid) in self._claims:
                self._unsent_leaves.discard((room, mid))  # joined again meanwhile
                continue
            await self._leave_op(room, mid)
            self._unsent_leaves.discard((room, mid))

    async def _check_versions(self) -> None:
        rooms = [r for r in self._ver if r not in self._loading]
        if not rooms:
            return
        found = await self.manager.versions(rooms)
        behind = set()
        for room, version in found.items():
            if room not in self._ver or room in self._loading:
                continue  # forgotten, or being read, meanwhile
            if version < self._base.get(room, 0):
                log.info("presence: the version of %s went back; reading its members", room)
                self.reload(room)
            elif not self._accounted(room, version):
                behind.add(room)
        for room in behind & self._behind:
            log.info("presence: %s missed an event; reading its members again", room)
            self.reload(room)
        self._behind = behind - self._behind

    def _accounted(self, room: str, version: int) -> bool:
        """Whether every change of ``room`` up to ``version`` was seen here (applied,
        or made by this node); if so, they are forgotten (the base moves up)."""
        base = self._base.get(room, 0)
        seen = self._seen.setdefault(room, set())
        upto = {v for v in seen if v <= version}
        if len(upto) < version - base:
            return False
        self._base[room] = version
        seen -= upto
        return True

    def reconnected(self) -> None:
        """The broker lost frames (its connection came back): read every room again,
        and renew the lease now: a Redis that restarted empty has lost this node's
        lease, members and nickname claims, which the renewal puts back."""
        self._spawn(self.tick())
        for room in list(self._ver):
            self.reload(room)
