"""Catch-up (apps/catchup.py): no duplicate after join/leave/join, replays paced
by the client's send buffer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from websockets.asyncio.client import connect

from hubbub.apps.chat import create_app
from hubbub.config import Settings
from hubbub.store import PendingMessage
from hubbub.store.sqlite import SQLiteStore

from ..cluster.conftest import wait_until
from ..conftest import ws_url
from .test_chat import Client


class SlowFirstSince:
    """A store whose first ``since`` read takes a while (a big replay, a busy disk)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.slow = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def since(self, room: str, seq: int, limit: int) -> Any:
        result = await self.inner.since(room, seq, limit)
        if self.slow:
            self.slow = False
            await asyncio.sleep(0.3)
        return result


async def fill(store: Any, room: str, count: int, size: int) -> None:
    text = "x" * size
    for start in range(0, count, 500):
        batch = [
            PendingMessage(room, f"m{i}", "ann", text, time.time())
            for i in range(start, min(count, start + 500))
        ]
        await store.append(batch)


async def test_join_leave_join_replays_the_history_once(tmp_path):
    store = SlowFirstSince(SQLiteStore(str(tmp_path / "c.db")))
    server = create_app("127.0.0.1", 0, Settings(db=str(tmp_path / "c.db"), rate=0), store=store)
    await server.listen()
    try:
        await fill(store.inner, "lobby", 3, 10)
        bob = await Client.open(server)
        await bob.send(type="join", room="lobby", nick="bob", since=0)
        await bob.send(type="leave", room="lobby")
        await bob.send(type="join", room="lobby", nick="bob", since=0)
        frames: list[dict[str, Any]] = []
        while not any(f["type"] == "resumed" for f in frames):
            frames.append(await bob.recv())
        with_more = frames + await _rest(bob)
        messages = [f["seq"] for f in with_more if f["type"] == "message"]
        assert messages == [1, 2, 3], [f["type"] for f in with_more]
        assert [f["type"] for f in with_more].count("resumed") == 1
        await bob.close()
    finally:
        await server.shutdown()


async def _rest(client: Client) -> list[dict[str, Any]]:
    out = []
    try:
        while True:
            out.append(await client.recv(0.5))
    except TimeoutError:
        return out


def meter(server: Any) -> dict[int, int]:
    """The most bytes ever queued for each connection, measured after every push."""
    peak: dict[int, int] = {}
    push = server.push

    def measured(fd: int, data: Any, opcode: Any = None) -> bool:
        sent = push(fd, data, opcode)
        peak[fd] = max(peak.get(fd, 0), server.buffered(fd) or 0)
        return sent

    server.push = measured
    return peak


async def test_a_replay_bigger_than_the_send_buffer_reaches_a_reading_client(make_chat):
    limit = 64 * 1024
    server = await make_chat(rate=0, max_send_buffer=limit, compression=False)
    peak = meter(server)
    await fill(server.app.store, "big", 1500, 1000)  # ~1.5 MB, 23 times the buffer
    url = ws_url(server)
    async with connect(url, subprotocols=["hubbub.v1"], compression=None) as ws:
        bob = Client(ws)
        await bob.expect("welcome")
        await bob.send(type="join", room="big", nick="bob", since=0)
        await bob.expect("room")
        seqs = []
        while True:
            frame = await bob.recv(10)
            if frame["type"] == "resumed":
                break
            assert frame["type"] == "message", frame
            seqs.append(frame["seq"])
        assert seqs == list(range(1, 1501))
        assert frame["count"] == 1500
        # Paced: never more than half the limit plus one message queued.
        assert max(peak.values()) <= limit // 2 + 1100, peak


async def test_a_resumer_that_does_not_read_holds_a_bounded_buffer_then_is_closed(make_chat):
    limit = 64 * 1024
    server = await make_chat(rate=0, max_send_buffer=limit, compression=False, close_timeout=1)
    await fill(server.app.store, "big", 6000, 1500)  # ~9 MB: more than the kernel buffers
    peak = meter(server)
    ws = await connect(ws_url(server), subprotocols=["hubbub.v1"], compression=None, max_queue=1)
    try:
        await ws.send('{"type":"join","room":"big","nick":"bob","since":0}')
        fd = next(iter(server.app.v1))
        # Closed (1013) once it has not read for close_timeout; never more than
        # half the limit plus one message queued for it meanwhile.
        await wait_until(lambda: server.buffered(fd) is None, within=30, what="closed")
        assert peak[fd] <= limit // 2 + 1600, peak
        await wait_until(lambda: fd not in server.app.v1, what="the connection closed")
    finally:
        ws.transport.abort()


class CloseDuringCatchup:
    """A store that drops the joining client's TCP connection just as the catch-up's
    ``create_room`` returns: the close is then handled in the same loop tick as the
    catch-up's next step (what a client closing right after its ``pong`` does)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.conn: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_room(self, room: str) -> Any:
        meta = await self.inner.create_room(room)
        self.calls += 1
        if self.calls == 2 and self.conn is not None:
            # The 1st call is the sequencer's position, the 2nd the catch-up's.
            self.conn.transport.abort()
        return meta


async def test_a_member_closing_during_its_catch_up_leaves_no_error_and_no_room_followed(
    tmp_path, caplog
):
    db = str(tmp_path / "c.db")
    store = CloseDuringCatchup(SQLiteStore(db))
    server = create_app("127.0.0.1", 0, Settings(db=db, rate=0), store=store)
    await server.listen()
    app = server.app
    try:
        bob = await Client.open(server)
        fd = next(iter(app.v1))
        store.conn = server._endpoint.all[fd]
        with caplog.at_level("DEBUG", logger="hubbub"):
            await bob.send(type="join", room="lobby", nick="bob")
            await wait_until(lambda: fd not in app.v1, what="bob's close handled")
            await wait_until(lambda: not app._tasks, what="bob's catch-up ended")
        errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
        assert not errors, [r.getMessage() for r in errors]
        assert "lobby" not in app.sequencer.rooms
        assert not app._subs and not app._rooms_of
        assert "lobby" not in app.broker.subscribed
        # The next member is served as usual.
        ann = await Client.open(server)
        await ann.send(type="join", room="lobby", nick="ann")
        await ann.expect("room")
        assert app.sequencer.cursor("lobby") == 0
        await ann.close()
    finally:
        await server.shutdown()
