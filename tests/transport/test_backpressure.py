"""No client can make the server buffer without bound: pipelined HTTP requests
whose answers are never read, and WebSocket floods whose replies are never read."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from ..conftest import recv_all, ws_url
from .test_http import open_conn

LIMIT = 64 * 1024
BODY = b"x" * 4096


async def _fill(writer: asyncio.StreamWriter, chunk: bytes, max_bytes: int) -> int:
    """Write ``chunk`` until the server stops reading (drain stalls) or max_bytes; returns bytes."""
    sent = 0
    while sent < max_bytes:
        writer.write(chunk)
        sent += len(chunk)
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
        except TimeoutError:
            break
    return sent


def _small_rcvbuf(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


async def test_pipelined_requests_never_read_stay_bounded_and_are_aborted(make_server):
    def on_request(req, resp):
        resp.end(BODY)

    server = await make_server(
        lambda s: s.on("request", on_request), max_send_buffer=LIMIT, handshake_timeout=3.0
    )
    _reader, writer = await open_conn(server)
    _small_rcvbuf(writer)
    request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    # Up to 4 MB of requests (150,000 answers of 4 KiB = 600 MB if all were answered).
    sent = await _fill(writer, request * 2000, 4 * 1024 * 1024)
    assert sent < 4 * 1024 * 1024, "the server never stopped reading"
    (conn,) = server._endpoint.http
    assert conn.write_paused
    pending = conn.transport.get_write_buffer_size()
    # The limit, plus the one answer that crossed it.
    assert pending <= LIMIT + len(BODY) + 1024, pending
    # Parsed-but-unanswered requests are bounded by one parse slice, not the read.
    assert len(conn.queue) <= 16 * 1024 // len(request) + 1
    # Still not reading: the server does not answer or buffer more meanwhile.
    await asyncio.sleep(0.2)
    assert conn.transport.get_write_buffer_size() == pending
    # The peer never reads: after handshake_timeout the connection is aborted.
    loop = asyncio.get_running_loop()
    end = loop.time() + 8.0
    while server._endpoint.http:
        assert loop.time() < end, "the stalled connection outlived its timeout"
        await asyncio.sleep(0.05)
    writer.close()


async def test_pipelined_answers_all_arrive_for_a_reader(make_server):
    def on_request(req, resp):
        resp.end(BODY)

    server = await make_server(lambda s: s.on("request", on_request), max_send_buffer=LIMIT)
    reader, writer = await open_conn(server)
    n = 3000  # about 12 MB of answers through a 64 KiB limit
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * n)
    got = 0
    expect = len(b"\r\n\r\n") + len(BODY)
    data = b""
    while got < n:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 5.0)
        assert chunk, "connection closed early"
        data += chunk
        while True:
            head_end = data.find(b"\r\n\r\n")
            if head_end < 0 or len(data) < head_end + expect:
                break
            assert data.startswith(b"HTTP/1.1 200 ")
            data = data[head_end + expect :]
            got += 1
    assert got == n
    writer.close()


def _handshake(path: str = "/") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_websocket_flood_with_unread_replies_stays_bounded(make_chat):
    server = await make_chat(max_send_buffer=256 * 1024, compression=False)
    async with connect(ws_url(server), compression=None) as other:
        assert await recv_all(other, 1) == ["Hello, welcome\n"]
        reader, writer = await open_conn(server)
        _small_rcvbuf(writer)
        writer.write(_handshake())
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
        flooder = max(server._endpoint.all)
        frame = Frame(Opcode.TEXT, b"m" * 200).serialize(mask=True)
        # Each frame is answered twice to the flooder ("from N: ..." and "server: ...").
        sent = await _fill(writer, frame * 500, 8 * 1024 * 1024)
        assert sent < 8 * 1024 * 1024, "the server never stopped reading the flooder"
        # Held, not dropped: it sent too much, it did not lag behind others.
        assert server.is_established(flooder)
        conn = server._endpoint.all[flooder]
        size = conn.transport.get_write_buffer_size()
        # About the limit plus one slice's worth of replies (16 KiB of frames).
        assert size <= 256 * 1024 + 2 * 16 * 1024 * 2, size
        assert conn.holds, "reading is not paused"
        # The other client was not dropped and still chats promptly.
        received = 0
        try:
            while True:
                await asyncio.wait_for(other.recv(), 0.5)
                received += 1
        except TimeoutError:
            pass
        assert received > 0
        await other.send("still here")
        got = await recv_all(other, 2)
        assert got[-1] == "server: still here"
        writer.close()
