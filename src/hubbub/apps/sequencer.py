"""Per-room ordering of the messages a node delivers, whichever node published them.

The broker orders only one publisher's frames, may lose frames (a connection
loss, a full outgoing queue) and may repeat them (a resend after a reconnect).
The store numbers every room's messages 1, 2, 3... So every node keeps, per
room its members are in, the last ``seq`` it delivered (the *cursor*):

* a frame at ``cursor + 1`` is delivered, with any held successors;
* a frame beyond it is *held*; if the hole is not filled within
  ``hold_timeout`` seconds the missing messages are read from the store
  (a *backfill*), which fills it;
* a frame at or below the cursor is dropped (a duplicate or a late copy).

Positions learnt otherwise (a periodic check of the store, one after every
broker reconnect, a catch-up's read) move the room's *target*: a target
beyond the cursor is a hole like any other, so a lost last message is read
from the store too.

A room is tracked from :meth:`Sequencer.ready` (its first local member
subscribed; the cursor is read once from the store, frames arriving
meanwhile are held) to :meth:`Sequencer.forget` (its last local member
left). Frames of untracked rooms are ignored (nobody here to deliver to).

Epochs. A room's numbering restarts when its history is reset (or the room is
deleted and created again): a new *epoch*. The position read gives the epoch
the cursor counts in (when ``position`` returns ``(seq, epoch)``), and a frame of
another epoch (the ``epoch`` field of its payload) is never delivered, nor held:
``on_epoch(room, epoch)`` is told (the app then asks the store which epoch is
current, :mod:`hubbub.apps.cluster_control`) unless that epoch is one this room
has left behind (*retired*, dropped quietly). :meth:`Sequencer.restart` moves a
room to a new epoch: a fresh cursor (usually 0), nothing held, the old epoch
retired, and the waiters of :meth:`reach` failed (their positions were the old
epoch's). A backfill that reads a message of another epoch stops there.

Everything here is plain code: the clock, the store read and the delivery
are passed in, so tests drive it without sockets (tests/apps/test_sequencer.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .. import protocol as p
from ..logs import context
from ..store import StoreError

log = logging.getLogger("hubbub.chat.sequencer")

#: ``emit(room, payload, seq)``: deliver one frame, in order, to the room's local members.
Emit = Callable[[str, bytes, int], None]
#: ``read(room, after, limit)``: up to ``limit`` stored messages with seq > ``after``.
Read = Callable[[str, int, int], Awaitable[list[p.Message]]]
#: ``position(room)``: the room's last seq in the store (creating the room if needed),
#: or ``(seq, epoch)`` (the epoch the seq counts in: frames of other epochs are refused).
Position = Callable[[str], Awaitable[int | tuple[int, str]]]
#: ``on_epoch(room, epoch)``: a frame (or a stored message) of another epoch than the
#: cursor's came for ``room``.
OnEpoch = Callable[[str, str], None]

#: Seconds a hole may stay open before the store is read.
HOLD_TIMEOUT = 0.25
#: Seconds between retries of a backfill the store refused.
RETRY_AFTER = 1.0
#: Messages one backfill read asks for.
PAGE = 500
#: Epochs a room remembers having left (frames of those are dropped without asking).
RETIRED = 4

_EPOCH_FIELD = b',"epoch":"'


def epoch_of(payload: bytes) -> bytes | None:
    """The ``epoch`` of an encoded message (None if it has none near its start: the
    field follows ``room`` and ``seq``, so it is within the first 200 bytes)."""
    i = payload.find(_EPOCH_FIELD, 0, 200)
    if i < 0:
        return None
    i += len(_EPOCH_FIELD)
    j = payload.find(b'"', i, i + 80)
    return payload[i:j] if j > i else None


class _Room:
    __slots__ = (
        "cursor",
        "deadline",
        "epoch",
        "filling",
        "held",
        "mark",
        "ready",
        "retired",
        "target",
    )

    def __init__(self) -> None:
        self.cursor: int | None = None  # None until the position is read
        self.epoch: bytes | None = None  # the cursor's epoch (None: not known)
        self.mark: bytes | None = None  # its field as encoded: ,"epoch":"<epoch>"
        self.retired: tuple[bytes, ...] = ()  # epochs left behind, newest last
        self.held: dict[int, bytes] = {}
        self.target = 0  # highest seq known to exist
        self.deadline: float | None = None  # when an open hole is read from the store
        self.filling = False
        # The position read in progress: True once read, False if its reader was cancelled.
        self.ready: asyncio.Future[bool] | None = None


class Sequencer:
    def __init__(
        self,
        emit: Emit,
        read: Read,
        position: Position,
        *,
        clock: Callable[[], float] = time.monotonic,
        hold_timeout: float = HOLD_TIMEOUT,
        max_held: int = 10_000,
        page: int = PAGE,
        on_epoch: OnEpoch | None = None,
        on_hole: Callable[[], None] | None = None,
    ) -> None:
        self.emit = emit
        self.on_epoch = on_epoch
        #: Called when a room gets a hole to watch (the caller checks due() until none is left).
        self.on_hole = on_hole
        self.read = read
        self.position_of = position
        self.clock = clock
        self.hold_timeout = hold_timeout
        self.max_held = max_held
        self.page = page
        self.rooms: dict[str, _Room] = {}
        self._holes: set[str] = set()  # rooms with a deadline (due() looks only here)
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        #: Counters, for metrics and tests.
        self.delivered = 0
        self.dropped = 0
        self.backfilled = 0
        self.skipped = 0
        self.foreign = 0  # frames of an epoch not (yet) known here, not delivered
        self.stale = 0  # frames of a retired epoch, dropped

    # -- tracking rooms ------------------------------------------------------------

    async def ready(self, room: str) -> None:
        """Track ``room`` (if not yet) and return once its cursor is known.

        Frames fed meanwhile are held. StoreError if the position cannot be read
        (the room then stays untracked-ready: a later call tries again).

        Several members may call this at once: the first one reads the position,
        the others wait for that read. If the reader is cancelled (its member
        left or closed), a waiter reads it itself: another member's departure is
        a normal race, never an error for the members that stay. The room may be
        forgotten meanwhile (its last member left): this then returns without
        tracking it."""
        while True:
            st = self.rooms.get(room)
            if st is None:
                st = self.rooms[room] = _Room()
            if st.cursor is not None:
                return
            if st.ready is not None:
                if await asyncio.shield(st.ready):
                    return
                continue  # its reader was cancelled: read it here
            fut = st.ready = asyncio.get_running_loop().create_future()
            try:
                found = await self.position_of(room)
            except BaseException as exc:
                if st.ready is fut:
                    st.ready = None
                if not fut.done():
                    if isinstance(exc, Exception):
                        fut.set_exception(exc)
                        fut.exception()  # retrieved: waiters get it through their own await
                    else:
                        fut.set_result(False)  # cancelled: the waiters read it themselves
                raise
            seq, epoch = found if isinstance(found, tuple) else (found, None)
            if self.rooms.get(room) is st and st.cursor is None:
                self._start(room, st, seq, epoch)
            if st.ready is fut:
                st.ready = None
            if not fut.done():
                fut.set_result(True)
            return

    def _start(self, room: str, st: _Room, seq: int, epoch: str | None) -> None:
        st.cursor = seq
        st.target = max(st.target, seq)
        if epoch is not None:
            st.epoch = epoch.encode()
            st.mark = _EPOCH_FIELD + st.epoch + b'"'
            for s, payload in list(st.held.items()):
                other = epoch_of(payload)
                if other is not None and other != st.epoch:
                    del st.held[s]
                    self._foreign(room, st, other)
            st.target = max([seq, *st.held])
        for old in [s for s in st.held if s <= seq]:
            del st.held[old]
        self._release(room, st)

    def restart(self, room: str, epoch: str, seq: int = 0) -> None:
        """The room's history now counts in ``epoch`` from ``seq`` (a reset: usually 0):
        follow it from there. Nothing held is kept, the old epoch is retired, waiters
        of :meth:`reach` get StoreError. Does nothing for a room not tracked here."""
        old = self.rooms.get(room)
        if old is None:
            return
        st = self.rooms[room] = _Room()  # a backfill of the old one sees it is gone
        st.cursor = st.target = seq
        st.epoch = epoch.encode()
        st.mark = _EPOCH_FIELD + st.epoch + b'"'
        retired = old.retired + ((old.epoch,) if old.epoch not in (None, st.epoch) else ())
        st.retired = tuple(e for e in retired if e is not None and e != st.epoch)[-RETIRED:]
        self._holes.discard(room)
        self._fail_waiters(room, f"room {room!r} was reset")

    def retire(self, room: str, epoch: str) -> None:
        """``epoch`` is behind ``room``'s current one: drop its frames without asking."""
        st = self.rooms.get(room)
        e = epoch.encode()
        if st is not None and e != st.epoch and e not in st.retired:
            st.retired = (*st.retired, e)[-RETIRED:]

    def epoch(self, room: str) -> str | None:
        """The epoch the room's cursor counts in (None: not tracked, or not known)."""
        st = self.rooms.get(room)
        return st.epoch.decode() if st is not None and st.epoch is not None else None

    def _foreign(self, room: str, st: _Room, epoch: bytes) -> None:
        if epoch in st.retired:
            self.stale += 1
            return
        self.foreign += 1
        if self.on_epoch is not None:
            try:
                self.on_epoch(room, epoch.decode("ascii", "replace"))
            except Exception:
                log.exception("on_epoch failed for %s", room)

    def forget(self, room: str) -> None:
        """No local member left in ``room``: stop tracking it."""
        self.rooms.pop(room, None)
        self._holes.discard(room)
        self._fail_waiters(room, f"room {room!r} is no longer followed here")

    def _fail_waiters(self, room: str, why: str) -> None:
        for _, fut in self._waiters.pop(room, ()):
            if not fut.done():
                fut.set_exception(StoreError(why))
                fut.exception()

    def cursor(self, room: str) -> int | None:
        st = self.rooms.get(room)
        return st.cursor if st is not None else None

    # -- frames ------------------------------------------------------------------------

    def feed(self, room: str, seq: int, payload: bytes) -> None:
        """A numbered frame from the broker (or a backfill)."""
        st = self.rooms.get(room)
        if st is None:
            return
        if st.mark is not None and payload.find(st.mark, 0, 200) < 0:
            # Not the cursor's epoch (one search: the common case costs no more).
            epoch = epoch_of(payload)
            if epoch is not None and epoch != st.epoch:
                self._foreign(room, st, epoch)
                return
        if st.cursor is not None and seq <= st.cursor:
            self.dropped += 1
            return
        if st.cursor is not None and seq == st.cursor + 1:
            self._deliver(room, st, seq, payload)
            self._release(room, st)
            return
        if seq in st.held or len(st.held) < self.max_held:
            st.held[seq] = payload
        # (Beyond max_held the frame is not kept: the backfill reads it from the store.)
        if seq > st.target:
            st.target = seq
        if st.cursor is not None and st.deadline is None:
            st.deadline = self.clock() + self.hold_timeout
            self._hole(room)

    def _deliver(self, room: str, st: _Room, seq: int, payload: bytes) -> None:
        st.cursor = seq
        if seq > st.target:
            st.target = seq
        self.delivered += 1
        try:
            self.emit(room, payload, seq)
        except Exception:
            log.exception("delivery of %s #%d failed", room, seq)

    def _release(self, room: str, st: _Room) -> None:
        """Deliver the held frames that follow the cursor; settle the hole's deadline."""
        assert st.cursor is not None
        held = st.held
        while held:
            payload = held.pop(st.cursor + 1, None)
            if payload is None:
                break
            self._deliver(room, st, st.cursor + 1, payload)
        if held:
            for old in [s for s in held if s <= st.cursor]:
                del held[old]
        if held or st.target > st.cursor:
            # Progress restarts the clock of the hole that remains.
            st.deadline = self.clock() + self.hold_timeout
            self._hole(room)
        else:
            st.deadline = None
        self._wake(room, st.cursor)

    def position(self, room: str, seq: int, *, urgent: bool = False) -> None:
        """The store holds ``room`` up to ``seq``: anything beyond the cursor is a hole
        (read at once when ``urgent``, e.g. after a broker reconnect)."""
        st = self.rooms.get(room)
        if st is None or st.cursor is None or seq <= st.cursor:
            return
        st.target = max(st.target, seq)
        now = self.clock()
        if urgent:
            st.deadline = now
        elif st.deadline is None:
            st.deadline = now + self.hold_timeout
        self._hole(room)

    # -- holes -------------------------------------------------------------------------

    def _hole(self, room: str) -> None:
        self._holes.add(room)
        if self.on_hole is not None:
            self.on_hole()

    def has_holes(self) -> bool:
        """True while a room has a hole (or a backfill) that due() must look at."""
        return bool(self._holes)

    def due(self) -> list[str]:
        """Rooms whose hole has been open too long (the caller runs :meth:`backfill`)."""
        now = self.clock()
        out = []
        for room in list(self._holes):
            st = self.rooms.get(room)
            if st is None or st.deadline is None:
                if st is None or not st.filling:
                    self._holes.discard(room)
                continue
            if st.deadline <= now and not st.filling:
                out.append(room)
        return out

    async def backfill(self, room: str) -> None:
        """Read the room's messages after the cursor from the store, up to its target."""
        st = self.rooms.get(room)
        if st is None or st.cursor is None or st.filling:
            return
        st.filling = True
        st.deadline = None
        try:
            while self.rooms.get(room) is st and st.cursor < st.target:
                after = st.cursor
                messages = await self.read(room, after, self.page)
                if self.rooms.get(room) is not st:
                    return
                if not messages:
                    # The store has nothing beyond: the target was wrong (a room reset).
                    log.warning(
                        "%s: nothing stored after #%d, target #%d",
                        room,
                        after,
                        st.target,
                        extra=context(room=room),
                    )
                    st.target = st.cursor
                    break
                first = messages[0].seq
                if first > st.cursor + 1:
                    # Deleted by retention before we read them: skip, say so.
                    self.skipped += first - st.cursor - 1
                    log.warning(
                        "%s: #%d..#%d no longer stored",
                        room,
                        st.cursor + 1,
                        first - 1,
                        extra=context(room=room),
                    )
                    st.cursor = first - 1
                other = messages[0].epoch.encode()
                if st.epoch is not None and other != st.epoch:
                    # The store moved on to another epoch (a reset elsewhere): one read
                    # is one epoch, none of it is this cursor's.
                    st.target = st.cursor
                    self._foreign(room, st, other)
                    break
                for msg in messages:
                    if msg.seq > st.cursor:
                        self.backfilled += 1
                        st.held.pop(msg.seq, None)
                        self._deliver(room, st, msg.seq, p.encode(msg))
                self._release(room, st)
                st.deadline = None
                if len(messages) < self.page and st.cursor >= max(st.held, default=0):
                    if st.cursor < st.target:
                        st.target = st.cursor  # reads are the truth now
                    break
        except StoreError as exc:
            log.warning(
                "%s: cannot read missed messages (retrying): %s",
                room,
                exc,
                extra=context(room=room),
            )
            if self.rooms.get(room) is st:
                st.deadline = self.clock() + RETRY_AFTER
                self._hole(room)
        finally:
            st.filling = False
        if self.rooms.get(room) is st and (st.held or st.target > (st.cursor or 0)):
            if st.deadline is None:
                st.deadline = self.clock() + self.hold_timeout
            self._hole(room)

    # -- waiting for a position ------------------------------------------------------------

    async def reach(self, room: str, seq: int) -> None:
        """Return once the room's cursor is at least ``seq`` (a catch-up waits here
        before its member goes live, so that the member's stream and the node's join
        without a gap or a repeat). The caller bounds the wait."""
        st = self.rooms.get(room)
        if st is None:
            raise StoreError(f"room {room!r} is not followed here")
        if st.cursor is not None and st.cursor >= seq:
            return
        self.position(room, seq)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(room, []).append((seq, fut))
        try:
            await fut
        finally:
            waiters = self._waiters.get(room)
            if waiters is not None:
                waiters[:] = [(s, f) for s, f in waiters if f is not fut]
                if not waiters:
                    del self._waiters[room]

    def _wake(self, room: str, cursor: int) -> None:
        waiters = self._waiters.get(room)
        if not waiters:
            return
        for s, fut in waiters:
            if s <= cursor and not fut.done():
                fut.set_result(None)
