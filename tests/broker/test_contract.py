"""The Broker contract (broker/base.py), run against every implementation.

The in-process broker is a cluster of one node; Redis brokers are several nodes
on one Redis (a random channel prefix per test).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from hubbub.broker import NODE_PAYLOAD_MAX, BrokerError, LocalBroker
from hubbub.broker.redis import RedisBroker
from tests.services import REDIS_URL

from .conftest import Cluster, Node, wait_until


async def nodes_in(cluster: Cluster, rooms: list[str], n: int = 3) -> list[Node]:
    nodes = [await cluster.node() for _ in range(min(n, cluster.max_nodes))]
    for node in nodes:
        for room in rooms:
            await node.broker.subscribe(room)
    return nodes


async def test_publish_delivers_on_its_own_node_inside_the_call(cluster: Cluster) -> None:
    [node] = await nodes_in(cluster, ["lobby"], 1)
    node.broker.publish("lobby", b'{"type":"message"}', 7)
    assert node.got == [("lobby", b'{"type":"message"}', 7)]  # no await in between
    node.broker.publish("lobby", b"typing", None)
    assert node.got[-1] == ("lobby", b"typing", None)


async def test_every_subscribed_node_gets_every_frame_once(cluster: Cluster) -> None:
    nodes = await nodes_in(cluster, ["lobby"])
    for i, node in enumerate(nodes):
        node.broker.publish("lobby", f"from {node.name}".encode(), i + 1)
    expected = sorted(("lobby", f"from {n.name}".encode(), i + 1) for i, n in enumerate(nodes))
    for node in nodes:
        await wait_until(lambda node=node: len(node.got) >= len(nodes), what=node.name)
    # The last frames of each publisher were delivered, so nothing else is in flight.
    probe = nodes[0]
    probe.broker.publish("lobby", b"end", None)
    for node in nodes:
        await wait_until(lambda node=node: node.got[-1:] == [("lobby", b"end", None)])
        assert sorted(node.got[:-1]) == expected, node.name


async def test_frames_keep_their_order_per_room_and_publisher(cluster: Cluster) -> None:
    rooms = ["a", "b", "c"]
    nodes = await nodes_in(cluster, rooms)
    per_node = 300
    for i in range(per_node):
        for node in nodes:
            room = rooms[(i * 7 + len(node.name)) % 3]
            node.broker.publish(room, f"{node.name}:{room}:{i}".encode(), i)
    total = per_node * len(nodes)
    for node in nodes:
        await wait_until(lambda node=node: len(node.got) >= total, within=30, what=node.name)
        assert len(node.got) == total
        seen: dict[tuple[str, str], list[int]] = defaultdict(list)
        for room, payload, seq in node.got:
            origin, in_room, i = payload.decode().split(":")
            assert (in_room, int(i)) == (room, seq)
            seen[(origin, room)].append(int(i))
        for key, order in seen.items():
            assert order == sorted(order), f"{node.name} got {key} out of order"
        sent: dict[tuple[str, str], int] = defaultdict(int)
        for i in range(per_node):
            for n in nodes:
                sent[(n.name, rooms[(i * 7 + len(n.name)) % 3])] += 1
        assert {k: len(v) for k, v in seen.items()} == dict(sent)


@pytest.mark.parametrize(
    "room, payload, seq",
    [
        ("émile", bytes(range(256)), 2**63 + 5),
        ("a}{b", b"", 0),
        ("{", b"\x00" * 70_000, None),
    ],
)
async def test_rooms_payloads_and_seqs_arrive_unchanged(
    cluster: Cluster, room: str, payload: bytes, seq: int | None
) -> None:
    nodes = await nodes_in(cluster, [room])
    nodes[0].broker.publish(room, payload, seq)
    for node in nodes:
        await wait_until(lambda node=node: node.got)
        assert node.got == [(room, payload, seq)]


async def test_a_failing_deliver_does_not_stop_delivery(cluster: Cluster) -> None:
    nodes = await nodes_in(cluster, ["r"])
    calls: dict[str, int] = defaultdict(int)
    for node in nodes:
        original = node.deliver

        def failing_first(room: str, payload: bytes, seq: int | None, n=node, d=original) -> None:
            calls[n.name] += 1
            if calls[n.name] == 1:
                raise RuntimeError("a bug in the app")
            d(room, payload, seq)

        node.broker._deliver = failing_first  # type: ignore[attr-defined]
    nodes[-1].broker.publish("r", b"one", 1)
    nodes[-1].broker.publish("r", b"two", 2)
    for node in nodes:
        await wait_until(lambda node=node: node.got, what=node.name)
        assert node.got == [("r", b"two", 2)]


async def test_subscribe_counts(cluster: Cluster) -> None:
    [node] = await nodes_in(cluster, [], 1)
    await node.broker.subscribe("r")
    await node.broker.subscribe("r")
    node.broker.unsubscribe("r")
    node.broker.unsubscribe("never")  # ignored
    assert node.broker.subscribed == frozenset({"r"})  # type: ignore[attr-defined]
    node.broker.unsubscribe("r")
    node.broker.unsubscribe("r")  # one too many: ignored
    assert node.broker.subscribed == frozenset()  # type: ignore[attr-defined]
    await node.broker.subscribe("r")
    assert node.broker.subscribed == frozenset({"r"})  # type: ignore[attr-defined]


async def test_before_start_and_after_close(cluster: Cluster) -> None:
    unstarted = (
        LocalBroker() if cluster.kind == "local" else RedisBroker(REDIS_URL, prefix="unused:")
    )
    unstarted.publish("r", b"nobody", None)  # does nothing, raises nothing
    with pytest.raises(BrokerError, match="not started"):
        await unstarted.subscribe("r")
    await unstarted.close()  # closing an unstarted broker is fine

    [node] = await nodes_in(cluster, ["r"], 1)
    await node.broker.close()
    await node.broker.close()  # idempotent
    node.broker.publish("r", b"late", None)
    assert node.got == []


# -- node channels: one node to another ------------------------------------------------


async def test_a_node_payload_reaches_its_node_alone_with_the_senders_id(
    cluster: Cluster,
) -> None:
    nodes = await nodes_in(cluster, ["r"])
    sender, target = nodes[0], nodes[-1]
    me = sender.broker.node_id
    lost: list[str] = []
    sender.broker.send_node(target.broker.node_id, b"\x00psst\xff", lambda: lost.append("x"))
    await wait_until(lambda: target.from_nodes, what="the payload at its node")
    assert target.from_nodes == [(me, b"\x00psst\xff")]
    # A last payload to every node: one sender's payloads to a node keep their order,
    # so a copy of the first that went astray would have arrived before it.
    for node in nodes:
        sender.broker.send_node(node.broker.node_id, b"end")
    for node in nodes:
        await wait_until(lambda node=node: node.from_nodes[-1:] == [(me, b"end")])
        if node is not target:
            assert node.from_nodes == [(me, b"end")], node.name
        assert node.got == []  # a node payload is not a room frame
    assert lost == []


async def test_a_payload_for_this_node_is_handed_over_inside_the_call(cluster: Cluster) -> None:
    [node] = await nodes_in(cluster, [], 1)
    node.broker.send_node(node.broker.node_id, b"to myself")
    assert node.from_nodes == [(node.broker.node_id, b"to myself")]  # no await in between


async def test_node_payloads_keep_their_order_and_room_frames_stay_rooms(
    cluster: Cluster,
) -> None:
    nodes = await nodes_in(cluster, ["r"], 2)
    sender, target = nodes[0], nodes[-1]
    for i in range(300):
        sender.broker.send_node(target.broker.node_id, b"%d" % i)
        sender.broker.publish("r", b"room %d" % i, i)
    await wait_until(lambda: len(target.from_nodes) >= 300 and len(target.got) >= 300)
    assert [payload for _, payload in target.from_nodes] == [b"%d" % i for i in range(300)]
    assert [payload for _, payload, _ in target.got] == [b"room %d" % i for i in range(300)]


async def test_a_payload_over_the_cap_is_told_lost_and_one_at_the_cap_arrives(
    cluster: Cluster,
) -> None:
    nodes = await nodes_in(cluster, [], 2)
    sender, target = nodes[0], nodes[-1]
    lost: list[str] = []
    big = b"x" * (NODE_PAYLOAD_MAX + 1)
    sender.broker.send_node(target.broker.node_id, big, lambda: lost.append("big"))
    assert lost == ["big"]  # known at once: never sent
    most = b"y" * NODE_PAYLOAD_MAX
    sender.broker.send_node(target.broker.node_id, most, lambda: lost.append("most"))
    await wait_until(lambda: target.from_nodes)
    assert target.from_nodes == [(sender.broker.node_id, most)]
    assert lost == ["big"]


async def test_a_payload_for_a_node_nobody_runs_is_told_lost(cluster: Cluster) -> None:
    [node] = await nodes_in(cluster, [], 1)
    lost: list[str] = []
    node.broker.send_node("nobody", b"?", lambda: lost.append("nobody"))
    await wait_until(lambda: lost, what="on_lost for a node nobody runs")
    assert lost == ["nobody"] and node.from_nodes == []


async def test_send_node_before_start_and_after_close_is_told_lost(cluster: Cluster) -> None:
    unstarted = (
        LocalBroker() if cluster.kind == "local" else RedisBroker(REDIS_URL, prefix="unused:")
    )
    lost: list[str] = []
    unstarted.send_node(unstarted.node_id, b"x", lambda: lost.append("unstarted"))
    assert lost == ["unstarted"]
    [node] = await nodes_in(cluster, [], 1)
    await node.broker.close()
    node.broker.send_node(node.broker.node_id, b"late", lambda: lost.append("closed"))
    assert lost == ["unstarted", "closed"] and node.from_nodes == []
