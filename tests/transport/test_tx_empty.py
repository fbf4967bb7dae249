"""``WebSocketConnection.tx_empty``: "nothing waits in this transport", without asking it.

The compiled fan-out (``_speedups.c``) sends a frame straight to a socket only
when nothing of that connection waits anywhere, the transport's write buffer
included. Asking uvloop for that buffer's size per recipient was a measurable
share of a broadcast, so the connection remembers it: ``tx_empty`` is True only
while the buffer is known to be empty. The C code sets it after
``get_write_buffer_size()`` answered 0; every path that hands bytes to the
transport must set it False first. A path that forgot would let a direct
send(2) overtake the bytes waiting in the transport: the client would read a
frame in the middle of another. These tests keep every write path honest:
one by reading the source (a new write path fails it until it is reviewed),
one by overtaking for real on a client that stops reading.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from hubbub.transport import fanout

from ..conftest import ROOT

SRC = ROOT / "src" / "hubbub"
#: Transport methods that hand bytes over (asyncio.WriteTransport).
WRITES = {"write", "writelines"}
#: Classes whose transport writes are not a WebSocketConnection's: the HTTP
#: connection before its upgrade (the WebSocket starts with tx_empty False, so
#: what it wrote is asked about), the fallback sessions' HTTP streams (never
#: written directly: no sockfd), and the load generator's clients.
NOT_A_WEBSOCKET = {
    ("transport/http.py", "HttpConnection"),
    ("transport/http_respond.py", "ResponseWriting"),  # HttpConnection's responses
    ("transport/sse.py", "EventStream"),
    ("bench/handshake.py", "Handshake"),
    ("bench/httpclient.py", "HttpConn"),
}


def _transport_writes(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(class name, call) for every ``<x>.transport.<write>(...)`` / ``transport.<write>``."""
    found: list[tuple[str, ast.Call]] = []

    def visit(node: ast.AST, cls: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.ClassDef) else cls
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in WRITES
                and "transport" in ast.unparse(child.func.value).split(".")[-1]
            ):
                found.append((cls, child))
            visit(child, name)

    visit(tree, "")
    return found


def _blocks(tree: ast.AST) -> list[list[ast.stmt]]:
    """Every statement list (bodies, else and finally blocks) under ``tree``."""
    return [
        block
        for node in ast.walk(tree)
        for field in ("body", "orelse", "finalbody")
        if isinstance(block := getattr(node, field, None), list)
    ]


def test_the_websocket_clears_tx_empty_before_each_transport_write() -> None:
    path = SRC / "transport" / "websocket.py"
    tree = ast.parse(path.read_text())
    (cls,) = [
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "WebSocketConnection"
    ]
    writes = [call for _, call in _transport_writes(cls)]
    assert writes, "WebSocketConnection hands its bytes to the transport somewhere"
    placed = 0
    for block in _blocks(cls):
        for i, stmt in enumerate(block):
            if isinstance(stmt, ast.Expr) and any(stmt.value is call for call in writes):
                placed += 1
                # The statement right before the write, in the same block, clears the flag.
                before = ast.unparse(block[i - 1]) if i else ""
                assert before == "self.tx_empty = False", (
                    f"websocket.py:{stmt.lineno}: {ast.unparse(stmt)} must come right after "
                    "`self.tx_empty = False` (the compiled fan-out trusts the flag; "
                    "see _speedups.c)"
                )
    assert placed == len(writes), "a transport write inside an expression: make it a statement"


def test_no_other_code_writes_to_a_websocket_transport() -> None:
    """Transport writes outside WebSocketConnection are each known not to be to a
    WebSocket's transport. A new one fails this test: if it writes to a
    WebSocketConnection's transport, it must clear ``conn.tx_empty`` first
    (or go through the connection's write/flush_out), then be listed here."""
    seen = set()
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        for cls, call in _transport_writes(ast.parse(path.read_text())):
            if (rel, cls) == ("transport/websocket.py", "WebSocketConnection"):
                continue
            assert (rel, cls) in NOT_A_WEBSOCKET, (
                f"{rel}:{call.lineno} ({cls or 'module level'}): {ast.unparse(call)} "
                "writes to a transport; if it can be a WebSocketConnection's, set its "
                "tx_empty False first (see _speedups.c), then list it in NOT_A_WEBSOCKET"
            )
            seen.add((rel, cls))
    assert seen == NOT_A_WEBSOCKET, f"no longer writing: {NOT_A_WEBSOCKET - seen}"


# -- for real: a client that stops reading --------------------------------------------


async def _raw_client(port: int) -> socket.socket:
    """A WebSocket client on a plain socket with a small receive buffer (upgraded)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def _read_frames(sock: socket.socket, count: int) -> list[bytes]:
    """The payloads of the next ``count`` (unmasked, unfragmented) server frames."""
    loop = asyncio.get_running_loop()
    buf = bytearray()

    async def need(n: int) -> None:
        while len(buf) < n:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
            assert chunk, "closed"
            buf.extend(chunk)

    payloads = []
    for _ in range(count):
        await need(2)
        size, head = buf[1] & 0x7F, 2
        if size == 126:
            await need(4)
            size, head = struct.unpack("!H", buf[2:4])[0], 4
        elif size == 127:
            await need(10)
            size, head = struct.unpack("!Q", buf[2:10])[0], 10
        await need(head + size)
        payloads.append(bytes(buf[head : head + size]))
        del buf[: head + size]
    return payloads


async def _until(check: Callable[[], Any], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + 10.0
    while not check():
        assert loop.time() < end, what
        await asyncio.sleep(0.01)


async def test_bytes_waiting_in_the_transport_are_never_overtaken(make_server) -> None:
    assert fanout.AVAILABLE, "hubbub.transport._speedups is not built (pip install -e .)"
    server = await make_server(compression=False, max_send_buffer=256 * 1024 * 1024)
    sock = await _raw_client(server.port)
    try:
        await _until(lambda: len(server.connections) == 1, "not established")
        (fd,) = server.connections
        conn = server._endpoint.open[fd]
        assert conn.sockfd >= 0
        # The greeting-free server wrote the 101 through the queue; the flag is
        # not trusted until the transport was asked.
        await _until(lambda: conn.out is None, "the 101 not flushed")
        await asyncio.sleep(0.01)  # a quiet tick: the next fan-out may write directly
        server.push_many([fd], "first")
        assert conn.out is None and conn.tx_empty is True  # asked, empty, sent directly
        assert await _read_frames(sock, 1) == [b"first"]
        # A frame larger than both socket buffers: the rest goes to the transport.
        big = os.urandom(24 * 1024 * 1024)
        server.push(fd, big)
        await _until(lambda: conn.out is None, "the big frame not handed over")
        assert conn.transport.get_write_buffer_size() > 0
        await asyncio.sleep(0.01)
        server.push_many([fd], "after")  # must queue: bytes wait in the transport
        assert conn.out is not None, "sent directly past the bytes in the transport"
        assert conn.tx_empty is False  # flush_out's write cleared it
        assert await _read_frames(sock, 2) == [big, b"after"]
        # Drained: the next fan-out asks again, finds nothing and writes directly.
        await _until(lambda: conn.transport.get_write_buffer_size() == 0, "not drained")
        await asyncio.sleep(0.01)
        server.push_many([fd], "again")
        assert conn.out is None and conn.tx_empty is True
        assert await _read_frames(sock, 1) == [b"again"]
    finally:
        sock.close()


def test_the_flag_is_a_slot_that_starts_false() -> None:
    """A new connection does not trust the flag: the HTTP layer may have written
    to its transport before the upgrade."""
    from hubbub.transport.websocket import WebSocketConnection

    assert "tx_empty" in WebSocketConnection.__slots__
    init = next(
        n
        for n in ast.walk(ast.parse((SRC / "transport" / "websocket.py").read_text()))
        if isinstance(n, ast.FunctionDef) and n.name == "__init__" and "sockfd" in ast.unparse(n)
    )
    assert "self.tx_empty = False" in ast.unparse(init)
