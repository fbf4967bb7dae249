"""The HTTP API under --auth token|optional (real sockets): reading history and the
room list needs the API key or a token allowed in the room; private rooms are for
members; ``?since=`` reads forwards, bounded in count and bytes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from hubbub import protocol as p

from ..auth.keys import SECRET, token
from ..conftest import ws_url
from .test_admin_api import http as raw_http
from .test_http_api import KEY, http, post


async def test_reading_needs_a_credential_with_tokens(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET, api_key=KEY)
    assert (await post(server, "lobby"))[0] == 201
    for path in ("/api/rooms", "/api/rooms/lobby/messages"):
        status, body = await http(server, "GET", path)
        assert status == 401 and "Authorization" in body["error"]
        assert (await http(server, "GET", path, key="nonsense"))[0] == 401
        assert (await http(server, "GET", path, key=token("z" * 40)))[0] == 401
        assert (await http(server, "GET", path, key=KEY))[0] == 200
        assert (await http(server, "GET", path, key=token()))[0] == 200
    expired = token(ttl=-60)
    status, body = await http(server, "GET", "/api/rooms", key=expired)
    assert status == 401 and "expired" in body["error"]


async def test_optional_mode_needs_a_credential_too(make_chat: Any) -> None:
    server = await make_chat(auth="optional", jwt_secret=SECRET)
    assert (await http(server, "GET", "/api/rooms"))[0] == 401
    assert (await http(server, "GET", "/api/rooms", key=token()))[0] == 200


async def test_none_mode_reads_openly(make_chat: Any) -> None:
    server = await make_chat(api_key=KEY)
    await post(server, "lobby")
    assert (await http(server, "GET", "/api/rooms/lobby/messages"))[0] == 200


async def test_a_token_reads_only_the_rooms_it_allows(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET, api_key=KEY)
    await post(server, "lobby")
    await post(server, "dev")
    tok = token(rooms=["dev"])
    status, body = await http(server, "GET", "/api/rooms/lobby/messages", key=tok)
    assert status == 403 and "does not allow" in body["error"]
    assert (await http(server, "GET", "/api/rooms/dev/messages", key=tok))[0] == 200


async def test_private_rooms_are_for_members(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET, api_key=KEY)
    await post(server, "lobby")
    server.app.core.set_private("lobby", True)
    path = "/api/rooms/lobby/messages"
    everywhere = token(sub="bob", rooms="*")
    status, body = await http(server, "GET", path, key=everywhere)
    assert status == 403 and "private" in body["error"]
    assert (await http(server, "GET", path, key=token(sub="cat", rooms=["lobby"])))[0] == 200
    assert (await http(server, "GET", path, key=KEY))[0] == 200
    # bob joins over WebSocket: now a member, his token reads it.
    ws = await connect(
        ws_url(server),
        subprotocols=[p.SUBPROTOCOL],
        additional_headers={"Authorization": f"Bearer {everywhere}"},
    )
    await ws.recv()
    await ws.send(json.dumps({"type": "join", "room": "lobby"}))
    while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "room":
        pass
    assert (await http(server, "GET", path, key=everywhere))[0] == 200
    await ws.close()


async def test_private_rooms_need_the_api_key_in_none_mode(make_chat: Any) -> None:
    server = await make_chat(api_key=KEY)
    await post(server, "lobby")
    server.app.core.set_private("lobby", True)
    assert (await http(server, "GET", "/api/rooms/lobby/messages"))[0] == 401
    assert (await http(server, "GET", "/api/rooms/lobby/messages", key=KEY))[0] == 200


async def test_since_reads_forwards(make_chat: Any) -> None:
    server = await make_chat(api_key=KEY)
    for i in range(5):
        await post(server, "lobby", f"m{i}")
    status, body = await http(server, "GET", "/api/rooms/lobby/messages?since=2")
    assert status == 200
    assert [m["seq"] for m in body["messages"]] == [3, 4, 5] and body["has_more"] is False
    status, body = await http(server, "GET", "/api/rooms/lobby/messages?since=1&limit=2")
    assert [m["seq"] for m in body["messages"]] == [2, 3] and body["has_more"] is True
    status, body = await http(server, "GET", "/api/rooms/lobby/messages?since=5")
    assert body["messages"] == [] and body["has_more"] is False
    status, body = await http(server, "GET", "/api/rooms/lobby/messages?since=1&before=4")
    assert status == 400 and "not both" in body["error"]
    status, body = await http(server, "GET", f"/api/rooms/lobby/messages?since={p.MAX_SEQ + 1}")
    assert status == 400 and "'since'" in body["error"]


async def test_since_pages_are_bounded_in_bytes(make_chat: Any) -> None:
    server = await make_chat(api_key=KEY)
    big = "x" * p.MAX_TEXT
    count = p.HISTORY_PAGE_BYTES // p.MAX_TEXT + 5
    for _ in range(count):
        assert (await post(server, "lobby", big))[0] == 201
    path = f"/api/rooms/lobby/messages?since=0&limit={p.HISTORY_PAGE_MAX}"
    status, body = await http(server, "GET", path)
    seqs = [m["seq"] for m in body["messages"]]
    assert status == 200 and body["has_more"] is True
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < count  # oldest kept
    assert sum(len(json.dumps(m)) for m in body["messages"]) <= p.HISTORY_PAGE_BYTES + 1000
    # The next page goes on from the last one.
    _, body = await http(server, "GET", f"/api/rooms/lobby/messages?since={seqs[-1]}")
    assert body["messages"][0]["seq"] == seqs[-1] + 1


async def test_patch_makes_a_room_private_durably(make_chat: Any, tmp_path: Any) -> None:
    db = str(tmp_path / "private.db")
    server = await make_chat(db=db, api_key=KEY)
    await post(server, "lobby")
    body = json.dumps({"private": True}).encode()
    assert (await http(server, "PATCH", "/api/rooms/lobby", body))[0] == 401
    status, answer = await http(server, "PATCH", "/api/rooms/lobby", body, KEY)
    assert status == 200 and answer == {"room": "lobby", "private": True}
    assert (await http(server, "PATCH", "/api/rooms/nowhere", body, KEY))[0] == 404
    status, answer = await http(server, "PATCH", "/api/rooms/lobby", b'{"private": 1}', KEY)
    assert status == 400 and answer["field"] == "private"
    assert (await http(server, "PATCH", "/api/rooms/lobby", b"[[[", KEY))[0] == 400
    assert (await http(server, "GET", "/api/rooms/lobby/messages"))[0] == 401
    await server.shutdown()
    # A restarted server knows it from the store.
    again = await make_chat(db=db, api_key=KEY)
    assert "lobby" in again.app.core.private
    assert (await http(again, "GET", "/api/rooms/lobby/messages"))[0] == 401
    await http(again, "PATCH", "/api/rooms/lobby", b'{"private": false}', KEY)
    assert (await http(again, "GET", "/api/rooms/lobby/messages"))[0] == 200


async def test_a_room_made_private_elsewhere_hides_its_history(make_chat: Any) -> None:
    server = await make_chat(api_key=KEY)
    await post(server, "lobby")
    # Another node (same store) made it private: this node's core does not know yet.
    assert await server.app.store.set_private("lobby", True)
    assert "lobby" not in server.app.core.private
    assert (await http(server, "GET", "/api/rooms/lobby/messages"))[0] == 401
    ws = await connect(ws_url(server), subprotocols=[p.SUBPROTOCOL])
    await ws.recv()
    await ws.send(json.dumps({"type": "history", "room": "lobby"}))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert answer["type"] == "error" and answer["code"] == p.E_FORBIDDEN
    assert "lobby" in server.app.core.private
    await ws.close()


async def test_the_api_401s_carry_the_bearer_challenge(make_chat: Any) -> None:
    """RFC 6750 3: no credential gets a bare ``Bearer`` challenge, a refused token says
    why in ``error_description``."""
    server = await make_chat(auth="token", jwt_secret=SECRET, api_key=KEY)
    status, headers, _ = await raw_http(server, "GET", "/api/rooms", key=None)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    status, headers, _ = await raw_http(server, "GET", "/api/rooms", key=token(ttl=-60))
    challenge = headers["www-authenticate"]
    assert status == 401 and challenge.startswith('Bearer error="invalid_token", ')
    assert "error_description=" in challenge and "expired" in challenge
