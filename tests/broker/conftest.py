"""Every Broker implementation, for the contract suite (tests/broker/test_contract.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from hubbub.broker import Broker, LocalBroker
from hubbub.broker.redis import RedisBroker
from tests.services import REDIS_URL, pg_schema, redis_prefix  # noqa: F401 (fixtures)

Frame = tuple[str, bytes, int | None]


@dataclass
class Node:
    """A started broker, what its ``deliver`` received and what its node channel did."""

    broker: Broker
    name: str
    got: list[Frame] = field(default_factory=list)
    #: (origin node id, payload) of every payload sent to this node.
    from_nodes: list[tuple[str, bytes]] = field(default_factory=list)

    def deliver(self, room: str, payload: bytes, seq: int | None) -> None:
        self.got.append((room, payload, seq))

    def on_node(self, origin: str, payload: bytes) -> None:
        self.from_nodes.append((origin, payload))


@dataclass
class Cluster:
    """Brokers of one implementation sharing one bus (a Redis prefix, or one process)."""

    kind: str
    make: Callable[[str], Broker]
    max_nodes: int
    nodes: list[Node] = field(default_factory=list)

    async def node(self) -> Node:
        assert len(self.nodes) < self.max_nodes, f"{self.kind} has at most {self.max_nodes}"
        name = f"n{len(self.nodes)}"
        node = Node(self.make(name), name)
        await node.broker.start(node.deliver, node.on_node)
        self.nodes.append(node)
        return node


@pytest.fixture(params=["local", "redis"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    if request.param == "local":
        c = Cluster("local", lambda name: LocalBroker(name), 1)
    else:
        prefix = request.getfixturevalue("redis_prefix")
        c = Cluster("redis", lambda name: RedisBroker(REDIS_URL, prefix=prefix, node_id=name), 3)
    try:
        yield c
    finally:
        for node in c.nodes:
            await node.broker.close()


async def wait_until(cond: Callable[[], Any], within: float = 10.0, what: str = "") -> None:
    """Wait for a condition (polled on the loop), never for a fixed time."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what or cond}")
        await asyncio.sleep(0.005)
