"""The chat product over real sockets and a real SQLite file.

The tests that take ``via`` run over every transport: WebSocket, and the
fallback sessions over SSE and long polling (docs/transports.md), whose
clients speak the same frames (:class:`Client` hides the carriage).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from hubbub import protocol as p
from hubbub.apps.chat import create_app
from hubbub.apps.sequencer import Sequencer, epoch_of
from hubbub.broker import LocalBroker
from hubbub.config import Settings
from hubbub.store import StoreError
from hubbub.store.sqlite import SQLiteStore

from ..conftest import free_port, recv_all, serve_args, ws_url
from ..transport.session_clients import SessionSocket

#: The transports a client can use (the ``via`` parameter of the tests that take it).
TRANSPORTS = ("websocket", "sse", "poll")


class Client:
    """A hubbub.v1 test client: JSON in, JSON out, over a WebSocket or a session."""

    def __init__(self, ws: Any) -> None:
        #: A websockets connection, or a SessionSocket (same send/recv/close).
        self.ws = ws

    @classmethod
    async def open(
        cls,
        server_or_url: Any,
        nick: str | None = None,
        room: str | None = None,
        via: str = "websocket",
    ):
        url = server_or_url if isinstance(server_or_url, str) else ws_url(server_or_url)
        if via == "websocket":
            ws = await connect(url, subprotocols=["hubbub.v1"])
        else:
            base = "http" + url.removeprefix("ws").rstrip("/")
            ws = await SessionSocket.open(base, via)
        client = cls(ws)
        welcome = await client.recv()
        assert welcome["type"] == "welcome" and welcome["protocol"] == "hubbub.v1"
        client.fd = welcome["fd"]
        if room is not None:
            await client.join(room, nick)
        return client

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), within))

    async def expect(self, type_: str, **fields: Any) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == type_, frame
        for key, value in fields.items():
            assert frame.get(key) == value, (key, frame)
        return frame

    async def join(self, room: str, nick: str | None = None, **extra: Any) -> dict[str, Any]:
        await self.send(type="join", room=room, **({"nick": nick} if nick else {}), **extra)
        return await self.expect("room", room=room)

    async def silent(self, within: float = 0.2) -> None:
        with pytest.raises(TimeoutError):
            frame = await self.recv(within)
            raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        await self.ws.close()

    async def abort(self) -> None:
        """The connection dies without a closing handshake (a session: it is deleted,
        as the server learns of a WebSocket's end from TCP)."""
        if isinstance(self.ws, SessionSocket):
            await self.ws.close()
        else:
            self.ws.transport.abort()

    async def go_silent(self) -> None:
        """Stop reading (no pong, no poll) but keep the connection (or session) open."""
        if isinstance(self.ws, SessionSocket):
            await self.ws.stop()
        else:
            self.ws.transport.pause_reading()


via = pytest.mark.parametrize("via", TRANSPORTS)


async def test_plain_clients_keep_the_seed_protocol_beside_v1_clients(make_chat):
    server = await make_chat()
    async with connect(ws_url(server)) as plain:
        assert await recv_all(plain, 1) == ["Hello, welcome\n"]
        ann = await Client.open(server, "ann", "lobby")
        await plain.send("hi")
        assert await recv_all(plain, 2) == [f"from {plain_fd(server, ann)}: hi", "server: hi"]
        await ann.silent()  # v1 clients never see seed text frames
        await ann.close()


def plain_fd(server: Any, v1_client: Client) -> int:
    # The plain client connected first, so its fd is the v1 client's minus one.
    return v1_client.fd - 1


@via
async def test_rooms_isolate_messages_and_list_member_counts(make_chat, via):
    server = await make_chat()
    ann = await Client.open(server, "ann", "a", via=via)
    bob = await Client.open(server, "bob", "b", via=via)
    cat = await Client.open(server, "cat", "a", via=via)
    await ann.expect("joined", room="a", nick="cat")
    await cat.join("b")
    await bob.expect("joined", room="b", nick="cat")
    await ann.send(type="send", room="a", id="m1", text="to a")
    await ann.expect("message", room="a", text="to a", nick="ann", seq=1)
    await ann.expect("ack", id="m1", seq=1, duplicate=False)
    await cat.expect("message", room="a", text="to a")
    await bob.silent()
    await bob.send(type="rooms")
    rooms = await bob.expect("rooms")
    assert rooms["rooms"] == [
        {"name": "a", "members": 2, "seq": 1},
        {"name": "b", "members": 2, "seq": 0},
    ]
    await bob.send(type="send", room="a", id="x", text="not a member")
    err = await bob.expect("error", code="not_in_room", ref="send")
    assert "a" in err["message"]
    for c in (ann, bob, cat):
        await c.close()


@via
async def test_nicknames_are_validated_unique_and_renamable(make_chat, via):
    server = await make_chat()
    ann = await Client.open(server, "ann", "lobby", via=via)
    bob = await Client.open(server, via=via)
    await bob.send(type="join", room="lobby", nick="ANN")
    await bob.expect("error", code="nick_taken", ref="join")
    await bob.send(type="join", room="lobby", nick="has space")
    err = await bob.expect("error", code="bad_frame", ref="join")
    assert "nick" in err["message"]
    state = await bob.join("lobby")  # keeps the fd-based fallback identity
    assert state["nick"] == f"user-{bob.fd}"
    assert state["members"] == ["ann", f"user-{bob.fd}"]
    await ann.expect("joined", nick=f"user-{bob.fd}")
    await bob.send(type="nick", nick="ann")
    await bob.expect("error", code="nick_taken")
    await bob.send(type="nick", nick="bob")
    # The answer first; presence (renamed) is published at the end of the tick.
    await bob.expect("nick", nick="bob")
    await bob.expect("renamed", room="lobby", old=f"user-{bob.fd}", nick="bob")
    await ann.expect("renamed", old=f"user-{bob.fd}", nick="bob")
    await ann.send(type="who", room="lobby")
    await ann.expect("members", members=["ann", "bob"])
    for c in (ann, bob):
        await c.close()


@via
async def test_direct_messages_reach_only_the_named_member(make_chat, via):
    server = await make_chat()
    ann = await Client.open(server, "ann", "lobby", via=via)
    bob = await Client.open(server, "bob", "lobby", via=via)
    cat = await Client.open(server, "cat", "lobby", via=via)
    await ann.expect("joined", nick="bob")
    await ann.expect("joined", nick="cat")
    await bob.expect("joined", nick="cat")
    await ann.send(type="dm", room="lobby", to="Bob", text="psst", id="d1")
    got = await bob.expect("dm", to="bob", text="psst", client_id="d1")
    assert got["from"] == "ann"
    await ann.expect("dm", to="bob", text="psst")
    await cat.silent()
    await ann.send(type="dm", room="lobby", to="nobody", text="?")
    await ann.expect("error", code="no_such_member")
    for c in (ann, bob, cat):
        await c.close()


@via
async def test_presence_typing_leave_and_disconnect(make_chat, via):
    server = await make_chat()
    ann = await Client.open(server, "ann", "lobby", via=via)
    bob = await Client.open(server, "bob", "lobby", via=via)
    await ann.expect("joined", nick="bob")
    await bob.send(type="typing", room="lobby", active=True)
    await ann.expect("typing", nick="bob", active=True)
    await bob.expect("typing", nick="bob")  # members see every typing event, incl. their own
    await bob.send(type="leave", room="lobby")
    await bob.expect("left_room", room="lobby")
    await ann.expect("left", nick="bob")
    await bob.join("lobby")
    await ann.expect("joined", nick="bob")
    await bob.abort()  # connection dies without a closing handshake
    await ann.expect("left", nick="bob")
    await ann.close()


@via
async def test_silent_dead_member_disappears_within_the_heartbeat_timeout(make_chat, via):
    server = await make_chat(ping_interval=0.2, ping_timeout=0.3)
    ann = await Client.open(server, "ann", "lobby", via=via)
    ghost = await Client.open(server, "ghost", "lobby", via=via)
    await ann.expect("joined", nick="ghost")
    # The ghost stops reading: it never answers pings, but its socket stays open.
    await ghost.go_silent()
    frame = await ann.recv(within=3.0)
    assert frame["type"] == "left" and frame["nick"] == "ghost"
    await ann.close()


@via
async def test_acks_and_retries_do_not_duplicate(make_chat, via):
    server = await make_chat()
    ann = await Client.open(server, "ann", "lobby", via=via)
    bob = await Client.open(server, "bob", "lobby", via=via)
    await ann.expect("joined", nick="bob")
    await ann.send(type="send", room="lobby", id="same", text="once")
    msg = await ann.expect("message", seq=1, client_id="same")
    first = await ann.expect("ack", id="same", seq=1, duplicate=False)
    assert first["msg_id"] == msg["id"]
    await bob.expect("message", seq=1)
    for _ in range(3):
        await ann.send(type="send", room="lobby", id="same", text="once")
        again = await ann.expect("ack", id="same", seq=1, duplicate=True)
        assert again["msg_id"] == msg["id"]
    await bob.silent()
    await ann.send(type="history", room="lobby")
    page = await ann.expect("history")
    assert [m["text"] for m in page["messages"]] == ["once"]
    for c in (ann, bob):
        await c.close()


@via
async def test_invalid_frames_get_errors_and_nobody_else_is_affected(make_chat, via):
    server = await make_chat(rate=0)
    ann = await Client.open(server, "ann", "lobby", via=via)
    bob = await Client.open(server, "bob", "lobby", via=via)
    await ann.expect("joined", nick="bob")
    bad = [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('{"type": "fly"}', "unknown_type"),
        ('{"type": "send", "room": "lobby", "id": "x"}', "bad_frame"),
        ('{"type": "send", "room": "lobby", "id": "x", "text": ""}', "bad_frame"),
        ('{"type": "join", "room": "bad room"}', "bad_frame"),
        ('{"type": "history", "room": "lobby", "limit": 100000}', "bad_frame"),
    ]
    for raw, code in bad:
        await ann.ws.send(raw)
        err = await ann.expect("error", code=code)
        assert err["message"] and "Traceback" not in err["message"]
    if via == "websocket":  # sessions carry text lines only
        await ann.ws.send(b"\x00binary")
        await ann.expect("error", code="not_text")
    # Still connected, still in the room, and bob saw none of it.
    await ann.send(type="send", room="lobby", id="ok", text="still here")
    await ann.expect("message", text="still here")
    await bob.expect("message", text="still here")
    for c in (ann, bob):
        await c.close()


@via
async def test_rate_limit_answers_every_excess_frame(make_chat, via):
    server = await make_chat(rate=1, burst=3)
    ann = await Client.open(server, "ann", "lobby", via=via)  # the join spent one token
    for i in range(5):
        await ann.send(type="send", room="lobby", id=f"r{i}", text=f"n{i}")
    got = [await ann.recv() for _ in range(2 * 2 + 3)]
    acks = [f["id"] for f in got if f["type"] == "ack"]
    limited = [f for f in got if f["type"] == "error"]
    assert acks == ["r0", "r1"]
    assert [f["id"] for f in limited] == ["r2", "r3", "r4"]
    assert all(f["code"] == "rate_limited" and "retry" in f["message"] for f in limited)
    await ann.close()


@via
async def test_history_over_the_protocol_and_http(make_chat, via):
    server = await make_chat(rate=0)
    ann = await Client.open(server, "ann", "lobby", via=via)
    for i in range(7):
        await ann.send(type="send", room="lobby", id=f"h{i}", text=f"t{i}")
    for _ in range(14):
        await ann.recv()
    await ann.send(type="history", room="lobby", limit=3)
    page = await ann.expect("history", has_more=True)
    assert [m["seq"] for m in page["messages"]] == [5, 6, 7]
    await ann.send(type="history", room="lobby", before=5, limit=3)
    page = await ann.expect("history", has_more=True)
    assert [m["seq"] for m in page["messages"]] == [2, 3, 4]
    await ann.send(type="history", room="lobby", before=2, limit=3)
    page = await ann.expect("history", has_more=False)
    assert [m["seq"] for m in page["messages"]] == [1]

    status, body = await http(server, "GET", "/api/rooms/lobby/messages?limit=2")
    assert status == 200 and [m["text"] for m in body["messages"]] == ["t5", "t6"]
    assert body["has_more"] is True and body["epoch"] == page["epoch"]
    status, body = await http(server, "GET", "/api/rooms/lobby/messages?before=3&limit=200")
    assert [m["seq"] for m in body["messages"]] == [1, 2]
    status, body = await http(server, "GET", "/api/rooms")
    assert status == 200 and body["rooms"] == [{"name": "lobby", "members": 1, "seq": 7}]
    bad = [("limit=0", "limit"), ("limit=201", "limit"), ("before=x", "whole number")]
    for query, reason in bad:
        status, body = await http(server, "GET", f"/api/rooms/lobby/messages?{query}")
        assert status == 400 and reason in body["error"]
    status, _ = await http(server, "GET", "/api/rooms/bad%20room/messages")
    assert status == 400
    status, _ = await http(server, "GET", "/api/nothing")
    assert status == 404
    await ann.close()


async def test_publish_from_a_backend_needs_the_api_key(make_chat):
    server = await make_chat(api_key="s3cret")
    ann = await Client.open(server, "ann", "news")
    path = "/api/rooms/news/messages"
    status, body = await http(server, "POST", path, {"text": "hi"})
    assert status == 401 and "Bearer" in body["error"]
    status, body = await http(server, "POST", path, {"text": "hi"}, key="wrong")
    assert status == 403
    status, body = await http(server, "POST", path, {"txt": "typo"}, key="s3cret")
    assert status == 400 and "invalid body" in body["error"]
    status, body = await http(
        server, "POST", path, {"text": "deploy done", "nick": "ci", "id": "k1"}, key="s3cret"
    )
    assert status == 201 and body["message"]["seq"] == 1 and body["duplicate"] is False
    await ann.expect("message", text="deploy done", nick="ci", seq=1)
    status, body = await http(
        server, "POST", path, {"text": "deploy done", "id": "k1"}, key="s3cret"
    )
    assert status == 200 and body["duplicate"] is True and body["message"]["seq"] == 1
    await ann.silent()
    await ann.close()


async def test_publish_is_refused_when_no_api_key_is_configured(make_chat, monkeypatch):
    monkeypatch.delenv("HUBBUB_API_KEY", raising=False)
    server = await make_chat()
    status, body = await http(server, "POST", "/api/rooms/x/messages", {"text": "hi"}, key="any")
    assert status == 403 and "disabled" in body["error"]


@via
async def test_resume_gets_exactly_the_missed_messages_then_live(make_chat, via):
    server = await make_chat(rate=0)
    ann = await Client.open(server, "ann", "lobby", via=via)
    bob = await Client.open(server, "bob", "lobby", via=via)
    await ann.expect("joined", nick="bob")
    await ann.send(type="send", room="lobby", id="a1", text="one")
    await ann.expect("message", seq=1)
    await ann.expect("ack", id="a1")
    first = await bob.expect("message", seq=1)
    epoch = first["epoch"]
    await bob.close()
    await ann.expect("left", nick="bob")
    for i in range(2, 5):
        await ann.send(type="send", room="lobby", id=f"a{i}", text=f"n{i}")
    # Missed = stored before bob is back: a send still in the journal when bob's
    # catch-up reads comes live after ``resumed`` instead (right, but not this test).
    frames = [await ann.recv() for _ in range(6)]  # each message and its ack
    assert {f.get("id") for f in frames if f["type"] == "ack"} == {"a2", "a3", "a4"}
    bob = await Client.open(server, via=via)
    await bob.join("lobby", "bob", since=1, epoch=epoch)
    got = [await bob.recv() for _ in range(4)]
    assert [(f["type"], f.get("seq")) for f in got] == [
        ("message", 2),
        ("message", 3),
        ("message", 4),
        ("resumed", 4),
    ]
    await ann.send(type="send", room="lobby", id="a5", text="live")
    await bob.expect("message", seq=5, text="live")
    await bob.silent()
    for c in (ann, bob):
        await c.close()


async def test_resume_says_so_when_history_cannot_be_replayed(make_chat):
    server = await make_chat(rate=0, retention_count=2)
    ann = await Client.open(server, "ann", "lobby")
    for i in range(5):
        await ann.send(type="send", room="lobby", id=f"x{i}", text=f"{i}")
    for _ in range(10):
        await ann.recv()
    await server.app.retention.run()
    bob = await Client.open(server)
    await bob.join("lobby", "bob", since=1)
    await bob.expect("reset", reason="retention", seq=5, oldest=4)
    bob2 = await Client.open(server)
    await bob2.join("lobby", "bob2", since=3, epoch="not-the-epoch")
    await bob2.expect("reset", reason="epoch")
    for c in (ann, bob, bob2):
        await c.close()


async def http(server: Any, method: str, path: str, body: Any = None, key: str | None = None):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}\r\n"
    if key is not None:
        head += f"Authorization: Bearer {key}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + payload)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head_bytes.split()[1])
    return status, json.loads(rest) if rest else None


# -- gapless resume under concurrent traffic ----------------------------------


class SlowReads:
    """A store whose reads take a few milliseconds: live traffic keeps flowing
    while a resuming reader's catch-up is in progress, which is the race the
    catch-up buffer must win."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_room(self, room: str) -> Any:
        await asyncio.sleep(random.random() * 0.005)
        return await self.inner.create_room(room)

    async def since(self, room: str, seq: int, limit: int) -> Any:
        result = await self.inner.since(room, seq, limit)
        await asyncio.sleep(random.random() * 0.005)
        return result


async def _resume_run(cut_points: list[int], senders: int, per_sender: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = SlowReads(SQLiteStore(f"{tmp}/r.db"))
        server = create_app("127.0.0.1", 0, Settings(db=f"{tmp}/r.db", rate=0), store=store)
        await server.listen()
        try:
            await _resume_scenario(server, cut_points, senders, per_sender)
        finally:
            await server.shutdown()


async def _resume_scenario(
    server: Any, cut_points: list[int], senders: int, per_sender: int, via: str = "websocket"
):
    total = senders * per_sender
    reader = await Client.open(server, "reader", "r", via=via)
    writers = [await Client.open(server, f"w{i}", "r") for i in range(senders)]

    async def write(i: int, c: Client) -> None:
        for j in range(per_sender):
            await c.send(type="send", room="r", id=f"{i}-{j}", text=f"{i}:{j}")
            # Paced, so that traffic is still flowing while the reader resumes.
            await asyncio.sleep(random.random() * 0.003)

    tasks = [asyncio.create_task(write(i, c)) for i, c in enumerate(writers)]
    seen: list[int] = []
    epoch = None
    cuts = sorted(set(cut_points))
    while len(seen) < total:
        frame = await reader.recv(within=10)
        if frame["type"] != "message":
            continue
        assert frame["seq"] == (seen[-1] + 1 if seen else 1), (seen[-5:], frame["seq"])
        seen.append(frame["seq"])
        epoch = frame["epoch"]
        if cuts and len(seen) >= cuts[0]:
            cuts.pop(0)
            await reader.abort()  # drop without a goodbye, mid-stream
            reader = await Client.open(server, via=via)
            await reader.join("r", "reader", since=seen[-1], epoch=epoch)
    await asyncio.gather(*tasks)
    assert seen == list(range(1, total + 1))
    # Whatever still arrives (the "resumed" marker of the last resume) is no message.
    with pytest.raises(TimeoutError):
        while True:
            assert (await reader.recv(0.1))["type"] != "message"
    await reader.ws.close()
    for c in writers:
        # Writers never read their copies; a closing handshake would wait on them.
        c.ws.transport.abort()


@pytest.mark.parametrize("via", ["sse", "poll"])
async def test_resume_over_sessions_has_no_loss_duplicate_or_reorder(make_chat, via):
    # The reader drops its session mid-stream and resumes on a new one, three times.
    server = await make_chat(rate=0)
    await _resume_scenario(server, [7, 40, 41], senders=2, per_sender=30, via=via)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut_points=st.lists(st.integers(min_value=1, max_value=119), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
async def test_resume_under_concurrent_traffic_has_no_loss_duplicate_or_reorder(cut_points, seed):
    random.seed(seed)
    await _resume_run(cut_points, senders=3, per_sender=40)


async def test_acked_messages_survive_kill_9(spawn, tmp_path):
    port = free_port()
    db = tmp_path / "durable.db"
    args = serve_args(port, "--db", str(db), "--rate", "0")
    proc = spawn(*args, port=port)
    url = f"ws://127.0.0.1:{port}/"
    ann = await Client.open(url, "ann", "lobby")
    for i in range(50):
        await ann.send(type="send", room="lobby", id=f"k{i}", text=f"durable {i}")
    acked = []
    while len(acked) < 50:
        frame = await ann.recv()
        if frame["type"] == "ack":
            acked.append(frame["seq"])
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    spawn(*args, port=port)
    status, body = await http(
        type("S", (), {"port": port})(), "GET", "/api/rooms/lobby/messages?limit=200"
    )
    assert status == 200
    assert [m["seq"] for m in body["messages"]] == acked == list(range(1, 51))
    assert body["messages"][-1]["text"] == "durable 49"


class FlakyRoomReads:
    """A store whose first ``create_room()`` (a join's read) fails, like a database that
    blipped."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_room(self, room: str) -> Any:
        if self.failures:
            self.failures -= 1
            raise StoreError("database is locked")
        return await self.inner.create_room(room)


async def test_a_join_the_store_cannot_serve_is_undone_so_it_can_be_retried(tmp_path):
    store = FlakyRoomReads(SQLiteStore(tmp_path / "f.db"))
    server = create_app("127.0.0.1", 0, Settings(db=str(tmp_path / "f.db")), store=store)
    await server.listen()
    try:
        ann = await Client.open(server)
        await ann.send(type="join", room="lobby", nick="ann")
        await ann.expect("error", code="unavailable", ref="join", room="lobby")
        await ann.send(type="send", room="lobby", id="x", text="not yet")
        await ann.expect("error", code="not_in_room")
        state = await ann.join("lobby", "ann")  # a plain retry works
        assert state["members"] == ["ann"]
        await ann.close()
    finally:
        await server.shutdown()


class SlowSince(SlowReads):
    async def since(self, room: str, seq: int, limit: int) -> Any:
        result = await self.inner.since(room, seq, limit)
        await asyncio.sleep(0.3)
        return result


async def test_traffic_beyond_the_buffer_during_a_replay_gives_reset_not_resumed(tmp_path):
    store = SlowSince(SQLiteStore(tmp_path / "s.db"))
    settings_ = Settings(db=str(tmp_path / "s.db"), rate=0, max_resume=3)
    server = create_app("127.0.0.1", 0, settings_, store=store)
    await server.listen()
    try:
        ann = await Client.open(server, "ann", "lobby")
        await ann.send(type="send", room="lobby", id="m0", text="before")
        await ann.expect("message", seq=1)
        bob = await Client.open(server)
        await bob.send(type="join", room="lobby", nick="bob", since=0)
        await bob.expect("room")
        for i in range(5):  # published while bob's replay is slowed down
            await ann.send(type="send", room="lobby", id=f"m{i + 1}", text=f"during {i}")
        frames = [await bob.recv() for _ in range(2)]
        assert [f["type"] for f in frames] == ["message", "reset"]
        assert frames[1]["reason"] == "too_far"
        # Live from here on, and no `resumed` ever follows the reset.
        await ann.send(type="send", room="lobby", id="m9", text="after")
        live = await bob.expect("message", text="after")
        assert live["seq"] == 7
        for c in (ann, bob):
            await c.close()
    finally:
        await server.shutdown()


# -- rooms: reads never create them; an operator can delete them --------------


async def test_reading_a_room_that_does_not_exist_creates_nothing(make_chat, tmp_path):
    server = await make_chat(rate=0)
    ann = await Client.open(server, "ann", "lobby")
    status, before = await http(server, "GET", "/api/rooms")
    assert status == 200 and [r["name"] for r in before["rooms"]] == ["lobby"]
    for i in range(200):
        status, body = await http(server, "GET", f"/api/rooms/ghost-{i}/messages")
        assert status == 404 and body["error"] == f"no room called 'ghost-{i}'"
    for name in ("ghost-0", "other"):
        await ann.send(type="history", room=name)
        await ann.expect("error", code="no_such_room", ref="history", room=name)
    await ann.send(type="rooms")
    assert [r["name"] for r in (await ann.expect("rooms"))["rooms"]] == ["lobby"]
    assert await http(server, "GET", "/api/rooms") == (200, before)
    await ann.close()
    await server.shutdown()
    # Nothing was written either: a restarted server lists the same rooms.
    again = await make_chat(rate=0)
    status, body = await http(again, "GET", "/api/rooms")
    assert [r["name"] for r in body["rooms"]] == ["lobby"]


async def test_a_join_or_a_post_creates_a_room(make_chat):
    server = await make_chat(api_key="k")
    ann = await Client.open(server, "ann", "fresh")
    await ann.send(type="history", room="fresh")
    page = await ann.expect("history", room="fresh", messages=[], has_more=False)
    status, body = await http(server, "POST", "/api/rooms/posted/messages", {"text": "x"}, key="k")
    assert status == 201
    status, body = await http(server, "GET", "/api/rooms/fresh/messages")
    assert status == 200 and body["epoch"] == page["epoch"]
    status, body = await http(server, "GET", "/api/rooms")
    assert [r["name"] for r in body["rooms"]] == ["fresh", "posted"]
    await ann.close()


async def test_an_operator_deletes_a_room_and_its_members_are_told(make_chat, monkeypatch):
    monkeypatch.delenv("HUBBUB_API_KEY", raising=False)
    server = await make_chat(rate=0, api_key="s3cret")
    ann = await Client.open(server, "ann", "doomed")
    bob = await Client.open(server, "bob", "doomed")
    await ann.expect("joined", nick="bob")
    await ann.join("keep")
    await ann.send(type="send", room="doomed", id="d1", text="soon gone")
    old = await ann.expect("message", seq=1)
    await ann.expect("ack", id="d1")
    await bob.expect("message", seq=1)
    path = "/api/rooms/doomed"
    status, body = await http(server, "DELETE", path)
    assert status == 401 and "Bearer" in body["error"]
    status, _ = await http(server, "DELETE", path, key="wrong")
    assert status == 403
    status, body = await http(server, "DELETE", "/api/rooms/never", key="s3cret")
    assert status == 404 and "never" in body["error"]
    status, body = await http(server, "DELETE", "/api/rooms/bad%20name", key="s3cret")
    assert status == 400 and "room name" in body["error"]
    status, _ = await http(server, "GET", path)
    assert status == 405

    status, body = await http(server, "DELETE", path, key="s3cret")
    assert status == 200 and body == {"deleted": "doomed", "members_removed": 2}
    await ann.expect("left_room", room="doomed", reason="deleted")
    await bob.expect("left_room", room="doomed", reason="deleted")
    await ann.silent()  # no `left` for the others: everybody left at once
    status, body = await http(server, "GET", "/api/rooms")
    assert [r["name"] for r in body["rooms"]] == ["keep"]
    assert (await http(server, "GET", "/api/rooms/doomed/messages"))[0] == 404
    await ann.send(type="send", room="doomed", id="d2", text="too late")
    await ann.expect("error", code="not_in_room", id="d2")
    assert (await http(server, "DELETE", path, key="s3cret"))[0] == 404

    # Joining again creates a new room: a new epoch, numbering from 1, and a
    # client resuming with the old epoch is told to reload.
    await bob.close()
    bob = await Client.open(server)
    state = await bob.join("doomed", "bob", since=1, epoch=old["epoch"])
    assert state["epoch"] != old["epoch"] and state["seq"] == 0
    await bob.expect("reset", reason="epoch", seq=0)
    await bob.send(type="send", room="doomed", id="d1", text="new life")
    await bob.expect("message", seq=1, epoch=state["epoch"], text="new life")
    await bob.expect("ack", id="d1", duplicate=False)  # the old client id is gone too
    await ann.close()
    await bob.close()


class SlowAppend:
    """A store whose writes take a while, and that says when one begins."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.appending = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, batch: Any) -> Any:
        self.appending.set()
        await asyncio.sleep(0.3)
        return await self.inner.append(batch)


async def test_messages_accepted_before_a_delete_are_stored_first_not_after(tmp_path):
    # Without the journal barrier the delete runs before the slow write, which
    # then creates the room again behind the operator's back.
    store = SlowAppend(SQLiteStore(tmp_path / "d.db"))
    settings_ = Settings(db=str(tmp_path / "d.db"), rate=0, api_key="k")
    server = create_app("127.0.0.1", 0, settings_, store=store)
    await server.listen()
    try:
        ann = await Client.open(server, "ann", "doomed")
        await ann.send(type="send", room="doomed", id="m1", text="in flight")
        await asyncio.wait_for(store.appending.wait(), 5)
        status, body = await http(server, "DELETE", "/api/rooms/doomed", key="k")
        assert status == 200 and body["members_removed"] == 1
        frames = [await ann.recv() for _ in range(3)]
        assert [f["type"] for f in frames] == ["message", "ack", "left_room"]
        status, body = await http(server, "GET", "/api/rooms")
        assert body["rooms"] == []
        assert await store.inner.room("doomed") is None
        await ann.close()
    finally:
        await server.shutdown()


class FailingDelete:
    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def delete_room(self, room: str) -> bool:
        raise StoreError("disk I/O error")


async def test_a_delete_the_store_refuses_leaves_the_room_as_it_was(tmp_path):
    store = FailingDelete(SQLiteStore(tmp_path / "f.db"))
    server = create_app(
        "127.0.0.1", 0, Settings(db=str(tmp_path / "f.db"), api_key="k"), store=store
    )
    await server.listen()
    try:
        ann = await Client.open(server, "ann", "lobby")
        status, body = await http(server, "DELETE", "/api/rooms/lobby", key="k")
        assert status == 503 and body["error"] == "storage unavailable"
        await ann.send(type="send", room="lobby", id="s1", text="still open")
        await ann.expect("message", text="still open")
        bob = await Client.open(server, "bob", "lobby")  # joins work again too
        await ann.expect("ack", id="s1")
        await ann.expect("joined", nick="bob")
        for c in (ann, bob):
            await c.close()
    finally:
        await server.shutdown()


# -- clear refusals -------------------------------------------------------------


@via
async def test_a_dm_to_yourself_is_refused(make_chat, via):
    server = await make_chat()
    ann = await Client.open(server, "ann", "lobby", via=via)
    bob = await Client.open(server, "bob", "lobby", via=via)
    await ann.expect("joined", nick="bob")
    await ann.send(type="dm", room="lobby", to="Ann", text="note to self", id="n1")
    err = await ann.expect("error", code="dm_self", ref="dm", room="lobby", id="n1")
    assert "yourself" in err["message"]
    await bob.silent()
    for c in (ann, bob):
        await c.close()


async def test_validation_errors_are_words_not_regular_expressions(make_chat):
    server = await make_chat(api_key="k")
    ann = await Client.open(server)
    await ann.send(type="nick", nick="bad nick!")
    err = await ann.expect("error", code="bad_frame", ref="nick", field="nick")
    assert err["message"] == (
        "a nickname is 1-32 letters, digits, '.', '-' or '_' and starts with a letter or digit"
    )
    path = "/api/rooms/news/messages"
    status, body = await http(server, "POST", path, {"text": "hi", "nick": "bad nick!"}, key="k")
    assert status == 400 and body["field"] == "nick"
    assert body["error"] == "invalid body: " + err["message"]
    status, body = await http(server, "POST", path, {"text": ""}, key="k")
    assert (status, body["error"]) == (400, "invalid body: a message is 1-8000 characters")
    status, body = await http(server, "GET", "/api/rooms/-x/messages")
    assert (
        status == 400
        and "regex" not in body["error"]
        and "starting with a letter" in (body["error"])
    )
    await ann.close()


# -- one process per database --------------------------------------------------


async def test_a_second_server_on_the_same_database_refuses_to_start(spawn, tmp_path):
    db = tmp_path / "shared.db"
    port1, port2 = free_port(), free_port()
    first = spawn(*serve_args(port1, "--db", str(db)), port=port1)
    second = spawn(*serve_args(port2, "--db", str(db)))
    out, _ = await asyncio.to_thread(second.communicate, timeout=30)
    assert second.returncode == 1 and "Traceback" not in out, out
    assert f"{db} is in use by another hubbub process (pid {first.pid})" in out, out
    # The first one serves on, and numbers its messages alone.
    ann = await Client.open(f"ws://127.0.0.1:{port1}/", "ann", "lobby")
    await ann.send(type="send", room="lobby", id="x", text="still mine")
    await ann.expect("message", seq=1)
    await ann.close()
    first.send_signal(signal.SIGTERM)
    await asyncio.to_thread(first.communicate, timeout=30)
    # Once it is gone, the database is free.
    spawn(*serve_args(port2, "--db", str(db)), port=port2)


class SlowCreate:
    """A store whose ``create_room`` (a join's first read) takes a while."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.creating = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_room(self, room: str) -> Any:
        self.creating.set()
        await asyncio.sleep(0.3)
        return await self.inner.create_room(room)


async def test_a_join_in_progress_when_a_delete_begins_does_not_bring_the_room_back(tmp_path):
    # Without waiting for the join's catch-up, the delete runs first and the
    # join's create_room then creates the room again behind the operator's back.
    store = SlowCreate(SQLiteStore(tmp_path / "j.db"))
    server = create_app(
        "127.0.0.1", 0, Settings(db=str(tmp_path / "j.db"), api_key="k"), store=store
    )
    await server.listen()
    try:
        ann = await Client.open(server)
        await ann.send(type="join", room="doomed", nick="ann")
        await asyncio.wait_for(store.creating.wait(), 5)
        status, body = await http(server, "DELETE", "/api/rooms/doomed", key="k")
        assert status == 200 and body == {"deleted": "doomed", "members_removed": 1}
        await ann.expect("room", room="doomed")
        await ann.expect("left_room", room="doomed", reason="deleted")
        assert await store.inner.room("doomed") is None
        assert (await http(server, "GET", "/api/rooms"))[1]["rooms"] == []
        await ann.close()
    finally:
        await server.shutdown()


class HeldDelete:
    """A store whose ``delete_room`` waits until the test lets it go."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.deleting = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def delete_room(self, room: str) -> bool:
        self.deleting.set()
        await self.go.wait()
        return await self.inner.delete_room(room)


async def test_while_a_delete_runs_the_room_takes_no_joins_sends_or_posts(tmp_path):
    store = HeldDelete(SQLiteStore(tmp_path / "h.db"))
    settings_ = Settings(db=str(tmp_path / "h.db"), api_key="k", rate=0)
    server = create_app("127.0.0.1", 0, settings_, store=store)
    await server.listen()
    try:
        ann = await Client.open(server, "ann", "doomed")
        bob = await Client.open(server)
        delete = asyncio.create_task(http(server, "DELETE", "/api/rooms/doomed", key="k"))
        await asyncio.wait_for(store.deleting.wait(), 5)
        await ann.send(type="send", room="doomed", id="s1", text="now?")
        err = await ann.expect("error", code="unavailable", ref="send", id="s1")
        assert "being deleted" in err["message"]
        await bob.send(type="join", room="doomed", nick="bob")
        await bob.expect("error", code="unavailable", ref="join", room="doomed")
        status, body = await http(server, "POST", "/api/rooms/doomed/messages", {"text": "x"}, "k")
        assert status == 503 and "being deleted" in body["error"]
        store.go.set()
        assert (await delete)[0] == 200
        await ann.expect("left_room", reason="deleted")
        assert await store.inner.room("doomed") is None
        await bob.join("doomed", "bob")  # afterwards: a new room
        for c in (ann, bob):
            await c.close()
    finally:
        store.go.set()
        await server.shutdown()


async def test_welcome_tells_the_settings_and_the_protocols_limits(make_chat):
    server = await make_chat(max_message_size=4096, rate=5, burst=7, max_rooms_per_connection=3)
    ws = await connect(ws_url(server), subprotocols=["hubbub.v1"])
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert welcome["limits"] == {
        "max_message_size": 4096,
        "rate": 5,
        "burst": 7,
        "max_rooms": 3,
        "history_page": 200,
        "max_text": 8000,
        "max_nick": 32,
        "max_room": 64,
        "max_client_id": 64,
    }
    assert set(welcome["rules"]) == {"room", "nick"}
    await ws.close()


async def test_create_app_builds_the_default_store_and_broker_or_takes_the_given_ones(tmp_path):
    default = create_app("127.0.0.1", 0, Settings(db=str(tmp_path / "d.db")))
    assert isinstance(default.app.store, SQLiteStore)
    assert isinstance(default.app.broker, LocalBroker)
    store, broker = SQLiteStore(str(tmp_path / "g.db")), LocalBroker()
    given_ = create_app("127.0.0.1", 0, Settings(db=str(tmp_path / "x.db")), store, broker)
    assert given_.app.store is store and given_.app.broker is broker


def test_create_app_builds_the_store_and_broker_of_the_urls(tmp_path):
    from hubbub.broker.redis import RedisBroker
    from hubbub.errors import StartupError
    from hubbub.store.postgres import PostgresStore

    server = create_app(
        "127.0.0.1",
        0,
        Settings(
            store="postgresql://u:secret@db.example:5433/chat?schema=hub_1",
            broker="redis://127.0.0.1:6379/2?prefix=c1:",
        ),
    )
    store, broker = server.app.store, server.app.broker
    assert isinstance(store, PostgresStore) and store.schema == "hub_1"
    assert store.dsn == "postgresql://u:secret@db.example:5433/chat"
    assert isinstance(broker, RedisBroker) and broker.prefix == "c1:"
    assert broker.url == "redis://127.0.0.1:6379/2"
    assert broker.on_reconnect == server.app.on_broker_reconnect
    lite = create_app("127.0.0.1", 0, Settings(store=f"sqlite:///{tmp_path}/s.db"))
    assert isinstance(lite.app.store, SQLiteStore) and lite.app.store.path == f"{tmp_path}/s.db"
    for bad, words in [
        ({"store": "mysql://x/y"}, "sqlite:///PATH or postgresql://"),
        ({"store": "postgresql://u:secret@h/d?schema=no-dash"}, "schema must be"),
        ({"broker": "nats://x"}, "local or redis://"),
    ]:
        with pytest.raises(StartupError) as err:
            create_app("127.0.0.1", 0, Settings(**bad))
        assert words in str(err.value) and "secret" not in str(err.value)
        assert "\n" not in str(err.value)


async def test_readyz_says_whether_the_store_and_broker_answer(make_chat):
    server = await make_chat()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"ready\n")
    await server.app.store.close()  # the store is gone
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 503") and b"store unreachable" in raw


async def test_a_store_or_broker_that_cannot_start_is_one_line(tmp_path):
    from hubbub.errors import StartupError

    server = create_app(
        "127.0.0.1",
        0,
        Settings(db=str(tmp_path / "x.db"), broker="redis://127.0.0.1:1/0"),
    )
    with pytest.raises(StartupError) as err:
        await server.listen()
    assert "cannot start the broker redis://127.0.0.1:1/0" in str(err.value)
    assert "\n" not in str(err.value)


async def test_a_node_follows_exactly_the_rooms_its_members_are_in(make_chat):
    server = await make_chat(rate=0)
    app = server.app
    ann = await Client.open(server, "ann", "a")
    await ann.join("b", "ann")
    bob = await Client.open(server, "bob", "a")
    await ann.expect("joined", nick="bob")
    await ann.send(type="send", room="a", id="x", text="hi")  # a message settles the joins
    await bob.expect("message", seq=1)
    assert app.broker.subscribed == {"a", "b"} and set(app.sequencer.rooms) == {"a", "b"}
    assert app.broker._counts == {"a": 2, "b": 1}
    await ann.send(type="leave", room="b")
    await ann.expect("message", seq=1)
    await ann.expect("ack", id="x")
    await ann.expect("left_room", room="b")
    assert app.broker.subscribed == {"a"} and set(app.sequencer.rooms) == {"a"}
    await ann.close()
    await bob.expect("left", nick="ann")
    assert app.broker._counts == {"a": 1}
    await bob.close()
    from ..cluster.conftest import wait_until

    await wait_until(lambda: not app.broker.subscribed, what="the last member's room unfollowed")
    assert not app.broker.subscribed and not app.sequencer.rooms and not app._rooms_of


# -- the sequencer and epochs (a reset, possibly on another node) --------------------


def _stored(seq: int, epoch: str) -> p.Message:
    return p.Message("r", seq, epoch, f"id-{epoch}-{seq}", "ann", "t", 1.0)


class EpochStore:
    """The store's side of one room: its epoch's messages (as a reset leaves them)."""

    def __init__(self, epoch: str, upto: int) -> None:
        self.epoch = epoch
        self.messages = [_stored(i, epoch) for i in range(1, upto + 1)]

    async def since(self, room: str, after: int, limit: int) -> list[p.Message]:
        return [m for m in self.messages if m.seq > after][:limit]

    async def position(self, room: str) -> tuple[int, str]:
        return (self.messages[-1].seq if self.messages else 0), self.epoch


def _sequencer(store: EpochStore) -> tuple[Sequencer, list[tuple[int, bytes | None]], list]:
    out: list[tuple[int, bytes | None]] = []
    told: list[str] = []
    s = Sequencer(
        lambda room, payload, seq: out.append((seq, epoch_of(payload))),
        store.since,
        store.position,
        on_epoch=lambda room, epoch: told.append(epoch),
    )
    return s, out, told


def _frame(seq: int, epoch: str) -> bytes:
    return p.encode(_stored(seq, epoch))


async def test_the_sequencer_delivers_only_its_epoch_and_retires_the_old_one():
    store = EpochStore("e1", 2)
    s, out, told = _sequencer(store)
    await s.ready("r")
    assert (s.cursor("r"), s.epoch("r")) == (2, "e1")
    s.feed("r", 3, _frame(3, "e1"))
    s.feed("r", 1, _frame(1, "e2"))  # a new epoch, not known here yet: told, not delivered
    assert out == [(3, b"e1")] and told == ["e2"] and s.foreign == 1
    s.restart("r", "e2", 0)
    assert (s.cursor("r"), s.epoch("r")) == (0, "e2")
    s.feed("r", 4, _frame(4, "e1"))  # a late frame of the old epoch: dropped quietly
    s.feed("r", 1, _frame(1, "e2"))
    assert out == [(3, b"e1"), (1, b"e2")] and told == ["e2"] and s.stale == 1
    s.retire("r", "e0")
    s.feed("r", 2, _frame(2, "e0"))
    assert told == ["e2"] and s.stale == 2


async def test_frames_of_another_epoch_held_before_the_position_is_read_are_not_delivered():
    store = EpochStore("e2", 0)
    gate = asyncio.Event()
    real = store.position

    async def slow(room: str) -> tuple[int, str]:
        await gate.wait()
        return await real(room)

    store.position = slow  # type: ignore[method-assign]
    s, out, told = _sequencer(store)
    ready = asyncio.ensure_future(s.ready("r"))
    await asyncio.sleep(0)
    s.feed("r", 5, _frame(5, "e1"))  # the old epoch's, in flight when the room was reset
    s.feed("r", 1, _frame(1, "e2"))
    gate.set()
    await ready
    assert out == [(1, b"e2")] and told == ["e1"]


async def test_a_restart_fails_the_waiters_and_a_backfill_stops_at_another_epoch():
    store = EpochStore("e1", 3)
    s, out, told = _sequencer(store)
    await s.ready("r")
    waiter = asyncio.ensure_future(s.reach("r", 10))
    await asyncio.sleep(0)
    s.restart("r", "e2", 0)
    with pytest.raises(StoreError, match="was reset"):
        await waiter
    # The store moved on to e3 behind this node's back: a backfill finds out.
    store.epoch, store.messages = "e3", [_stored(1, "e3"), _stored(2, "e3")]
    s.position("r", 2, urgent=True)
    for room in s.due():
        await s.backfill(room)
    assert out == [] and told == ["e3"]
