"""Gapless catch-up: a member joining a room is sent the room's state, then what
it missed (a join with ``since``), then live messages, with no gap and no
duplicate, whichever node published them.

The invariant. A member that joins is first registered as *catching up*
(:meth:`Catchups.start`, synchronously, before any ``await``): every frame
delivered to the room from then on is buffered for it (:meth:`Catchups.buffer`).
Then this node subscribes to the room (``subscribe``: the broker's
subscription is confirmed and the room's per-node cursor is known, see
:mod:`hubbub.apps.sequencer`), the store is read (everything committed so far
after ``since``) and replayed, paced by the client's send buffer. Then the
catch-up waits until the node's cursor for the room has reached the last
message replayed (or the room state's ``seq`` when there is no replay): the
node delivers every message in order, once, so from there the buffer holds
exactly what follows. The buffer is flushed without the messages the replay
already had (by sequence number), and only then, with no ``await`` in between,
the member goes live (``ChatCore.mark_live``: deliveries reach it directly).
A message is published only after its commit, so it is either in the replay
(committed before the read) or in the buffer (delivered after the
registration), or both: never neither; and a message the replay had that this
node has not delivered yet is delivered before the member goes live, so it is
not sent twice.

The buffer is bounded by ``max_resume`` frames: a replay paced by a slow
reader while the room is busy overflows it, and the member is then told
``reset`` (it reloads from history) instead of ``resumed``.

A leave (or a disconnect, or a delete) cancels the member's catch-up at once
(:meth:`Catchups.cancel`): a ``join``, ``leave``, ``join`` in quick succession
replays the history once, for the second join.

A join creates its room in the store here (``create_room``); a room delete
waits for the catch-ups of the room (:meth:`Catchups.wait_room`), so that no
``create_room`` runs after the delete.

Shared reads. The members of a room that catch up at the same time (a
reconnect storm: every member of the room asks for the same few messages) share
their store reads. Each room has at most one read in progress
(:class:`_RoomReads`); the catch-ups that ask while it runs are served together
by the next one. A catch-up asks first for the room's state (``create_room``:
this read begins after the catch-up was registered and subscribed, since it
asked before the read began, which is all the invariant above needs of "the
store is read"), sends the ``room`` frame, then asks for its replay: one read
serves every catch-up of the room waiting then with one page of messages after
the smallest ``since`` among them, encoded once. Each takes its slice and sends
it with ``resumed`` in one loop tick (one write); one that the page does not
cover (its ``since`` is past the page, or its replay is longer) asks again. A
replay found to have a hole (messages deleted by retention after the room's
state was read) ends in ``reset`` (``retention``), never in ``resumed``.

Memory: a room's reads hold one page at a time, at most ``chunk`` messages
(200, each at most ``max_message_size``) and their encoded frames: the next read
begins once the catch-ups answered with the page have taken their slice, and a
catch-up keeps a page only while it sends from it, never across an ``await`` (one
that must wait for its client to read, its send buffer past half of
``max_send_buffer``, lets the page go and asks again afterwards). Every replay
is still capped by ``max_resume`` (a ``reset`` beyond it).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .. import metrics
from .. import protocol as p
from ..broker import BrokerError
from ..core import Catchup, ChatCore
from ..logs import context
from ..server import WEBSOCKET_OPCODE_TEXT, Server
from ..store import RoomMeta, Store, StoreError

log = logging.getLogger("hubbub.chat")

TEXT = WEBSOCKET_OPCODE_TEXT

#: Messages read from the store in one (shared) read: a page of a replay.
REPLAY_CHUNK = 200
#: Seconds between two looks at a connection's send buffer while it drains.
DRAIN_POLL = 0.005
#: Bytes counted for each frame on top of its payload while a replay is sent (a
#: WebSocket header is at most 10, a session's framing a few more): the send buffer
#: is looked at only when this estimate passes half of ``max_send_buffer``.
FRAME_OVERHEAD = 64


class _Page:
    """What one shared read found: the room's state (when one of its asks wanted it)
    and up to ``limit`` stored messages after ``after``, each encoded once."""

    __slots__ = ("complete", "meta", "payloads", "seqs", "start")

    def __init__(
        self, meta: RoomMeta | None, after: int, messages: list[p.Message], limit: int
    ) -> None:
        self.meta = meta
        self.start = after
        self.seqs = [m.seq for m in messages]
        self.payloads = [p.encode(m) for m in messages]
        #: Nothing was stored after the page's last message when it was read.
        self.complete = len(messages) < limit

    def span(self, since: int, upto: int) -> tuple[int, int] | None:
        """Where ``(since, upto]`` is in this page: ``(i, j)``, ``i < j``, when
        ``seqs[i:j]`` holds it from ``since + 1`` on without a hole; ``(0, 0)`` when
        the page does not reach it (read again from ``since``); None when
        ``since + 1`` (or a later one up to ``upto``) is no longer stored: it was
        deleted (retention) since the room's state was read, a gap."""
        if since < self.start:
            return (0, 0)  # read from further on: since + 1 is not in it
        seqs = self.seqs
        i = bisect_right(seqs, since)
        j = bisect_right(seqs, upto, i)
        if i == j:
            # Nothing of (since, upto] here: missing if something later is stored.
            return None if i < len(seqs) or self.complete else (0, 0)
        if seqs[i] != since + 1 or seqs[j - 1] - seqs[i] != j - 1 - i:
            return None
        return (i, j)

    def first_after(self, since: int, default: int) -> int:
        """The first seq stored after ``since`` in this page (``default`` if none)."""
        i = bisect_right(self.seqs, since)
        return self.seqs[i] if i < len(self.seqs) else default


class _Ask:
    """A catch-up waiting for its room's next read: for the room's state (``upto`` is
    None: a join's first read), or for the stored messages in ``(since, upto]``."""

    __slots__ = ("future", "since", "upto")

    def __init__(self, since: int = 0, upto: int | None = None) -> None:
        self.since = since
        self.upto = upto
        self.future: asyncio.Future[_Page] = asyncio.get_running_loop().create_future()


class _RoomReads:
    """One room's shared reads: the asks waiting for the next read, the reading task."""

    __slots__ = ("asks", "task")

    def __init__(self) -> None:
        self.asks: list[_Ask] = []
        self.task: asyncio.Task[Any] | None = None


class _Waiting:
    """Frames delivered to the room while one member catches up."""

    __slots__ = ("buffer", "epoch", "overflow")

    def __init__(self) -> None:
        self.buffer: list[tuple[int | None, bytes]] = []
        self.overflow = False
        #: The epoch of the ``room`` frame sent (None: not sent yet).
        self.epoch: str | None = None


class Catchups:
    """The members catching up, per room, and the tasks doing it.

    ``subscribe(fd, room)`` makes this node follow the room for the member
    (BrokerError / StoreError when it cannot); ``reach(room, seq)`` returns once
    the node has delivered the room up to ``seq``; ``undo(fd, room)`` takes back
    a join that could not be completed (the client may send it again);
    ``switch(room, meta, keep)`` moves the room to the store's epoch when this node
    follows an older one (True if it did; the members in ``keep``, whose ``room``
    frame is still to come, are left alone: see :meth:`_follow_store`).
    """

    def __init__(
        self,
        server: Server,
        core: ChatCore,
        store: Store,
        *,
        max_resume: int,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]],
        subscribe: Callable[[int, str], Awaitable[None]],
        reach: Callable[[str, int], Awaitable[None]],
        undo: Callable[[int, str], None],
        switch: Callable[[str, RoomMeta, set[int]], bool] | None = None,
        chunk: int = REPLAY_CHUNK,
    ) -> None:
        self.server = server
        self.core = core
        self.store = store
        self.max_resume = max_resume
        self.chunk = chunk
        self._spawn = spawn
        self._subscribe = subscribe
        self._reach = reach
        self._undo = undo
        self._switch = switch
        self.waiting: dict[str, dict[int, _Waiting]] = {}
        # Catch-up tasks per room (a delete waits for them) and per member (a leave
        # cancels its own).
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}
        self._by_member: dict[tuple[int, str], asyncio.Task[Any]] = {}
        # The shared store reads per room (see the module docstring).
        self._reads: dict[str, _RoomReads] = {}

    def _reply(self, fd: int, frame: p.ServerFrame) -> None:
        self.server.push(fd, p.encode(frame), TEXT)

    # -- what the rest of the app calls ------------------------------------------

    def start(self, effect: Catchup) -> None:
        # Registered synchronously, before any await: see the module docstring.
        self.cancel(effect.fd, effect.room)
        state = self.waiting.setdefault(effect.room, {})[effect.fd] = _Waiting()
        task = self._spawn(self._catchup(effect, state))
        self._tasks.setdefault(effect.room, set()).add(task)
        self._by_member[(effect.fd, effect.room)] = task
        task.add_done_callback(lambda t, key=(effect.fd, effect.room): self._task_done(key, t))

    def buffer(self, room: str, seq: int | None, payload: bytes) -> None:
        """A frame delivered to ``room``: kept for each member catching up there."""
        waiting = self.waiting.get(room)
        if waiting:
            limit = self.max_resume
            for state in waiting.values():
                if state.overflow:
                    continue
                if len(state.buffer) < limit:
                    state.buffer.append((seq, payload))
                else:
                    state.overflow = True
                    state.buffer.clear()  # never flushed: free it now

    def cancel(self, fd: int, room: str) -> None:
        """The member left ``room`` (or its join is taken back): its catch-up stops."""
        self._end(fd, room)
        task = self._by_member.pop((fd, room), None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def forget(self, fd: int) -> None:
        """Connection ``fd`` closed: its catch-ups stop, nothing more is buffered for it."""
        for room in [r for (f, r) in self._by_member if f == fd]:
            self.cancel(fd, room)
        for waiting in self.waiting.values():
            waiting.pop(fd, None)

    async def wait_room(self, room: str) -> None:
        """Wait for the catch-ups of ``room`` started so far."""
        pending = self._tasks.get(room)
        if pending:
            await asyncio.wait(set(pending))

    async def drained(self, fd: int) -> bool:
        """Wait until ``fd``'s send buffer is at most half of ``max_send_buffer``.

        False if the connection is gone, or stays that full for ``close_timeout``
        seconds (it is then closed with 1013, as a client that does not read)."""
        s = self.server.settings
        limit = s.max_send_buffer // 2
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # let the loop flush what was just pushed
        deadline = loop.time() + s.close_timeout
        while True:
            buffered = self.server.buffered(fd)
            if buffered is None:
                return False
            if buffered <= limit:
                return True
            if loop.time() >= deadline:
                log.warning(
                    "client-%d does not read its replay: closing it (1013)",
                    fd,
                    extra=context(fd=fd, reason="slow_replay", code=1013),
                )
                metrics.slow_consumers.inc("replay")
                self.server.disconnect(fd, 1013, "too slow to read")
                return False
            await asyncio.sleep(DRAIN_POLL)

    # -- the catch-up itself -------------------------------------------------------

    def _task_done(self, key: tuple[int, str], task: asyncio.Task[Any]) -> None:
        _fd, room = key
        self._untrack(room, task)
        if self._by_member.get(key) is task:
            del self._by_member[key]

    def _untrack(self, room: str, task: asyncio.Task[Any]) -> None:
        tasks = self._tasks.get(room)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[room]

    def _current(self, fd: int, room: str, state: _Waiting) -> bool:
        """Still this catch-up's member (not left, not replaced by a newer join)."""
        return self.waiting.get(room, {}).get(fd) is state and self.core.is_member(fd, room)

    async def _catchup(self, e: Catchup, state: _Waiting) -> None:
        fd, room = e.fd, e.room
        try:
            await self._subscribe(fd, room)  # before reading: see the module docstring
            # A join creates its room: the shared read's create_room.
            meta = (await self._ask(room, _Ask())).meta
            assert meta is not None  # read for every ask of the room's state
            if not self._current(fd, room, state):
                return
            self._follow_store(room, meta)
            room_state = self.core.room_state(fd, room, meta.epoch, meta.seq)
            if room_state is None:
                self._end(fd, room, state)
                return
            state.epoch = meta.epoch
            self._reply(fd, room_state)
            # Presence and typing buffered until now are older than the member list
            # just sent (which has every change they tell): only messages are kept.
            state.buffer = [item for item in state.buffer if item[0] is not None]
            last = meta.seq
            if e.since is not None:
                replayed = await self._replay(e, meta, state)
                if replayed is None:
                    self._end(fd, room, state)
                    return
                last = replayed
            if not state.overflow:
                # The room is followed here while this catch-up runs: its member
                # subscribed (above) and a leave, close or delete cancels this task
                # (``cancel``, synchronously) before the room can be forgotten. So
                # ``reach`` must run in this task: asyncio.wait_for (Python 3.11)
                # would run it in a task of its own, which can start after the
                # member's close has forgotten the room, and then turn this task's
                # cancellation into that task's "not followed" StoreError.
                async with asyncio.timeout(self.server.settings.close_timeout * 2):
                    await self._reach(room, last)
        except (StoreError, BrokerError, TimeoutError) as exc:
            if not self._current(fd, room, state):
                # The member left meanwhile (a normal race): nothing to undo or tell.
                log.debug("catch-up of %s for client-%d ended: %s", room, fd, exc or "timeout")
                return
            # Undo the join, so that the client can simply send it again.
            log.error("catch-up of %s for client-%d failed: %s", room, fd, exc or "timeout")
            self._end(fd, room, state)
            self._undo(fd, room)
            self._reply(
                fd, p.Error(p.E_UNAVAILABLE, "history unavailable, join again", "join", room)
            )
            return
        if not self._current(fd, room, state):
            return
        self._end(fd, room, state)
        # From here to mark_live: no await (nothing may be delivered in between).
        if state.overflow:
            # More was published during the replay than the buffer holds: the
            # client reloads from history (which has it all) and goes live now.
            self._reply(fd, p.Reset(room, meta.epoch, "too_far", meta.seq, meta.oldest))
            if e.since is not None:
                metrics.resumes.inc("overflow")
        else:
            push = self.server.push
            for seq, payload in state.buffer:
                if seq is None or seq > last:
                    push(fd, payload, TEXT)
        self.core.mark_live(fd, room)

    def _follow_store(self, room: str, meta: RoomMeta) -> None:
        """The joiner's ``room`` frame is about to tell the store's state (``meta``): if
        this node still follows an older epoch of the room (it was reset, or deleted
        and made again, on another node, and this node has not heard yet), the room
        moves to the store's epoch first (``switch``, as the position check moves it:
        the other members here get ``reset``), so that the joiner and the room's other
        members agree. The catch-ups whose ``room`` frame is still to come stay (theirs
        will be of the new epoch); what they buffered was of the old one: dropped."""
        if self._switch is None:
            return
        fresh = {f: st for f, st in self.waiting.get(room, {}).items() if st.epoch is None}
        if self._switch(room, meta, set(fresh)):
            for st in fresh.values():
                st.buffer.clear()
                st.overflow = False

    def _end(self, fd: int, room: str, state: _Waiting | None = None) -> _Waiting | None:
        """Stop buffering for the member (only for ``state``'s catch-up if given)."""
        waiting_room = self.waiting.get(room)
        if waiting_room is None:
            return None
        if state is not None and waiting_room.get(fd) is not state:
            return None
        waiting = waiting_room.pop(fd, None)
        if not waiting_room:
            del self.waiting[room]
        return waiting

    async def _replay(self, e: Catchup, meta: RoomMeta, state: _Waiting) -> int | None:
        """Send the messages after ``e.since`` up to ``meta.seq``, from the room's shared
        pages, as the client reads them; return the last seq sent (or ``meta.seq``
        after a reset), None if the member is gone."""
        fd, room, since = e.fd, e.room, e.since
        assert since is not None
        reason = None
        if (e.epoch is not None and e.epoch != meta.epoch) or since > meta.seq:
            reason = "epoch"
        elif since + 1 < meta.oldest:
            reason = "retention"
        elif meta.seq - since > self.max_resume:
            reason = "too_far"
        if reason is not None:
            metrics.resumes.inc(reason)
            self._reply(fd, p.Reset(room, meta.epoch, reason, meta.seq, meta.oldest))
            return meta.seq
        last, count = since, 0
        page: _Page | None = None
        while last < meta.seq and not state.overflow:
            if page is None:
                page = await self._ask(room, _Ask(last, meta.seq))
                if not self._current(fd, room, state):
                    return None
            span = page.span(last, meta.seq)
            if span is None:
                # Deleted since the room's state was read (retention): a gap the
                # client must not take for a resume.
                metrics.resumes.inc("retention")
                metrics.replayed.inc(amount=count)
                oldest = page.first_after(last, meta.seq + 1)
                self._reply(fd, p.Reset(room, meta.epoch, "retention", meta.seq, oldest))
                return meta.seq
            i, j = span
            if i == j:
                page = None  # not in this page: ask for the next one
                continue
            sent = self._send(fd, page.payloads, i, j)
            if sent is None:
                return None
            n, full = sent
            last, count = page.seqs[i + n - 1], count + n
            if full:
                # Wait for the client to read before sending more (bounded by
                # close_timeout), without the page; the live frames meanwhile go to
                # the buffer.
                page = None
                if not await self.drained(fd) or not self._current(fd, room, state):
                    return None
        if not state.overflow:
            # (On overflow the caller sends `reset` instead: never both.)
            self._reply(fd, p.Resumed(room, meta.epoch, since, last, count))
            metrics.resumes.inc("resumed")
        metrics.replayed.inc(amount=count)
        return last

    def _send(self, fd: int, payloads: list[bytes], i: int, j: int) -> tuple[int, bool] | None:
        """Push ``payloads[i:j]`` to ``fd`` until its send buffer passes half of
        ``max_send_buffer``: how many were pushed and whether it did (then the
        caller waits), None if the connection is gone."""
        server = self.server
        half = server.settings.max_send_buffer // 2
        buffered = server.buffered(fd)
        if buffered is None:
            return None
        room = half - buffered
        push = server.push
        for k in range(i, j):
            payload = payloads[k]
            if not push(fd, payload, TEXT):
                return None
            room -= len(payload) + FRAME_OVERHEAD
            if room < 0:
                # Perhaps past half: look at the real figure.
                buffered = server.buffered(fd)
                if buffered is None:
                    return None
                if buffered > half:
                    return k - i + 1, True
                room = half - buffered
        return j - i, False

    # -- shared reads ------------------------------------------------------------------

    def _ask(self, room: str, ask: _Ask) -> asyncio.Future[_Page]:
        """Queue ``ask`` for the room's next read (starting it if none runs)."""
        reads = self._reads.get(room)
        if reads is None:
            reads = self._reads[room] = _RoomReads()
        reads.asks.append(ask)
        if reads.task is None:
            task = reads.task = self._spawn(self._reader(room, reads))
            self._tasks.setdefault(room, set()).add(task)
            task.add_done_callback(lambda t, room=room: self._untrack(room, t))
        return ask.future

    async def _reader(self, room: str, reads: _RoomReads) -> None:
        """Serve the room's asks, one read for every ask queued before it began."""
        asks: list[_Ask] = []
        try:
            while reads.asks:
                asks, reads.asks = [a for a in reads.asks if not a.future.done()], []
                if not asks:
                    continue  # all cancelled (their members left)
                try:
                    _answer(asks, await self._read(room, asks))
                except Exception as exc:
                    if not isinstance(exc, StoreError):
                        log.exception("catch-up read of %s failed", room)
                    _answer(asks, exc)
                asks = []
                # The catch-ups just answered send from the page (or ask again) before
                # the next read begins: one page per room at a time.
                await asyncio.sleep(0)
        finally:
            # Cancelled (the server stops): nobody waits for an answer that never comes.
            for ask in asks + reads.asks:
                ask.future.cancel()
            reads.task = None
            if self._reads.get(room) is reads:
                del self._reads[room]

    async def _read(self, room: str, asks: list[_Ask]) -> _Page:
        """The store read for ``asks``: the room's state if one of them asks for it,
        and one page after the smallest ``since`` of those that ask for messages."""
        meta = None
        if any(a.upto is None for a in asks):
            meta = await self.store.create_room(room)
        spans = [(a.since, a.upto) for a in asks if a.upto is not None and a.since < a.upto]
        if not spans:
            return _Page(meta, 0, [], 0)
        lo = min(since for since, _ in spans)
        limit = min(self.chunk, max(upto for _, upto in spans) - lo)
        messages = await self.store.since(room, lo, limit)
        return _Page(meta, lo, messages, limit)


def _answer(asks: list[_Ask], outcome: _Page | Exception) -> None:
    """Hand a read's page (or its failure) to every ask still waiting (the page is then
    referenced by them only: see the memory bound in the module docstring)."""
    for ask in asks:
        future = ask.future
        if future.done():
            continue  # its member left meanwhile
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
            future.exception()  # retrieved: the catch-up gets it by awaiting
        else:
            future.set_result(outcome)
