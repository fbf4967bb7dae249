"""The seed's plain room across processes: nodes on the machine's real Redis and
PostgreSQL (tests/services.py: own schema and key prefix), and ``hubbub serve
--workers 2``.

Every plain client, whichever process it landed on, gets ``from <fd>: T`` for
every plain message, the sender also ``server: T`` once, nothing twice; per
sender the order holds.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from hubbub import Server
from hubbub.apps.chat import create_app
from hubbub.apps.seed import CHANNEL, GREETING, SeedRoom
from hubbub.broker import LocalBroker
from hubbub.broker.redis import RedisBroker
from hubbub.config import Settings
from hubbub.server import Frame
from tests.services import (  # noqa: F401
    PG_DSN,
    REDIS_URL,
    pg_schema,
    postgres_store,
    redis_prefix,
)

from ..cluster.drill import listens, peer_ports, wait_for
from ..conftest import free_port, recv_all, ws_url
from ..test_supervisor import Workers, listening_workers

# -- the room, no network --------------------------------------------------------------


class FakeServer:
    """What SeedRoom uses of a Server: settings and pushes, recorded."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.sent: list[tuple[tuple[int, ...], Any, Any]] = []

    def push(self, fd: int, data: Any, opcode: Any = None) -> bool:
        self.sent.append(((fd,), data, opcode))
        return True

    def push_many(self, fds: Any, data: Any, opcode: Any = None) -> int:
        self.sent.append((tuple(fds), data, opcode))
        return len(tuple(fds))


def test_the_local_broker_changes_nothing() -> None:
    server: Any = FakeServer()
    room = SeedRoom(server, LocalBroker())
    assert room.broker is None

    def deliver(room: str, payload: bytes, seq: int | None) -> None: ...

    assert room.attach_broker(LocalBroker(), deliver) is deliver  # no routing layer


def test_malformed_frames_from_other_processes_are_dropped() -> None:
    server: Any = FakeServer()
    room = SeedRoom(server)
    room.open(1)
    server.sent.clear()
    room.deliver(CHANNEL, b"")
    room.deliver(CHANNEL, b"xfrom 9: hi")
    room.deliver("lobby", b"tfrom 9: hi")  # not the seed's channel
    assert server.sent == [] and room.bad_frames == 2
    room.deliver(CHANNEL, b"tfrom 9: hi")
    assert server.sent == [((1,), b"from 9: hi", 1)]


class HeldBroker:
    """A shared broker whose subscription is confirmed when the test says, and whose
    publish hands the frame to the local deliver at once (base.Broker's contract)."""

    def __init__(self) -> None:
        self.confirm = asyncio.Event()
        self.published: list[tuple[str, bytes, int | None]] = []
        self.deliver: Any = None

    async def subscribe(self, room: str) -> None:
        await self.confirm.wait()

    def publish(self, room: str, payload: bytes, seq: int | None = None) -> None:
        self.published.append((room, payload, seq))
        self.deliver(room, payload, seq)


async def test_greeting_waits_for_the_channel_unless_the_client_speaks() -> None:
    server: Any = FakeServer()
    broker: Any = HeldBroker()
    room = SeedRoom(server)
    broker.deliver = room.attach_broker(broker, lambda *a: None)
    room.open(1)
    room.open(2)
    await asyncio.sleep(0)
    assert server.sent == []  # not greeted before the channel is followed
    room.message(Frame(2, "early"))  # spoke first: greeted at once, then answered
    assert server.sent == [
        ((2,), GREETING, None),
        ((2,), "from 2: early", None),
        ((2,), "server: early", None),
    ]
    assert broker.published == [(CHANNEL, b"tfrom 2: early", None)]  # local copy skipped
    broker.confirm.set()
    await wait_until(lambda: room.following)
    assert server.sent[3:] == [((1,), GREETING, None)]
    room.open(3)  # once following, at once
    assert server.sent[4:] == [((3,), GREETING, None)]


def test_worker_fd_numbering() -> None:
    server = Server("127.0.0.1", 0)
    with pytest.raises(ValueError, match=r"not in 0\.\.1"):
        server._endpoint.number_fds(2, 2)


async def wait_until(check: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- two nodes on the real Redis -----------------------------------------------------


async def node(schema: str, prefix: str, name: str, index: int) -> Server:
    """A chat node whose seed room follows the shared broker (the wiring ChatApp's
    on_start does with ``broker.start(self.seed.attach_broker(self.broker,
    self.deliver))``), numbering its connections as worker ``index`` of 2."""
    broker = RedisBroker(REDIS_URL, prefix=prefix, node_id=name, subscribe_timeout=2.0)
    server = create_app(
        "127.0.0.1", 0, Settings(rate=0, db=":memory:"),
        store=postgres_store(schema), broker=broker,
    )  # fmt: skip
    app: Any = server.app
    app.deliver = app.seed.attach_broker(broker, app.deliver)
    server._endpoint.number_fds(index, 2)
    await server.listen()
    return server


@pytest.fixture
async def two_nodes(pg_schema: str, redis_prefix: str) -> AsyncIterator[list[Server]]:  # noqa: F811
    nodes: list[Server] = []
    try:
        for i in range(2):
            nodes.append(await node(pg_schema, redis_prefix, f"node{i}", i))
        yield nodes
    finally:
        for server in nodes:
            await server.shutdown()


async def check_everyone_sees_everything(
    clients: list[tuple[int, ClientConnection]], per_client: int
) -> None:
    """Each client sends ``per_client`` lines; each gets every ``from`` line once,
    in each sender's order, its own ``server:`` lines once, and nothing else."""
    for j in range(per_client):
        for fd, ws in clients:
            await ws.send(f"m{fd}-{j}")
    total = len(clients) * per_client
    for fd, ws in clients:
        got = await recv_all(ws, total + per_client, within=10.0)
        froms = [m for m in got if m.startswith("from ")]
        assert sorted(froms) == sorted(
            f"from {s}: m{s}-{j}" for s, _ in clients for j in range(per_client)
        ), got
        for sender, _ in clients:  # per-sender order
            mine = [m for m in froms if m.startswith(f"from {sender}: ")]
            assert mine == [f"from {sender}: m{sender}-{j}" for j in range(per_client)]
        assert [m for m in got if m.startswith("server: ")] == [
            f"server: m{fd}-{j}" for j in range(per_client)
        ]
    for _, ws in clients:  # nothing twice, nothing stray
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)


async def test_plain_clients_on_two_nodes_see_each_others_messages(
    two_nodes: list[Server],
) -> None:
    a, b = two_nodes
    conns = [
        await connect(ws_url(server)) for server in (a, b, a, b)
    ]  # fds: node0 numbers 1, 3; node1 2, 4
    try:
        for ws in conns:
            assert await recv_all(ws, 1) == [GREETING]
        clients = list(zip([1, 2, 3, 4], conns, strict=True))
        await check_everyone_sees_everything(clients, 3)
        # A client that arrives later is in the room everywhere too.
        late = await connect(ws_url(b))
        conns.append(late)
        assert await recv_all(late, 1) == [GREETING]
        await check_everyone_sees_everything([*clients, (6, late)], 2)
    finally:
        for ws in conns:
            await ws.close()


async def test_binary_frames_cross_nodes_as_binary(two_nodes: list[Server]) -> None:
    a, b = two_nodes
    async with connect(ws_url(a)) as ca, connect(ws_url(b)) as cb:
        assert await recv_all(ca, 1) == await recv_all(cb, 1) == [GREETING]
        await ca.send(b"\x00\xffbin")
        assert await recv_all(cb, 1) == [b"from 1: \x00\xffbin"]
        assert await recv_all(ca, 2) == [b"from 1: \x00\xffbin", b"server: \x00\xffbin"]


# -- hubbub serve --workers 2 --------------------------------------------------------------


async def recv_own(ws: ClientConnection, i: int) -> list[str]:
    """The two frames of this client's message ``who-{i}``. A client that has just
    connected to one worker may still get an earlier message that another worker
    published before it connected and that was crossing Redis meanwhile (the seed
    room promises messages sent after a connection, not a cut-off at its first
    byte): such frames (``who-j``, j < i) are skipped."""
    got: list[str] = []
    while len(got) < 2:
        frame = await asyncio.wait_for(ws.recv(), 10.0)
        text = str(frame)
        earlier = text.startswith("from ") and text.rpartition(": who-")[2] != str(i)
        if not earlier:
            got.append(text)
    return got


async def test_plain_clients_over_two_workers_see_each_other_with_distinct_fds(
    spawn: Any,
    pg_schema: str,  # noqa: F811
    redis_prefix: str,  # noqa: F811
) -> None:
    store = f"{PG_DSN}?schema={pg_schema}"
    broker = f"{REDIS_URL}?prefix={redis_prefix}"
    workers = await asyncio.to_thread(Workers, spawn, free_port(), store, broker)
    parent = workers.proc.pid
    await wait_for(lambda: listening_workers(parent), 30, "two workers")
    pids = listening_workers(parent)
    await wait_for(lambda: all(listens(p, workers.port) for p in pids), 30, "both listening")
    url = f"ws://127.0.0.1:{workers.port}/"
    conns: list[ClientConnection] = []
    clients: list[tuple[int, ClientConnection]] = []
    where: list[int] = []  # the worker pid of each client
    try:
        # Connect until each worker (the kernel picks) serves two plain clients.
        for i in range(40):
            ws = await connect(url)
            conns.append(ws)
            assert await recv_all(ws, 1, within=10.0) == [GREETING]
            port = ws.local_address[1]
            served = {p: await asyncio.to_thread(peer_ports, p) for p in pids}
            pid = next(p for p in pids if port in served[p])
            await ws.send(f"who-{i}")
            got = await recv_own(ws, i)
            fd = int(got[0].split(":")[0].removeprefix("from "))
            assert got == [f"from {fd}: who-{i}", f"server: who-{i}"]
            # The others saw it, from either worker.
            for _, other in clients:
                assert await recv_all(other, 1, within=10.0) == [f"from {fd}: who-{i}"]
            clients.append((fd, ws))
            where.append(pid)
            if all(where.count(p) >= 2 for p in pids):
                break
        else:
            raise AssertionError(f"40 connections did not reach both workers: {where}")
        fds = [f for f, _ in clients]
        assert len(set(fds)) == len(fds), f"fds shared between workers: {fds} on {where}"
        await check_everyone_sees_everything(clients, 3)
    finally:
        for ws in conns:
            await ws.close()
    await asyncio.to_thread(workers.stop, signal.SIGTERM)
