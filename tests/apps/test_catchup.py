"""Catch-up (apps/catchup.py): no duplicate after join/leave/join, replays paced
by the client's send buffer, store reads shared by the members of a room that
catch up together (on SQLite and PostgreSQL), a gap found during a replay told as
``reset``."""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from hubbub.apps.chat import create_app
from hubbub.config import Settings
from hubbub.store import PendingMessage, StoreError
from hubbub.store.sqlite import SQLiteStore

from ..cluster.conftest import wait_until
from ..conftest import ws_url
from ..services import pg_schema, postgres_store  # noqa: F401 (a fixture)
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


# -- shared reads: the members of a room catching up together (a reconnect storm) --------


class CountedReads:
    """A store whose catch-up reads are counted and take ``delay`` seconds (a busy
    disk), so that the members joining meanwhile pile up behind one read."""

    def __init__(self, inner: Any, delay: float = 0.2) -> None:
        self.inner = inner
        self.delay = delay
        self.creates = 0
        self.sinces: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_room(self, room: str) -> Any:
        self.creates += 1
        await asyncio.sleep(self.delay)
        return await self.inner.create_room(room)

    async def since(self, room: str, seq: int, limit: int) -> Any:
        self.sinces.append((seq, limit))
        result = await self.inner.since(room, seq, limit)
        await asyncio.sleep(self.delay)
        return result


@pytest.fixture(params=["sqlite", "postgres"])
def inner_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An unopened store of each kind (the app opens it)."""
    if request.param == "sqlite":
        return SQLiteStore(str(tmp_path / "c.db"))
    return postgres_store(request.getfixturevalue("pg_schema"))


async def _serve(store: Any, tmp_path: Path, **settings: Any) -> Any:
    server = create_app(
        "127.0.0.1", 0, Settings(db=str(tmp_path / "c.db"), **settings), store=store
    )
    await server.listen()
    return server


async def _until_end(client: Client) -> list[dict[str, Any]]:
    """Frames up to the end of a catch-up (``resumed``, ``reset`` or ``error``)."""
    frames = [await client.recv(10)]
    while frames[-1]["type"] not in ("resumed", "reset", "error"):
        frames.append(await client.recv(10))
    return frames


def _check_resume(frames: list[dict[str, Any]], since: int, top: int) -> None:
    """``room``, exactly the messages ``since + 1 .. top`` in order, ``resumed``."""
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "room" and kinds[-1] == "resumed", kinds
    assert [f["seq"] for f in frames if f["type"] == "message"] == list(range(since + 1, top + 1))
    assert set(kinds[1:-1]) <= {"message"}, kinds
    end = frames[-1]
    assert (end["since"], end["seq"], end["count"]) == (since, top, top - since), end


async def test_members_resuming_together_share_their_store_reads(inner_store, tmp_path):
    store = CountedReads(inner_store)
    server = await _serve(store, tmp_path, rate=0)
    try:
        await fill(store.inner, "r", 30, 20)
        clients = [await Client.open(server) for _ in range(40)]
        sinces = [(i % 3) * 10 for i in range(40)]
        creates = store.creates
        await asyncio.gather(
            *(
                c.send(type="join", room="r", nick=f"n{i}", since=s)
                for i, (c, s) in enumerate(zip(clients, sinces, strict=True))
            )
        )
        for c, s in zip(clients, sinces, strict=True):
            _check_resume(await _until_end(c), s, 30)
        # One read per batch of members that asked together, not one per member
        # (the first create_room is the node's position of the room).
        assert len(store.sinces) <= 4, store.sinces
        assert store.creates - creates <= 5, store.creates - creates
        assert all(limit <= 30 for _, limit in store.sinces), store.sinces
        for c in clients:
            await c.abort()  # (unread presence frames would hold up a closing handshake)
    finally:
        await server.shutdown()


async def test_resumes_from_many_positions_each_get_their_slice_over_several_pages(
    inner_store, tmp_path
):
    store = CountedReads(inner_store, delay=0.02)
    server = await _serve(store, tmp_path, rate=0)
    server.app.catchups.chunk = 7  # pages of 7 messages: most replays span several
    try:
        await fill(store.inner, "r", 60, 20)
        epoch = (await store.inner.room("r")).epoch
        sinces = [0, 3, 17, 29, 30, 44, 59, 60, 0, 17]
        clients = [await Client.open(server) for _ in sinces]
        late = await Client.open(server)  # past the room's last message: a new epoch
        await asyncio.gather(
            *(
                c.send(type="join", room="r", nick=f"n{i}", since=s, epoch=epoch)
                for i, (c, s) in enumerate(zip(clients, sinces, strict=True))
            ),
            late.send(type="join", room="r", nick="late", since=61, epoch=epoch),
        )
        for c, s in zip(clients, sinces, strict=True):
            _check_resume(await _until_end(c), s, 60)
        assert [f["type"] for f in await _until_end(late)] == ["room", "reset"]
        # Every member reads its own pages without sharing: 9 + 9 + 7 + 5 + 5 + 3 + 1
        # + 9 + 7 = 55 reads; shared, about one per page of the room.
        assert len(store.sinces) <= 20, store.sinces
        assert all(limit <= 7 for _, limit in store.sinces), store.sinces
        for c in [*clients, late]:
            await c.close()
    finally:
        await server.shutdown()


async def test_a_replay_and_its_resumed_leave_in_one_loop_step(make_chat):
    server = await make_chat(rate=0)
    await fill(server.app.store, "r", 5, 10)
    loop = asyncio.get_running_loop()
    pushed: list[tuple[str, bool]] = []  # (frame type, a loop step passed since the first)
    stepped = {"yes": True}
    push = server.push

    def watched(fd: int, data: Any, opcode: Any = None) -> bool:
        kind = json.loads(data)["type"]
        if kind == "message" and stepped["yes"]:
            stepped["yes"] = False
            loop.call_soon(stepped.__setitem__, "yes", True)  # runs in the next step
        pushed.append((kind, stepped["yes"]))
        return push(fd, data, opcode)

    server.push = watched
    bob = await Client.open(server)
    await bob.send(type="join", room="r", nick="bob", since=0)
    _check_resume(await _until_end(bob), 0, 5)
    start = pushed.index(("message", False))
    # Queued in one step, so the end of the tick writes them in one go.
    assert pushed[start:] == [("message", False)] * 5 + [("resumed", False)]
    await bob.close()


class RetentionDuringCatchup:
    """A store that runs retention (keep the newest ``keep``) just before a catch-up's
    first ``since`` read: what the room's state said is stored is gone."""

    def __init__(self, inner: Any, keep: int) -> None:
        self.inner = inner
        self.keep = keep
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def since(self, room: str, seq: int, limit: int) -> Any:
        if self.armed:
            self.armed = False
            await self.inner.enforce_retention(self.keep, 0, time.time())
        return await self.inner.since(room, seq, limit)


async def test_messages_deleted_during_a_catch_up_give_reset_not_a_gap(inner_store, tmp_path):
    store = RetentionDuringCatchup(inner_store, keep=10)
    server = await _serve(store, tmp_path, rate=0)
    try:
        await fill(store.inner, "r", 20, 10)
        bob = await Client.open(server)
        store.armed = True
        await bob.send(type="join", room="r", nick="bob", since=5)
        frames = await _until_end(bob)
        # 6..10 were deleted after the room's state (oldest 1) was read: replaying
        # 11..20 and saying `resumed` would hide a gap.
        assert [f["type"] for f in frames] == ["room", "reset"], frames
        assert (frames[1]["reason"], frames[1]["seq"], frames[1]["oldest"]) == ("retention", 20, 11)
        ann = await Client.open(server, "ann", "r")
        await bob.expect("joined", nick="ann")
        await ann.send(type="send", room="r", id="a1", text="live")
        await bob.expect("message", seq=21, text="live")  # live from here
        for c in (ann, bob):
            await c.close()
    finally:
        await server.shutdown()


async def test_a_member_leaving_during_a_shared_read_does_not_disturb_the_others(tmp_path, caplog):
    store = CountedReads(SQLiteStore(str(tmp_path / "c.db")))
    server = await _serve(store, tmp_path, rate=0)
    app = server.app
    try:
        await fill(store.inner, "r", 8, 10)
        stay = [await Client.open(server) for _ in range(3)]
        gone = [await Client.open(server) for _ in range(3)]
        with caplog.at_level("DEBUG", logger="hubbub"):
            for i, c in enumerate(stay + gone):
                await c.send(type="join", room="r", nick=f"n{i}", since=2)
            await wait_until(lambda: store.creates >= 2, what="the shared read began")
            for c in gone:
                await c.abort()
            for c in stay:
                _check_resume(await _until_end(c), 2, 8)
            await wait_until(lambda: len(app.v1) == 3, what="the closes handled")
            await wait_until(lambda: not app.catchups._tasks, what="no catch-up or read left")
        errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
        assert not errors, [r.getMessage() for r in errors]
        assert not app.catchups._reads and not app.catchups.waiting
        for c in stay:
            await c.close()
    finally:
        await server.shutdown()


class FailingSince:
    """A store whose ``since`` fails while ``failing`` (a database that went away)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def since(self, room: str, seq: int, limit: int) -> Any:
        await asyncio.sleep(0.05)
        if self.failing:
            raise StoreError("database is locked")
        return await self.inner.since(room, seq, limit)


async def test_a_failed_shared_read_tells_every_member_who_waited_and_they_can_join_again(
    tmp_path,
):
    store = FailingSince(SQLiteStore(str(tmp_path / "c.db")))
    server = await _serve(store, tmp_path, rate=0)
    try:
        await fill(store.inner, "r", 4, 10)
        clients = [await Client.open(server) for _ in range(5)]
        for i, c in enumerate(clients):
            await c.send(type="join", room="r", nick=f"n{i}", since=1)
        for c in clients:
            frames = await _until_end(c)
            assert frames[-1]["type"] == "error" and frames[-1]["code"] == "unavailable", frames
        store.failing = False
        for i, c in enumerate(clients):
            await c.send(type="join", room="r", nick=f"n{i}", since=1)
        for c in clients:
            _check_resume(await _until_end(c), 1, 4)
        for c in clients:
            await c.close()
    finally:
        await server.shutdown()


async def test_a_room_holds_one_page_of_replay_at_a_time(tmp_path, monkeypatch):
    from hubbub.apps import catchup

    pages: weakref.WeakSet[Any] = weakref.WeakSet()

    class Page(catchup._Page):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            pages.add(self)

    monkeypatch.setattr(catchup, "_Page", Page)
    held: list[int] = []  # pages of messages alive when a read of messages begins

    class Watched(CountedReads):
        async def since(self, room: str, seq: int, limit: int) -> Any:
            held.append(sum(1 for page in list(pages) if page.seqs))
            return await super().since(room, seq, limit)

    store = Watched(SQLiteStore(str(tmp_path / "c.db")), delay=0.01)
    server = await _serve(store, tmp_path, rate=0)
    server.app.catchups.chunk = 7
    try:
        await fill(store.inner, "r", 60, 20)
        sinces = [0, 0, 5, 12, 30, 31, 52, 59]
        clients = [await Client.open(server) for _ in sinces]
        for i, (c, s) in enumerate(zip(clients, sinces, strict=True)):
            await c.send(type="join", room="r", nick=f"n{i}", since=s)
        for c, s in zip(clients, sinces, strict=True):
            _check_resume(await _until_end(c), s, 60)
        assert len(held) >= 9 and max(held) == 0, held
        for c in clients:
            await c.abort()
    finally:
        await server.shutdown()
