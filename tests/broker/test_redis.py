"""What only the Redis broker does: reconnects, health checks, a bounded outgoing queue,
per-node subscriptions, the frame header. (The Broker contract is in test_contract.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlparse

import pytest

from hubbub.broker import BrokerError
from hubbub.broker.redis import RedisBroker, decode_frame, encode_frame
from tests.services import REDIS_URL, redis_client

from .conftest import Node, wait_until
from .proxy import Proxy


@pytest.fixture
async def make_node(redis_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    nodes: list[Node] = []

    async def factory(name: str, url: str = REDIS_URL, listen: bool = True, **kwargs: Any) -> Node:
        broker = RedisBroker(url, prefix=redis_prefix, node_id=name, **kwargs)
        node = Node(broker, name)
        await broker.start(node.deliver, node.on_node if listen else None)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        await node.broker.close()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    target = urlparse(REDIS_URL)
    p = Proxy(target.hostname or "127.0.0.1", target.port or 6379)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def proxied(p: Proxy) -> str:
    return f"redis://127.0.0.1:{p.port}{urlparse(REDIS_URL).path}"


async def test_two_nodes_deliver_each_others_frames_once(make_node: Callable[..., Any]) -> None:
    a, b = await make_node("a"), await make_node("b")
    for node in (a, b):
        await node.broker.subscribe("lobby")
    a.broker.publish("lobby", b"from a", 1)
    b.broker.publish("lobby", b"from b", 2)
    await wait_until(lambda: len(a.got) == 2 and len(b.got) == 2)
    # One more round trip through Redis: an echo of its own frame would have come by now.
    a.broker.publish("lobby", b"end a", None)
    b.broker.publish("lobby", b"end b", None)
    await wait_until(lambda: len(a.got) == 4 and len(b.got) == 4)
    assert sorted(a.got, key=repr) == sorted(b.got, key=repr)
    assert sorted(a.got, key=repr) == sorted(
        [
            ("lobby", b"from a", 1),
            ("lobby", b"from b", 2),
            ("lobby", b"end a", None),
            ("lobby", b"end b", None),
        ],
        key=repr,
    )


async def test_a_node_receives_only_the_rooms_it_subscribed_to(
    make_node: Callable[..., Any],
) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("x")
    a.broker.publish("y", b"not for b", 1)
    a.broker.publish("x", b"for b", 2)  # after "y" from the same publisher: "y" came first
    await wait_until(lambda: b.got)
    assert b.got == [("x", b"for b", 2)]
    b.broker.unsubscribe("x")
    await wait_until(lambda: not _server_subscribers(b.broker.channel("x")))  # type: ignore[attr-defined]
    a.broker.publish("x", b"after unsubscribe", 3)
    await b.broker.subscribe("z")  # a later frame from a proves the earlier one was dropped
    a.broker.publish("z", b"z", 4)
    await wait_until(lambda: len(b.got) == 2)
    assert b.got[1] == ("z", b"z", 4)


def _kill_subscriber(node_id: str) -> None:
    """Kill node ``node_id``'s subscriber connection on the Redis side."""
    client = redis_client()
    try:
        name = f"hubbub-{node_id}-sub"
        ids = [c["id"] for c in client.client_list(_type="pubsub") if c.get("name") == name]
        assert len(ids) == 1
        assert client.execute_command("CLIENT KILL TYPE pubsub ID", ids[0]) == 1
    finally:
        client.close()


def _own_id(name: str) -> str:
    """A node id no other test (another xdist worker, another checkout) uses at the same
    time: the kill tests find the connection to kill by its client name."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


def _server_subscribers(channel: bytes) -> int:
    client = redis_client()
    try:
        return int(dict(client.pubsub_numsub(channel))[channel])
    finally:
        client.close()


async def test_a_killed_pubsub_connection_is_resubscribed(make_node: Callable[..., Any]) -> None:
    reconnected: list[float] = []
    a = await make_node("a")
    b_id = _own_id("b")
    b = await make_node(b_id, on_reconnect=lambda: reconnected.append(time.monotonic()))
    for room in ("r1", "r2"):
        await b.broker.subscribe(room)
    a.broker.publish("r1", b"before", 1)
    await wait_until(lambda: b.got)
    _kill_subscriber(b_id)
    await wait_until(lambda: reconnected, what="on_reconnect")
    assert b.broker.reconnects == 1  # type: ignore[attr-defined]
    # Called once Redis confirmed both rooms again: what is published now arrives.
    a.broker.publish("r1", b"after 1", 2)
    a.broker.publish("r2", b"after 2", 3)
    await wait_until(lambda: len(b.got) == 3)
    assert b.got == [("r1", b"before", 1), ("r1", b"after 1", 2), ("r2", b"after 2", 3)]
    assert len(reconnected) == 1


async def test_a_silent_dead_connection_is_noticed_by_ping(
    make_node: Callable[..., Any], proxy: Proxy
) -> None:
    reconnected: list[int] = []
    a = await make_node("a")
    b = await make_node(
        "b", proxied(proxy), health_interval=0.2, on_reconnect=lambda: reconnected.append(1)
    )
    await b.broker.subscribe("r")
    proxy.freeze()  # connections stay open but nothing gets through: no error to see
    await wait_until(lambda: b.broker._sent == set(), within=5)  # type: ignore[attr-defined]
    proxy.frozen = False  # new connections work again
    await wait_until(lambda: reconnected, within=10, what="reconnect after PING timeout")
    a.broker.publish("r", b"after", 1)
    await wait_until(lambda: b.got == [("r", b"after", 1)])


async def test_publishing_while_redis_is_down_never_blocks_and_is_bounded(
    make_node: Callable[..., Any], proxy: Proxy
) -> None:
    b = await make_node("b")
    await b.broker.subscribe("r")
    a = await make_node("a", proxied(proxy), max_queue=50)
    a.broker.publish("r", b"first", 0)
    await wait_until(lambda: b.got)
    await proxy.cut()  # Redis unreachable for a: connections dropped, new ones refused
    t0 = time.monotonic()
    for i in range(1, 1001):
        a.broker.publish("r", f"m{i}".encode(), i)
    assert time.monotonic() - t0 < 0.5  # publish never waits for Redis
    assert len(a.got) == 1001  # a's own members got everything at once
    assert a.broker.backlog <= 50  # type: ignore[attr-defined]
    assert a.broker.dropped >= 950  # type: ignore[attr-defined]
    await proxy.resume()
    # b gets the newest 50, in order, after the oldest were dropped.
    await wait_until(lambda: b.got[-1:] == [("r", b"m1000", 1000)], within=20)
    seqs = [seq for _, _, seq in b.got[1:]]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) >= 50
    assert set(range(951, 1001)) <= set(seqs)
    assert a.broker.backlog == 0  # type: ignore[attr-defined]


async def test_the_outgoing_queue_is_bounded_in_bytes_too(
    make_node: Callable[..., Any], proxy: Proxy
) -> None:
    a = await make_node("a", proxied(proxy), max_queue=10_000, max_queue_bytes=100_000)
    await proxy.cut()
    for i in range(100):
        a.broker.publish("r", b"x" * 10_000, i)
    assert a.broker._queue_bytes <= 100_000  # type: ignore[attr-defined]
    assert a.broker.backlog <= 10  # type: ignore[attr-defined]


async def test_subscribing_while_redis_is_down_times_out_cleanly(
    make_node: Callable[..., Any], proxy: Proxy
) -> None:
    a = await make_node("a", proxied(proxy), subscribe_timeout=0.3)
    await proxy.cut()
    with pytest.raises(BrokerError, match="did not confirm the subscription"):
        await a.broker.subscribe("r")
    assert a.broker.subscribed == frozenset()  # type: ignore[attr-defined]


async def test_start_fails_clearly_when_redis_is_unreachable() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0", io_timeout=2)
    with pytest.raises(BrokerError, match=r"cannot reach Redis at 127\.0\.0\.1:1\b"):
        await broker.start(lambda room, payload, seq: None)


async def test_malformed_frames_are_dropped_and_delivery_goes_on(
    make_node: Callable[..., Any],
) -> None:
    b = await make_node("b")
    await b.broker.subscribe("r")
    channel = b.broker.channel("r")  # type: ignore[attr-defined]
    client = redis_client()
    try:
        for junk in (b"", b"plain text", b"\x01" + bytes(20), encode_frame(b"x", b"p", 1)[:11]):
            client.publish(channel, junk)
        client.publish(channel, encode_frame(b"other", b"good", 5))
    finally:
        client.close()
    await wait_until(lambda: b.got)
    assert b.got == [("r", b"good", 5)]
    assert b.broker.bad_frames == 4  # type: ignore[attr-defined]


def test_frame_header_round_trip() -> None:
    for seq in (None, 0, 1, 2**64 - 1):
        frame = encode_frame(b"node-1", b"payload", seq)
        assert len(frame) == 11 + 6 + 7
        assert decode_frame(frame) == (b"node-1", b"payload", seq)
    with pytest.raises(ValueError):
        decode_frame(encode_frame(b"n", b"", None)[:5])
    bad_flags = bytearray(encode_frame(b"n", b"", 1))
    bad_flags[1] = 0x80
    with pytest.raises(ValueError):
        decode_frame(bytes(bad_flags))


def test_channels_carry_the_room_as_a_hash_tag() -> None:
    broker = RedisBroker(REDIS_URL, prefix="hubbub:")
    assert broker.channel("lobby") == b"hubbub:{lobby}"
    # A node's channel can never be a room's (rooms follow the prefix with a brace).
    assert broker.node_channel("node-1") == b"hubbub:node:{node-1}"


# -- node channels ------------------------------------------------------------------


async def test_a_payload_for_a_node_that_stopped_is_told_lost(
    make_node: Callable[..., Any],
) -> None:
    a, b = await make_node("a"), await make_node("b")
    told: list[str] = []
    a.broker.send_node("b", b"one", lambda: told.append("one"))
    await wait_until(lambda: b.from_nodes == [("a", b"one")])
    await b.broker.close()  # b is gone: nobody listens on its channel
    a.broker.send_node("b", b"two", lambda: told.append("two"))
    await wait_until(lambda: told, what="on_lost once Redis says nobody listens")
    assert told == ["two"] and b.from_nodes == [("a", b"one")]
    assert a.broker.stats()["node_lost"] == 1  # type: ignore[attr-defined]


async def test_a_node_started_without_on_node_does_not_listen(
    make_node: Callable[..., Any],
) -> None:
    a, b = await make_node("a"), await make_node("b", listen=False)
    told: list[str] = []
    a.broker.send_node("b", b"?", lambda: told.append("?"))
    await wait_until(lambda: told)
    assert _server_subscribers(b.broker.node_channel("b")) == 0  # type: ignore[attr-defined]


async def test_the_node_channel_is_followed_again_after_a_reconnect(
    make_node: Callable[..., Any],
) -> None:
    reconnected: list[int] = []
    a = await make_node("a")
    b_id = _own_id("b")
    b = await make_node(b_id, on_reconnect=lambda: reconnected.append(1))
    _kill_subscriber(b_id)
    await wait_until(lambda: reconnected, what="on_reconnect")
    a.broker.send_node(b_id, b"after", lambda: reconnected.append(-1))
    await wait_until(lambda: b.from_nodes == [("a", b"after")])
    assert reconnected == [1]


async def test_node_payloads_are_not_sent_again_after_a_failed_round_trip(
    make_node: Callable[..., Any], proxy: Proxy
) -> None:
    b = await make_node("b")
    await b.broker.subscribe("r")
    a = await make_node("a", proxied(proxy), io_timeout=0.3, health_interval=0.3)
    told: list[str] = []
    proxy.freeze()  # what a sends now never reaches Redis, and nothing answers
    a.broker.publish("r", b"room frame", 1)
    a.broker.send_node("b", b"frozen", lambda: told.append("frozen"))
    await wait_until(lambda: a.broker.dropped == 1, what="the node payload given up")  # type: ignore[attr-defined]
    proxy.frozen = False
    # The room frame is sent again after the reconnect (at least once); the node
    # payload is not (at most once), and its fate was unknown: no on_lost.
    await wait_until(lambda: b.got == [("r", b"room frame", 1)], within=10)
    a.broker.send_node("b", b"later", lambda: told.append("later"))
    await wait_until(lambda: b.from_nodes, within=10)
    assert b.from_nodes == [("a", b"later")] and told == []


async def test_node_payloads_never_written_go_out_after_a_failed_round(
    make_node: Callable[..., Any], proxy: Proxy
) -> None:
    """A round is written in groups of commands: when the first group gets no answer,
    the groups after it were never written, so their node payloads are sent after the
    reconnect (only a written, unanswered one has an unknown fate and is given up)."""
    b = await make_node("b")
    a = await make_node("a", proxied(proxy), io_timeout=0.3, health_interval=0.3)
    told: list[str] = []
    proxy.freeze()
    for i in range(300):  # one command per room: more than one group in the round
        a.broker.publish(f"r{i}", b"room frame", 1)
    a.broker.send_node("b", b"queued behind", lambda: told.append("lost"))
    # The round taken (the queue empty), then given up: what goes again is queued.
    await wait_until(lambda: a.broker.backlog == 0, what="the round taken")  # type: ignore[attr-defined]
    await wait_until(lambda: a.broker.backlog >= 300, what="the round given up")  # type: ignore[attr-defined]
    proxy.frozen = False
    await wait_until(lambda: b.from_nodes, within=10, what="the node payload sent after all")
    assert b.from_nodes == [("a", b"queued behind")] and told == []
    assert a.broker.dropped == 0  # type: ignore[attr-defined]


async def test_the_subscriber_arms_no_timer_per_message(
    make_node: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message read costs no timer: only the watchdog's, once per ``health_interval``
    (redis-py's ``read_response`` with a timeout pushes and cancels one per read)."""
    b = await make_node("b", health_interval=30.0)
    await b.broker.subscribe("r")
    loop = asyncio.get_running_loop()
    armed: list[str] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kw: Any) -> Any:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else ""
        if name.startswith("hubbub-redis-") and name != "hubbub-redis-pub":
            armed.append(name)
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    channel = b.broker.channel("r")  # type: ignore[attr-defined]
    client = redis_client()
    try:
        for seq in range(200):
            client.publish(channel, encode_frame(b"a", b"m", seq))
    finally:
        client.close()
    await wait_until(lambda: len(b.got) == 200)
    assert b.got == [("r", b"m", seq) for seq in range(200)]
    assert len(armed) <= 2, armed[:5]


async def test_malformed_payloads_on_the_node_channel_are_dropped(
    make_node: Callable[..., Any],
) -> None:
    b = await make_node("b")
    channel = b.broker.node_channel("b")  # type: ignore[attr-defined]
    client = redis_client()
    try:
        for junk in (b"", b"junk", encode_frame(b"b", b"from itself", None)):
            client.publish(channel, junk)
        client.publish(channel, encode_frame(b"x", b"z" * 70_000, None))  # over the cap
        client.publish(channel, encode_frame(b"a", b"good", None))
    finally:
        client.close()
    await wait_until(lambda: b.from_nodes)
    assert b.from_nodes == [("a", b"good")] and b.got == []
    assert b.broker.bad_frames == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": "a{b"},
        {"node_id": ""},
        {"node_id": "x" * 65},
        {"node_id": "a/b"},
        {"max_queue": 0},
        {"max_node_payload": 0},
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RedisBroker(REDIS_URL, **kwargs)
