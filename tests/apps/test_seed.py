"""The seed's behaviour, byte for byte, for plain WebSocket clients."""

from __future__ import annotations

import asyncio
import logging

import pytest
from websockets.asyncio.client import connect

from ..conftest import recv_all, ws_url


async def test_greeting_broadcast_and_echo_with_several_clients(seed_server):
    url = ws_url(seed_server)
    async with connect(url) as c1, connect(url) as c2, connect(url, compression=None) as c3:
        for ws in (c1, c2, c3):
            assert await recv_all(ws, 1) == ["Hello, welcome\n"]
        await c2.send("hello there")
        # The sender gets the broadcast, then "server: ..." exactly once.
        assert await recv_all(c2, 2) == ["from 2: hello there", "server: hello there"]
        assert await recv_all(c1, 1) == ["from 2: hello there"]
        assert await recv_all(c3, 1) == ["from 2: hello there"]
        await c1.send("ünïcødé ✓")
        assert await recv_all(c1, 2) == ["from 1: ünïcødé ✓", "server: ünïcødé ✓"]
        assert await recv_all(c3, 1) == ["from 1: ünïcødé ✓"]
        assert await recv_all(c2, 1) == ["from 1: ünïcødé ✓"]
        # Nothing else arrives: no duplicate "server:" line, no stray frames.
        for ws in (c1, c2, c3):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)


async def test_messages_from_many_senders_reach_everyone_in_one_order(seed_server):
    url = ws_url(seed_server)
    clients = [await connect(url) for _ in range(6)]
    try:
        for ws in clients:
            await recv_all(ws, 1)
        await asyncio.gather(
            *(ws.send(f"m{i}-{j}") for j in range(5) for i, ws in enumerate(clients))
        )
        expected_total = 6 * 5
        orders = []
        for i, ws in enumerate(clients):
            got = await recv_all(ws, expected_total + 5)
            froms = [m for m in got if m.startswith("from ")]
            servers = [m for m in got if m.startswith("server: ")]
            assert len(froms) == expected_total and len(servers) == 5
            assert servers == [f"server: m{i}-{j}" for j in range(5)]
            orders.append(froms)
        assert all(o == orders[0] for o in orders)
    finally:
        for ws in clients:
            await ws.close()


async def test_close_is_logged_as_client_fd_closed(seed_server, caplog):
    caplog.set_level(logging.INFO, logger="hubbub.chat")
    async with connect(ws_url(seed_server)) as ws:
        await recv_all(ws, 1)
    for _ in range(100):
        if any(r.getMessage() == "client-1 closed" for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    assert [r.getMessage() for r in caplog.records if "closed" in r.getMessage()] == [
        "client-1 closed"
    ]


async def test_http_routes_on_the_same_port(seed_server):
    reader, writer = await asyncio.open_connection("127.0.0.1", seed_server.port)

    async def get(path: str) -> tuple[str, bytes]:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        return head.split(b"\r\n")[0].decode(), await reader.readexactly(length)

    status, body = await get("/")
    assert status == "HTTP/1.1 200 OK" and b"/static/app.js" in body
    status, body = await get("/static/app.js")
    assert status == "HTTP/1.1 200 OK" and b"hubbub.v1" in body
    status, body = await get("/seed.html")
    assert status == "HTTP/1.1 200 OK" and b'src="/static/seed.js"' in body
    assert b"<script>" not in body and b"<style>" not in body  # the CSP allows neither
    status, body = await get("/static/seed.js")
    assert status == "HTTP/1.1 200 OK" and b"new WebSocket" in body
    status, body = await get("/healthz")
    assert status == "HTTP/1.1 200 OK" and body == b"ok\n"
    status, _ = await get("/missing")
    assert status == "HTTP/1.1 404 Not Found"
    writer.close()


async def test_seed_rate_drops_excess_messages_with_one_notice(make_chat):
    server = await make_chat(seed_rate=1.0, seed_burst=3.0)
    async with connect(ws_url(server)) as a, connect(ws_url(server)) as b:
        await recv_all(a, 1)
        await recv_all(b, 1)
        for i in range(10):
            await a.send(f"m{i}")
        got = await recv_all(a, 7)  # 3 allowed (2 frames each), then one notice
        assert got[:6] == [x for i in range(3) for x in (f"from 1: m{i}", f"server: m{i}")]
        assert got[6] == "server: rate limited"
        assert await recv_all(b, 3) == ["from 1: m0", "from 1: m1", "from 1: m2"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.recv(), 0.3)  # the rest never reached the room


async def test_seed_rate_off_by_default_keeps_every_message(seed_server):
    async with connect(ws_url(seed_server)) as a:
        await recv_all(a, 1)
        for i in range(200):
            await a.send(f"m{i}")
        got = await recv_all(a, 400)
        assert "server: rate limited" not in got
        assert got[-1] == "server: m199"
