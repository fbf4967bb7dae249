"""Gapless catch-up: a member joining a room is sent the room's state, then what
it missed (a join with ``since``), then live messages, with no gap and no
duplicate.

The invariant. A member that joins is first registered as *catching up*
(:meth:`Catchups.start`, synchronously, before any ``await``): every frame
delivered to the room from then on is buffered for it (:meth:`Catchups.buffer`).
Then the store is read (everything committed so far after ``since``) and
replayed, then the buffer is flushed without the messages the replay already
had (by sequence number), and only then, with no ``await`` in between, the
member goes live (``ChatCore.mark_live``: deliveries reach it directly). A
message is published only after its commit, so it is either in the replay
(committed before the read) or in the buffer (published after the
registration), or both: never neither.

A join creates its room in the store here (``create_room``); a room delete
waits for the catch-ups of the room (:meth:`Catchups.wait_room`), so that no
``create_room`` runs after the delete.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .. import protocol as p
from ..core import Catchup, ChatCore, Effect
from ..server import WEBSOCKET_OPCODE_TEXT, Server
from ..store import RoomMeta, Store, StoreError

log = logging.getLogger("hubbub.chat")

TEXT = WEBSOCKET_OPCODE_TEXT


class _Waiting:
    """Frames delivered to the room while one member catches up."""

    __slots__ = ("buffer", "overflow")

    def __init__(self) -> None:
        self.buffer: list[tuple[int | None, bytes]] = []
        self.overflow = False


class Catchups:
    """The members catching up, per room, and the tasks doing it."""

    def __init__(
        self,
        server: Server,
        core: ChatCore,
        store: Store,
        *,
        max_resume: int,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]],
        run: Callable[[list[Effect]], None],
    ) -> None:
        self.server = server
        self.core = core
        self.store = store
        self.max_resume = max_resume
        self._spawn = spawn
        self._run = run  # carries out the core's effects (undoing a join)
        self.waiting: dict[str, dict[int, _Waiting]] = {}
        # Catch-up tasks per room (a delete waits for them).
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}

    def _reply(self, fd: int, frame: p.ServerFrame) -> None:
        self.server.push(fd, p.encode(frame), TEXT)

    # -- what the rest of the app calls ------------------------------------------

    def start(self, effect: Catchup) -> None:
        # Registered synchronously, before any await: see the module docstring.
        self.waiting.setdefault(effect.room, {})[effect.fd] = _Waiting()
        task = self._spawn(self._catchup(effect))
        self._tasks.setdefault(effect.room, set()).add(task)
        task.add_done_callback(lambda t, room=effect.room: self._task_done(room, t))

    def buffer(self, room: str, seq: int | None, payload: bytes) -> None:
        """A frame delivered to ``room``: kept for each member catching up there."""
        waiting = self.waiting.get(room)
        if waiting:
            limit = self.max_resume
            for state in waiting.values():
                if len(state.buffer) < limit:
                    state.buffer.append((seq, payload))
                else:
                    state.overflow = True

    def forget(self, fd: int) -> None:
        """Connection ``fd`` closed: nothing more is buffered for it."""
        for waiting in self.waiting.values():
            waiting.pop(fd, None)

    async def wait_room(self, room: str) -> None:
        """Wait for the catch-ups of ``room`` started so far."""
        pending = self._tasks.get(room)
        if pending:
            await asyncio.wait(set(pending))

    # -- the catch-up itself -------------------------------------------------------

    def _task_done(self, room: str, task: asyncio.Task[Any]) -> None:
        tasks = self._tasks.get(room)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[room]

    async def _catchup(self, e: Catchup) -> None:
        fd, room = e.fd, e.room
        try:
            meta = await self.store.create_room(room)  # a join creates its room
            state = self.core.room_state(fd, room, meta.epoch, meta.seq)
            if state is None or not self.core.is_member(fd, room):
                self._end(fd, room)
                return
            self._reply(fd, state)
            last = meta.seq
            if e.since is not None:
                replayed = await self._replay(e, meta)
                if replayed is None or not self.core.is_member(fd, room):
                    self._end(fd, room)
                    return
                last = replayed
        except StoreError as exc:
            # Undo the join, so that the client can simply send it again.
            log.error("catch-up of %s for client-%d failed: %s", room, fd, exc)
            self._end(fd, room)
            self._run(self.core.drop_membership(fd, room))
            self._reply(
                fd, p.Error(p.E_UNAVAILABLE, "history unavailable, join again", "join", room)
            )
            return
        waiting = self._end(fd, room)
        if waiting is None or not self.core.is_member(fd, room):
            return
        # From here to mark_live: no await (nothing may be delivered in between).
        if waiting.overflow:
            # More was published during the replay than the buffer holds: the
            # client reloads from history (which has it all) and goes live now.
            self._reply(fd, p.Reset(room, meta.epoch, "too_far", meta.seq, meta.oldest))
        else:
            push = self.server.push
            for seq, payload in waiting.buffer:
                if seq is None or seq > last:
                    push(fd, payload, TEXT)
        self.core.mark_live(fd, room)

    def _end(self, fd: int, room: str) -> _Waiting | None:
        waiting_room = self.waiting.get(room)
        if waiting_room is None:
            return None
        waiting = waiting_room.pop(fd, None)
        if not waiting_room:
            del self.waiting[room]
        return waiting

    async def _replay(self, e: Catchup, meta: RoomMeta) -> int | None:
        """Send the messages after ``e.since``; return the last seq sent (or reset)."""
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
            self._reply(fd, p.Reset(room, meta.epoch, reason, meta.seq, meta.oldest))
            return meta.seq
        missed = await self.store.since(room, since, self.max_resume)
        if not self.core.is_member(fd, room):
            return None
        push = self.server.push
        for msg in missed:
            push(fd, p.encode(msg), TEXT)
        last = missed[-1].seq if missed else since
        waiting = self.waiting.get(room, {}).get(fd)
        if waiting is None or not waiting.overflow:
            # (On overflow the caller sends `reset` instead: never both.)
            self._reply(fd, p.Resumed(room, meta.epoch, since, last, len(missed)))
        return last
