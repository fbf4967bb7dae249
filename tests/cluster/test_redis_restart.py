"""Redis itself under traffic: restarted with an empty dataset, and its pub/sub
connections killed.

Three ``hubbub serve`` nodes on the shared PostgreSQL (a schema of the test's
own) and a ``redis-server`` of the test's own (:class:`PrivateRedis`, no
persistence), two clients on each node sending all along, each with a nickname.

* **Restarted**: Redis is stopped (SIGTERM, then in a second round SIGKILL) and
  started again on the same port, empty: every lease, member list and nickname
  claim is gone. While it is away one client leaves for good (its leave cannot
  reach Redis) and a newcomer tries to join (refused with ``unavailable`` until
  Redis is back). Within :data:`CONVERGE_WITHIN` seconds of Redis being back,
  every client's member list (and ``who`` answer) is exactly the clients
  connected (no ghost, none missing), Redis again holds every node's lease,
  every member and every nickname claim, and a new client on another node cannot
  take a connected member's nickname.
* **``CLIENT KILL TYPE pubsub``**: every node's subscriber connection is killed
  (only this test's: the Redis is private), twice, with a member leaving and a
  newcomer joining right after each kill (their presence events published while
  the nodes' subscribers reconnect, so most likely lost); lists converge the
  same way.

Then the checker (tests/cluster/checker.py): nothing acknowledged lost, nothing
stored twice, every receiver gapless and in agreement with the history.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.services import PG_DSN

from ..conftest import free_port
from .checker import Stored, check, fold
from .drill import (
    ROOM,
    DrillClient,
    Node,
    PrivateRedis,
    presence_converges,
    ready,
    settle,
    shut,
    wait_for,
)

#: hubbub's presence timings (docs/presence.md): a node renews its lease (and finds
#: it gone after a restart) every RENEW_EVERY seconds; the broker's subscriber
#: reconnects with a back-off of at most BACKOFF_MAX seconds.
RENEW_EVERY = 3.0
BACKOFF_MAX = 5.0
#: Seconds from Redis being back (or the kill) to every list, lease and claim
#: being right again: a renewal period, the longest reconnect back-off, and 4 s
#: of slack for Redis round trips on a busy 2-core machine.
CONVERGE_WITHIN = RENEW_EVERY + BACKOFF_MAX + 4.0
PREFIX = "hubbub:"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, free_port())
    try:
        yield server
    finally:
        server.close()


class Drill:
    """Nodes, clients with nicknames (``a0``, ``a1`` on the first node...), their tasks."""

    def __init__(self, nodes: list[Node], per_node: int = 2) -> None:
        self.nodes = nodes
        self.clients: list[DrillClient] = []
        self.active: list[DrillClient] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.senders: dict[str, asyncio.Task[None]] = {}
        self.stop_reading, self.stop_sending = asyncio.Event(), asyncio.Event()
        for n, node in enumerate(nodes):
            for i in range(per_node):
                self.add(f"{'abcdefgh'[n]}{i}", node, start=False)

    def url(self, node: Node) -> str:
        return f"ws://127.0.0.1:{node.port}/"

    def add(self, nick: str, node: Node, start: bool = True) -> DrillClient:
        client = DrillClient(nick, self.url(node), nick=nick)
        self.clients.append(client)
        self.active.append(client)
        if start:
            self._start(client)
        return client

    def _start(self, client: DrillClient) -> None:
        self.tasks.append(asyncio.create_task(client.run(self.stop_reading)))
        sender = asyncio.create_task(client.send_until(self.stop_sending, 0.05))
        self.senders[client.name] = sender
        self.tasks.append(sender)

    async def start(self) -> None:
        for client in self.clients:
            self._start(client)
        await wait_for(lambda: all(c.connected for c in self.clients), 20, "every client joined")

    def acked(self) -> int:
        return sum(len(c.log.acked) for c in self.clients)

    async def traffic(self, what: str, n: int = 30) -> None:
        before = self.acked()
        await wait_for(lambda: self.acked() >= before + n, 30, f"traffic goes on {what}")

    def named(self, name: str) -> DrillClient:
        return next(c for c in self.clients if c.name == name)

    async def quit(self, client: DrillClient) -> None:
        self.active.remove(client)
        await client.quit(self.senders[client.name])

    async def converges(self, what: str) -> float:
        return await presence_converges(self.active, CONVERGE_WITHIN, what)

    def connected(self) -> dict[str, str]:
        return {c.name: c.view.nick or "" for c in self.active}

    async def settle(self) -> list[Stored]:
        """Stop sending; every message acked and seen by every active client."""
        return await settle(self.active, [], self.stop_sending, self.nodes[0].port)

    async def shut(self) -> None:
        await shut(self.clients, self.tasks, self.stop_sending, self.stop_reading)

    def check(self, history: list[Stored]) -> None:
        logs = [c.log for c in self.clients]
        assert len(history) == sum(len(log.sent) for log in logs)
        assert [m.seq for m in history] == list(range(1, len(history) + 1))
        assert check(logs, history) == []


def presence_in_redis(server: PrivateRedis) -> tuple[set[str], dict[str, str], int]:
    """What the nodes registered in Redis: the room's members' nicknames, its
    nickname claims (key -> owner) and how many node leases are alive."""
    with server.client() as r:
        members = r.hgetall(f"{PREFIX}presence:{{{ROOM}}}:m")
        claims = r.hgetall(f"{PREFIX}presence:{{{ROOM}}}:k")
        leases = [k for k in r.scan_iter(f"{PREFIX}presence:node:*") if b":rooms" not in k]
    nicks = {json.loads(v)["n"] for v in members.values()}
    return nicks, {k.decode(): v.decode() for k, v in claims.items()}, len(leases)


async def registered(drill: Drill, server: PrivateRedis) -> None:
    """Redis holds exactly the connected members, a claim for each nickname, a lease
    per node (checked with a bound: each node rewrites them at its next renewal)."""

    def right() -> bool:
        nicks, claims, leases = presence_in_redis(server)
        want = set(drill.connected().values())
        return nicks == want and set(claims) == {fold(n) for n in want} and leases == 3

    try:
        await wait_for(right, CONVERGE_WITHIN, "Redis holds every member, claim and lease")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {presence_in_redis(server)}, {drill.connected()}") from None


async def join_as(url: str, nick: str, within: float = 10.0) -> str:
    """Join the drill room as ``nick`` through ``url``: ``room`` if it got in, else the
    refusal's error code."""
    async with connect(url, subprotocols=["hubbub.v1"], open_timeout=5) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "join", "room": ROOM, "nick": nick}))
        deadline = time.monotonic() + within
        while True:
            f = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            if f["type"] == "room" or (f["type"] == "error" and f.get("ref") == "join"):
                return str(f.get("code", f["type"]))


async def three_nodes(spawn: Any, pg_schema: str, private_redis: PrivateRedis) -> list[Node]:
    """Three ``hubbub serve`` nodes on the test's schema and its private Redis."""
    store = f"{PG_DSN}?schema={pg_schema}"
    return [
        await asyncio.to_thread(Node, spawn, free_port(), store, private_redis.url)
        for _ in range(3)
    ]


async def test_redis_restarted_with_an_empty_dataset_loses_nothing_and_presence_converges(
    spawn: Any, pg_schema: str, private_redis: PrivateRedis
) -> None:
    nodes = await three_nodes(spawn, pg_schema, private_redis)
    drill = Drill(nodes)
    took: list[float] = []
    try:
        await drill.start()
        await drill.converges("at the start")
        rounds = [(signal.SIGTERM, "a1", "d0", nodes[1]), (signal.SIGKILL, "b1", "d1", nodes[2])]
        for how, leaver, newcomer, where in rounds:
            await drill.traffic(f"before Redis is stopped with {how.name}")
            await asyncio.to_thread(private_redis.stop, how)
            await wait_for(lambda: all(ready(n) == 503 for n in nodes), 20, "every node 503")
            await drill.traffic("while Redis is away")  # stored and acked all the same
            await drill.quit(drill.named(leaver))
            late = drill.add(newcomer, where)
            await wait_for(lambda late=late: "unavailable" in late.refused, 20, "join refused")
            await asyncio.to_thread(private_redis.start)  # empty
            back = time.monotonic()
            await drill.converges(f"after a restart ({how.name})")
            await registered(drill, private_redis)
            took.append(time.monotonic() - back)
            # Nickname claims are back: another node's newcomer cannot take a0's
            # (the exact nickname: the cluster's claim decides, not the mirror).
            assert await join_as(drill.url(nodes[2]), "a0") == "nick_taken"
            await drill.traffic(f"after the restart ({how.name})")
        history = await drill.settle()
        await drill.converges("at the end")
    finally:
        await drill.shut()
    drill.check(history)
    assert max(took) <= CONVERGE_WITHIN, took


async def test_killed_pubsub_connections_lose_nothing_and_presence_converges(
    spawn: Any, pg_schema: str, private_redis: PrivateRedis
) -> None:
    nodes = await three_nodes(spawn, pg_schema, private_redis)
    drill = Drill(nodes)
    try:
        await drill.start()
        await drill.converges("at the start")
        for leaver, newcomer, where in (("a1", "d0", nodes[1]), ("c1", "d1", nodes[0])):
            await drill.traffic("before the kill")
            quitting = drill.named(leaver)
            await quitting.stop_sending(drill.senders[leaver])  # everything acked
            drill.active.remove(quitting)
            with private_redis.client() as r:
                before = {c["id"] for c in r.client_list(_type="pubsub")}
                assert len(before) == 3, r.client_list()  # one subscriber per node
                killed = r.execute_command("CLIENT KILL TYPE pubsub")
            assert killed == 3
            # Presence changes at once, while the subscribers reconnect: their
            # events are published while nobody listens (lost, most likely).
            await quitting.close()
            drill.add(newcomer, where)
            await drill.traffic("after the kill")
            await drill.converges("after CLIENT KILL TYPE pubsub")

            def resubscribed(before: set[str] = before) -> bool:
                with private_redis.client() as r:
                    now = {c["id"] for c in r.client_list(_type="pubsub")}
                return len(now) == 3 and not now & before

            await wait_for(resubscribed, 20, "every node subscribed again")
        history = await drill.settle()
        await drill.converges("at the end")
    finally:
        await drill.shut()
    drill.check(history)
