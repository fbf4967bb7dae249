"""Broker and store faults under traffic: two ``hubbub serve`` nodes, one PostgreSQL,
one Redis, clients on both nodes sending all along. In turn: a network partition
between one node and Redis (a proxy the test cuts), the other node's Redis
connections killed (``CLIENT KILL``), the PostgreSQL backends of each node
terminated (``pg_terminate_backend``). The partition outlasts node a's presence
lease, and meanwhile one of b's clients leaves and another comes: b's lists lose
a's members, then every list is whole again after the heal. Then the checker
reads every client's log against the stored history: no acknowledged message
lost, none stored twice, every receiver gapless, all in agreement; and presence
converges: every client's member list and ``who`` answer are exactly the clients
connected (no ghost, none missing). Only this test's own connections are hit
(found from the node's sockets), never other users of the shared services.
(Redis restarted and ``CLIENT KILL TYPE pubsub``, which need a Redis of the
test's own, are in test_redis_restart.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

import redis.asyncio as aioredis

from tests.broker.proxy import Proxy
from tests.services import PG_DSN, REDIS_URL, pg_connect

from ..conftest import free_port
from .checker import check
from .drill import (
    DrillClient,
    Node,
    local_tcp_ports,
    presence_converges,
    ready,
    settle,
    shut,
    wait_for,
)

#: Seconds for member lists to be right: node a, cut off from Redis, has its
#: members removed from b's lists once its lease lapsed (within 13 s,
#: docs/presence.md); 4 s of slack for a busy machine. After the heal, a
#: registers them again at its next renewal (3 s) and reads b's members.
PRESENCE_WITHIN = 17.0


async def kill_redis_connections(node: Node) -> int:
    """``CLIENT KILL`` every Redis connection of this node (pub/sub and commands)."""
    ports = await asyncio.to_thread(local_tcp_ports, node.proc.pid)
    r = aioredis.from_url(REDIS_URL)
    try:
        ids = [c["id"] for c in await r.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]
        for client_id in ids:
            await r.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        await r.aclose()


async def terminate_pg_backends(node: Node) -> int:
    """``pg_terminate_backend`` every PostgreSQL connection of this node."""
    ports = await asyncio.to_thread(local_tcp_ports, node.proc.pid)
    conn = await pg_connect()
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[])", list(ports)
        )
        for row in rows:
            await conn.execute("SELECT pg_terminate_backend($1)", row["pid"])
        return len(rows)
    finally:
        await conn.close()


async def test_partition_killed_connections_and_terminated_backends_lose_nothing(
    spawn, pg_schema, redis_prefix
):
    target = urlparse(REDIS_URL)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    store = f"{PG_DSN}?schema={pg_schema}"
    direct = f"{REDIS_URL}?prefix={redis_prefix}"
    via_proxy = f"redis://127.0.0.1:{proxy.port}{target.path}?prefix={redis_prefix}"
    # In a thread: the proxy runs on this loop and node a's start-up goes through it.
    a = await asyncio.to_thread(Node, spawn, free_port(), store, via_proxy)
    b = await asyncio.to_thread(Node, spawn, free_port(), store, direct)
    clients = [DrillClient(f"a{i}", f"ws://127.0.0.1:{a.port}/") for i in range(3)]
    clients += [DrillClient(f"b{i}", f"ws://127.0.0.1:{b.port}/") for i in range(3)]
    stop_reading, stop_sending = asyncio.Event(), asyncio.Event()
    readers = [asyncio.create_task(c.run(stop_reading)) for c in clients]
    senders: list[asyncio.Task[None]] = []
    everyone = list(clients)  # clients: those in the room (one leaves, one comes)

    def acked() -> int:
        return sum(len(c.log.acked) for c in everyone)

    async def under_traffic(fault: Callable[[], Awaitable[object]] | None, what: str) -> None:
        before = acked()
        if fault is not None:
            await fault()
        await wait_for(lambda: acked() >= before + 30, 30, f"traffic goes on after {what}")

    try:
        await wait_for(lambda: all(c.ws is not None for c in clients), 20, "every client joined")
        senders += [asyncio.create_task(c.send_until(stop_sending, 0.05)) for c in clients]
        await wait_for(lambda: acked() >= 30, 20, "traffic")
        await proxy.cut()
        await wait_for(lambda: ready(a) == 503, 20, "node a reports Redis unreachable")
        # While a cannot hear the broker, its clients still get b's messages (read
        # from the store by the position check), and the traffic goes on.
        await under_traffic(None, "a partition between node a and Redis")
        latest_b = max(seq for c in clients[3:] for _, seq in c.log.acked.values())
        await wait_for(
            lambda: all(c.seq >= latest_b for c in clients[:3]), 20, "a's clients catch up"
        )
        # Presence while a is cut off: one of b's clients leaves for good, another
        # comes (a cannot hear either); a's lease lapses and b removes its members.
        await clients[5].quit(senders.pop(5))
        newcomer = DrillClient("b3", f"ws://127.0.0.1:{b.port}/")
        clients[5:] = [newcomer]
        everyone.append(newcomer)
        readers.append(asyncio.create_task(newcomer.run(stop_reading)))
        senders.append(asyncio.create_task(newcomer.send_until(stop_sending, 0.05)))
        await presence_converges(clients[3:], PRESENCE_WITHIN, "b's lists without a's members")
        assert ready(a) == 503
        await proxy.resume()
        await wait_for(lambda: ready(a) == 200, 20, "node a reports ready again")
        await under_traffic(None, "the partition healed")
        # a registers its members again and reads b's: every list is whole again.
        await presence_converges(clients, PRESENCE_WITHIN, "after the partition healed")
        assert await kill_redis_connections(b) >= 2  # its subscriber and its publisher
        await under_traffic(None, "node b's Redis connections were killed")
        assert await terminate_pg_backends(a) >= 1
        await under_traffic(None, "node a's PostgreSQL backends were terminated")
        assert await terminate_pg_backends(b) >= 1
        await under_traffic(None, "node b's PostgreSQL backends were terminated")
        history = await settle(clients, senders, stop_sending, a.port)
        await presence_converges(clients, PRESENCE_WITHIN, "after the faults")
    finally:
        await shut(everyone, [*readers, *senders], stop_sending, stop_reading)
        await proxy.close()
    logs = [c.log for c in everyone]
    assert len(history) == sum(len(log.sent) for log in logs)
    assert [m.seq for m in history] == list(range(1, len(history) + 1))
    assert check(logs, history) == []
    for log in logs[:5]:  # those there from the start to the end
        assert log.received[0].seq == 1 and len(log.received) == len(history), log.name
