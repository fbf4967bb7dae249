"""The compiled fan-out (hubbub.transport._speedups, hubbub.transport.fanout).

Every behaviour test runs twice: on the compiled path (direct send(2) to
each recipient whose queue and transport buffer are empty) and on the
pure-Python path (what runs when the extension is missing), over real
sockets. A few tests check the compiled path's own promises (it really
writes directly; a busy tick turns it off) and the C function on a socket
pair.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

from hubbub import Server
from hubbub.transport import fanout
from hubbub.transport.websocket import encode_frame

from ..conftest import recv_all, ws_url

PATHS = ["compiled", "python"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled":
        assert fanout.AVAILABLE, (
            "hubbub.transport._speedups is not built: `pip install -e .` compiles it "
            "(needs gcc and the Python headers)"
        )
    return str(request.param)


@pytest.fixture
def make_fan(make_server: Callable[..., Any], path: str) -> Callable[..., Any]:
    """A server whose fan-out takes ``path`` (the compiled one, or Python only)."""

    async def factory(**overrides: Any) -> Server:
        server = await make_server(**overrides)
        server._fanout.enabled = path == "compiled"
        return server

    return factory


async def _clients(server: Server, n: int, stack: Any, **kw: Any) -> list[Any]:
    out = []
    for _ in range(n):
        out.append(await stack.enter_async_context(connect(ws_url(server), **kw)))
    # Every connection is established on the server's side.
    loop = asyncio.get_running_loop()
    end = loop.time() + 5.0
    while len(server.connections) < n:
        assert loop.time() < end, "connections not established"
        await asyncio.sleep(0.01)
    return out


async def _next_tick() -> None:
    """Let the loop run the end-of-tick callbacks (flush, tick policy)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_push_many_reaches_everyone_in_order(make_fan, path):
    from contextlib import AsyncExitStack

    server = await make_fan(compression=False)
    async with AsyncExitStack() as stack:
        clients = await _clients(server, 20, stack, compression=None)
        fds = list(server.connections)
        for i in range(200):
            assert server.push_many(fds, f"m{i}") == 20
            if i % 3 == 0:
                await _next_tick()  # some ticks carry one message, some several
        for ws in clients:
            assert await recv_all(ws, 200) == [f"m{i}" for i in range(200)]


async def test_direct_write_leaves_nothing_queued(make_fan, path):
    """The compiled path hands the frame to the kernel during the call; the
    Python path queues it for the end of the tick."""
    from contextlib import AsyncExitStack

    server = await make_fan(compression=False)
    async with AsyncExitStack() as stack:
        clients = await _clients(server, 5, stack, compression=None)
        await _next_tick()
        await _next_tick()
        conns = list(server._endpoint.open.values())
        assert all(c.sockfd >= 0 for c in conns)
        server.push_many(list(server.connections), "now")
        queued = [c.out is not None for c in conns]
        assert queued == [path == "python"] * 5
        for ws in clients:
            assert await recv_all(ws, 1) == ["now"]


async def test_queued_bytes_are_never_overtaken(make_fan, path):
    """A connection with bytes queued this tick gets the fan-out behind them."""
    from contextlib import AsyncExitStack

    server = await make_fan(compression=False)
    async with AsyncExitStack() as stack:
        a, b = await _clients(server, 2, stack, compression=None)
        await _next_tick()
        fd_a, fd_b = list(server.connections)
        server.push(fd_a, "first")  # queued for the end of the tick
        server.push_many([fd_a, fd_b], "second")
        server.push(fd_b, "third")
        assert await recv_all(a, 2) == ["first", "second"]
        assert await recv_all(b, 2) == ["second", "third"]


async def test_slow_reader_partial_writes_keep_order(make_fan, path, monkeypatch):
    """A reader that stops reading fills its socket: send(2) writes part of a
    frame or nothing, the rest is queued, and every byte still arrives in order."""
    from contextlib import AsyncExitStack

    # For each direct fan-out of the compiled path: did the socket take it all?
    seen: list[bool] = []
    c_fanout = fanout._fanout
    if c_fanout is not None:

        def spy(frame: bytes, items: Any, conns: Any, dirty: Any, direct: bool) -> Any:
            items = list(items)
            before = [conns[fd].out for fd in items]
            result = c_fanout(frame, items, conns, dirty, direct)
            if direct and before == [None]:
                seen.append(conns[items[0]].out is None)
            return result

        monkeypatch.setattr(fanout, "_fanout", spy)
    server = await make_fan(compression=False, max_send_buffer=64 * 1024 * 1024)
    async with AsyncExitStack() as stack:
        # max_queue=1: the client stops reading its socket once one message waits.
        (slow,) = await _clients(server, 1, stack, compression=None, max_queue=1, max_size=2**22)
        # Small socket buffers on both sides (no autotuning to megabytes).
        slow.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 8192
        )
        (conn,) = server._endpoint.open.values()
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 8192
        )
        await _next_tick()
        payload = "x" * 20_000
        for i in range(40):  # 800 kB: far more than the socket buffers hold
            server.push_many(list(server.connections), f"{i:04d}{payload}")
            await _next_tick()
        got = await recv_all(slow, 40, within=10.0)
        assert [m[:4] for m in got] == [f"{i:04d}" for i in range(40)]
        assert all(m[4:] == payload for m in got)
    if path == "compiled":
        assert not all(seen), "the socket never filled up"
        assert any(seen), "nothing was written directly"


async def test_backpressure_drops_a_stalled_reader_not_the_others(make_fan, path):
    from contextlib import AsyncExitStack

    server = await make_fan(compression=False, max_send_buffer=256 * 1024)
    async with AsyncExitStack() as stack:
        stalled, reader = await _clients(
            server, 2, stack, compression=None, max_queue=1, max_size=2**20
        )
        await _next_tick()
        fds = list(server.connections)
        payload = "y" * 20_000
        received: list[str] = []
        for i in range(400):  # 8 MB for the stalled one: it must be dropped
            server.push_many(fds, f"{i:04d}{payload}")
            received.append(await asyncio.wait_for(reader.recv(), 5.0))
            if len(server.connections) == 1:
                break
        assert len(server.connections) == 1, "the stalled reader was never dropped"
        assert [m[:4] for m in received] == [f"{i:04d}" for i in range(len(received))]
        # The reader (the other client) is still served.
        server.push_many(list(server.connections), "after")
        assert await recv_all(reader, 1) == ["after"]
        # The stalled one gets what was queued before its drop, then 1013.
        with pytest.raises(Exception) as info:
            while True:
                await asyncio.wait_for(stalled.recv(), 5.0)
        assert "1013" in str(info.value)


async def test_compressed_and_plain_clients_share_a_fan_out(make_fan, path):
    from contextlib import AsyncExitStack

    server = await make_fan(compression=True)
    async with AsyncExitStack() as stack:
        plain = (await _clients(server, 1, stack, compression=None))[0]
        deflated = await stack.enter_async_context(connect(ws_url(server)))
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        while len(server.connections) < 2:
            assert loop.time() < end
            await asyncio.sleep(0.01)
        conns = list(server._endpoint.open.values())
        assert sorted(c.sockfd >= 0 for c in conns) == [False, True]
        await _next_tick()
        for i in range(20):
            server.broadcast(f"b{i}" * 50)
            await _next_tick()
        expect = [f"b{i}" * 50 for i in range(20)]
        assert await recv_all(plain, 20) == expect
        assert await recv_all(deflated, 20) == expect


async def test_broadcast_with_exclude(make_fan, path):
    from contextlib import AsyncExitStack

    server = await make_fan(compression=False)
    async with AsyncExitStack() as stack:
        a, b, c = await _clients(server, 3, stack, compression=None)
        await _next_tick()
        fd_a, _fd_b, _fd_c = list(server.connections)
        assert server.broadcast(b"bin", exclude=[fd_a]) == 2
        server.push(fd_a, "only a")
        assert await recv_all(a, 1) == ["only a"]
        assert await recv_all(b, 1) == [b"bin"]
        assert await recv_all(c, 1) == [b"bin"]


# -- the compiled path's policy -------------------------------------------------


async def test_a_busy_tick_turns_direct_writes_off_until_a_quiet_one(make_server):
    assert fanout.AVAILABLE, "hubbub.transport._speedups is not built (pip install -e .)"
    from contextlib import AsyncExitStack

    server = await make_server(compression=False)
    async with AsyncExitStack() as stack:
        (ws,) = await _clients(server, 1, stack, compression=None)
        (conn,) = server._endpoint.open.values()
        await _next_tick()
        fds = list(server.connections)
        server.push_many(fds, "1")  # first of a quiet tick: direct
        assert conn.out is None
        server.push_many(fds, "2")  # second in the same tick: queued (coalesced)
        assert conn.out is not None
        await _next_tick()
        server.push_many(fds, "3")  # the last tick was busy: queued
        assert conn.out is not None
        await _next_tick()
        server.push_many(fds, "4")  # the last tick had one fan-out: direct again
        assert conn.out is None
        assert await recv_all(ws, 4) == ["1", "2", "3", "4"]


# -- the C functions themselves ------------------------------------------------


class _Transport:
    def __init__(self, buffered: int = 0, closing: bool = False) -> None:
        self.buffered = buffered
        self.closing = closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class _Conn:
    """What the C functions read of a WebSocketConnection (and write: ``out``)."""

    def __init__(
        self, sockfd: int, out: Any = None, buffered: int = 0, closing: bool = False
    ) -> None:
        self.sockfd = sockfd
        self.out = out
        self.transport = _Transport(buffered, closing)


@pytest.fixture
def c_funcs() -> Any:
    """The C fanout and flush, writing directly to the fake transports below
    (in production only uvloop's TCPTransport is written to directly)."""
    assert fanout._fanout is not None and fanout._flush is not None, (
        "hubbub.transport._speedups is not built"
    )
    from hubbub.transport import _speedups

    previous = _speedups.set_transport_type(_Transport)
    try:
        yield fanout._fanout, fanout._flush
    finally:
        _speedups.set_transport_type(previous)


def _drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    got = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def test_c_fanout_never_writes_to_the_fd_of_a_closing_transport(c_funcs):
    # uvloop closes the socket when the transport closes, and connection_lost
    # (which takes the connection out of the broadcast set) comes a loop
    # iteration later: the fd number may by then be a new connection's.
    c_fanout, c_flush = c_funcs
    new, new_peer = socket.socketpair()
    with new, new_peer:
        stale = _Conn(new.fileno(), closing=True)  # the old connection's number, reused
        dirty: list[Any] = []
        frame = encode_frame("secret")
        assert c_fanout(frame, [stale], None, dirty, True) == (1, [], True)
        assert stale.out == frame and dirty == [stale]  # queued, as write() would
        # The end-of-tick write leaves it to flush_out (which drops it: closing).
        assert c_flush(dirty) == [stale]
        assert stale.out == frame
        assert _drain(new_peer) == b""  # the new connection got nothing


def test_c_fanout_writes_directly_or_queues_and_says_who_is_left(c_funcs):
    c_fanout, _ = c_funcs
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    with a, a_peer, b, b_peer:
        frame = encode_frame("hello")
        ok = _Conn(a.fileno())
        queued = _Conn(b.fileno(), out=b"earlier")
        busy = _Conn(b.fileno(), buffered=10)
        tls = _Conn(-1)
        dirty: list[Any] = []
        n, slow, dirtied = c_fanout(frame, [ok, queued, busy, tls], None, dirty, True)
        assert (n, slow, dirtied) == (4, [tls], True)
        assert _drain(a_peer) == frame and ok.out is None
        assert queued.out == [b"earlier", frame]  # already dirty: not listed again
        assert busy.out == frame and dirty == [busy]
        assert _drain(b_peer) == b""  # nothing was written for the others
        # Not direct (a busy tick): queued, the connection listed once.
        dirty.clear()
        assert c_fanout(frame, [ok], None, dirty, False) == (1, [], True)
        assert c_fanout(frame, [ok], None, dirty, True) == (1, [], False)  # behind it
        assert ok.out == [frame, frame] and dirty == [ok]
        assert _drain(a_peer) == b""
        # Keys looked up in a dict; missing keys are skipped, not counted.
        ok.out = None
        n, slow, _ = c_fanout(frame, [1, 2, 3], {1: ok, 3: tls}, [], True)
        assert (n, slow) == (2, [tls])
        assert _drain(a_peer) == frame


def test_c_fanout_queues_what_a_full_socket_does_not_take(c_funcs):
    c_fanout, _ = c_funcs
    a, a_peer = socket.socketpair()
    with a, a_peer:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ok = _Conn(a.fileno())
        dirty: list[Any] = []
        big = encode_frame(b"z" * 4_000_000)
        assert c_fanout(big, [ok], None, dirty, True) == (1, [], True)
        rest = ok.out
        assert type(rest) is bytes and 0 < len(rest) < len(big) and dirty == [ok]
        # The next frame goes behind the rest, never into the socket first.
        frame = encode_frame("after")
        assert c_fanout(frame, [ok], None, dirty, True) == (1, [], False)
        assert ok.out == [rest, frame]
        assert _drain(a_peer) + rest == big


def test_c_queueing_is_websocket_connection_write(c_funcs):
    """The C queueing must stay what WebSocketConnection.write does (``out`` None,
    then bytes, then a list; mark_dirty once): the same writes, both ways."""
    from hubbub.transport.websocket import WebSocketConnection

    c_fanout, _ = c_funcs

    class _Endpoint:
        def __init__(self) -> None:
            self.dirty: list[Any] = []

        def mark_dirty(self, conn: Any) -> None:
            self.dirty.append(conn)

    class _Python:
        def __init__(self) -> None:
            self.out: Any = None
            self.endpoint = _Endpoint()

    frames = [encode_frame(f"m{i}") for i in range(4)]
    python, compiled, dirty = _Python(), _Conn(0), []
    for i, frame in enumerate(frames):
        WebSocketConnection.write(python, frame)  # type: ignore[arg-type]
        c_fanout(frame, [compiled], None, dirty, False)
        assert compiled.out == python.out, f"after {i + 1} writes"
        assert len(dirty) == len(python.endpoint.dirty) == 1


def test_c_flush_sends_what_was_queued_where_nothing_waits(c_funcs):
    _, c_flush = c_funcs
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    with a, a_peer, b, b_peer:
        one = _Conn(a.fileno(), out=b"one")
        many = _Conn(b.fileno(), out=[b"two", b"three"])
        busy = _Conn(b.fileno(), out=b"later", buffered=5)
        tls = _Conn(-1, out=b"secret")
        empty = _Conn(a.fileno())  # listed twice, or flushed early
        rest = c_flush([one, many, busy, tls, empty, many])
        assert rest == [busy, tls]
        assert (one.out, many.out, busy.out, tls.out) == (None, None, b"later", b"secret")
        assert _drain(a_peer) == b"one"
        assert _drain(b_peer) == b"twothree"
        # A socket that takes part of it: the rest stays queued for flush_out.
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = b"q" * 4_000_000
        one.out = [big[:10], big[10:]]
        assert c_flush([one]) == [one]
        assert type(one.out) is bytes and 0 < len(one.out) < len(big)
        assert _drain(a_peer) + one.out == big
        # Nothing taken at all (full socket): left to flush_out, joined once.
        one.out = [b"x", b"y"]
        a_peer.close()
        assert c_flush([one]) == [one]
        assert one.out == b"xy"


def test_c_functions_reject_bad_arguments(c_funcs):
    c_fanout, c_flush = c_funcs
    with pytest.raises(TypeError):
        c_fanout("text", [], None, [], True)
    with pytest.raises(TypeError):
        c_fanout(b"x", [], [], [], True)  # conns must be a dict or None
    with pytest.raises(TypeError):
        c_fanout(b"x", [], None, (), True)  # dirty must be a list
    with pytest.raises(TypeError):
        c_fanout(b"x", [], None)
    with pytest.raises(TypeError):
        c_flush(())
    # Something that is not a WebSocket connection (no sockfd) takes the
    # Python path; one that has a sockfd but no queue is a programming error.
    thing = object()
    assert c_fanout(b"x", [thing], None, [], True) == (1, [thing], False)
    assert c_flush([thing]) == [thing]
    odd = _Conn(0)
    del odd.out
    with pytest.raises(AttributeError):
        c_fanout(b"x", [odd], None, [], True)
    with pytest.raises(AttributeError):
        c_flush([odd])


async def test_tls_connections_are_never_written_directly(make_fan, path, tmp_path):
    """Over TLS every byte must go through the transport (it encrypts): the
    compiled path leaves them to the Python path, and clients read clean frames."""
    import ssl
    from contextlib import AsyncExitStack

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    server = await make_fan(compression=False, certfile=str(certfile), keyfile=str(keyfile))
    url = f"wss://127.0.0.1:{server.port}/"
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(connect(url, ssl=ctx, compression=None))
            for _ in range(3)
        ]
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        while len(server.connections) < 3:
            assert loop.time() < end
            await asyncio.sleep(0.01)
        assert [c.sockfd for c in server._endpoint.open.values()] == [-1, -1, -1]
        for i in range(10):
            await _next_tick()
            await _next_tick()
            server.push_many(list(server.connections), f"secret {i}")
        for ws in clients:
            assert await recv_all(ws, 10) == [f"secret {i}" for i in range(10)]


def test_only_the_given_transport_type_is_written_directly(c_funcs):
    """A transport of another type (a wrapper that counts or changes what it
    writes, another loop's) gets every byte through its own write()."""
    c_fanout, c_flush = c_funcs

    class _Other(_Transport):
        pass

    a, a_peer = socket.socketpair()
    with a, a_peer:
        conn = _Conn(a.fileno())
        conn.transport = _Other()
        dirty: list[Any] = []
        frame = encode_frame("x")
        assert c_fanout(frame, [conn], None, dirty, True) == (1, [], True)
        assert conn.out == frame and dirty == [conn]
        assert c_flush(dirty) == [conn]  # left to flush_out, i.e. transport.write
        assert conn.out == frame
        assert _drain(a_peer) == b""


async def test_a_busy_tick_is_flushed_in_c_with_one_send_per_connection(make_server, monkeypatch):
    assert fanout.AVAILABLE, "hubbub.transport._speedups is not built (pip install -e .)"
    from contextlib import AsyncExitStack

    flushed: list[tuple[int, int]] = []
    c_flush = fanout._flush
    assert c_flush is not None

    def spy(dirty: list[Any]) -> list[Any]:
        rest = c_flush(dirty)
        flushed.append((len(dirty), len(rest)))
        return rest

    monkeypatch.setattr(fanout, "_flush", spy)
    server = await make_server(compression=False)
    async with AsyncExitStack() as stack:
        clients = await _clients(server, 3, stack, compression=None)
        await _next_tick()
        await _next_tick()
        flushed.clear()
        conns = list(server._endpoint.open.values())
        fds = list(server.connections)
        for i in range(5):  # one busy tick: the first direct, the others queued
            server.push_many(fds, f"m{i}")
        assert all(type(c.out) is list and len(c.out) == 4 for c in conns)
        await _next_tick()
        assert flushed[:1] == [(3, 0)]  # all three sent in C, none left to Python
        assert all(c.out is None and c.transport.get_write_buffer_size() == 0 for c in conns)
        for ws in clients:
            assert await recv_all(ws, 5) == [f"m{i}" for i in range(5)]


# -- the fast path: WebSocketConnection's slots read in place -------------------------------


class _SlotTransport:
    """A transport without a __dict__: its methods are called unbound, as uvloop's are."""

    __slots__ = ("asked", "buffered", "closing")

    def __init__(self, buffered: int = 0, closing: bool = False) -> None:
        self.buffered = buffered
        self.closing = closing
        self.asked = 0

    def get_write_buffer_size(self) -> int:
        self.asked += 1
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


def _ws(sockfd: int, out: Any = None, tx_empty: bool = False, **transport: Any) -> Any:
    """A WebSocketConnection with just what the C functions read (no socket, no loop)."""
    from hubbub.transport.websocket import WebSocketConnection

    conn = WebSocketConnection.__new__(WebSocketConnection)
    conn.sockfd, conn.out, conn.tx_empty = sockfd, out, tx_empty
    conn.transport = _SlotTransport(**transport)
    return conn


@pytest.fixture
def c_fast() -> Any:
    assert fanout._fanout is not None and fanout._flush is not None, (
        "hubbub.transport._speedups is not built"
    )
    from hubbub.transport import _speedups

    previous = _speedups.set_transport_type(_SlotTransport)
    try:
        yield fanout._fanout, fanout._flush
    finally:
        _speedups.set_transport_type(previous)


def test_c_fast_path_writes_directly_queues_and_remembers_an_empty_transport(c_fast):
    c_fanout, c_flush = c_fast
    a, a_peer = socket.socketpair()
    with a, a_peer:
        frame = encode_frame("hello")
        ok = _ws(a.fileno())
        busy = _ws(a.fileno(), buffered=10)
        closing = _ws(a.fileno(), tx_empty=True, closing=True)
        queued = _ws(a.fileno(), out=b"earlier")
        tls = _ws(-1)
        dirty: list[Any] = []
        n, slow, dirtied = c_fanout(frame, (ok, busy, closing, queued, tls), None, dirty, True)
        assert (n, slow, dirtied) == (5, [tls], True)
        assert _drain(a_peer) == frame  # ok's only
        assert ok.out is None and ok.tx_empty is True and ok.transport.asked == 1
        assert busy.out == frame and busy.tx_empty is False
        assert closing.out == frame and closing.transport.asked == 0  # never, once closing
        assert queued.out == [b"earlier", frame]
        assert dirty == [busy, closing]
        # Known empty: sent without asking the transport again.
        assert c_fanout(frame, [ok], None, [], True) == (1, [], False)
        assert ok.transport.asked == 1 and _drain(a_peer) == frame
        # The end of the tick: the same rules, in place.
        busy.transport.buffered = 0
        assert c_flush([busy, closing, queued]) == [closing]
        assert busy.out is None and busy.tx_empty is True and queued.out is None
        assert _drain(a_peer) == frame + b"earlier" + frame


def test_c_fast_path_walks_lists_tuples_dicts_and_iterators_alike(c_fast):
    c_fanout, _ = c_fast
    a, a_peer = socket.socketpair()
    with a, a_peer:
        conns = {fd: _ws(a.fileno(), tx_empty=True) for fd in (3, 5, 7)}
        frame = encode_frame("x")
        for items in ([3, 4, 5, 7], (3, 4, 5, 7), dict.fromkeys([3, 4, 5, 7]), iter([3, 4, 5, 7])):
            assert c_fanout(frame, items, conns, [], True) == (3, [], False)
            assert _drain(a_peer) == frame * 3
        assert c_fanout(frame, list(conns.values()), None, [], True) == (3, [], False)
        assert _drain(a_peer) == frame * 3


def test_c_fast_path_and_getattr_path_agree(c_fast):
    """A subclass of WebSocketConnection goes through getattr/setattr: same results."""
    from hubbub.transport.websocket import WebSocketConnection

    class _Sub(WebSocketConnection):
        __slots__ = ()

    c_fanout, c_flush = c_fast
    a, a_peer = socket.socketpair()
    with a, a_peer:
        frames = [encode_frame(f"m{i}") for i in range(3)]
        fast = _ws(a.fileno(), buffered=1)
        slow = _Sub.__new__(_Sub)
        slow.sockfd, slow.out, slow.tx_empty = a.fileno(), None, False
        slow.transport = _SlotTransport(buffered=1)
        for frame in frames:
            dirty: list[Any] = []
            c_fanout(frame, [fast, slow], None, dirty, True)
        assert fast.out == slow.out == frames
        fast.transport.buffered = slow.transport.buffered = 0
        assert c_flush([fast, slow]) == []
        assert fast.out is slow.out is None
        assert fast.tx_empty is True and slow.tx_empty is False  # only the fast path trusts it
        assert _drain(a_peer) == b"".join(frames) * 2


def test_set_connection_type_wants_the_slots_it_reads():
    assert fanout._fanout is not None, "hubbub.transport._speedups is not built"
    from hubbub.transport import _speedups
    from hubbub.transport.websocket import WebSocketConnection

    class _NoFlag:
        __slots__ = ("out", "sockfd", "transport")

    class _Dict:
        def __init__(self) -> None:
            self.out = self.sockfd = self.transport = self.tx_empty = None

    for cls in (_NoFlag, _Dict, int):
        with pytest.raises(TypeError, match=r"has no plain slot"):
            _speedups.set_connection_type(cls)
    with pytest.raises(TypeError):
        _speedups.set_connection_type("WebSocketConnection")
    assert _speedups.set_connection_type(None) is WebSocketConnection
    try:
        conn = _ws(-1)  # no fast path now: getattr, same answer
        assert fanout._fanout(b"x", [conn], None, [], True) == (1, [conn], False)
    finally:
        assert _speedups.set_connection_type(WebSocketConnection) is None
