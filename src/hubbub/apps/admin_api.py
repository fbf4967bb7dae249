"""The admin page (``/admin``) and its JSON API (``/api/admin/*``).

Every ``/api/admin/`` request needs the API key or a token with the ``admin``
role (``Authorization: Bearer <api key or token>``; the page asks for it once
and keeps it in the tab's ``sessionStorage``, never in a URL). Tokens are
checked like connection tokens (:class:`hubbub.auth.tokens.Verifier`) wherever
a token key is configured, whatever ``--auth`` says. With neither an API key
nor a token key the admin API is off (403). Reads are GET; what changes state
is POST or DELETE (so the transport's ``Origin`` allow-list applies to it,
:mod:`hubbub.transport.guard`):

======================================  ==============================================
``GET /api/admin/overview``             the node, counts, the journal, error counts
``GET /api/admin/connections``          live connections, by fd (``after``, ``limit``)
``DELETE /api/admin/connections/{fd}``  kick: close it with :data:`CLOSE_KICKED`
``GET /api/admin/rooms``                rooms with members, newest seq, messages/min
``DELETE /api/admin/rooms/{room}``      delete the room (members get ``left_room``)
``POST /api/admin/rooms/{room}/reset``  empty its history, new epoch (members get ``reset``)
``GET /api/admin/errors``               recent WARNING+ log records (``after``, ``limit``)
======================================  ==============================================

Bounds: lists are pages (``limit`` at most :data:`PAGE_MAX`, default
:data:`PAGE_DEFAULT`) with the total and the ``next`` cursor; a room lists at
most :data:`ROOMS_SHOWN` of a connection's rooms (with the count). Message
rates are sampled from the store's newest ``seq`` as the rooms are listed
(:class:`RoomRates`: at most :data:`RATE_ROOMS` rooms, about 2 KiB each).
Wrong keys and tokens are paced per client address (:data:`FAILURE_BURST`,
then :data:`FAILURE_RATE` per second: 429 meanwhile).

Several nodes: deleting and resetting act on every node's members (this node
carries it out in the store and tells the others: :mod:`hubbub.apps.cluster_control`;
``members_removed`` and ``members_told`` count this node's); the connection list
is this node's.
"""

from __future__ import annotations

import asyncio
import heapq
import hmac
import logging
import math
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

import msgspec

from .. import protocol as p
from ..auth.tokens import TokenError, Verifier
from ..config import Settings
from ..core import ChatCore
from ..core.ratelimit import TokenBucket
from ..server import Server
from ..store import RoomMeta, Store, StoreError
from ..transport.guard import RefusalLog
from ..transport.http import Request, Response, log_safe
from . import errors_log
from .catchup import Catchups
from .cluster_control import ClusterControl, RoomControl
from .http_api import HttpApi, _number, _valid_room, room_page
from .journal import Journal
from .sequencer import Sequencer
from .wiring import describe_store


class ChatAppLike(Protocol):
    """What this module uses of :class:`hubbub.apps.chat.ChatApp` (which imports this
    module, so it is described here rather than imported)."""

    server: Server
    core: ChatCore
    store: Store
    journal: Journal
    sequencer: Sequencer
    catchups: Catchups
    control: ClusterControl
    http: HttpApi
    v1: set[int]
    #: One delete (or reset) of a room at a time.
    _delete_lock: asyncio.Lock

    async def delete_room(self, room: str) -> tuple[bool, int]: ...


log = logging.getLogger("hubbub.admin")

#: Close code and reason of a kicked connection (RFC 6455 7.4.2: 4000-4999 are
#: for applications). The client should not reconnect by itself.
CLOSE_KICKED = p.CLOSE_KICKED
KICK_REASON = "kicked by an administrator"
#: Entries in one page of a list (connections, rooms, errors).
PAGE_MAX = 200
PAGE_DEFAULT = 100
#: Rooms shown per connection (its room count is always given).
ROOMS_SHOWN = 10
#: Seconds over which a room's message rate is measured.
RATE_WINDOW = 60.0
#: Seconds between two samples of a room's newest seq.
RATE_EVERY = 5.0
#: Rooms whose samples are kept (least recently listed forgotten first); each
#: costs about 2 KiB (a deque of up to 14 samples), so at most ~2 MiB.
RATE_ROOMS = 1000
#: Failed sign-ins (a wrong key or token) one client address may make in a burst;
#: then one every 1 / FAILURE_RATE seconds, and until then its requests get 429
#: without their credentials being looked at (so guessing a key is slow).
FAILURE_BURST = 10
FAILURE_RATE = 0.1
#: Addresses whose failures are remembered (the oldest forgotten first; ~150 B each).
FAILURE_ADDRESSES = 4096
#: Seconds a reset waits for this node to deliver the messages stored before it.
RESET_DRAIN_TIMEOUT = 5.0

_CONNECTION = re.compile(r"^/api/admin/connections/([0-9]{1,9})$")
_ROOM = re.compile(r"^/api/admin/rooms/([^/]+)$")
_RESET = re.compile(r"^/api/admin/rooms/([^/]+)/reset$")


class RoomRates:
    """Messages per minute per room, from the store's newest ``seq`` sampled over time.

    A sample is kept at most every ``every`` seconds and for ``window`` seconds;
    the rate is the seq's growth since the oldest sample kept (so it is over the
    last minute once the room has been listed for a minute, over less before).
    A seq that goes down (the history was reset) starts the room over.
    """

    def __init__(
        self,
        window: float = RATE_WINDOW,
        every: float = RATE_EVERY,
        max_rooms: int = RATE_ROOMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.every = every
        self.max_rooms = max_rooms
        self.clock = clock
        self._samples: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()

    def observe(self, room: str, seq: int) -> tuple[float | None, float]:
        """Record ``seq`` now; the rate in messages/minute (None until there are two
        samples a second apart) and the seconds it is measured over."""
        now = self.clock()
        samples = self._samples.get(room)
        if samples is None:
            samples = self._samples[room] = deque(maxlen=int(self.window / self.every) + 2)
            while len(self._samples) > self.max_rooms:
                self._samples.popitem(last=False)
        else:
            self._samples.move_to_end(room)
        if samples and seq < samples[-1][1]:
            samples.clear()
        if not samples or now - samples[-1][0] >= self.every:
            samples.append((now, seq))
        while len(samples) > 1 and now - samples[1][0] >= self.window:
            samples.popleft()
        since, first = samples[0]
        elapsed = now - since
        if elapsed < 1.0:
            return None, elapsed
        return (seq - first) * 60.0 / elapsed, elapsed

    def forget(self, room: str) -> None:
        self._samples.pop(room, None)


class AdminApi:
    """Answers ``/admin`` and ``/api/admin/*`` for a :class:`~hubbub.apps.chat.ChatApp`."""

    def __init__(self, app: ChatAppLike, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.errors = errors_log.install()
        self.rates = RoomRates()
        self.refusals = RefusalLog(log)
        self.clock: Callable[[], float] = time.monotonic
        self._failures: OrderedDict[str, TokenBucket] = OrderedDict()
        # Tokens with the admin role are accepted wherever a token key is configured.
        self.verifier = Verifier.from_settings(settings)
        self.page = resources.files("hubbub").joinpath("static", "admin.html").read_bytes()

    @property
    def api_key(self) -> str:
        # The chat app's (--api-key, or HUBBUB_API_KEY): the one the HTTP API takes.
        return str(self.app.http.api_key or "")

    def handles(self, request: Request) -> bool:
        path = request.path
        return path in ("/admin", "/admin/") or path.startswith("/api/admin/")

    async def on_request(self, request: Request, response: Response) -> None:
        if not request.path.startswith("/api/"):
            return self._page(request, response)
        if not self._authorized(request, response):
            return None
        try:
            return await self._route(request, response)
        except StoreError as exc:
            log.error("admin API %s failed: %s", log_safe(request.path), exc)
            return _json_error(response, 503, "storage unavailable")

    def _page(self, request: Request, response: Response) -> None:
        if request.method not in ("GET", "HEAD"):
            response.header("Allow", "GET, HEAD")
            return _json_error(response, 405, "method not allowed")
        response.header("Content-Type", "text/html; charset=utf-8")
        response.header("Cache-Control", "no-store")
        response.end(self.page)
        return None

    # -- access --------------------------------------------------------------------

    def _authorized(self, request: Request, response: Response) -> bool:
        """The API key, or a token with the admin role; else 401/403 (and False)."""
        key = self.api_key
        if not key and self.verifier is None:
            _json_error(
                response,
                403,
                "the admin API is off: no api key is set (--api-key) and no token key "
                "(--jwt-secret, --jwt-public-key)",
            )
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            response.header("WWW-Authenticate", "Bearer")
            _json_error(response, 401, "missing 'Authorization: Bearer <api key or token>'")
            return False
        peer = request.remote[0] if request.remote else "-"
        wait = self._paced(peer)
        if wait:
            response.header("Retry-After", str(math.ceil(wait)))
            _json_error(response, 429, f"too many failed sign-ins; retry in {wait:.0f}s")
            return False
        if key and hmac.compare_digest(given.encode(), key.encode()):
            return True
        refused = self._token_refusal(given) if self.verifier is not None else "invalid api key"
        if refused is None:
            return True
        self._failed(peer)
        self.refusals.refused("admin API request", f"{refused} (from {peer})")
        _json_error(response, 403, refused)
        return False

    def _paced(self, peer: str) -> float:
        """Seconds ``peer`` must wait before its credentials are checked again (0: none)."""
        bucket = self._failures.get(peer)
        if bucket is None:
            return 0.0
        bucket.take(self.clock(), 0.0)  # refill
        return bucket.retry_after()

    def _failed(self, peer: str) -> None:
        bucket = self._failures.get(peer)
        if bucket is None:
            bucket = self._failures[peer] = TokenBucket(FAILURE_RATE, FAILURE_BURST, self.clock())
            while len(self._failures) > FAILURE_ADDRESSES:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(peer)
        bucket.take(self.clock())

    def _token_refusal(self, given: str) -> str | None:
        """None if ``given`` is a valid token with the admin role, else why not."""
        assert self.verifier is not None
        if given.count(".") != 2:  # not a JWT: a mistyped key
            return "invalid api key" if self.api_key else "invalid token"
        try:
            identity = self.verifier.verify(given)
        except TokenError as exc:
            return f"invalid token: {exc.reason}"
        if not identity.admin:
            return "the token has no admin role"
        return None

    # -- routing -------------------------------------------------------------------

    async def _route(self, request: Request, response: Response) -> None:
        path, method = request.path, request.method
        reads = {
            "/api/admin/overview": self._overview,
            "/api/admin/connections": self._connections,
            "/api/admin/rooms": self._rooms,
            "/api/admin/errors": self._errors,
        }
        read = reads.get(path)
        if read is not None:
            if method not in ("GET", "HEAD"):
                return _not_allowed(response, "GET, HEAD")
            return await read(request, response)
        if (match := _CONNECTION.match(path)) is not None:
            if method != "DELETE":
                return _not_allowed(response, "DELETE")
            return self._kick(request, response, int(match.group(1)))
        if (match := _RESET.match(path)) is not None:
            if method != "POST":
                return _not_allowed(response, "POST")
            return await self._reset(response, match.group(1))
        if (match := _ROOM.match(path)) is not None:
            if method != "DELETE":
                return _not_allowed(response, "DELETE")
            return await self._delete(response, match.group(1))
        return _json_error(response, 404, "no such admin endpoint")

    # -- reads ---------------------------------------------------------------------

    async def _overview(self, request: Request, response: Response) -> None:
        app, s = self.app, self.settings
        server = app.server
        now = time.time()
        journal = app.journal
        return _json(
            response,
            200,
            {
                "node": {
                    "pid": os.getpid(),
                    "started_at": server.started_at,
                    "uptime": max(0.0, now - server.started_at) if server.started_at else 0.0,
                    "store": describe_store(s),
                    "broker": "local" if s.broker == "local" else s.broker.split(":", 1)[0],
                },
                "connections": {
                    "total": len(server.connections),
                    "hubbub_v1": len(app.v1),
                    "max": s.max_connections,
                },
                "rooms": {"total": len(app.core.known), "active": len(app.core.rooms)},
                "journal": {
                    "queue": journal.backlog,
                    "max_queue": journal.max_queue,
                    "committed": journal.committed,
                    "batches": journal.batches,
                    # Measured by the journal itself when it does (None until then).
                    "last_commit_ms": _ms(getattr(journal, "last_commit_seconds", None)),
                    # Failed batches: each one is logged at ERROR by hubbub.journal.
                    "failures": self.errors.count("hubbub.journal", "ERROR"),
                },
                "errors": self.errors.summary(),
            },
        )

    async def _connections(self, request: Request, response: Response) -> None:
        paging = _paging(request)
        if isinstance(paging, str):
            return _json_error(response, 400, paging)
        after, limit = paging
        server = self.app.server
        # O(n log limit): a page of the lowest fds above ``after``, and one more.
        fds = heapq.nsmallest(limit + 1, (fd for fd in server.connections if fd > after))
        items = [c for c in (self._connection(fd) for fd in fds[:limit]) if c is not None]
        more = len(fds) > limit
        return _json(
            response,
            200,
            {
                "connections": items,
                "total": len(server.connections),
                "next": fds[limit - 1] if more else None,
            },
        )

    def _connection(self, fd: int) -> dict[str, Any] | None:
        server, core = self.app.server, self.app.core
        info = server.connection_info(fd)
        if info is None:
            return None
        session = core.sessions.get(fd)
        rooms = sorted(session.rooms) if session is not None else []
        identity = session.identity if session is not None else None
        host, port = info["remote_ip"], info["remote_port"]
        return {
            "fd": fd,
            "address": f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}",
            "protocol": info["subprotocol"] or "seed",
            "transport": _transport(info),
            "nick": session.nick if session is not None else None,
            "user": identity.user if identity is not None else None,
            "rooms": rooms[:ROOMS_SHOWN],
            "room_count": len(rooms),
            "send_buffer": server.buffered(fd) or 0,
            "connected_at": info.get("connected_at"),
        }

    async def _rooms(self, request: Request, response: Response) -> None:
        query = request.get
        after = query.get("after") or None
        if after is not None and not _valid_room(after):
            return _json_error(response, 400, f"'after' must be a room name: {p.ROOM_RULE}")
        limit = _number(query, "limit", 1, PAGE_MAX)
        if isinstance(limit, str):
            return _json_error(response, 400, limit)
        rooms, after_next = await room_page(
            self.app.core, self.app.store, after, limit or PAGE_DEFAULT
        )
        items = []
        for room in rooms:
            rate, over = self.rates.observe(room.name, room.seq)
            items.append(
                {
                    "name": room.name,
                    "members": room.members,
                    "seq": room.seq,
                    "per_minute": None if rate is None else round(rate, 1),
                    "rate_over": round(over, 1),
                }
            )
        return _json(
            response, 200, {"rooms": items, "total": len(self.app.core.known), "next": after_next}
        )

    async def _errors(self, request: Request, response: Response) -> None:
        after = _number(request.get, "after", 0, p.MAX_SEQ)
        limit = _number(request.get, "limit", 1, PAGE_MAX)
        for value in (after, limit):
            if isinstance(value, str):
                return _json_error(response, 400, value)
        records = self.errors.recent(int(after or 0), int(limit or PAGE_DEFAULT))
        return _json(
            response,
            200,
            {
                "errors": [errors_log.as_json(r) for r in records],
                "summary": self.errors.summary(),
            },
        )

    # -- actions -------------------------------------------------------------------

    def _kick(self, request: Request, response: Response, fd: int) -> None:
        server = self.app.server
        info = server.connection_info(fd)
        if info is None or not server.disconnect(fd, CLOSE_KICKED, KICK_REASON):
            return _json_error(response, 404, f"no open connection {fd}")
        by = request.remote[0] if request.remote else "-"
        log.info("client-%d (%s) kicked by an administrator from %s", fd, info["remote_ip"], by)
        return _json(response, 200, {"kicked": fd, "code": CLOSE_KICKED, "reason": KICK_REASON})

    async def _delete(self, response: Response, room: str) -> None:
        if not _valid_room(room):
            return _json_error(response, 400, f"invalid room name: {p.ROOM_RULE}")
        existed, members = await self.app.delete_room(room)
        if not existed:
            return _json_error(response, 404, f"no room called {room!r}")
        self.rates.forget(room)
        return _json(response, 200, {"deleted": room, "members_removed": members})

    async def _reset(self, response: Response, room: str) -> None:
        if not _valid_room(room):
            return _json_error(response, 400, f"invalid room name: {p.ROOM_RULE}")
        done = await reset_room(self.app, room)
        if done is None:
            return _json_error(response, 404, f"no room called {room!r}")
        meta, told = done
        self.rates.forget(room)
        log.info("room %s reset by an administrator (new epoch %s)", room, meta.epoch)
        return _json(response, 200, {"reset": room, "epoch": meta.epoch, "members_told": told})


async def reset_room(app: ChatAppLike, room: str) -> tuple[RoomMeta, int] | None:
    """Empty ``room``'s history and give it a new epoch; its members stay in and get
    ``reset`` (reason ``epoch``), which makes clients reload the (empty) history.

    None if there is no such room. Like a delete: the room is closed meanwhile (joins
    and sends refused), joins and messages accepted before wait, this node delivers
    every message stored before the reset, and only then is the history emptied and
    the room followed from seq 0 of the new epoch (no message of the old one is
    delivered after the ``reset``). Then the other nodes are told (they do the same
    for their members). Returns the new meta and how many members here were told.
    """
    if await app.store.room(room) is None:
        return None
    core = app.core
    # One delete or reset at a time: ChatApp.delete_room's lock.
    async with app._delete_lock:
        core.close_room(room)
        try:
            await app.catchups.wait_room(room)
            await app.journal.barrier()
            await _delivered(app, room)
            before = await app.store.room(room)
            meta = await app.store.reset(room)
            told = app.control.reset_here(room, meta.epoch, meta.seq, meta.oldest)
        finally:
            core.reopen_room(room)
    was = before.epoch if before is not None else None
    app.control.announce(room, RoomControl("reset", meta.epoch, was, meta.seq, meta.oldest))
    return meta, told


async def _delivered(app: ChatAppLike, room: str) -> None:
    """Wait (bounded) until this node delivered every message ``room`` has stored."""
    if app.sequencer.cursor(room) is None:
        return
    meta = await app.store.room(room)
    if meta is None:
        return
    try:
        await asyncio.wait_for(app.sequencer.reach(room, meta.seq), RESET_DRAIN_TIMEOUT)
    except TimeoutError:
        log.warning("reset of %s: messages up to #%d not all delivered here", room, meta.seq)
    except StoreError:
        pass  # its last member here left meanwhile: nobody to deliver to


def _paging(request: Request) -> tuple[int, int] | str:
    after = _number(request.get, "after", 0, p.MAX_SEQ)
    limit = _number(request.get, "limit", 1, PAGE_MAX)
    for value in (after, limit):
        if isinstance(value, str):
            return value
    return int(after or 0), int(limit or PAGE_DEFAULT)


def _transport(info: dict[str, Any]) -> str:
    """websocket, sse or poll: what ``connection_info`` says, else from the path
    (sessions are opened by ``POST /v1/sessions``; which kind is not told then)."""
    known = info.get("transport")
    if known:
        return str(known)
    return "sse/poll" if str(info.get("path", "")).startswith("/v1/sessions") else "websocket"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _not_allowed(response: Response, allow: str) -> None:
    response.header("Allow", allow)
    _json_error(response, 405, "method not allowed")


def _json(response: Response, status: int, obj: Any) -> None:
    response.status(status)
    response.header("Content-Type", "application/json")
    response.header("Cache-Control", "no-store")
    response.end(msgspec.json.encode(obj))


def _json_error(response: Response, status: int, message: str) -> None:
    _json(response, status, {"error": message})
