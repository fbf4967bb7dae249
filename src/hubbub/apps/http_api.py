"""The HTTP side of ``hubbub serve``: the REST API under ``/api/`` and the static
files (everything else).

``GET /api/rooms?after=&limit=``, ``GET /api/rooms/{room}/messages?before=&limit=``
(or ``?since=`` to read forwards), and with the API key (``Authorization: Bearer
<key>``) ``POST /api/rooms/{room}/messages``, ``DELETE /api/rooms/{room}`` and
``PATCH /api/rooms/{room}`` (``{"private": true}`` makes a room private).

Reading needs a credential when the server checks tokens (``--auth token`` or
``optional``): the API key, or a connection token (``Authorization: Bearer
<token>``) whose ``rooms`` allow the room. A private room's history needs the
API key, or a token of a user who is a member of the room now or whose
``rooms`` claim names it (``*`` is not enough). Answers are JSON; errors are
``{"error": "<reason>"}`` with a 4xx or 503 status (docs/protocol.md, *HTTP API*).
Names and limits are the protocol's (:mod:`hubbub.protocol`); a query parameter
or body that breaks one gets ``400`` with the rule in words, never a ``500``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .. import protocol as p
from ..auth.gate import bearer_challenge
from ..auth.tokens import TokenError, Verifier
from ..core import ChatCore, Identity
from ..store import PendingMessage, Store, StoreError
from ..transport.http import Request, Response, log_safe
from .journal import Journal
from .static import StaticFiles

log = logging.getLogger("hubbub.chat")

_API_MESSAGES = re.compile(r"^/api/rooms/([^/]+)/messages$")
_API_ROOM = re.compile(r"^/api/rooms/([^/]+)$")
# Query numbers: plain ASCII digits, at most 16 of them (MAX_SEQ has 16), so int()
# never sees signs, spaces, underscores, other scripts' digits or huge strings.
_DIGITS = re.compile(r"[0-9]{1,16}")


async def room_page(
    core: ChatCore, store: Store, after: str | None, limit: int
) -> tuple[list[p.RoomInfo], str | None]:
    """A page of the room list: up to ``limit`` rooms named after ``after``, in byte
    order, with their member counts and newest seq, and the ``after`` of the next
    page (None on the last one).

    The store reads committed rooms off its commit path (``Store.rooms``); rooms a
    join is creating right now come from the core (seq 0 until stored). Bounded:
    at most ``limit + 1`` rooms from each side.
    """
    metas = {m.name: m for m in await store.rooms(after, limit + 1)}
    names = sorted(set(metas).union(core.known_after(after, limit + 1)))
    more = len(names) > limit
    names = names[:limit]
    rooms = [p.RoomInfo(n, core.member_count(n), metas[n].seq if n in metas else 0) for n in names]
    return rooms, names[-1] if more and names else None


class PostBody(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/rooms/{room}/messages``."""

    text: p.Text
    nick: p.Nick = "api"
    id: p.ClientId | None = None


class PatchBody(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PATCH /api/rooms/{room}``."""

    private: bool


class HttpApi:
    """Routes a request to the API or to the static files, and answers the API's."""

    def __init__(
        self,
        core: ChatCore,
        store: Store,
        journal: Journal,
        *,
        delete_room: Callable[[str], Awaitable[tuple[bool, int]]],
        api_key: str,
        verifier: Verifier | None = None,
    ) -> None:
        self.core = core
        self.store = store
        self.journal = journal
        self.delete_room = delete_room
        self.api_key = api_key
        #: Set when reading needs a credential (auth token|optional), else None.
        self.verifier = verifier
        self.static = StaticFiles()

    def on_request(self, request: Request, response: Response) -> Any:
        if request.path.startswith("/api/"):
            return self._api(request, response)
        return self.static.serve(request, response)

    async def _api(self, request: Request, response: Response) -> None:
        path = request.path
        try:
            if path == "/api/rooms":
                if request.method != "GET":
                    response.header("Allow", "GET")
                    return _json_error(response, 405, "method not allowed")
                return await self._rooms(request, response)
            match = _API_ROOM.match(path)
            if match is not None:
                room = match.group(1)
                if request.method not in ("DELETE", "PATCH"):
                    response.header("Allow", "DELETE, PATCH")
                    return _json_error(response, 405, "method not allowed")
                if not _valid_room(room):
                    return _json_error(response, 400, f"invalid room name: {p.ROOM_RULE}")
                if request.method == "PATCH":
                    return await self._patch(request, response, room)
                return await self._delete(request, response, room)
            match = _API_MESSAGES.match(path)
            if match is None:
                return _json_error(response, 404, "no such endpoint")
            room = match.group(1)
            if not _valid_room(room):
                return _json_error(response, 400, f"invalid room name: {p.ROOM_RULE}")
            if request.method == "GET":
                return await self._history(request, response, room)
            if request.method == "POST":
                return await self._post(request, response, room)
            response.header("Allow", "GET, POST")
            return _json_error(response, 405, "method not allowed")
        except StoreError as exc:
            log.error("API %s failed: %s", log_safe(path), exc)
            return _json_error(response, 503, "storage unavailable")

    async def _rooms(self, request: Request, response: Response) -> None:
        if self._reader(request, response) is None:
            return None
        query = request.get
        after = query.get("after") or None
        if after is not None and not _valid_room(after):
            return _json_error(response, 400, f"'after' must be a room name: {p.ROOM_RULE}")
        limit = _number(query, "limit", 1, p.ROOMS_PAGE_MAX)
        if isinstance(limit, str):
            return _json_error(response, 400, limit)
        page = p.ROOMS_PAGE_DEFAULT if limit is None else limit
        rooms, after_next = await room_page(self.core, self.store, after, page)
        return _json(response, 200, {"rooms": rooms, "next": after_next})

    async def _history(self, request: Request, response: Response, room: str) -> None:
        reader = self._reader(request, response)
        if reader is None:
            return None
        if isinstance(reader, Identity) and not reader.may_join(room):
            return _json_error(response, 403, f"your token does not allow room {room!r}")
        query = request.get
        before = _number(query, "before", 0, p.MAX_SEQ)
        if isinstance(before, str):
            return _json_error(response, 400, before)
        since = _number(query, "since", 0, p.MAX_SEQ)
        if isinstance(since, str):
            return _json_error(response, 400, since)
        if before is not None and since is not None:
            return _json_error(response, 400, "give 'before' or 'since', not both")
        limit = _number(query, "limit", 1, p.HISTORY_PAGE_MAX)
        if isinstance(limit, str):
            return _json_error(response, 400, limit)
        if limit is None:
            limit = p.HISTORY_PAGE_DEFAULT
        meta = await self.store.room(room)
        if meta is None:
            return _json_error(response, 404, f"no room called {room!r}")
        if (meta.private or room in self.core.private) and not self._may_read_private(
            reader, room, response
        ):
            return None
        if since is not None:
            newer = await self.store.since(room, since, limit + 1)
            messages, has_more = fit_forward(newer[:limit], len(newer) > limit)
        else:
            messages, has_more = p.fit_page(*await self.store.page(room, before, limit))
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

    def _reader(self, request: Request, response: Response) -> Identity | str | None:
        """Who reads: ``"key"`` (the API key), an Identity (a token), ``"anyone"`` (no
        credential and none needed: ``--auth none``); None (after answering 401) when
        a needed credential is missing or bad."""
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        bearer = scheme.lower() == "bearer" and bool(credential)
        if (
            bearer
            and self.api_key
            and hmac.compare_digest(credential.encode(), self.api_key.encode())
        ):
            return "key"
        if self.verifier is None:
            return "anyone"
        if not bearer:
            response.header(*bearer_challenge())
            _json_error(response, 401, "reading needs 'Authorization: Bearer <token or api key>'")
            return None
        try:
            return self.verifier.verify(credential)
        except TokenError as exc:
            response.header(*bearer_challenge("invalid_token", exc.reason))
            _json_error(response, 401, f"invalid token: {exc.reason}")
            return None

    def _may_read_private(self, reader: Identity | str, room: str, response: Response) -> bool:
        """May ``reader`` read the private ``room``'s history? Answers 401/403 when not."""
        if reader == "key":
            return True
        if not isinstance(reader, Identity):  # anyone, in --auth none
            response.header("WWW-Authenticate", "Bearer")
            _json_error(response, 401, f"room {room!r} is private: the api key is needed")
            return False
        if not self.core.may_read(reader, room):
            _json_error(response, 403, f"room {room!r} is private: members only")
            return False
        return True

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

    async def _delete(self, request: Request, response: Response, room: str) -> None:
        if not self._authorized(request, response, "deleting rooms"):
            return None
        existed, members = await self.delete_room(room)
        if not existed:
            return _json_error(response, 404, f"no room called {room!r}")
        return _json(response, 200, {"deleted": room, "members_removed": members})

    async def _patch(self, request: Request, response: Response, room: str) -> None:
        """``PATCH /api/rooms/{room}`` ``{"private": true|false}`` with the API key."""
        if not self._authorized(request, response, "changing rooms"):
            return None
        try:
            body = msgspec.json.decode(request.body, type=PatchBody)
        except msgspec.ValidationError as exc:
            message, field = p.explain(exc, PatchBody)
            return _json(response, 400, {"error": f"invalid body: {message}", "field": field})
        except (msgspec.DecodeError, RecursionError):
            return _json_error(response, 400, 'invalid body: expected {"private": true|false}')
        if not await self.store.set_private(room, body.private):
            return _json_error(response, 404, f"no room called {room!r}")
        self.core.set_private(room, body.private)
        log.info("room %s made %s", room, "private" if body.private else "public")
        return _json(response, 200, {"room": room, "private": body.private})

    async def _post(self, request: Request, response: Response, room: str) -> None:
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
        except RecursionError:
            return _json_error(response, 400, "invalid body: one flat JSON object, nested too deep")
        creates = not self.core.room_exists(room)
        if creates:
            refused = self.core.creation_refused(room)
            if refused is not None:
                code, reason = refused
                return _json_error(response, 507 if code == p.E_ROOM_LIMIT else 503, reason)
            # Counted from now (like a join): concurrent posts cannot pass the cap.
            self.core.room_created(room)
        future: asyncio.Future[tuple[p.Message, bool]] = asyncio.get_running_loop().create_future()
        if not self.journal.submit(
            PendingMessage(room, body.id, body.nick, body.text, time.time()), future
        ):
            return _json_error(response, 503, "server busy, retry")
        message, duplicate = await future
        return _json(
            response, 200 if duplicate else 201, {"message": message, "duplicate": duplicate}
        )


def fit_forward(messages: list[p.Message], has_more: bool) -> tuple[list[p.Message], bool]:
    """A forward page (``since``, oldest first) cut to at most ``HISTORY_PAGE_BYTES`` of
    encoded messages: the oldest are kept (the reader asks again from the last one),
    always at least one; a cut page says ``has_more``."""
    total = 0
    for i, message in enumerate(messages):
        total += len(msgspec.json.encode(message))
        if total > p.HISTORY_PAGE_BYTES and i > 0:
            return messages[:i], True
    return messages, has_more


def _number(query: dict[str, str], name: str, low: int, high: int) -> int | str | None:
    """Query parameter ``name`` as a whole number from ``low`` to ``high`` (None when
    absent or empty), or the rule in words (a ``str``) when it breaks it."""
    raw = query.get(name)
    if not raw:
        return None
    if _DIGITS.fullmatch(raw) is None or not low <= int(raw) <= high:
        return f"'{name}' must be a whole number from {low} to {high}"
    return int(raw)


def _valid_room(name: str) -> bool:
    try:
        msgspec.convert(name, p.RoomName)
    except msgspec.ValidationError:
        return False
    return True


def _json(response: Response, status: int, obj: Any) -> None:
    response.status(status)
    response.header("Content-Type", "application/json")
    response.end(msgspec.json.encode(obj))


def _json_error(response: Response, status: int, message: str) -> None:
    _json(response, status, {"error": message})
