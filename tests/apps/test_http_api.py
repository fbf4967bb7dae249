"""The HTTP API over real sockets: hostile query strings and bodies get a 4xx with
the rule in words (never a 500), the room list is paged, history pages are
bounded in bytes, and room creation is capped by max_rooms."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hubbub import protocol as p
from hubbub.store import PendingMessage

KEY = "k3y"


async def http(
    server: Any, method: str, path: str, body: bytes = b"", key: str | None = None
) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
    if key is not None:
        head += f"Authorization: Bearer {key}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(rest) if rest else None


async def post(server: Any, room: str, text: str = "hi") -> tuple[int, Any]:
    body = json.dumps({"text": text, "nick": "ci"}).encode()
    return await http(server, "POST", f"/api/rooms/{room}/messages", body, KEY)


async def test_the_room_list_is_paged(make_chat: Any) -> None:
    server = await make_chat(api_key=KEY)
    for name in ["d", "a", "e", "c", "b"]:
        assert (await post(server, name))[0] == 201
    status, body = await http(server, "GET", "/api/rooms?limit=2")
    assert status == 200
    assert body == {
        "rooms": [{"name": "a", "members": 0, "seq": 1}, {"name": "b", "members": 0, "seq": 1}],
        "next": "b",
    }
    status, body = await http(server, "GET", "/api/rooms?after=b&limit=2")
    assert [r["name"] for r in body["rooms"]] == ["c", "d"] and body["next"] == "d"
    status, body = await http(server, "GET", "/api/rooms?after=d&limit=2")
    assert [r["name"] for r in body["rooms"]] == ["e"] and body["next"] is None
    status, body = await http(server, "GET", "/api/rooms")
    assert len(body["rooms"]) == 5 and body["next"] is None


@pytest.mark.parametrize(
    ("query", "rule"),
    [
        ("limit=0", f"'limit' must be a whole number from 1 to {p.ROOMS_PAGE_MAX}"),
        ("limit=201", f"'limit' must be a whole number from 1 to {p.ROOMS_PAGE_MAX}"),
        ("limit=-1", "'limit' must be a whole number"),
        ("limit=1e3", "'limit' must be a whole number"),
        ("limit=" + "9" * 5000, "'limit' must be a whole number"),
        ("after=bad%20room", "'after' must be a room name"),
    ],
)
async def test_bad_room_list_queries_are_400_with_the_rule(
    make_chat: Any, query: str, rule: str
) -> None:
    server = await make_chat()
    status, body = await http(server, "GET", f"/api/rooms?{query}")
    assert status == 400 and body["error"].startswith(rule)


@pytest.mark.parametrize(
    ("query", "field", "high"),
    [
        (f"before={2**53}", "before", p.MAX_SEQ),
        (f"before={2**64}", "before", p.MAX_SEQ),
        (f"before={2**70}", "before", p.MAX_SEQ),
        ("before=" + "9" * 5000, "before", p.MAX_SEQ),
        ("before=-1", "before", p.MAX_SEQ),
        ("before=%205", "before", p.MAX_SEQ),
        ("before=%D9%A3", "before", p.MAX_SEQ),  # ARABIC-INDIC DIGIT THREE
        ("before=1_000", "before", p.MAX_SEQ),
        ("limit=x", "limit", p.HISTORY_PAGE_MAX),
        (f"limit={2**64}", "limit", p.HISTORY_PAGE_MAX),
    ],
)
async def test_out_of_range_history_queries_are_400_never_500(
    make_chat: Any, query: str, field: str, high: int
) -> None:
    server = await make_chat(api_key=KEY)
    assert (await post(server, "lobby"))[0] == 201
    status, body = await http(server, "GET", f"/api/rooms/lobby/messages?{query}")
    assert status == 400
    low = 0 if field == "before" else 1
    assert body["error"] == f"'{field}' must be a whole number from {low} to {high}"


async def test_the_largest_before_is_accepted(make_chat: Any) -> None:
    server = await make_chat(api_key=KEY)
    assert (await post(server, "lobby"))[0] == 201
    status, body = await http(server, "GET", f"/api/rooms/lobby/messages?before={p.MAX_SEQ}")
    assert status == 200 and [m["seq"] for m in body["messages"]] == [1]


async def test_a_history_page_is_bounded_in_bytes(make_chat: Any) -> None:
    server = await make_chat()
    store = server.app.store
    text = "\x01" * p.MAX_TEXT  # 6 bytes each on the wire: ~48 KB per message
    await store.append([PendingMessage("big", f"c{i}", "ann", text, 1.0) for i in range(40)])
    status, body = await http(server, "GET", "/api/rooms/big/messages?limit=200")
    assert status == 200 and body["has_more"] is True
    seqs = [m["seq"] for m in body["messages"]]
    assert seqs and seqs == list(range(41 - len(seqs), 41))  # the newest, oldest first
    size = sum(len(json.dumps(m, separators=(",", ":"))) for m in body["messages"])
    assert size <= p.HISTORY_PAGE_BYTES
    # Paging on from the oldest one returned reaches the start of the room.
    before, seen = seqs[0], len(seqs)
    while True:
        status, body = await http(server, "GET", f"/api/rooms/big/messages?before={before}")
        seen += len(body["messages"])
        if not body["has_more"]:
            break
        before = body["messages"][0]["seq"]
    assert seen == 40


async def test_posts_that_would_create_a_room_past_max_rooms_get_507(make_chat: Any) -> None:
    server = await make_chat(api_key=KEY, max_rooms=2)
    assert (await post(server, "a"))[0] == 201
    assert (await post(server, "b"))[0] == 201
    status, body = await post(server, "c")
    assert status == 507 and body["error"] == "this server holds its maximum of 2 rooms"
    assert (await post(server, "a"))[0] == 201  # existing rooms still take messages
    assert (await http(server, "GET", "/api/rooms/c/messages"))[0] == 404
    status, _ = await http(server, "DELETE", "/api/rooms/a", key=KEY)
    assert status == 200
    assert (await post(server, "c"))[0] == 201


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b'{"text":' + b"[" * 100_000,
        b'{"text":"x","id":' + b"9" * 5000 + b"}",
        b"\xff\xfe",
    ],
    ids=["arrays", "objects", "in-field", "huge-number", "not-utf8"],
)
async def test_hostile_post_bodies_are_400(make_chat: Any, body: bytes) -> None:
    server = await make_chat(api_key=KEY)
    status, answer = await http(server, "POST", "/api/rooms/lobby/messages", body, KEY)
    assert status == 400 and answer["error"].startswith("invalid body")
