"""WebSocket limits over real sockets: what a misbehaving or slow client gets, and
that the server keeps serving everyone else afterwards."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hubbub import Server

from ..conftest import ws_url

TIMEOUT = 3.0
KiB = 1024

# -- helpers -------------------------------------------------------------------


class Events:
    """Echo handler plus a record of opened and closed fds."""

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.closed: list[int] = []

    def setup(self, server: Server) -> None:
        server.on("open", lambda s, req: self.opened.append(req.fd))
        server.on("close", lambda s, fd: self.closed.append(fd))
        server.on("message", lambda s, f: s.push(f.fd, f.data))

    async def next_fd(self, count_before: int) -> int:
        await wait_until(lambda: len(self.opened) > count_before)
        return self.opened[count_before]


async def wait_until(predicate: Callable[[], bool], within: float = TIMEOUT) -> float:
    """Poll until ``predicate()`` holds; returns the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def assert_serves(server: Server) -> None:
    """A new client connects and gets its message echoed."""
    async with connect(ws_url(server)) as ws:
        await ws.send("still there?")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still there?"


async def closed_by_server(ws: ClientConnection, send: object = None) -> ConnectionClosed:
    """Optionally send ``send``, then receive until the connection closes; return the error."""
    with pytest.raises(ConnectionClosed) as info:
        if send is not None:
            await asyncio.wait_for(ws.send(send), TIMEOUT)  # type: ignore[arg-type]
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    return info.value


def masked(first_byte: int, payload: bytes) -> bytes:
    """A client frame (RFC 6455 5.2) with the given first byte (FIN, RSV1-3, opcode)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([first_byte, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([first_byte, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first_byte, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


FIN = 0x80
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA

HANDSHAKE = (
    "GET / HTTP/1.1\r\n"
    "Host: 127.0.0.1\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n"
)


class RawWS:
    """A WebSocket client on a raw socket (no extension), for frames no library sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: Server) -> RawWS:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HANDSHAKE.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455 1.3's example accept
        return cls(reader, writer)

    def send(self, first_byte: int, payload: bytes) -> None:
        self.writer.write(masked(first_byte, payload))

    async def read_frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        assert not b2 & 0x80, "server frames must not be masked"
        n = b2 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        payload = await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT)
        return bool(b1 & 0x80), b1 & 0x0F, payload

    async def read_close(self) -> tuple[int, str, list[tuple[int, bytes]]]:
        """Read frames up to the server's Close; return its code, reason and the frames before."""
        before: list[tuple[int, bytes]] = []
        while True:
            _, opcode, payload = await self.read_frame()
            if opcode == CLOSE:
                assert len(payload) >= 2, payload
                code = int.from_bytes(payload[:2], "big")
                return code, payload[2:].decode(), before
            before.append((opcode, payload))

    async def assert_eof(self) -> None:
        """The server closed the TCP connection (nothing more after its Close)."""
        assert await asyncio.wait_for(self.reader.read(), TIMEOUT) == b""

    def close(self) -> None:
        self.writer.close()


# -- message size ----------------------------------------------------------------


async def test_message_over_max_message_size_closes_1009(make_server):
    events = Events()
    server = await make_server(events.setup, max_message_size=1024)
    async with connect(ws_url(server), compression=None) as ws:
        # Exactly the limit is fine.
        await ws.send("x" * 1024)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x" * 1024
        exc = await closed_by_server(ws, "y" * 1025)
    assert exc.rcvd is not None and exc.rcvd.code == 1009
    assert ws.close_code == 1009
    fd = events.opened[0]
    await wait_until(lambda: not server.exist(fd))
    assert fd in events.closed
    await assert_serves(server)


@pytest.mark.parametrize("kind", ["sync-iterator", "async-iterator"])
async def test_fragmented_message_over_max_message_size_closes_1009(make_server, kind):
    events = Events()
    server = await make_server(events.setup, max_message_size=1024)

    def fragments(parts: list[str]):
        if kind == "sync-iterator":
            return iter(parts)

        async def agen():
            for part in parts:
                yield part
                await asyncio.sleep(0.01)

        return agen()

    async with connect(ws_url(server), compression=None) as ws:
        # Fragments adding up to the limit are assembled and delivered.
        await ws.send(fragments(["a" * 300, "b" * 300, "c" * 424]))
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "a" * 300 + "b" * 300 + "c" * 424
        # Each fragment is under the limit; their total is not.
        exc = await closed_by_server(ws, fragments(["d" * 600, "e" * 600]))
    assert exc.rcvd is not None and exc.rcvd.code == 1009
    await assert_serves(server)


# -- UTF-8 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        [(FIN | TEXT, b"\xff\xfe")],
        [(FIN | TEXT, b"ok \xed\xa0\x80")],  # an encoded surrogate
        [(TEXT, b"caf\xe2\x82"), (FIN | CONT, b"(")],  # split sequence completed wrongly
        [(TEXT, b"ok"), (CONT, b"\xe2"), (FIN | CONT, b"\x82\xff")],
    ],
    ids=["single-frame", "surrogate", "split-across-fragments", "three-fragments"],
)
async def test_invalid_utf8_text_closes_1007(make_server, frames):
    events = Events()
    server = await make_server(events.setup)
    raw = await RawWS.open(server)
    try:
        for first, payload in frames:
            raw.send(first, payload)
        code, reason, before = await raw.read_close()
        await raw.assert_eof()
    finally:
        raw.close()
    assert code == 1007
    assert reason
    assert before == []  # nothing was delivered (and echoed)
    await assert_serves(server)


async def test_invalid_utf8_fails_at_the_bad_fragment_not_at_the_end(make_server):
    """RFC 6455 8.1: fail fast, without waiting for the message's last fragment."""
    server = await make_server(Events().setup)
    raw = await RawWS.open(server)
    try:
        raw.send(TEXT, b"fine so far")
        raw.send(CONT, b"\xc0\xaf")  # overlong encoding: invalid whatever follows
        code, _, _ = await raw.read_close()
    finally:
        raw.close()
    assert code == 1007


async def test_valid_utf8_split_across_fragments_is_delivered(make_server):
    server = await make_server(Events().setup)
    raw = await RawWS.open(server)
    try:
        euro = "€".encode()
        raw.send(TEXT, b"caf" + euro[:1])
        raw.send(CONT, euro[1:2])
        raw.send(FIN | CONT, euro[2:])
        assert await raw.read_frame() == (True, TEXT, b"caf" + euro)
    finally:
        raw.close()


# -- protocol errors -----------------------------------------------------------


@pytest.mark.parametrize(
    "first_byte",
    [FIN | 0x3, FIN | 0x7, FIN | 0xB, FIN | 0x40 | TEXT, FIN | 0x20 | TEXT, FIN | 0x10 | BINARY],
    ids=["opcode-3", "opcode-7", "opcode-B", "rsv1", "rsv2", "rsv3"],
)
async def test_unknown_opcode_or_reserved_bit_closes_1002(make_server, first_byte):
    events = Events()
    server = await make_server(events.setup)
    raw = await RawWS.open(server)
    fd = events.opened[-1]
    try:
        raw.send(first_byte, b"hi")
        code, _, before = await raw.read_close()
        await raw.assert_eof()
    finally:
        raw.close()
    assert code == 1002
    assert before == []
    await wait_until(lambda: not server.exist(fd))
    await assert_serves(server)


@pytest.mark.parametrize(
    "payload",
    [
        (999).to_bytes(2, "big"),
        (1005).to_bytes(2, "big"),
        (1006).to_bytes(2, "big"),
        (5000).to_bytes(2, "big"),
        b"\x03",  # one byte: not even a code
        (1000).to_bytes(2, "big") + b"\xff",  # reason not UTF-8
    ],
    ids=["999", "1005", "1006", "5000", "one-byte", "bad-reason"],
)
async def test_close_frame_with_invalid_payload_closes_1002(make_server, payload):
    server = await make_server(Events().setup)
    raw = await RawWS.open(server)
    try:
        raw.send(FIN | CLOSE, payload)
        code, _, _ = await raw.read_close()
        await raw.assert_eof()
    finally:
        raw.close()
    assert code == (1007 if payload.endswith(b"\xff") else 1002)
    await assert_serves(server)


async def test_valid_close_frame_is_echoed(make_server):
    events = Events()
    server = await make_server(events.setup)
    raw = await RawWS.open(server)
    fd = events.opened[-1]
    try:
        raw.send(FIN | CLOSE, (4321).to_bytes(2, "big") + b"done")
        code, reason, _ = await raw.read_close()
        await raw.assert_eof()
    finally:
        raw.close()
    assert (code, reason) == (4321, "done")
    await wait_until(lambda: fd in events.closed)
    assert not server.exist(fd)


# -- heartbeat -----------------------------------------------------------------


async def test_heartbeat_keeps_a_client_that_answers_pings(make_server):
    events = Events()
    server = await make_server(events.setup, ping_interval=0.2, ping_timeout=0.2)
    t0 = time.monotonic()
    async with connect(ws_url(server), ping_interval=None) as ws:
        fd = await events.next_fd(0)
        # A silent raw client on the same server is the control: it is dropped,
        # so the server really pings and enforces the timeout meanwhile.
        raw = await RawWS.open(server)
        try:
            raw_fd = await events.next_fd(1)
            await wait_until(lambda: not server.exist(raw_fd), 2.0)
        finally:
            raw.close()
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - t0)))
        assert server.exist(fd) and server.is_established(fd)
        assert fd in server.connections
        assert fd not in events.closed
        await ws.send("alive")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "alive"
    assert events.closed[0] == raw_fd


async def test_heartbeat_drops_a_client_that_never_answers(make_server):
    events = Events()
    server = await make_server(events.setup, ping_interval=0.2, ping_timeout=0.2)
    raw = await RawWS.open(server)
    try:
        fd = await events.next_fd(0)
        assert fd in server.connections
        took = await wait_until(lambda: not server.exist(fd), 2.0)
        # Not before a ping went unanswered for ping_timeout.
        assert took >= 0.3
        assert fd not in server.connections
        assert events.closed == [fd]
        # What the silent client was sent: a ping, then Close 1011.
        code, _, before = await raw.read_close()
    finally:
        raw.close()
    assert code == 1011
    assert (PING, b"hubbub") in before
    await assert_serves(server)


# -- connection limit ------------------------------------------------------------


async def test_max_connections_refuses_with_503_then_accepts_after_a_close(make_server):
    events = Events()
    server = await make_server(events.setup, max_connections=2)
    a = await connect(ws_url(server))
    b = await connect(ws_url(server))
    try:
        a_fd = await events.next_fd(0)
        with pytest.raises(InvalidStatus) as info:
            await asyncio.wait_for(connect(ws_url(server)), TIMEOUT)
        response = info.value.response
        assert response.status_code == 503
        assert b"limit" in response.body.lower()
        assert len(events.opened) == 2
        await a.close()
        await wait_until(lambda: not server.exist(a_fd))
        async with connect(ws_url(server)) as c:
            await c.send("third")
            assert await asyncio.wait_for(c.recv(), TIMEOUT) == "third"
        # b was never disturbed.
        await b.send("b")
        assert await asyncio.wait_for(b.recv(), TIMEOUT) == "b"
    finally:
        await a.close()
        await b.close()


# -- handshake validation --------------------------------------------------------


def handshake_without(name: str) -> str:
    lines = [line for line in HANDSHAKE.split("\r\n") if line and not line.startswith(name)]
    return "\r\n".join(lines) + "\r\n\r\n"


@pytest.mark.parametrize(
    ("request_text", "statuses"),
    [
        (handshake_without("Sec-WebSocket-Key"), {400}),
        (HANDSHAKE.replace("Version: 13", "Version: 8"), {400, 426}),
        (
            HANDSHAKE.replace("GET / ", "POST / ").replace(
                "\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n"
            ),
            {405},
        ),
        (
            HANDSHAKE.replace(
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Key: x"
            ),
            {400},
        ),
        (handshake_without("Connection"), {426}),
    ],
    ids=["missing-key", "version-8", "post", "short-key", "missing-connection"],
)
async def test_invalid_handshake_gets_4xx_with_a_reason(make_server, request_text, statuses):
    events = Events()
    server = await make_server(events.setup)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request_text.encode())
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)  # read to EOF: it closes
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status in statuses, raw
    assert b"\r\nConnection: close" in head
    assert b"\r\nUpgrade: websocket" not in head or status == 426
    text = body.decode()
    assert text.startswith("Failed to open a WebSocket connection: ")
    assert len(text.strip()) > len("Failed to open a WebSocket connection:")
    assert b"Traceback" not in raw and b'File "' not in raw
    assert events.opened == []
    await assert_serves(server)


# -- compression -----------------------------------------------------------------


async def test_compression_is_negotiated_when_offered(make_server):
    events = Events()
    server = await make_server(events.setup)
    async with connect(ws_url(server)) as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        fd = await events.next_fd(0)
        info = server.connection_info(fd)
        assert info is not None and info["compressed"] is True
        text = "compress me " * 1000
        await ws.send(text)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text
        data = os.urandom(5000)
        await ws.send(data)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == data


async def test_compression_disabled_is_not_negotiated(make_server):
    events = Events()
    server = await make_server(events.setup, compression=False)
    async with connect(ws_url(server)) as ws:  # offers permessage-deflate
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        fd = await events.next_fd(0)
        info = server.connection_info(fd)
        assert info is not None and info["compressed"] is False
        text = "plain " * 1000
        await ws.send(text)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text


async def test_decompression_bomb_closes_1009(make_server):
    events = Events()
    server = await make_server(events.setup, max_message_size=64 * KiB)
    async with connect(ws_url(server), max_size=None) as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        # A message just under the limit (decompressed) passes.
        await ws.send(bytes(64 * KiB))
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == bytes(64 * KiB)
        # 10 MB of zeros: about 10 KB on the wire.
        exc = await closed_by_server(ws, bytes(10 * 1024 * KiB))
    assert exc.rcvd is not None and exc.rcvd.code == 1009
    fd = events.opened[0]
    await wait_until(lambda: not server.exist(fd))
    await assert_serves(server)


# -- slow consumer -------------------------------------------------------------------


async def test_slow_consumer_is_dropped_with_1013_and_others_get_everything(make_server, caplog):
    caplog.set_level(logging.WARNING, logger="hubbub.websocket")
    limit = 256 * KiB
    n_messages = 200
    payload_size = 64 * KiB
    frame_size = payload_size + 10  # 64-bit length header: 2 + 8 bytes
    events = Events()
    steps: list[tuple[int, bool, int]] = []  # (sent to, A still open, A's buffered bytes)
    a_fd_box: list[int] = []

    def payload(i: int) -> bytes:
        return i.to_bytes(4, "big") + bytes(payload_size - 4)

    def on_message(s: Server, frame) -> None:
        if not frame.data.isdigit():
            s.push(frame.fd, frame.data)  # echo, for assert_serves
            return
        # B asks for message i; it is broadcast to everyone (A and B).
        i = int(frame.data)
        sent = s.broadcast(payload(i))
        a_fd = a_fd_box[0]
        conn = s._endpoint.all.get(a_fd)
        buffered = conn.transport.get_write_buffer_size() if conn is not None else 0
        steps.append((sent, a_fd in s.connections, buffered))

    def setup(s: Server) -> None:
        events.setup(s)
        s.on("message", on_message)

    server = await make_server(setup, max_send_buffer=limit, close_timeout=10)

    # A: a small kernel receive buffer and max_queue=1, so it stops reading
    # almost at once and the server's buffer for it fills up.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    a = await connect(ws_url(server), sock=sock, max_queue=1, compression=None)
    try:
        a_fd_box.append(await events.next_fd(0))
        async with connect(ws_url(server), compression=None, max_size=None) as b:
            b_fd = await events.next_fd(1)
            received = []
            t0 = time.monotonic()
            for i in range(n_messages):
                await b.send(str(i))
                received.append(await asyncio.wait_for(b.recv(), TIMEOUT))
            assert time.monotonic() - t0 < 10
            assert received == [payload(i) for i in range(n_messages)]
            assert b_fd in server.connections
        a_fd = a_fd_box[0]

        # A was dropped, logged once, at the broadcast that overfilled its buffer.
        drops = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING
            and "dropped" in r.getMessage()
            and f"client-{a_fd} " in r.getMessage()
        ]
        assert len(drops) == 1, [r.getMessage() for r in caplog.records]
        m = re.search(r"(\d+) bytes", drops[0].getMessage())
        assert m is not None
        logged = int(m.group(1))
        assert limit < logged <= limit + frame_size

        dropped_at = next(i for i, (_, a_open, _) in enumerate(steps) if not a_open)
        assert 0 < dropped_at < n_messages - 1
        # Writes are handed to the transport when the loop tick ends, so the
        # overflow is noticed right after the broadcast that caused it (each
        # broadcast here has a tick of its own): sent to both up to and
        # including that one, then to B only.
        assert [sent for sent, _, _ in steps] == [2] * dropped_at + [1] * (n_messages - dropped_at)
        assert all(not a_open for _, a_open, _ in steps[dropped_at:])
        assert a_fd not in server.connections
        # Never more than the limit plus one tick's frames, here one (plus the Close frame).
        assert max(buffered for _, _, buffered in steps) <= limit + frame_size + 64

        # A finally reads: everything queued before the drop, in order, then 1013.
        got = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                got.append(await asyncio.wait_for(a.recv(), TIMEOUT))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        assert a.close_code == 1013
        assert got == [payload(i) for i in range(dropped_at)]
        await wait_until(lambda: not server.exist(a_fd))
        assert a_fd in events.closed
    finally:
        await a.close()
    await assert_serves(server)


# -- server-initiated close ----------------------------------------------------------


async def test_disconnect_sends_code_and_reason(make_server):
    events = Events()
    server = await make_server(events.setup)
    async with connect(ws_url(server)) as ws:
        fd = await events.next_fd(0)
        assert server.disconnect(fd, 4000, "bye") is True
        # Leaves the broadcast set at once; exists until the handshake is done.
        assert not server.is_established(fd)
        assert server.exist(fd)
        assert server.push(fd, "late") is False
        exc = await closed_by_server(ws)
        assert exc.rcvd is not None
        assert (exc.rcvd.code, exc.rcvd.reason) == (4000, "bye")
        assert (ws.close_code, ws.close_reason) == (4000, "bye")
    await wait_until(lambda: not server.exist(fd))
    assert events.closed == [fd]
    assert server.disconnect(fd) is False


async def test_graceful_shutdown_closes_everyone_with_1001(make_server):
    events = Events()
    server = await make_server(events.setup, shutdown_timeout=2.0)
    clients = [await connect(ws_url(server)) for _ in range(3)]
    try:
        await wait_until(lambda: len(server.connections) == 3)
        waiters = [asyncio.ensure_future(closed_by_server(ws)) for ws in clients]
        t0 = time.monotonic()
        await asyncio.wait_for(server.shutdown(), server.settings.shutdown_timeout + 1)
        took = time.monotonic() - t0
        excs = await asyncio.gather(*waiters)
    finally:
        for ws in clients:
            await ws.close()
    assert took < server.settings.shutdown_timeout + 1
    for exc in excs:
        assert exc.rcvd is not None and exc.rcvd.code == 1001
    assert [ws.close_code for ws in clients] == [1001] * 3
    assert sorted(events.closed) == sorted(events.opened)
    assert not server.connections
    # No longer listening.
    with pytest.raises(OSError):
        await asyncio.wait_for(connect(ws_url(server), open_timeout=1), TIMEOUT)


async def test_graceful_shutdown_waits_for_the_closing_handshake_up_to_shutdown_timeout(
    make_server,
):
    """The server sends Close 1001 and then waits for each client's Close (RFC 6455 7.1.1:
    the server closes TCP once the handshake is done), aborting silent ones after
    shutdown_timeout."""
    events = Events()
    server = await make_server(events.setup, shutdown_timeout=0.8)
    ws = await connect(ws_url(server))
    raw = await RawWS.open(server)  # reads the Close, never answers it
    try:
        await wait_until(lambda: len(server.connections) == 2)
        waiter = asyncio.ensure_future(closed_by_server(ws))
        t0 = time.monotonic()
        shutdown = asyncio.ensure_future(server.shutdown())
        code, _, _ = await raw.read_close()
        assert code == 1001
        # The TCP connection stays open: the server waits for our Close.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(raw.reader.read(1), 0.3)
        await asyncio.wait_for(shutdown, server.settings.shutdown_timeout + 1)
        took = time.monotonic() - t0
        exc = await waiter
    finally:
        raw.close()
        await ws.close()
    # It waited for the silent client, but no longer than shutdown_timeout.
    assert 0.7 <= took < server.settings.shutdown_timeout + 1
    assert exc.rcvd is not None and exc.rcvd.code == 1001
    assert sorted(events.closed) == sorted(events.opened)


async def test_closed_websockets_leave_no_http_connection_behind(make_server):
    """Once upgraded, a connection is no longer an HTTP connection of the server: the
    server must not keep one HttpConnection (parser, transport) per WebSocket ever opened."""
    server = await make_server(Events().setup)
    for _ in range(5):
        async with connect(ws_url(server)) as ws:
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    # The endpoint's tables (the documented test hook, see hubbub.endpoint).
    endpoint = server._endpoint
    await wait_until(lambda: not endpoint.all)
    await asyncio.sleep(0.05)
    assert len(endpoint.http) == 0, f"{len(endpoint.http)} HttpConnection objects kept"
