"""The chat limits of issue 10 reach a running server (settings -> core -> effects)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hubbub import protocol as p
from hubbub.store import PendingMessage
from hubbub.store.sqlite import SQLiteStore

from ..conftest import ws_url


async def _v1(server: Any) -> Any:
    ws = await connect(ws_url(server), subprotocols=[p.SUBPROTOCOL])
    assert json.loads(await ws.recv())["type"] == "welcome"
    return ws


async def _frames_until_closed(ws: Any) -> list[dict[str, Any]]:
    frames = []
    try:
        async for raw in ws:
            frames.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return frames


async def test_a_connection_that_keeps_sending_invalid_frames_is_closed_with_1008(make_chat):
    server = await make_chat(max_invalid_frames=3, invalid_frame_window=60)
    bad = await _v1(server)
    good = await _v1(server)
    for _ in range(4):
        await bad.send('{"type":"bogus"}')
    frames = await _frames_until_closed(bad)
    assert [f["code"] for f in frames] == ["unknown_type"] * 3
    assert bad.close_code == 1008
    assert bad.close_reason == "too many invalid frames"
    # The well-behaved client is untouched.
    await good.send(json.dumps({"type": "ping"}))
    assert json.loads(await good.recv())["type"] == "pong"
    await good.close()


async def test_binary_frames_count_as_invalid_frames(make_chat):
    server = await make_chat(max_invalid_frames=2)
    ws = await _v1(server)
    for _ in range(3):
        await ws.send(b"\x00\x01")
    frames = await _frames_until_closed(ws)
    assert [f["code"] for f in frames] == [p.E_NOT_TEXT] * 2
    assert ws.close_code == 1008


async def test_max_rooms_counts_the_rooms_already_stored(make_chat, tmp_path: Path):
    db = str(tmp_path / "rooms.db")
    store = SQLiteStore(db)
    await store.open()
    await store.append([PendingMessage("old", None, "ann", "hi", 1.0)])
    await store.close()
    server = await make_chat(db=db, max_rooms=2)
    ws = await _v1(server)
    # Entering a stored room creates nothing; a second new room is one too many.
    await ws.send(json.dumps({"type": "join", "room": "old"}))
    await ws.send(json.dumps({"type": "join", "room": "new"}))
    await ws.send(json.dumps({"type": "join", "room": "third"}))
    seen: dict[str, str] = {}
    while len(seen) < 3:
        f = json.loads(await ws.recv())
        if f["type"] == "room":
            seen[f["room"]] = "joined"
        elif f["type"] == "error":
            seen[f["room"]] = f["code"]
    assert seen == {"old": "joined", "new": "joined", "third": "room_limit"}
    await ws.close()


async def test_the_rooms_frame_is_paged(make_chat):
    server = await make_chat()
    ws = await _v1(server)
    for name in ("a", "b", "c"):
        await ws.send(json.dumps({"type": "join", "room": name}))
    joined = 0
    while joined < 3:
        joined += json.loads(await ws.recv())["type"] == "room"
    await ws.send(json.dumps({"type": "rooms", "limit": 2}))
    page = json.loads(await ws.recv())
    while page["type"] != "rooms":
        page = json.loads(await ws.recv())
    assert [r["name"] for r in page["rooms"]] == ["a", "b"] and page["next"] == "b"
    await ws.send(json.dumps({"type": "rooms", "after": "b", "limit": 2}))
    page = json.loads(await ws.recv())
    while page["type"] != "rooms":
        page = json.loads(await ws.recv())
    assert [r["name"] for r in page["rooms"]] == ["c"] and page["next"] is None
    await ws.close()
