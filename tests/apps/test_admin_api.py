"""The admin API (``/api/admin/*``) and page (``/admin``) over real sockets, the
recent-errors ring and the message-rate sampler as units."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hubbub.apps.admin_api import (
    CLOSE_KICKED,
    FAILURE_BURST,
    KICK_REASON,
    PAGE_MAX,
    RoomRates,
)
from hubbub.apps.chat import create_app
from hubbub.apps.errors_log import MAX_EXCEPTION, MAX_MESSAGE, ErrorLog
from hubbub.auth.tokens import mint
from hubbub.config import Settings
from hubbub.server import Server
from hubbub.store import StoreError
from hubbub.store.sqlite import SQLiteStore

KEY = "admin-k3y"


@pytest.fixture
async def admin_chat(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await admin_chat(store=None, **settings)``: the built-in chat (like make_chat)
    with the admin API, its key KEY unless given."""
    servers: list[Server] = []

    async def factory(store: Any = None, **overrides: Any) -> Server:
        overrides.setdefault("api_key", KEY)
        overrides.setdefault("db", str(tmp_path / f"hubbub-{len(servers)}.db"))
        server = create_app("127.0.0.1", 0, Settings(**overrides), store=store)
        await server.listen()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.shutdown()


async def http(
    server: Server,
    method: str,
    path: str,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request on its own connection: status, headers (lower-case names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 0\r\n"
    if key is not None:
        head += f"Authorization: Bearer {key}\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    got = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    body: Any = rest
    if got.get("content-type") == "application/json":
        body = json.loads(rest)
    return int(lines[0].split()[1]), got, body


class V1:
    """A hubbub.v1 client: JSON frames in and out."""

    def __init__(self, ws: Any, fd: int) -> None:
        self.ws = ws
        self.fd = fd

    @classmethod
    async def open(cls, server: Server, nick: str, *rooms: str) -> V1:
        ws = await connect(f"ws://127.0.0.1:{server.port}/", subprotocols=["hubbub.v1"])
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        client = cls(ws, welcome["fd"])
        for room in rooms:
            await client.put(type="join", room=room, nick=nick)
            await client.until("room", room=room)
        return client

    async def put(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def until(self, type_: str, within: float = 5.0, **fields: Any) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            while True:
                frame = json.loads(await self.ws.recv())
                if frame["type"] == type_ and all(frame.get(k) == v for k, v in fields.items()):
                    return frame

        return await asyncio.wait_for(read(), within)

    async def say(self, room: str, text: str, cid: str) -> dict[str, Any]:
        await self.put(type="send", room=room, id=cid, text=text)
        return await self.until("ack", id=cid)


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for ws in opened:
        await ws.close()


# -- access ----------------------------------------------------------------------------


async def test_the_admin_api_needs_the_api_key(admin_chat: Any) -> None:
    server = await admin_chat()
    status, headers, body = await http(server, "GET", "/api/admin/overview", key=None)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert body == {"error": "missing 'Authorization: Bearer <api key or token>'"}
    status, _, body = await http(server, "GET", "/api/admin/overview", key="wrong")
    assert (status, body) == (403, {"error": "invalid api key"})
    status, _, body = await http(server, "DELETE", "/api/admin/rooms/lobby", key="wrong")
    assert status == 403  # actions too: nothing is done without the key
    status, headers, body = await http(server, "GET", "/api/admin/overview")
    assert status == 200 and headers["cache-control"] == "no-store"
    assert body["connections"]["total"] == 0


async def test_guessing_the_key_is_paced(admin_chat: Any) -> None:
    server = await admin_chat()
    for i in range(FAILURE_BURST):
        status, _, _ = await http(server, "GET", "/api/admin/overview", key=f"guess-{i}")
        assert status == 403
    status, headers, body = await http(server, "GET", "/api/admin/overview", key="guess")
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert body["error"].startswith("too many failed sign-ins; retry in ")
    # Meanwhile this address's credentials are not even looked at: the key too waits.
    status, _, _ = await http(server, "GET", "/api/admin/overview")
    assert status == 429


async def test_without_an_api_key_the_admin_api_is_off(admin_chat: Any) -> None:
    server = await admin_chat(api_key="")
    status, _, body = await http(server, "GET", "/api/admin/overview", key="")
    assert status == 403 and "no api key is set" in body["error"]
    status, _, body = await http(server, "GET", "/api/admin/overview", key="anything")
    assert status == 403 and "no api key is set" in body["error"]


SECRET = "s" * 40


async def test_a_token_with_the_admin_role_is_accepted_too(admin_chat: Any) -> None:
    server = await admin_chat(jwt_secret=SECRET)
    admin = mint(SECRET, "root", roles=["admin"])
    status, _, body = await http(server, "GET", "/api/admin/overview", key=admin)
    assert status == 200 and "journal" in body
    user = mint(SECRET, "ann", roles=["moderator"])
    status, _, body = await http(server, "GET", "/api/admin/overview", key=user)
    assert (status, body) == (403, {"error": "the token has no admin role"})
    old = mint(SECRET, "root", roles=["admin"], ttl=60, now=time.time() - 3600)
    status, _, body = await http(server, "DELETE", "/api/admin/rooms/lobby", key=old)
    assert (status, body) == (403, {"error": "invalid token: the token has expired"})
    forged = mint("f" * 40, "root", roles=["admin"])
    status, _, body = await http(server, "GET", "/api/admin/overview", key=forged)
    assert status == 403 and "signature" in body["error"]
    status, _, body = await http(server, "GET", "/api/admin/overview", key="not-the-key")
    assert (status, body) == (403, {"error": "invalid api key"})
    # Only a token key (no api key): tokens still work, the admin API is on.
    server = await admin_chat(jwt_secret=SECRET, api_key="")
    status, _, _ = await http(server, "GET", "/api/admin/overview", key=admin)
    assert status == 200


async def test_the_page_is_served_without_the_key_and_has_no_inline_script(
    admin_chat: Any,
) -> None:
    server = await admin_chat()
    status, headers, body = await http(server, "GET", "/admin", key=None)
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in headers["content-security-policy"]
    html = body.decode()
    assert '<script type="module" src="/static/admin.js"></script>' in html
    assert html.count("<script") == 1  # no inline script, no inline style or handler
    assert re.search(r"\s(style|on[a-z]+)=", html) is None
    for asset in ("/static/admin.js", "/static/admin.css"):
        status, _, _ = await http(server, "GET", asset, key=None)
        assert status == 200, asset
    status, _, _ = await http(server, "POST", "/admin", key=None)
    assert status == 405


async def test_unknown_paths_and_wrong_methods_are_clear_errors(admin_chat: Any) -> None:
    server = await admin_chat()
    status, _, body = await http(server, "GET", "/api/admin/nope")
    assert (status, body) == (404, {"error": "no such admin endpoint"})
    status, headers, _ = await http(server, "POST", "/api/admin/connections")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, _ = await http(server, "GET", "/api/admin/connections/3")
    assert status == 405 and headers["allow"] == "DELETE"
    status, headers, _ = await http(server, "GET", "/api/admin/rooms/lobby/reset")
    assert status == 405 and headers["allow"] == "POST"
    for path in (
        "/api/admin/connections?limit=0",
        f"/api/admin/connections?limit={PAGE_MAX + 1}",
        "/api/admin/connections?after=-1",
        "/api/admin/rooms?after=%20bad",
        "/api/admin/errors?limit=x",
    ):
        status, _, body = await http(server, "GET", path)
        assert status == 400 and body["error"], path
    status, _, body = await http(server, "DELETE", "/api/admin/rooms/bad%20name")
    assert status == 400 and "invalid room name" in body["error"]


async def test_a_foreign_page_cannot_act_even_with_the_key(admin_chat: Any) -> None:
    server = await admin_chat()
    evil = {"Origin": "http://evil.example"}
    status, _, body = await http(server, "DELETE", "/api/admin/connections/1", headers=evil)
    assert status == 403 and b"not allowed" in body
    own = {"Origin": f"http://127.0.0.1:{server.port}"}
    status, _, _ = await http(server, "DELETE", "/api/admin/connections/999", headers=own)
    assert status == 404  # the page's own origin passes (and there is no connection 999)


# -- connections -------------------------------------------------------------------------


async def test_connections_are_listed_and_paged(admin_chat: Any, clients: list[Any]) -> None:
    server = await admin_chat()
    ann = await V1.open(server, "ann", "lobby", "dev")
    clients.append(ann.ws)
    plain = await connect(f"ws://127.0.0.1:{server.port}/")
    clients.append(plain)
    assert await asyncio.wait_for(plain.recv(), 5) == "Hello, welcome\n"
    status, _, session = await http(server, "POST", "/v1/sessions?transport=poll", key=None)
    assert status == 201, session
    status, _, body = await http(server, "GET", "/api/admin/connections")
    assert status == 200 and body["total"] == 3 and body["next"] is None
    by_fd = {c["fd"]: c for c in body["connections"]}
    (polling,) = [c for c in by_fd.values() if c["transport"] != "websocket"]
    # "poll" once Server.connection_info tells the kind of a session.
    assert polling["transport"] in ("poll", "sse/poll") and polling["protocol"] == "hubbub.v1"
    del by_fd[polling["fd"]]
    mine = by_fd[ann.fd]
    assert mine["protocol"] == "hubbub.v1" and mine["transport"] == "websocket"
    assert mine["nick"] == "ann" and mine["rooms"] == ["dev", "lobby"] and mine["room_count"] == 2
    assert mine["address"].startswith("127.0.0.1:") and mine["send_buffer"] >= 0
    (other,) = [c for fd, c in by_fd.items() if fd != ann.fd]
    assert other["protocol"] == "seed" and other["nick"] is None and other["rooms"] == []
    fds = sorted([*by_fd, polling["fd"]])
    status, _, page = await http(server, "GET", "/api/admin/connections?limit=2")
    assert [c["fd"] for c in page["connections"]] == fds[:2] and page["next"] == fds[1]
    status, _, page = await http(server, "GET", f"/api/admin/connections?after={fds[1]}")
    assert [c["fd"] for c in page["connections"]] == fds[2:] and page["next"] is None


async def test_a_kicked_client_sees_the_kick_close_code(
    admin_chat: Any, clients: list[Any]
) -> None:
    server = await admin_chat()
    ann = await V1.open(server, "ann", "lobby")
    bob = await V1.open(server, "bob", "lobby")
    clients.extend([ann.ws, bob.ws])
    status, _, body = await http(server, "DELETE", f"/api/admin/connections/{ann.fd}")
    assert status == 200
    assert body == {"kicked": ann.fd, "code": CLOSE_KICKED, "reason": KICK_REASON}
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ann.ws.recv(), 5)
    assert ann.ws.close_code == CLOSE_KICKED and ann.ws.close_reason == KICK_REASON
    await bob.until("left", nick="ann")  # the others see an ordinary departure
    status, _, body = await http(server, "DELETE", f"/api/admin/connections/{ann.fd}")
    assert (status, body) == (404, {"error": f"no open connection {ann.fd}"})


# -- rooms --------------------------------------------------------------------------------


async def test_rooms_are_listed_with_members_and_newest_seq(
    admin_chat: Any, clients: list[Any]
) -> None:
    server = await admin_chat()
    ann = await V1.open(server, "ann", "lobby")
    clients.append(ann.ws)
    for i in range(3):
        await ann.say("lobby", f"m{i}", f"c{i}")
    bob = await V1.open(server, "bob", "quiet")
    clients.append(bob.ws)
    status, _, body = await http(server, "GET", "/api/admin/rooms")
    assert status == 200 and body["total"] == 2 and body["next"] is None
    rooms = {r["name"]: r for r in body["rooms"]}
    assert (rooms["lobby"]["members"], rooms["lobby"]["seq"]) == (1, 3)
    assert (rooms["quiet"]["members"], rooms["quiet"]["seq"]) == (1, 0)
    status, _, page = await http(server, "GET", "/api/admin/rooms?limit=1")
    assert [r["name"] for r in page["rooms"]] == ["lobby"] and page["next"] == "lobby"


async def test_deleting_a_room_removes_its_members(admin_chat: Any, clients: list[Any]) -> None:
    server = await admin_chat()
    ann = await V1.open(server, "ann", "lobby")
    clients.append(ann.ws)
    await ann.say("lobby", "bye", "c1")
    status, _, body = await http(server, "DELETE", "/api/admin/rooms/lobby")
    assert (status, body) == (200, {"deleted": "lobby", "members_removed": 1})
    await ann.until("left_room", room="lobby", reason="deleted")
    status, _, body = await http(server, "GET", "/api/admin/rooms")
    assert body["rooms"] == []
    status, _, body = await http(server, "DELETE", "/api/admin/rooms/lobby")
    assert (status, body) == (404, {"error": "no room called 'lobby'"})


async def test_resetting_a_room_keeps_its_members_in_a_new_epoch(
    admin_chat: Any, clients: list[Any]
) -> None:
    server = await admin_chat()
    ann = await V1.open(server, "ann", "lobby")
    bob = await V1.open(server, "bob", "lobby")
    clients.extend([ann.ws, bob.ws])
    old = await ann.say("lobby", "before", "c1")
    await bob.until("message", text="before")
    status, _, body = await http(server, "POST", "/api/admin/rooms/lobby/reset")
    assert status == 200 and body["reset"] == "lobby" and body["members_told"] == 2
    assert body["epoch"] != old["epoch"]
    for member in (ann, bob):
        reset = await member.until("reset", room="lobby")
        assert (reset["epoch"], reset["reason"], reset["seq"]) == (body["epoch"], "epoch", 0)
    # Still members, and the room is followed again from seq 0: a new message is
    # numbered 1 in the new epoch and reaches the other member.
    ack = await ann.say("lobby", "after", "c2")
    assert (ack["seq"], ack["epoch"]) == (1, body["epoch"])
    got = await bob.until("message", text="after")
    assert (got["seq"], got["epoch"]) == (1, body["epoch"])
    await bob.put(type="history", room="lobby")
    page = await bob.until("history", room="lobby")
    assert [m["text"] for m in page["messages"]] == ["after"]
    status, _, body = await http(server, "POST", "/api/admin/rooms/nowhere/reset")
    assert (status, body) == (404, {"error": "no room called 'nowhere'"})


# -- journal and errors -----------------------------------------------------------------


class FailingOnce(SQLiteStore):
    """A SQLite store whose first append fails (a disk that was full for a moment)."""

    failed = False

    async def append(self, batch: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise StoreError("disk full (test)")
        return await super().append(batch)


async def test_the_overview_shows_the_journal_and_its_failures(
    admin_chat: Any, tmp_path: Path, clients: list[Any]
) -> None:
    db = str(tmp_path / "failing.db")
    server = await admin_chat(store=FailingOnce(db), db=db)
    _, _, before = await http(server, "GET", "/api/admin/overview")
    ann = await V1.open(server, "ann", "lobby")
    clients.append(ann.ws)
    await ann.put(type="send", room="lobby", id="c1", text="lost")
    error = await ann.until("error", id="c1")
    assert error["code"] == "unavailable"
    await ann.say("lobby", "kept", "c2")
    status, _, body = await http(server, "GET", "/api/admin/overview")
    assert status == 200
    journal = body["journal"]
    assert journal["failures"] - before["journal"]["failures"] == 1
    assert journal["committed"] == 1 and journal["queue"] == 0
    assert journal["max_queue"] == server.settings.max_journal_queue
    status, _, errors = await http(server, "GET", "/api/admin/errors")
    newest = errors["errors"][0]
    assert newest["logger"] == "hubbub.journal" and newest["level"] == "ERROR"
    assert "disk full (test)" in newest["message"]
    assert errors["summary"]["total"] >= 1


def record(message: str, level: int = logging.WARNING, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("x" * (3 * MAX_EXCEPTION))
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("hubbub.test", level, __file__, 1, message, None, exc_info)


def test_the_error_ring_is_bounded_in_count_and_bytes() -> None:
    ring = ErrorLog(capacity=3)
    for i in range(5):
        ring.handle(record(f"warning {i}"))
    ring.handle(record("y" * (10 * MAX_MESSAGE), logging.ERROR, exc=True))
    kept = ring.recent()
    assert [r.id for r in kept] == [6, 5, 4]  # newest first, the oldest dropped
    big = kept[0]
    assert big.level == "ERROR" and len(big.message) == MAX_MESSAGE + 3
    assert big.exception is not None and len(big.exception) <= MAX_EXCEPTION + 10
    assert big.exception.endswith("x" * 20)  # the end of a traceback (where it was raised)
    assert [r.id for r in ring.recent(after=5)] == [6] and len(ring.recent(limit=1)) == 1
    assert ring.summary() == {
        "total": 6,
        "by_level": {"WARNING": 5, "ERROR": 1},
        "kept": 3,
        "capacity": 3,
    }
    assert ring.count("hubbub.test", "WARNING") == 5


def test_the_error_ring_takes_warnings_up_and_escapes_control_characters() -> None:
    ring = ErrorLog()
    logger = logging.getLogger("hubbub.test.ring")
    logger.setLevel(logging.DEBUG)  # whatever level another test left the root at
    logger.addHandler(ring)
    try:
        logger.info("just info")
        logger.warning("forged\nERROR fake line\x1b[31m %s", "\r")
        logger.critical("bad")
    finally:
        logger.removeHandler(ring)
    assert [(r.level, r.message) for r in ring.recent()] == [
        ("CRITICAL", "bad"),
        ("WARNING", "forged\\x0aERROR fake line\\x1b[31m \\x0d"),
    ]


def test_room_rates_are_messages_per_minute_over_the_last_minute() -> None:
    now = [0.0]
    rates = RoomRates(window=60.0, every=5.0, max_rooms=2, clock=lambda: now[0])
    assert rates.observe("a", 10) == (None, 0.0)  # one sample: no rate yet
    now[0] = 30.0
    assert rates.observe("a", 40) == (60.0, 30.0)  # 30 messages in 30 s
    for t in range(32, 200, 2):  # listed every 2 s, a message a second
        now[0] = float(t)
        rate, over = rates.observe("a", 40 + t - 30)
        if t >= 100:  # measured over the last minute (plus at most one sample's gap)
            assert rate == 60.0 and 60.0 <= over <= 66.0, (t, rate, over)
    now[0] = 400.0
    rate, over = rates.observe("a", 208)
    assert rate == 0.0 and over > 200.0  # not listed for a while: measured over the gap
    now[0] = 401.0
    assert rates.observe("a", 5) == (None, 0.0)  # seq went down (a reset): start over
    rates.observe("b", 1)
    rates.observe("c", 1)  # a third room: the least recently listed ("a") is forgotten
    assert set(rates._samples) == {"b", "c"}
