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
"""

from __future__ import annotations

import asyncio
import logging
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

#: Messages read from the store and sent in one step of a replay.
REPLAY_CHUNK = 200
#: Seconds between two looks at a connection's send buffer while it drains.
DRAIN_POLL = 0.005


class _Waiting:
    """Frames delivered to the room while one member catches up."""

    __slots__ = ("buffer", "overflow")

    def __init__(self) -> None:
        self.buffer: list[tuple[int | None, bytes]] = []
        self.overflow = False


class Catchups:
    """The members catching up, per room, and the tasks doing it.

    ``subscribe(fd, room)`` makes this node follow the room for the member
    (BrokerError / StoreError when it cannot); ``reach(room, seq)`` returns once
    the node has delivered the room up to ``seq``; ``undo(fd, room)`` takes back
    a join that could not be completed (the client may send it again).
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
        self.waiting: dict[str, dict[int, _Waiting]] = {}
        # Catch-up tasks per room (a delete waits for them) and per member (a leave
        # cancels its own).
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}
        self._by_member: dict[tuple[int, str], asyncio.Task[Any]] = {}

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
        task.add_done_callback(
            lambda t, key=(effect.fd, effect.room): self._task_done(key, t)
        )

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
        tasks = self._tasks.get(room)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[room]
        if self._by_member.get(key) is task:
            del self._by_member[key]

    def _current(self, fd: int, room: str, state: _Waiting) -> bool:
        """Still this catch-up's member (not left, not replaced by a newer join)."""
        return self.waiting.get(room, {}).get(fd) is state and self.core.is_member(fd, room)

    async def _catchup(self, e: Catchup, state: _Waiting) -> None:
        fd, room = e.fd, e.room
        try:
            await self._subscribe(fd, room)  # before reading: see the module docstring
            meta = await self.store.create_room(room)  # a join creates its room
            if not self._current(fd, room, state):
                return
            room_state = self.core.room_state(fd, room, meta.epoch, meta.seq)
            if room_state is None:
                self._end(fd, room, state)
                return
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
        """Send the messages after ``e.since``, a chunk at a time as the client reads
        them; return the last seq sent (or ``meta.seq`` after a reset), None if the
        member is gone."""
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
        push = self.server.push
        half = self.server.settings.max_send_buffer // 2
        while last < meta.seq and not state.overflow:
            missed = await self.store.since(room, last, min(self.chunk, meta.seq - last))
            if not self._current(fd, room, state):
                return None
            if not missed:
                break
            for msg in missed:
                push(fd, p.encode(msg), TEXT)
                last, count = msg.seq, count + 1
                buffered = self.server.buffered(fd)
                if buffered is None:
                    return None
                if buffered > half:
                    # Wait for the client to read before sending more (bounded by
                    # close_timeout); the live frames meanwhile go to the buffer.
                    if not await self.drained(fd) or not self._current(fd, room, state):
                        return None
                    if state.overflow:
                        break
        if not state.overflow:
            # (On overflow the caller sends `reset` instead: never both.)
            self._reply(fd, p.Resumed(room, meta.epoch, since, last, count))
            metrics.resumes.inc("resumed")
        metrics.replayed.inc(amount=count)
        return last
