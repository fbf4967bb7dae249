"""The chat product that ``hubbub serve`` runs, written on hubbub's own server API.

Plain WebSocket clients get the seed's room (:mod:`hubbub.apps.seed`).
Clients that ask for the ``hubbub.v1`` subprotocol speak the JSON protocol
(:mod:`hubbub.protocol`): the chat core decides, :class:`ChatApp` carries the
decisions (effects) out with a store (history), a journal (group commit) and
a broker (fan-out). Around it: gapless catch-up on join
(:mod:`hubbub.apps.catchup`, where its invariant is argued), the HTTP side
(:mod:`hubbub.apps.http_api`: the REST API and the static files) and
retention (:mod:`hubbub.apps.retention`).

Several nodes. With a shared store (PostgreSQL) and broker (Redis), several
``hubbub serve`` processes behave as one server for room messages: a node
follows (subscribes to) only the rooms its clients are in, and delivers every
room's messages to its members once, in ``seq`` order, whichever node
published them (:mod:`hubbub.apps.sequencer` reorders, drops repeats and reads
what the broker lost from the store). Presence is cluster-wide with Redis
(:mod:`hubbub.presence`, docs/presence.md): every node's members are listed
and counted, a nickname is claimed atomically per room, each node computes
its clients' presence frames from the mirrored list (they are not relayed),
and a dead node's members are removed when its lease lapses. Typing is
relayed as it comes. Direct messages reach members on other nodes, and a
room's delete or reset reaches every node (:mod:`hubbub.apps.cluster_control`).

Rooms. Reading a room (``history``, ``GET .../messages``) never creates it;
a join or a message does. Deleting a room (``DELETE /api/rooms/{room}``)
first closes it (joins and sends refused), waits for the catch-ups and
messages already accepted, deletes it from the store, then tells every
member (``left_room`` with ``reason: "deleted"``). Created again later, it
has a new epoch: a client resuming with the old one gets ``reset``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

from .. import metrics
from .. import protocol as p
from ..auth.gate import AuthGate
from ..auth.tokens import Verifier
from ..broker import Broker, BrokerError
from ..config import Settings
from ..core import (
    Catchup,
    ChatCore,
    ChatLimits,
    Close,
    Effect,
    Identity,
    LoadHistory,
    Persist,
    Publish,
    Reply,
    RoomsQuery,
)
from ..core.effects import RemoteDirect
from ..errors import StartupError
from ..logs import context
from ..presence import PresenceManager
from ..presence.base import PresenceError
from ..presence.node import NodePresence
from ..server import WEBSOCKET_OPCODE_TEXT, Frame, Server
from ..store import PendingMessage, Store, StoreError
from ..transport.http import Request, Response
from .admin_api import AdminApi
from .catchup import Catchups
from .cluster_control import NODES_ONLY, ClusterControl
from .http_api import HttpApi, room_page
from .journal import Journal
from .readiness import answer_readyz
from .retention import RETENTION_PERIOD, Retention
from .seed import SeedRoom
from .sequencer import Sequencer
from .wiring import build_broker, build_store, describe_store

#: Seconds between checks of every followed room's position in the store.
POSITION_PERIOD = 2.0
#: Milliseconds between looks for holes that waited long enough.
HOLE_CHECK_MS = 50
#: Rooms read per query when the core learns the stored rooms at start.
ROOM_LOAD_PAGE = 1000

log = logging.getLogger("hubbub.chat")

TEXT = WEBSOCKET_OPCODE_TEXT


def _make_core(s: Settings) -> ChatCore:
    return ChatCore(
        ChatLimits(
            s.rate,
            s.burst,
            s.max_rooms_per_connection,
            max_rooms=s.max_rooms,
            room_create_rate=s.room_create_rate,
            room_create_burst=s.room_create_burst,
            max_invalid_frames=s.max_invalid_frames,
            invalid_frame_window=s.invalid_frame_window,
        ),
        coalesce_presence=True,
    )


class ChatApp:
    """Where the core's effects meet the store, the journal and the broker."""

    def __init__(
        self,
        server: Server,
        store: Store,
        broker: Broker,
        presence: PresenceManager | None = None,
    ) -> None:
        self.server = server
        s = self.settings = server.settings
        self.core = _make_core(s)
        # Presence is published once per loop tick (docs/protocol.md, *presence*).
        self._presence: asyncio.Handle | None = None
        self._presence_at = 0.0
        self.store = store
        self.broker = broker
        self.journal = Journal(
            self.store, self._committed, self._not_committed, max_queue=s.max_journal_queue
        )
        self.seed = SeedRoom(server)
        self.v1: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Direct messages to other nodes; deletes and resets told to every node.
        self.control = ClusterControl(self)
        # The hole check's timer is armed only while a hole is open (an idle
        # server is not woken 20 times a second for nothing).
        self._hole_timer: int | None = None
        self.sequencer = Sequencer(
            self._emit, store.since, self._position,
            on_epoch=self.control.on_epoch, on_hole=self._watch_holes,
        )  # fmt: skip
        #: Presence across nodes (None with the local broker: one node).
        self.cluster = NodePresence.for_broker(
            broker, presence, core=self.core, run=self.run, spawn=self._spawn,
            reply=self.reply, drop=self._drop,
        )  # fmt: skip
        # Members this node subscribed the broker for, per room.
        self._subs: dict[str, set[int]] = {}
        self._rooms_of: dict[int, set[str]] = {}  # the same, per member
        self.catchups = Catchups(
            server,
            self.core,
            store,
            max_resume=s.max_resume,
            spawn=self._spawn,
            subscribe=self._subscribe,
            reach=self.sequencer.reach,
            undo=self._undo_join,
            switch=self.control.store_ahead,
        )
        if hasattr(broker, "on_reconnect") and getattr(broker, "on_reconnect", None) is None:
            broker.on_reconnect = self.on_broker_reconnect  # type: ignore[attr-defined]
        self.retention = Retention(store, s.retention_count, s.retention_days)
        self._delete_lock = asyncio.Lock()
        verifier = Verifier.from_settings(s)  # StartupError: a short secret, no key
        self.gate = AuthGate(
            server,
            s,
            verifier,
            connect=self._connect,
            disconnect=lambda fd: self.run(self.core.disconnect(fd)),
            reply=self.reply,
        )
        self.http = HttpApi(
            self.core,
            store,
            self.journal,
            delete_room=self.delete_room,
            api_key=s.api_key or os.environ.get("HUBBUB_API_KEY", ""),
            verifier=verifier if s.auth != "none" else None,
        )
        self.admin = AdminApi(self, s)
        self.limits = p.welcome_limits(
            s.max_message_size, s.rate, s.burst, s.max_rooms_per_connection
        )
        if p.SUBPROTOCOL not in server.subprotocols:
            server.subprotocols.append(p.SUBPROTOCOL)
        self._handle(server)

    def _handle(self, server: Server) -> None:
        """Register the server events this app answers."""
        server.on("start", self.on_start)
        server.on("shutdown", self.on_shutdown)
        server.on("open", self.on_open)
        server.on("message", self.on_message)
        server.on("close", self.on_close)
        server.on("request", self.on_request)
        server.on("upgrade", self.gate.upgrade)

    # -- lifecycle -----------------------------------------------------------

    async def on_start(self, server: Server) -> None:
        try:
            await self.store.open()
        except StartupError:
            raise  # already one line for the operator (e.g. another process holds the file)
        except StoreError as exc:
            raise StartupError(
                f"cannot open the history store {describe_store(self.settings)}: {exc}"
            ) from exc
        try:
            deliver = self.seed.attach_broker(self.broker, self.deliver)
            await self.broker.start(deliver, self.control.on_node)
        except BrokerError as exc:
            await self.store.close()
            raise StartupError(f"cannot start the broker {self.settings.broker}: {exc}") from exc
        if self.cluster is not None:
            try:
                await self.cluster.start()
            except PresenceError as exc:
                await self.broker.close()
                await self.store.close()
                raise StartupError(f"cannot start presence: {exc}") from exc
            every = self.cluster.manager.renew_every * 1000
            server.tick(every, lambda _tid: self._spawn(self.cluster.tick()))  # type: ignore[union-attr]
        await self._load_rooms()
        self.journal.start()
        await self.retention.run()
        server.tick(RETENTION_PERIOD * 1000, lambda _tid: self._spawn(self.retention.run()))
        server.tick(
            POSITION_PERIOD * 1000, lambda _tid: self._spawn(self.control.check_positions())
        )

    async def _load_rooms(self) -> None:
        # The core counts rooms against max_rooms and tells a join that creates
        # a room from one that enters an existing one: it learns the stored ones.
        after: str | None = None
        while True:
            try:
                page = await self.store.rooms(after, ROOM_LOAD_PAGE)
            except StoreError as exc:
                raise StartupError(f"cannot read the room list: {exc}") from exc
            self.core.load_rooms(m.name for m in page)
            for meta in page:
                if meta.private:
                    self.core.set_private(meta.name, True)
            if len(page) < ROOM_LOAD_PAGE:
                return
            after = page[-1].name

    async def on_shutdown(self, server: Server) -> None:
        # Connections are closed by now; write what was accepted, then stop.
        await self.journal.close()
        if self._presence is not None:
            self._presence.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.cluster is not None:
            await self.cluster.close()  # this node's members leave every list
        await self.broker.close()
        await self.store.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("chat task failed", exc_info=task.exception())

    # -- WebSocket events ----------------------------------------------------

    def on_open(self, server: Server, request: Request) -> None:
        if request.subprotocol == p.SUBPROTOCOL:
            self.v1.add(request.fd)
            self.gate.opened(request.fd, request)
        else:
            self.seed.open(request.fd)

    def on_request(self, request: Request, response: Response) -> Any:
        if request.path == "/readyz":
            return answer_readyz(self.store, self.broker, response)
        if self.admin.handles(request):
            return self.admin.on_request(request, response)
        return self.http.on_request(request, response)

    def on_message(self, server: Server, frame: Frame) -> None:
        fd = frame.fd
        if fd not in self.v1:
            self.seed.message(frame)
            return
        if self.gate.watching(fd) and self.gate.frame(fd, frame.data):
            return  # an auth frame, or a connection refused before its welcome
        if not isinstance(frame.data, str):
            metrics.frame_invalid()
            self.run(self.core.not_text(fd))
            return
        try:
            decoded = p.decode(frame.data)
        except p.ProtocolError as exc:
            metrics.frame_invalid()
            self.run(self.core.error(fd, exc))
            return
        metrics.frame_in(decoded)
        renaming = self.cluster is not None and isinstance(decoded, (p.SetNick, p.Join))
        before = self.core.nick_of(fd) if renaming else None
        self.run(self.core.handle(fd, decoded))
        if renaming and self.core.nick_of(fd) not in (before, None):
            self._spawn(self.cluster.renamed(fd, before or ""))  # type: ignore[union-attr]
        if isinstance(decoded, p.Leave) and not self.core.is_member(fd, decoded.room):
            self._left(fd, decoded.room)

    def on_close(self, server: Server, fd: int) -> None:
        if fd in self.v1:
            self.v1.discard(fd)
            if not self.gate.closed(fd):
                return  # never greeted: the core never knew it
            self.catchups.forget(fd)
            self.run(self.core.disconnect(fd))
            for room in list(self._rooms_of.get(fd, ())):
                self._left(fd, room)
        else:
            self.seed.close(fd)

    def _connect(self, fd: int, identity: Identity | None) -> None:
        """The connection is who it says (or anonymous): the core greets it."""
        self.run(self.core.connect(fd, self.limits, identity))

    # -- following rooms (broker subscriptions, per-room order) -----------------

    async def _subscribe(self, fd: int, room: str) -> None:
        """Follow ``room`` for member ``fd``: once per member, before its catch-up reads."""
        try:
            await self.broker.subscribe(room)
        except asyncio.CancelledError:
            # The member left while Redis had not confirmed yet: the count was taken.
            self.broker.unsubscribe(room)
            raise
        self._subs.setdefault(room, set()).add(fd)
        self._rooms_of.setdefault(fd, set()).add(room)
        if self.cluster is not None:
            await self.cluster.joining(fd, room)  # BrokerError: the member cannot stay
        await self.sequencer.ready(room)

    def _left(self, fd: int, room: str) -> None:
        """``fd`` is no longer a member of ``room``: its catch-up stops, its interest ends.

        Invariant: a room is followed (broker subscription, sequencer cursor) while
        any local member that subscribed for it is in ``_subs``, and a catch-up runs
        only while its member is there: its task is cancelled here, synchronously,
        before the room can be forgotten, so a catch-up never waits on
        (``Sequencer.reach``) a room that is not followed."""
        self.catchups.cancel(fd, room)
        if self.cluster is not None:
            self.cluster.release(fd, room)
        fds = self._subs.get(room)
        if fds is None or fd not in fds:
            return
        fds.discard(fd)
        rooms = self._rooms_of.get(fd)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[fd]
        self.broker.unsubscribe(room)
        if not fds:
            del self._subs[room]
            self.sequencer.forget(room)
            if self.cluster is not None:
                self.cluster.forget(room)

    def _undo_join(self, fd: int, room: str) -> None:
        self._drop(fd, room)

    def _drop(self, fd: int, room: str) -> None:
        """Take ``fd`` out of ``room`` (a join that could not complete, a lost nickname)."""
        self.run(self.core.drop_membership(fd, room))
        self._left(fd, room)

    async def _position(self, room: str) -> tuple[int, str]:
        meta = await self.store.create_room(room)
        return meta.seq, meta.epoch

    def _fill_holes(self) -> None:
        for room in self.sequencer.due():
            self._spawn(self.sequencer.backfill(room))

    def _watch_holes(self) -> None:
        """A hole opened: look for due ones every HOLE_CHECK_MS until none is left."""
        if self._hole_timer is None:
            self._hole_timer = self.server.after(HOLE_CHECK_MS, self._check_holes)

    def _check_holes(self) -> None:
        self._hole_timer = None
        self._fill_holes()
        if self.sequencer.has_holes():
            self._watch_holes()

    def on_broker_reconnect(self) -> None:
        """Frames published while the broker was away are lost: read positions now
        (and every followed room's member list)."""
        self._spawn(self.control.check_positions(urgent=True))
        if self.cluster is not None:
            self.cluster.reconnected()

    # -- carrying out effects ------------------------------------------------

    def reply(self, fd: int, frame: p.ServerFrame) -> None:
        metrics.frame_out(frame)
        self.server.push(fd, p.encode(frame), TEXT)

    def run(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Reply):
                self.reply(effect.fd, effect.frame)
            elif isinstance(effect, Publish):
                if self.cluster is not None and not isinstance(effect.frame, p.TypingEvent):
                    # Presence: every node tells its own clients (from its mirror).
                    self._emit(effect.room, p.encode(effect.frame), None)
                else:
                    self.broker.publish(effect.room, p.encode(effect.frame), None)
            elif isinstance(effect, Persist):
                self._persist(effect)
            elif isinstance(effect, RemoteDirect):
                self.control.send_direct(effect)
            elif isinstance(effect, Catchup):
                self.catchups.start(effect)
            elif isinstance(effect, LoadHistory):
                self._spawn(self._history(effect))
            elif isinstance(effect, RoomsQuery):
                self._spawn(self._rooms(effect))
            elif isinstance(effect, Close):
                log.info(
                    "client-%d closed by the server: %d %s",
                    effect.fd,
                    effect.code,
                    effect.reason,
                    extra=context(fd=effect.fd, code=effect.code, reason=effect.reason),
                )
                self.server.disconnect(effect.fd, effect.code, effect.reason)
        if self.core.presence_pending():
            self._schedule_presence()

    def _schedule_presence(self) -> None:
        """Publish the core's presence changes after this loop tick's frames (or
        when a large room's next count is due): one frame per room per tick."""
        due = self.core.presence_due()
        if due is None:
            return
        if self._presence is not None:
            if self._presence_at <= due:
                return  # already scheduled in time
            self._presence.cancel()
        loop = asyncio.get_running_loop()
        self._presence_at = due
        delay = due - time.monotonic()  # the core's clock is time.monotonic
        if delay > 0:
            self._presence = loop.call_later(delay, self._flush_presence)
        else:
            self._presence = loop.call_soon(self._flush_presence)

    def _flush_presence(self) -> None:
        self._presence = None
        self.run(self.core.flush_presence())  # schedules again if a count still waits

    def _persist(self, effect: Persist) -> None:
        e = effect
        pending = PendingMessage(e.room, e.client_id, e.nick, e.text, time.time(), user=e.user)
        if not self.journal.submit(pending, (e.fd, e.client_id)):
            self.reply(
                effect.fd,
                p.Error(
                    p.E_UNAVAILABLE,
                    "server busy: message not stored, retry",
                    "send",
                    effect.room,
                    effect.client_id,
                ),
            )

    def deliver(self, room: str, payload: bytes, seq: int | None) -> None:
        """Broker callback: a room frame (from any node) for this node's members.

        Messages go through the sequencer (in seq order, once); ephemeral frames
        (presence, typing) are delivered as they come."""
        if seq is None:
            if payload.startswith(NODES_ONLY):  # for the nodes, never for clients
                self.control.on_room_frame(room, payload)
                return
            self._emit(room, payload, None)
        else:
            self.sequencer.feed(room, seq, payload)

    def _emit(self, room: str, payload: bytes, seq: int | None) -> None:
        metrics.fanout(seq, self.server.push_many(self.core.live_fds(room), payload, TEXT))
        self.catchups.buffer(room, seq, payload)

    # -- journal callbacks ---------------------------------------------------

    def _committed(self, results: list[tuple[p.Message, bool, Any]]) -> None:
        for msg, duplicate, token in results:
            if not duplicate:
                self.broker.publish(msg.room, p.encode(msg), msg.seq)
            if isinstance(token, asyncio.Future):
                if not token.done():
                    token.set_result((msg, duplicate))
                continue
            fd, client_id = token
            self.reply(
                fd, p.Ack(client_id, msg.room, msg.seq, msg.epoch, msg.id, msg.ts, duplicate)
            )

    def _not_committed(self, batch: list[tuple[PendingMessage, Any]], exc: Exception) -> None:
        for pending, token in batch:
            if isinstance(token, asyncio.Future):
                if not token.done():
                    token.set_exception(exc)
                continue
            fd, client_id = token
            self.reply(
                fd,
                p.Error(
                    p.E_UNAVAILABLE, "message not stored, retry", "send", pending.room, client_id
                ),
            )

    # -- history, room list ----------------------------------------------------

    async def _history(self, e: LoadHistory) -> None:
        try:
            meta = await self.store.room(e.room)
            if meta is None:
                self.reply(
                    e.fd,
                    p.Error(p.E_NO_SUCH_ROOM, f"no room called {e.room!r}", "history", e.room),
                )
                return
            if meta.private and not self.core.is_member(e.fd, e.room):
                # Made private on another node since this one last looked.
                self.core.set_private(e.room, True)
                self.reply(
                    e.fd,
                    p.Error(p.E_FORBIDDEN, f"room {e.room!r} is private", "history", e.room),
                )
                return
            messages, has_more = p.fit_page(*await self.store.page(e.room, e.before, e.limit))
            # A page waits for the client to read the previous ones.
            if not await self.catchups.drained(e.fd):
                return
        except StoreError as exc:
            log.error("history of %s failed: %s", e.room, exc)
            self.reply(e.fd, p.Error(p.E_UNAVAILABLE, "history unavailable", "history", e.room))
            return
        self.reply(e.fd, p.HistoryPage(e.room, meta.epoch, messages, has_more, e.before))

    async def _rooms(self, e: RoomsQuery) -> None:
        try:
            rooms, after = await room_page(self.core, self.store, e.after, e.limit)
        except StoreError:
            self.reply(e.fd, p.Error(p.E_UNAVAILABLE, "room list unavailable", "rooms"))
            return
        self.reply(e.fd, p.RoomList(rooms, after))

    # -- deleting a room -------------------------------------------------------

    async def delete_room(self, room: str) -> tuple[bool, int]:
        """Delete a room, its history and its members' membership, on every node
        (:meth:`ClusterControl.delete_room`): whether it existed, members told here."""
        return await self.control.delete_room(room)


def create_app(
    host: str = "0.0.0.0",
    port: int = 9502,
    settings: Settings | None = None,
    store: Store | None = None,
    broker: Broker | None = None,
    presence: PresenceManager | None = None,
) -> Server:
    """The server ``hubbub serve`` runs, with the store of ``settings.store`` (the
    SQLite file ``settings.db`` by default) and the broker of ``settings.broker``
    (in-process by default), unless given. A URL of neither form raises
    :class:`StartupError` naming the accepted forms."""
    server = Server(host, port, settings)
    s = server.settings
    if store is None:
        store = build_store(s)
    if broker is None:
        broker = build_broker(s)
    server.app = ChatApp(server, store, broker, presence)
    return server
