"""Several hubbub nodes on one PostgreSQL and one Redis behave like one server."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from tests.apps.test_chat import Client, http

from .conftest import Cluster, Proxy, wait_until


async def collect(client: Client, count: int, within: float = 20.0) -> list[dict[str, Any]]:
    """The next ``count`` room messages this client receives (other frames skipped)."""
    got: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(got) < count:
        frame = await client.recv(within=max(0.1, deadline - loop.time()))
        if frame["type"] == "message":
            got.append(frame)
    return got


async def http_text(server: Any, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@pytest.mark.parametrize("nodes", [2, 3])
async def test_clients_on_different_nodes_see_every_message_once_in_the_same_order(
    cluster: Cluster, nodes: int
):
    # The first node's Redis is far away: its frames and the others' interleave.
    slow = await cluster.proxy(delay=0.01)
    servers = [await cluster.node(via_proxy=slow)]
    servers += [await cluster.node() for _ in range(nodes - 1)]
    clients = [
        await Client.open(s, f"c{i}-{j}", "r") for i, s in enumerate(servers) for j in (0, 1)
    ]
    per_client = 25
    total = per_client * len(clients)

    async def write(i: int, c: Client) -> None:
        for j in range(per_client):
            await c.send(type="send", room="r", id=f"{i}-{j}", text=f"{i}:{j}")
            if random.random() < 0.3:
                await asyncio.sleep(0)

    writers = [asyncio.create_task(write(i, c)) for i, c in enumerate(clients)]
    seen = await asyncio.gather(*(collect(c, total) for c in clients))
    await asyncio.gather(*writers)
    first = [(m["seq"], m["client_id"], m["text"]) for m in seen[0]]
    assert [seq for seq, _, _ in first] == list(range(1, total + 1))
    assert len({cid for _, cid, _ in first}) == total
    for other in seen[1:]:
        assert [(m["seq"], m["client_id"], m["text"]) for m in other] == first
    for c in clients:
        with pytest.raises(TimeoutError):  # nothing more: no repeat
            while True:
                assert (await c.recv(0.2))["type"] != "message"
        await c.close()


async def test_a_client_resumes_on_another_node_without_a_gap_or_a_duplicate(cluster: Cluster):
    servers = [await cluster.node() for _ in range(3)]
    reader = await Client.open(servers[0], "reader", "r")
    writers = [await Client.open(s, f"w{i}", "r") for i, s in enumerate(servers)]
    per_writer = 40
    total = per_writer * len(writers)

    async def write(i: int, c: Client) -> None:
        for j in range(per_writer):
            await c.send(type="send", room="r", id=f"{i}-{j}", text=f"{i}:{j}")
            await asyncio.sleep(random.random() * 0.004)  # traffic flows during the resumes

    tasks = [asyncio.create_task(write(i, c)) for i, c in enumerate(writers)]
    seen: list[int] = []
    node, epoch = 0, None
    cuts = [10, 35, 60, 90]
    while len(seen) < total:
        frame = await reader.recv(within=10)
        if frame["type"] != "message":
            continue
        assert frame["seq"] == (seen[-1] + 1 if seen else 1), (seen[-3:], frame["seq"])
        seen.append(frame["seq"])
        epoch = frame["epoch"]
        if cuts and len(seen) >= cuts[0]:
            cuts.pop(0)
            reader.ws.transport.abort()
            node = (node + 1) % len(servers)  # always another node
            reader = await Client.open(servers[node])
            await reader.join("r", "reader", since=seen[-1], epoch=epoch)
    await asyncio.gather(*tasks)
    assert seen == list(range(1, total + 1))
    with pytest.raises(TimeoutError):
        while True:
            assert (await reader.recv(0.2))["type"] != "message"
    await reader.close()
    for c in writers:
        c.ws.transport.abort()


async def test_a_send_retried_through_another_node_is_stored_once(cluster: Cluster):
    a, b = await cluster.node(), await cluster.node()
    watcher = await Client.open(b, "watcher", "r")
    first = await Client.open(a, "ann", "r")
    await first.send(type="send", room="r", id="same-id", text="hello")
    ack1 = await first.expect("message", text="hello")
    ack1 = await first.expect("ack", id="same-id", duplicate=False)
    first.ws.transport.abort()  # as if the ack had been lost with the connection
    again = await Client.open(b, "ann", "r")
    await again.send(type="send", room="r", id="same-id", text="hello")
    ack2 = await again.expect("ack", id="same-id")
    assert ack2["duplicate"] is True
    assert (ack2["seq"], ack2["msg_id"]) == (ack1["seq"], ack1["msg_id"])
    msgs = await collect(watcher, 1)
    assert msgs[0]["seq"] == ack1["seq"]
    await watcher.send(type="send", room="r", id="w1", text="next")
    nxt = await collect(watcher, 1)
    assert nxt[0]["seq"] == ack1["seq"] + 1  # no second copy took a number
    stored = await b.app.store.since("r", 0, 100)
    assert [m.client_id for m in stored] == ["same-id", "w1"]
    for c in (watcher, again):
        await c.close()


async def test_a_node_cut_off_from_redis_catches_up_and_says_it_is_not_ready(cluster: Cluster):
    proxy = await cluster.proxy()
    cut_node = await cluster.node(via_proxy=proxy)
    other = await cluster.node()
    ann = await Client.open(cut_node, "ann", "r")
    bob = await Client.open(other, "bob", "r")
    await ann.expect("joined", nick="bob")
    assert await http_text(cut_node, "/readyz") == (200, "ready\n")
    await proxy.cut()
    status, body = await http_text(cut_node, "/readyz")
    assert status == 503 and "broker" in body, body
    assert (await http_text(cut_node, "/healthz"))[0] == 200  # still alive
    # While Redis is away: every send is stored and acked, none lost.
    frames: dict[str, list[dict[str, Any]]] = {"ann": [], "bob": []}

    async def read(name: str, c: Client) -> None:
        while True:
            frames[name].append(await c.recv(within=60))

    readers = [asyncio.create_task(read(n, c)) for n, c in (("ann", ann), ("bob", bob))]
    for i in range(5):
        await bob.send(type="send", room="r", id=f"b{i}", text=f"b{i}")
        await ann.send(type="send", room="r", id=f"a{i}", text=f"a{i}")

    def of(name: str, kind: str) -> list[dict[str, Any]]:
        return [f for f in frames[name] if f["type"] == kind]

    # The last message while cut off: no later frame shows ann's node the hole;
    # the position checks (periodic, and after the reconnect) do.
    await wait_until(lambda: len(of("ann", "ack")) == 5 and len(of("bob", "ack")) == 5)
    await bob.send(type="send", room="r", id="b-last", text="last")
    await wait_until(lambda: len(of("bob", "ack")) == 6)
    assert of("bob", "ack")[-1]["seq"] == 11
    await proxy.resume()
    await wait_until(
        lambda: len(of("ann", "message")) >= 11 and len(of("bob", "message")) >= 11,
        what="every message on both nodes after the reconnect",
    )
    for name in ("ann", "bob"):
        assert [m["seq"] for m in of(name, "message")] == list(range(1, 12)), frames[name]
    for task in readers:
        task.cancel()
    await wait_until(
        lambda: _ready(cut_node), what="/readyz back to 200 after the reconnect"
    )
    for c in (ann, bob):
        await c.close()


async def _ready(server: Any) -> bool:
    return (await http_text(server, "/readyz"))[0] == 200


async def test_rooms_over_http_on_any_node(cluster: Cluster):
    a, b = await cluster.node(), await cluster.node()
    ann = await Client.open(a, "ann", "r")
    await ann.send(type="send", room="r", id="x", text="one")
    await ann.expect("message", seq=1)
    status, body = await http(b, "GET", "/api/rooms/r/messages")
    assert status == 200 and [m["text"] for m in body["messages"]] == ["one"]
    assert json.dumps(body)  # plain JSON
    await ann.close()


async def test_when_postgresql_goes_away_sends_are_refused_never_lost(cluster: Cluster):
    from urllib.parse import urlparse, urlunparse

    from hubbub.store.postgres import PostgresStore
    from tests.services import PG_DSN

    target = urlparse(PG_DSN)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    cluster.proxies.append(proxy)
    netloc = f"{target.username or 'postgres'}@127.0.0.1:{proxy.port}"
    dsn = urlunparse(target._replace(netloc=netloc))
    node = await cluster.node(
        store=PostgresStore(dsn, schema=cluster.schema, timeout=2, application_name="cut")
    )
    other = await cluster.node()
    ann = await Client.open(node, "ann", "r")
    bob = await Client.open(other, "bob", "r")
    await ann.send(type="send", room="r", id="a0", text="before")
    await ann.expect("joined", nick="bob")
    await ann.expect("message", seq=1)
    await ann.expect("ack", id="a0")
    await proxy.cut()
    status, body = await http_text(node, "/readyz")
    assert status == 503 and "store" in body, body
    await ann.send(type="send", room="r", id="a1", text="while away")
    refused = await ann.expect("error", code="unavailable", ref="send")
    assert refused["id"] == "a1"
    await proxy.resume()
    await wait_until(lambda: _ready(node), what="/readyz back once PostgreSQL is back")
    await ann.send(type="send", room="r", id="a1", text="while away")  # the client's retry
    ack = await ann.expect("message", seq=2)
    ack = await ann.expect("ack", id="a1", duplicate=False)
    assert ack["seq"] == 2
    got = await collect(bob, 2)
    assert [m["client_id"] for m in got] == ["a0", "a1"]
    stored = await other.app.store.since("r", 0, 10)
    assert [m.client_id for m in stored] == ["a0", "a1"]
    for c in (ann, bob):
        await c.close()


async def test_frames_the_broker_drops_are_read_from_the_store(cluster: Cluster):
    # A publisher whose outgoing queue holds one frame: a burst loses most of them.
    lossy = await cluster.node(broker_options={"max_queue": 1})
    other = await cluster.node()
    ann = await Client.open(lossy, "ann", "r")
    bob = await Client.open(other, "bob", "r")
    await ann.expect("joined", nick="bob")
    count = 40
    for i in range(count):
        await ann.send(type="send", room="r", id=f"a{i}", text=f"{i}")
    got = await collect(bob, count)
    assert [m["seq"] for m in got] == list(range(1, count + 1))
    assert lossy.app.broker.dropped > 0  # the broker did lose frames
    assert other.app.sequencer.backfilled > 0
    for c in (ann, bob):
        await c.close()
