"""The fallback transports over real sockets (docs/transports.md): SSE and long-poll
sessions chatting with WebSocket clients, resume, heartbeat, backpressure, admission.

The chat tests of tests/apps/test_chat.py also run over both (``via``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from hubbub import Server

from ..apps.test_chat import Client
from ..conftest import recv_all, ws_url
from .session_clients import SessionRefused, SessionSocket, read_events

KINDS = ["sse", "poll"]


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def until(condition: Any, within: float = 5.0) -> None:
    """Wait (bounded) for ``condition()`` to hold."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def request(
    server: Server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.request(method, base(server) + path, data=body, headers=headers or {}) as r:
            return r.status, dict(r.headers), await r.read()


async def session_client(server: Server, kind: str, nick: str, room: str) -> Client:
    sock = await SessionSocket.open(base(server), kind)
    client = Client(sock)
    welcome = await client.recv()
    assert welcome["type"] == "welcome"
    client.fd = welcome["fd"]
    await client.join(room, nick)
    return client


async def messages(client: Client, n: int) -> list[tuple[int, str]]:
    got: list[tuple[int, str]] = []
    while len(got) < n:
        frame = await client.recv()
        if frame["type"] == "message":
            got.append((frame["seq"], frame["text"]))
    return got


@pytest.mark.parametrize("kind", KINDS)
async def test_a_session_and_a_websocket_chat_in_one_room_in_the_same_order(make_chat, kind):
    server = await make_chat(rate=0)
    ann = await Client.open(server, "ann", "lobby")  # WebSocket
    bob = await session_client(server, kind, "bob", "lobby")
    await ann.expect("joined", nick="bob")
    assert server.connection_info(bob.fd)["subprotocol"] == "hubbub.v1"

    async def talk(client: Client, who: str) -> None:
        for i in range(15):
            await client.send(type="send", room="lobby", id=f"{who}{i}", text=f"{who} {i}")

    await asyncio.gather(talk(ann, "ann"), talk(bob, "bob"))
    seen_by_ann = await messages(ann, 30)
    seen_by_bob = await messages(bob, 30)
    assert seen_by_ann == seen_by_bob
    assert [seq for seq, _ in seen_by_bob] == list(range(1, 31))
    assert sorted(text for _, text in seen_by_bob) == sorted(
        [f"ann {i}" for i in range(15)] + [f"bob {i}" for i in range(15)]
    )
    await bob.close()
    await ann.expect("left", nick="bob")
    await ann.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_lost_session_is_404_and_a_new_one_resumes_without_gap_or_duplicate(
    make_chat, kind
):
    server = await make_chat(rate=0, ping_interval=0.2, ping_timeout=0.2)
    ann = await Client.open(server, "ann", "lobby")
    bob = await session_client(server, kind, "bob", "lobby")
    await ann.expect("joined", nick="bob")
    for i in range(1, 4):
        await ann.send(type="send", room="lobby", id=f"a{i}", text=f"t{i}")
    got = await messages(bob, 3)
    await bob.ws.stop()  # the network breaks: no more polls, no stream
    for i in range(4, 9):
        await ann.send(type="send", room="lobby", id=f"a{i}", text=f"t{i}")
    await until(lambda: not server.exist(bob.fd))  # expired after the heartbeat
    for _ in range(8 * 2 + 1):  # its 8 messages and acks, and:
        frame = await ann.recv()
        if frame["type"] == "left":
            break
    assert frame["type"] == "left" and frame["nick"] == "bob"
    status, _, body = await request(server, "GET", f"/v1/sessions/{bob.ws.sid}/poll?after=0")
    assert status == 404 and json.loads(body)["error"] == "no_such_session"
    # A new session, and join with since: exactly the missed ones, then live.
    bob = Client(await SessionSocket.open(base(server), kind))
    await bob.expect("welcome")
    await bob.send(type="history", room="lobby", limit=1)
    epoch = (await bob.expect("history"))["epoch"]
    await bob.join("lobby", "bob", since=got[-1][0], epoch=epoch)
    resumed = [await bob.recv() for _ in range(6)]
    assert [(f["type"], f.get("seq")) for f in resumed] == [
        *[("message", seq) for seq in range(4, 9)],
        ("resumed", 8),
    ]
    await ann.send(type="send", room="lobby", id="a9", text="live")
    await bob.expect("message", seq=9, text="live")
    await bob.silent()
    for c in (ann, bob):
        await c.close()


def echo_room(server: Server) -> None:
    """A bare server: every text message goes to everyone."""
    server.on("open", lambda s, request: s.push(request.fd, "hi"))
    server.on("message", lambda s, frame: s.broadcast(frame.data))


async def test_an_sse_client_that_does_not_read_is_dropped_while_others_get_everything(
    make_server, caplog
):
    limit = 64 * 1024
    server = await make_server(echo_room, max_send_buffer=limit, compression=False)
    reader = await SessionSocket.open(base(server), "sse", protocol=None)
    assert await reader.recv() == "hi"
    # The slow client: a raw socket that asks for its stream and never reads it.
    slow = await SessionSocket.open(base(server), "sse", protocol=None, read=False)
    slow_fd = max(server.connections)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    sock.send(f"GET /v1/sessions/{slow.sid}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await until(lambda: server._endpoint.sessions[slow.sid].stream is not None)
    text = "m" * 1000
    sent = 0
    with caplog.at_level(logging.WARNING, logger="hubbub.session"):
        async with connect(ws_url(server)) as ws:
            while server.exist(slow_fd) and sent < 4000:  # 4 MB at most
                await ws.send(text)
                sent += 1
                await recv_all(ws, 1)  # our own copy: paced by the server
    assert not server.exist(slow_fd), "the client that does not read was never dropped"
    assert sent < 4000
    assert any(
        "dropped" in r.getMessage() and "limit 65536" in r.getMessage() for r in caplog.records
    )
    # The reading client got every message, in order.
    got = [await asyncio.wait_for(reader.recv(), 5) for _ in range(sent)]
    assert got == [text] * sent
    assert server.exist(max(fd for fd in server.connections if fd != slow_fd))
    sock.close()
    await slow.stop()
    await reader.close()


async def test_a_poll_client_that_never_acknowledges_is_dropped_with_1013(make_server):
    server = await make_server(echo_room, max_send_buffer=8 * 1024)
    lazy = await SessionSocket.open(base(server), "poll", protocol=None, read=False)
    fd = max(server.connections)
    async with connect(ws_url(server)) as ws:
        for _ in range(10):
            await ws.send("x" * 1000)
    await until(lambda: not server.is_established(fd))
    # What it is told when it comes back: the close, not the dropped frames.
    status, _, body = await request(server, "GET", f"/v1/sessions/{lazy.sid}/poll?after=0")
    answer = json.loads(body)
    assert status == 200 and answer["closed"] == {"code": 1013, "reason": "send buffer overflow"}
    assert answer["frames"] == []
    assert not server.exist(fd)
    await lazy.stop()


async def test_an_sse_stream_resumes_after_last_event_id_with_nothing_lost_or_twice(make_server):
    server = await make_server(echo_room)
    sse = await SessionSocket.open(base(server), "sse", protocol=None)
    assert await sse.recv() == "hi"
    async with connect(ws_url(server)) as ws:
        await ws.send("one")
        assert await sse.recv() == "one"
        # The stream's connection dies; frames keep coming meanwhile.
        sse._task.cancel()
        for text in ("two", "three"):
            await ws.send(text)
        await recv_all(ws, 3)
        sse.start()  # a new GET with Last-Event-ID: 2
        assert [await sse.recv() for _ in range(2)] == ["two", "three"]
        # A fresh EventSource without the header, told where it was with ?after=.
        sse._task.cancel()
        await ws.send("four")
        await recv_all(ws, 1)
        async with sse.http.get(f"{sse.url}/events?after=4") as r:
            events = read_events(r.content)
            first = await asyncio.wait_for(events.__anext__(), 5)
        assert (first["id"], first["data"]) == ("5", "four")
    await sse.close()


async def test_an_sse_stream_too_far_behind_is_told_gone_and_the_session_closes(make_server):
    server = await make_server(echo_room, max_send_buffer=4096)
    sse = await SessionSocket.open(base(server), "sse", protocol=None)
    fd = max(server.connections)
    assert await sse.recv() == "hi"
    async with connect(ws_url(server)) as ws:
        for _ in range(8):  # the replay window keeps about 6 of these
            await ws.send("y" * 600)
            await recv_all(ws, 1)
    for _ in range(8):
        await sse.recv()
    sse._task.cancel()
    async with sse.http.get(f"{sse.url}/events", headers={"Last-Event-ID": "1"}) as r:
        events = [e async for e in read_events(r.content)]
    assert [e.get("event") for e in events] == ["gone"]
    assert json.loads(events[0]["data"])["after"] == 1
    assert not server.exist(fd)
    await sse.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_server_disconnect_sends_pending_frames_then_the_close(make_server, kind):
    server = await make_server(echo_room)
    client = await SessionSocket.open(base(server), kind, protocol=None)
    fd = max(server.connections)
    assert await client.recv() == "hi"
    server.push(fd, "last words")
    assert server.disconnect(fd, 4000, "bye")
    assert await client.recv() == "last words"
    with pytest.raises(Exception, match="bye"):
        await client.recv()
    assert client.closed == {"code": 4000, "reason": "bye"}
    await until(lambda: not server.exist(fd))
    await client.stop()


async def test_origin_allow_list_applies_to_sessions(make_chat):
    server = await make_chat(allowed_origins="https://chat.example")
    status, _, body = await request(
        server, "POST", "/v1/sessions?transport=sse", headers={"Origin": "https://evil.example"}
    )
    assert status == 403 and b"not allowed" in body
    sock = await SessionSocket.open(
        base(server), "sse", headers={"Origin": "https://chat.example"}, read=False
    )
    status, _, body = await request(
        server, "GET", f"/v1/sessions/{sock.sid}/events", headers={"Origin": "https://evil.example"}
    )
    assert status == 403 and json.loads(body)["error"] == "forbidden_origin"
    await sock.close()


async def test_pages_of_another_allowed_origin_may_read_the_answers(make_server):
    server = await make_server(echo_room, allowed_origins="https://chat.example")
    page = {"Origin": "https://chat.example"}
    status, headers, _ = await request(
        server,
        "OPTIONS",
        "/v1/sessions?transport=sse",
        headers={**page, "Access-Control-Request-Method": "POST"},
    )
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://chat.example"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, body = await request(
        server, "POST", "/v1/sessions?transport=sse&protocol=", headers=page
    )
    assert status == 201 and headers["Access-Control-Allow-Origin"] == "https://chat.example"
    sid = json.loads(body)["session"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base(server)}/v1/sessions/{sid}/events", headers=page) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "https://chat.example"
            assert r.headers["Content-Type"].startswith("text/event-stream")
    # The server's own pages need none of it.
    own = {"Origin": base(server)}
    status, headers, _ = await request(server, "POST", "/v1/sessions?transport=poll", headers=own)
    assert status == 201 and "Access-Control-Allow-Origin" not in headers


async def test_the_upgrade_event_decides_who_opens_a_session(make_server):
    users: dict[int, Any] = {}

    def setup(server: Server) -> None:
        def upgrade(s: Server, request: Any) -> tuple[int, str] | None:
            if request.headers.get("authorization") != "Bearer good":
                return 401, "a token is required"
            request.user = "ann"
            return None

        server.on("upgrade", upgrade)
        server.on("open", lambda s, request: users.__setitem__(request.fd, request.user))

    server = await make_server(setup)
    for headers in ({}, {"Authorization": "Bearer bad"}):
        with pytest.raises(SessionRefused) as refused:
            await SessionSocket.open(base(server), "poll", headers=headers, read=False)
        assert refused.value.status == 401
        assert json.loads(refused.value.body)["message"] == "a token is required"
    assert not server.connections
    sock = await SessionSocket.open(
        base(server), "poll", headers={"Authorization": "Bearer good"}, read=False
    )
    assert list(users.values()) == ["ann"]
    await sock.close()


async def test_connection_limits_apply_to_sessions(make_server):
    server = await make_server(echo_room, max_connections=1)
    one = await SessionSocket.open(base(server), "poll", protocol=None, read=False)
    with pytest.raises(SessionRefused) as refused:
        await SessionSocket.open(base(server), "sse", protocol=None, read=False)
    assert refused.value.status == 503
    await one.close()
    await until(lambda: not server.connections)
    two = await SessionSocket.open(base(server), "sse", protocol=None, read=False)
    await two.close()


async def test_several_workers_on_one_port_refuse_sessions_with_a_reason(make_server):
    server = await make_server(echo_room, workers=2)
    with pytest.raises(SessionRefused) as refused:
        await SessionSocket.open(base(server), "poll", protocol=None, read=False)
    assert refused.value.status == 503
    assert "--workers 1" in json.loads(refused.value.body)["message"]


async def test_bad_requests_get_clear_answers(make_server):
    server = await make_server(echo_room, max_message_size=100)
    sock = await SessionSocket.open(base(server), "sse", protocol=None)
    fd = max(server.connections)
    assert await sock.recv() == "hi"
    url = f"/v1/sessions/{sock.sid}"
    cases = [
        ("POST", "/v1/sessions?transport=carrier-pigeon", b"", 400, "bad_request"),
        ("GET", "/v1/sessions", b"", 405, "method_not_allowed"),
        ("GET", "/v1/sessions/nope/poll", b"", 404, "no_such_session"),
        ("GET", f"{url}/poll", b"", 400, "wrong_transport"),
        ("GET", f"{url}/events?after=x", b"", 400, "bad_request"),
        ("GET", f"{url}/elsewhere", b"", 404, "not_found"),
        ("GET", f"{url}/frames", b"", 405, "method_not_allowed"),
        ("POST", f"{url}/frames", b"a\n" * 65, 413, "too_many_frames"),
    ]
    for method, path, body, status, code in cases:
        got, headers, answer = await request(server, method, path, body)
        assert (got, json.loads(answer)["error"]) == (status, code), (method, path)
        assert headers["Content-Type"] == "application/json"
    got, _, answer = await request(server, "POST", "/v1/sessions?transport=sse&protocol=nope")
    assert got == 201 and json.loads(answer)["protocol"] == ""  # as a WebSocket: plain
    assert await sock.post(["ok", "", "fine"]) == {"accepted": 2}  # blank lines skipped
    assert [await sock.recv() for _ in range(2)] == ["ok", "fine"]
    # Not UTF-8: refused, and the session is closed as a WebSocket would be (1007).
    got, _, _ = await request(server, "POST", f"{url}/frames", b"\xff\xfe\n")
    assert got == 400
    with pytest.raises(Exception, match="1007"):
        await sock.recv()
    await until(lambda: not server.exist(fd))
    await sock.stop()


async def test_session_ids_never_reach_the_access_log(make_server, caplog):
    server = await make_server(echo_room, access_log=True)
    with caplog.at_level(logging.INFO, logger="hubbub.access"):
        sock = await SessionSocket.open(base(server), "poll", protocol=None)
        assert await sock.recv() == "hi"
        await sock.send("hello")
        assert await sock.recv() == "hello"
        await sock.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "hubbub.access"]
    assert any("/v1/sessions/<redacted>/poll" in line for line in lines), lines
    assert any("/v1/sessions/<redacted>/frames" in line for line in lines), lines
    assert not any(sock.sid in line for line in lines)


async def test_shutdown_closes_sessions_with_1001(make_server):
    server = await make_server(echo_room)
    sse = await SessionSocket.open(base(server), "sse", protocol=None)
    poll = await SessionSocket.open(base(server), "poll", protocol=None)
    idle = await SessionSocket.open(base(server), "poll", protocol=None, read=False)
    assert await sse.recv() == "hi" and await poll.recv() == "hi"
    await until(
        lambda: all(
            s.poll or s.stream for s in server._endpoint.sessions.values() if s.id != idle.sid
        )
    )
    await asyncio.wait_for(server.shutdown(), 2.5)  # under shutdown_timeout: none waited for
    for client in (sse, poll):
        with pytest.raises(Exception, match="1001"):
            await client.recv()
    assert not server._endpoint.all
    for client in (sse, poll, idle):
        await client.stop()


async def test_a_post_waits_while_the_app_is_behind_on_that_session(make_server):
    go = asyncio.Event()
    handled: list[str] = []

    def setup(server: Server) -> None:
        async def on_message(s: Server, frame: Any) -> None:
            await go.wait()
            handled.append(frame.data)

        server.on("message", on_message)

    server = await make_server(setup, max_pending_messages=2)
    sock = await SessionSocket.open(base(server), "poll", protocol=None, read=False)
    post = asyncio.ensure_future(sock.post([f"m{i}" for i in range(6)]))
    session = server._endpoint.sessions[sock.sid]
    await until(lambda: session.holds)
    await asyncio.sleep(0.1)  # a POST not held would have been answered by now
    assert not post.done() and handled == []
    go.set()
    assert await asyncio.wait_for(post, 5) == {"accepted": 6}
    await until(lambda: len(handled) == 6)
    assert handled == [f"m{i}" for i in range(6)]  # in order
    await sock.close()


async def test_a_poll_after_frames_it_never_got_ends_the_session(make_server):
    server = await make_server(echo_room)
    sock = await SessionSocket.open(base(server), "poll", protocol=None, read=False)
    fd = max(server.connections)
    status, _, body = await request(server, "GET", f"/v1/sessions/{sock.sid}/poll?after=99")
    assert status == 404 and json.loads(body)["error"] == "no_such_session"
    assert not server.exist(fd)
    await sock.stop()


async def test_an_idle_stream_gets_ping_comments_and_proxy_friendly_headers(make_server):
    server = await make_server(echo_room, poll_timeout=0.2)  # pings every min(15 s, 0.2 s)
    sock = await SessionSocket.open(base(server), "sse", protocol=None, read=False)
    async with sock.http.get(f"{sock.url}/events") as r:
        assert r.headers["X-Accel-Buffering"] == "no"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Transfer-Encoding"] == "chunked"
        lines = []
        while lines.count(b": ping\n") < 2:
            lines.append(await asyncio.wait_for(r.content.readline(), 2))
    assert lines[:4] == [b"retry: 1000\n", b": ok\n", b"\n", b"id: 1\n"]
    assert b"data: hi\n" in lines
    await sock.close()


async def test_an_http_1_0_client_gets_a_stream_that_ends_with_the_connection(make_server):
    server = await make_server(echo_room)
    sock = await SessionSocket.open(base(server), "sse", protocol=None, read=False)
    fd = max(server.connections)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /v1/sessions/{sock.sid}/events HTTP/1.0\r\n\r\n".encode())
    await until(lambda: server._endpoint.sessions[sock.sid].stream is not None)
    server.disconnect(fd, 1000, "done")
    raw = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closed
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding" not in head
    assert body == (
        b"retry: 1000\n: ok\n\nid: 1\ndata: hi\n\n"
        b'event: close\ndata: {"code": 1000, "reason": "done"}\n\n'
    )
    writer.close()
    await sock.stop()
