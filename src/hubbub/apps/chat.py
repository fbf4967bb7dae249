"""The chat product that ``hubbub serve`` runs, written on hubbub's own server API.

Plain WebSocket clients get the seed's room (:mod:`hubbub.apps.seed`).
Clients that ask for the ``hubbub.v1`` subprotocol speak the JSON protocol
(:mod:`hubbub.protocol`): the chat core decides, this service carries the
decisions out with a store (history), a journal (group commit) and a broker
(fan-out).

Gapless resume. A member that joins with ``since`` is first registered as
*catching up*: every frame delivered to the room from then on is buffered
for it. Then the store is read (everything committed so far after
``since``) and replayed, then the buffer is flushed without the messages the
replay already had (by sequence number), and only then, with no ``await``
in between, the member goes live. A message is published only after its
commit, so it is either in the replay (committed before the read) or in the
buffer (published after the registration), or both: never neither.

Rooms. Reading a room (``history``, ``GET .../messages``) never creates it;
a join or a message does. Deleting a room (``DELETE /api/rooms/{room}``)
first closes it (joins and sends refused), waits for the catch-ups and
messages already accepted, deletes it from the store, then tells every
member (``left_room`` with ``reason: "deleted"``). Created again later, it
has a new epoch: a client resuming with the old one gets ``reset``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from importlib import resources
from typing import Any

import msgspec

from .. import protocol as p
from ..broker import Broker, LocalBroker
from ..config import Settings
from ..core import (
    Catchup,
    ChatCore,
    ChatLimits,
    Effect,
    LoadHistory,
    Persist,
    Publish,
    Reply,
    RoomsQuery,
)
from ..server import WEBSOCKET_OPCODE_TEXT, Frame, Server
from ..store import PendingMessage, Store, StoreError
from ..store.sqlite import SQLiteStore
from ..transport.http import Request, Response
from .journal import Journal
from .seed import SeedRoom

log = logging.getLogger("hubbub.chat")

TEXT = WEBSOCKET_OPCODE_TEXT
# "/" is the hubbub.v1 browser client; the seed's page (plain text protocol)
# stays at /seed.html. Other files of the static folder are under /static/.
_PAGES = {"/": "index.html", "/index.html": "index.html", "/seed.html": "seed.html"}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
_API_MESSAGES = re.compile(r"^/api/rooms/([^/]+)/messages$")
_API_ROOM = re.compile(r"^/api/rooms/([^/]+)$")
RETENTION_PERIOD = 60.0


class PostBody(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/rooms/{room}/messages``."""

    text: p.Text
    nick: p.Nick = "api"
    id: p.ClientId | None = None


class _Catchup:
    __slots__ = ("buffer", "overflow")

    def __init__(self) -> None:
        self.buffer: list[tuple[int | None, bytes]] = []
        self.overflow = False


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the static folder, read once: URL path -> (body, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("hubbub").joinpath("static")
    for entry in folder.iterdir():
        name = entry.name
        ctype = _TYPES.get(name[name.rfind(".") :]) if "." in name else None
        if ctype is None or not entry.is_file():
            continue
        files[f"/static/{name}"] = (entry.read_bytes(), ctype)
    for path, name in _PAGES.items():
        if f"/static/{name}" in files:
            files[path] = files[f"/static/{name}"]
    return files


class ChatApp:
    def __init__(
        self,
        server: Server,
        store: Store | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.server = server
        s = self.settings = server.settings
        self.core = ChatCore(ChatLimits(s.rate, s.burst, s.max_rooms_per_connection))
        self.store: Store = store or SQLiteStore(s.db, s.sqlite_synchronous)
        self.broker: Broker = broker or LocalBroker()
        self.journal = Journal(
            self.store, self._committed, self._not_committed, max_queue=s.max_journal_queue
        )
        self.seed = SeedRoom(server)
        self.v1: set[int] = set()
        self.catching_up: dict[str, dict[int, _Catchup]] = {}
        # Catch-up tasks per room (a delete waits for them).
        self._catchup_tasks: dict[str, set[asyncio.Task[Any]]] = {}
        self._delete_lock = asyncio.Lock()
        self.api_key = s.api_key or os.environ.get("HUBBUB_API_KEY", "")
        self.pages = _static_files()
        self.limits = {
            "max_message_size": s.max_message_size,
            "rate": s.rate,
            "burst": s.burst,
            "max_rooms": s.max_rooms_per_connection,
            "history_page": 200,
            "max_text": p.MAX_TEXT,
            "max_nick": 32,
            "max_room": 64,
        }
        self._tasks: set[asyncio.Task[Any]] = set()
        if p.SUBPROTOCOL not in server.subprotocols:
            server.subprotocols.append(p.SUBPROTOCOL)
        server.on("start", self.on_start)
        server.on("shutdown", self.on_shutdown)
        server.on("open", self.on_open)
        server.on("message", self.on_message)
        server.on("close", self.on_close)
        server.on("request", self.on_request)

    # -- lifecycle -----------------------------------------------------------

    async def on_start(self, server: Server) -> None:
        await self.store.open()
        await self.broker.start(self.deliver)
        self.journal.start()
        await self._retention()
        server.tick(RETENTION_PERIOD * 1000, lambda _tid: self._spawn(self._retention()))

    async def on_shutdown(self, server: Server) -> None:
        # Connections are closed by now; write what was accepted, then stop.
        await self.journal.close()
        for task in list(self._tasks):
            task.cancel()
        await self.broker.close()
        await self.store.close()

    async def _retention(self) -> None:
        s = self.settings
        if s.retention_count <= 0 and s.retention_days <= 0:
            return
        try:
            deleted = await self.store.enforce_retention(
                s.retention_count, s.retention_days * 86400.0, time.time()
            )
        except StoreError as exc:
            log.error("retention failed: %s", exc)
            return
        if deleted:
            log.info("retention: deleted %d old messages", deleted)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
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
            self.run(self.core.connect(request.fd, self.limits))
        else:
            self.seed.open(request.fd)

    def on_message(self, server: Server, frame: Frame) -> None:
        fd = frame.fd
        if fd not in self.v1:
            self.seed.message(frame)
            return
        if not isinstance(frame.data, str):
            self.reply(fd, p.Error(p.E_NOT_TEXT, "hubbub.v1 frames are JSON text frames"))
            return
        try:
            decoded = p.decode(frame.data)
        except p.ProtocolError as exc:
            self.run(self.core.error(fd, exc))
            return
        self.run(self.core.handle(fd, decoded))

    def on_close(self, server: Server, fd: int) -> None:
        if fd in self.v1:
            self.v1.discard(fd)
            for waiting in self.catching_up.values():
                waiting.pop(fd, None)
            self.run(self.core.disconnect(fd))
        else:
            self.seed.close(fd)

    # -- carrying out effects ------------------------------------------------

    def reply(self, fd: int, frame: p.ServerFrame) -> None:
        self.server.push(fd, p.encode(frame), TEXT)

    def run(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Reply):
                self.reply(effect.fd, effect.frame)
            elif isinstance(effect, Publish):
                self.broker.publish(effect.room, p.encode(effect.frame), None)
            elif isinstance(effect, Persist):
                pending = PendingMessage(
                    effect.room, effect.client_id, effect.nick, effect.text, time.time()
                )
                if not self.journal.submit(pending, (effect.fd, effect.client_id)):
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
            elif isinstance(effect, Catchup):
                self._start_catchup(effect)
            elif isinstance(effect, LoadHistory):
                self._spawn(self._history(effect))
            elif isinstance(effect, RoomsQuery):
                self._spawn(self._rooms(effect.fd))

    def deliver(self, room: str, payload: bytes, seq: int | None) -> None:
        """Broker callback: a room frame for this node's members."""
        self.server.push_many(self.core.live_fds(room), payload, TEXT)
        waiting = self.catching_up.get(room)
        if waiting:
            limit = self.settings.max_resume
            for state in waiting.values():
                if len(state.buffer) < limit:
                    state.buffer.append((seq, payload))
                else:
                    state.overflow = True

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

    # -- catch-up, history, room list ------------------------------------------

    def _start_catchup(self, effect: Catchup) -> None:
        # Registered synchronously, before any await: see the module docstring.
        self.catching_up.setdefault(effect.room, {})[effect.fd] = _Catchup()
        task = self._spawn(self._catchup(effect))
        tasks = self._catchup_tasks.setdefault(effect.room, set())
        tasks.add(task)
        task.add_done_callback(lambda t, room=effect.room: self._catchup_done(room, t))

    def _catchup_done(self, room: str, task: asyncio.Task[Any]) -> None:
        tasks = self._catchup_tasks.get(room)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._catchup_tasks[room]

    async def _catchup(self, e: Catchup) -> None:
        fd, room = e.fd, e.room
        try:
            meta = await self.store.create_room(room)  # a join creates its room
            state = self.core.room_state(fd, room, meta.epoch, meta.seq)
            if state is None or not self.core.is_member(fd, room):
                self._end_catchup(fd, room)
                return
            self.reply(fd, state)
            last = meta.seq
            if e.since is not None:
                replayed = await self._replay(e, meta)
                if replayed is None or not self.core.is_member(fd, room):
                    self._end_catchup(fd, room)
                    return
                last = replayed
        except StoreError as exc:
            # Undo the join, so that the client can simply send it again.
            log.error("catch-up of %s for client-%d failed: %s", room, fd, exc)
            self._end_catchup(fd, room)
            self.run(self.core.drop_membership(fd, room))
            self.reply(
                fd, p.Error(p.E_UNAVAILABLE, "history unavailable, join again", "join", room)
            )
            return
        waiting = self._end_catchup(fd, room)
        if waiting is None or not self.core.is_member(fd, room):
            return
        # From here to mark_live: no await (nothing may be delivered in between).
        if waiting.overflow:
            # More was published during the replay than the buffer holds: the
            # client reloads from history (which has it all) and goes live now.
            self.reply(fd, p.Reset(room, meta.epoch, "too_far", meta.seq, meta.oldest))
        else:
            push = self.server.push
            for seq, payload in waiting.buffer:
                if seq is None or seq > last:
                    push(fd, payload, TEXT)
        self.core.mark_live(fd, room)

    def _end_catchup(self, fd: int, room: str) -> _Catchup | None:
        waiting_room = self.catching_up.get(room)
        if waiting_room is None:
            return None
        waiting = waiting_room.pop(fd, None)
        if not waiting_room:
            del self.catching_up[room]
        return waiting

    async def _replay(self, e: Catchup, meta: Any) -> int | None:
        """Send the messages after ``e.since``; return the last seq sent (or reset)."""
        fd, room, since = e.fd, e.room, e.since
        assert since is not None
        reason = None
        if (e.epoch is not None and e.epoch != meta.epoch) or since > meta.seq:
            reason = "epoch"
        elif since + 1 < meta.oldest:
            reason = "retention"
        elif meta.seq - since > self.settings.max_resume:
            reason = "too_far"
        if reason is not None:
            self.reply(fd, p.Reset(room, meta.epoch, reason, meta.seq, meta.oldest))
            return meta.seq
        missed = await self.store.since(room, since, self.settings.max_resume)
        if not self.core.is_member(fd, room):
            return None
        push = self.server.push
        for msg in missed:
            push(fd, p.encode(msg), TEXT)
        last = missed[-1].seq if missed else since
        waiting = self.catching_up.get(room, {}).get(fd)
        if waiting is None or not waiting.overflow:
            # (On overflow the caller sends `reset` instead: never both.)
            self.reply(fd, p.Resumed(room, meta.epoch, since, last, len(missed)))
        return last

    async def _history(self, e: LoadHistory) -> None:
        try:
            meta = await self.store.room(e.room)
            if meta is None:
                self.reply(
                    e.fd,
                    p.Error(p.E_NO_SUCH_ROOM, f"no room called {e.room!r}", "history", e.room),
                )
                return
            messages, has_more = await self.store.page(e.room, e.before, e.limit)
        except StoreError as exc:
            log.error("history of %s failed: %s", e.room, exc)
            self.reply(e.fd, p.Error(p.E_UNAVAILABLE, "history unavailable", "history", e.room))
            return
        self.reply(e.fd, p.HistoryPage(e.room, meta.epoch, messages, has_more, e.before))

    async def _room_list(self) -> list[p.RoomInfo]:
        counts = self.core.member_counts()
        metas = {m.name: m for m in await self.store.rooms()}
        names = sorted(set(metas) | set(counts))
        return [p.RoomInfo(n, counts.get(n, 0), metas[n].seq if n in metas else 0) for n in names]

    async def _rooms(self, fd: int) -> None:
        try:
            rooms = await self._room_list()
        except StoreError:
            self.reply(fd, p.Error(p.E_UNAVAILABLE, "room list unavailable", "rooms"))
            return
        self.reply(fd, p.RoomList(rooms))

    # -- deleting a room -------------------------------------------------------

    async def delete_room(self, room: str) -> tuple[bool, int]:
        """Delete a room, its history and its members' membership.

        Returns whether the room existed and how many members were told. A
        :class:`StoreError` leaves the room as it was (open again, members in).
        """
        async with self._delete_lock:
            self.core.close_room(room)  # from here, no join and no send for it
            try:
                pending = self._catchup_tasks.get(room)
                if pending:
                    # Joins accepted before the close finish first (their
                    # create_room must not run after the delete).
                    await asyncio.wait(set(pending))
                await self.journal.barrier()  # messages accepted before the close
                existed = await self.store.delete_room(room)
            finally:
                self.core.reopen_room(room)
            removed = self.core.remove_room(room)
            self.run(removed)
        if existed or removed:
            log.info("room %s deleted (%d members removed)", room, len(removed))
        return existed or bool(removed), len(removed)

    # -- HTTP ----------------------------------------------------------------

    def on_request(self, request: Request, response: Response) -> Any:
        path = request.path
        if path.startswith("/api/"):
            return self._api(request, response)
        page = self.pages.get(path)
        if page is None:
            return _plain(response, 404, "Not Found")
        if request.method not in ("GET", "HEAD"):
            response.header("Allow", "GET, HEAD")
            return _plain(response, 405, "Method Not Allowed")
        body, ctype = page
        response.header("Content-Type", ctype)
        response.header("Cache-Control", "no-cache")
        response.header("X-Content-Type-Options", "nosniff")
        response.end(body)
        return None

    async def _api(self, request: Request, response: Response) -> None:
        path = request.path
        try:
            if path == "/api/rooms":
                if request.method != "GET":
                    response.header("Allow", "GET")
                    return _json_error(response, 405, "method not allowed")
                rooms = await self._room_list()
                return _json(response, 200, {"rooms": rooms})
            match = _API_ROOM.match(path)
            if match is not None:
                room = match.group(1)
                if request.method != "DELETE":
                    response.header("Allow", "DELETE")
                    return _json_error(response, 405, "method not allowed")
                if not _valid_room(room):
                    return _json_error(response, 400, f"invalid room name: {p.ROOM_RULE}")
                return await self._api_delete(request, response, room)
            match = _API_MESSAGES.match(path)
            if match is None:
                return _json_error(response, 404, "no such endpoint")
            room = match.group(1)
            if not _valid_room(room):
                return _json_error(response, 400, f"invalid room name: {p.ROOM_RULE}")
            if request.method == "GET":
                return await self._api_history(request, response, room)
            if request.method == "POST":
                return await self._api_post(request, response, room)
            response.header("Allow", "GET, POST")
            return _json_error(response, 405, "method not allowed")
        except StoreError as exc:
            log.error("API %s failed: %s", path, exc)
            return _json_error(response, 503, "storage unavailable")

    async def _api_history(self, request: Request, response: Response, room: str) -> None:
        query = request.get
        try:
            before = int(query["before"]) if "before" in query else None
            limit = int(query.get("limit", "50"))
        except ValueError:
            return _json_error(response, 400, "before and limit must be integers")
        if not 1 <= limit <= 200:
            return _json_error(response, 400, "limit must be between 1 and 200")
        if before is not None and before < 0:
            return _json_error(response, 400, "before must not be negative")
        meta = await self.store.room(room)
        if meta is None:
            return _json_error(response, 404, f"no room called {room!r}")
        messages, has_more = await self.store.page(room, before, limit)
        return _json(
            response,
            200,
            {
                "room": room,
                "epoch": meta.epoch,
                "messages": messages,
                "has_more": has_more,
            },
        )

    def _authorized(self, request: Request, response: Response, what: str) -> bool:
        """Check the API key; answer 401/403 and return False if it is not right."""
        if not self.api_key:
            _json_error(response, 403, f"{what} over HTTP is disabled (no api key set)")
            return False
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key:
            response.header("WWW-Authenticate", "Bearer")
            _json_error(response, 401, "missing 'Authorization: Bearer <api key>'")
            return False
        if not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            _json_error(response, 403, "invalid api key")
            return False
        return True

    async def _api_delete(self, request: Request, response: Response, room: str) -> None:
        if not self._authorized(request, response, "deleting rooms"):
            return None
        existed, members = await self.delete_room(room)
        if not existed:
            return _json_error(response, 404, f"no room called {room!r}")
        return _json(response, 200, {"deleted": room, "members_removed": members})

    async def _api_post(self, request: Request, response: Response, room: str) -> None:
        if not self._authorized(request, response, "publishing"):
            return None
        if room in self.core.closing:
            return _json_error(response, 503, f"room {room!r} is being deleted, retry")
        try:
            body = msgspec.json.decode(request.body, type=PostBody)
        except msgspec.ValidationError as exc:
            message, field = p.explain(exc, PostBody)
            return _json(response, 400, {"error": f"invalid body: {message}", "field": field})
        except msgspec.DecodeError as exc:
            return _json_error(response, 400, f"invalid body: not JSON ({exc})")
        future: asyncio.Future[tuple[p.Message, bool]] = asyncio.get_running_loop().create_future()
        if not self.journal.submit(
            PendingMessage(room, body.id, body.nick, body.text, time.time()), future
        ):
            return _json_error(response, 503, "server busy, retry")
        message, duplicate = await future
        return _json(
            response, 200 if duplicate else 201, {"message": message, "duplicate": duplicate}
        )


def _valid_room(name: str) -> bool:
    try:
        msgspec.convert(name, p.RoomName)
    except msgspec.ValidationError:
        return False
    return True


def _plain(response: Response, status: int, text: str) -> None:
    response.status(status)
    response.header("Content-Type", "text/plain; charset=utf-8")
    response.end(text + "\n")


def _json(response: Response, status: int, obj: Any) -> None:
    response.status(status)
    response.header("Content-Type", "application/json")
    response.end(msgspec.json.encode(obj))


def _json_error(response: Response, status: int, message: str) -> None:
    _json(response, status, {"error": message})


def create_app(
    host: str = "0.0.0.0",
    port: int = 9502,
    settings: Settings | None = None,
    store: Store | None = None,
    broker: Broker | None = None,
) -> Server:
    """The server ``hubbub serve`` runs."""
    server = Server(host, port, settings)
    server.app = ChatApp(server, store, broker)
    return server
