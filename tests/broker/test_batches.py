"""Wire version 2: the frames of one room queued in one tick cross Redis as one batch.

What a receiver sees is unchanged (every frame, in order, with its room and seq); what
Redis carries is fewer messages. Also the caps, malformed batches, and the rolling
restart: a node may be told to send version 1 only (``?wire=1``), every node reads
both, and a version 1 reader refuses a batch with a clear error."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from hubbub.broker.frames import (
    BATCH_MAX_BYTES,
    BATCH_MAX_FRAMES,
    decode_batch,
    decode_frame,
    encode_batch,
    encode_frame,
    pack_round,
)
from hubbub.broker.redis import RedisBroker
from tests.services import REDIS_URL, redis_client

from .conftest import Node, wait_until


@pytest.fixture
async def make_node(redis_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    # Node ids unlike test_redis.py's: its kill tests find connections by client name.
    nodes: list[Node] = []

    async def factory(name: str, url: str = REDIS_URL, **kwargs: Any) -> Node:
        broker = RedisBroker(url, prefix=redis_prefix, node_id=name, **kwargs)
        node = Node(broker, name)
        await broker.start(node.deliver, node.on_node)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        await node.broker.close()


class Tap:
    """A plain Redis subscriber on some channels: the raw messages Redis carried."""

    def __init__(self, *channels: bytes) -> None:
        self.client = redis_client()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*channels)
        self.messages: list[tuple[bytes, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.pubsub.get_message(timeout=0.05)
            except (redis.RedisError, OSError, ValueError):
                return
            if msg is not None and msg["type"] == "message":
                self.messages.append((msg["channel"], msg["data"]))

    async def wait_subscribed(self, channel: bytes) -> None:
        def count() -> int:
            return int(dict(self.client.pubsub_numsub(channel))[channel])

        await wait_until(lambda: count() >= 1, what="the tap's subscription")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def tap() -> Any:
    taps: list[Tap] = []

    def factory(*channels: bytes) -> Tap:
        taps.append(Tap(*channels))
        return taps[-1]

    yield factory
    for t in taps:
        t.close()


async def test_frames_of_one_tick_cross_as_batches_and_arrive_as_published(
    make_node: Callable[..., Any], tap: Callable[..., Tap]
) -> None:
    a, b = await make_node("v2-a"), await make_node("v2-b")
    for room in ("r", "s"):
        await b.broker.subscribe(room)
        await a.broker.subscribe(room)
    t = tap(a.broker.channel("r"), a.broker.channel("s"))
    await t.wait_subscribed(a.broker.channel("s"))
    sent: list[tuple[str, bytes, int | None]] = []
    for i in range(300):  # one tick: the publisher task has not run yet
        room = "r" if i % 3 else "s"
        frame = (room, f"m{i}".encode(), None if i % 7 == 0 else i)
        a.broker.publish(*frame)
        sent.append(frame)
    await wait_until(lambda: len(b.got) == 300, what="300 frames on b")
    for room in ("r", "s"):  # per room, the order published
        assert [f for f in b.got if f[0] == room] == [f for f in sent if f[0] == room]
    assert sorted(b.got, key=repr) == sorted(sent, key=repr)
    # Redis carried a few batches, not 300 messages (200 frames of r: at most 256 a batch).
    await wait_until(lambda: len(t.messages) == 2, what="two messages on the tap")
    assert sorted(len(decode_batch(data, 1 << 20)[1]) for _, data in t.messages) == [100, 200]
    assert a.broker.stats()["batches"] == 2  # type: ignore[attr-defined]
    # a's own batches came back from Redis and were dropped, not delivered twice.
    b.broker.publish("r", b"from b", None)
    await wait_until(lambda: ("r", b"from b", None) in a.got)
    assert len(a.got) == 301


async def test_a_lone_frame_is_a_version_1_frame(
    make_node: Callable[..., Any], tap: Callable[..., Tap]
) -> None:
    a = await make_node("v2-a")
    t = tap(a.broker.channel("r"))
    await t.wait_subscribed(a.broker.channel("r"))
    a.broker.publish("r", b"alone", 7)
    await wait_until(lambda: t.messages)
    assert decode_frame(t.messages[0][1]) == (b"v2-a", b"alone", 7)


@pytest.mark.parametrize("how", ["url", "argument"])
async def test_wire_1_sends_single_frames_only(
    make_node: Callable[..., Any], tap: Callable[..., Tap], redis_prefix: str, how: str
) -> None:
    if how == "url":
        a = await make_node("v2-a", REDIS_URL + "?wire=1")
    else:
        a = await make_node("v2-a", wire=1)
    assert a.broker.wire == 1  # type: ignore[attr-defined]
    b = await make_node("v2-b")
    await b.broker.subscribe("r")
    t = tap(a.broker.channel("r"))
    await t.wait_subscribed(a.broker.channel("r"))
    for i in range(20):
        a.broker.publish("r", f"m{i}".encode(), i)
    await wait_until(lambda: len(t.messages) == 20 and len(b.got) == 20)
    # What a version 1 node reads: every message is one frame.
    assert [decode_frame(data)[1:] for _, data in t.messages] == [
        (f"m{i}".encode(), i) for i in range(20)
    ]
    assert b.got == [("r", f"m{i}".encode(), i) for i in range(20)]


def test_bad_wire_versions_are_refused() -> None:
    for kwargs in ({"wire": 3}, {"wire": 0}):
        with pytest.raises(ValueError, match="wire must be one of 1, 2"):
            RedisBroker(REDIS_URL, **kwargs)
    for url in (REDIS_URL + "?wire=3", REDIS_URL + "?wire=two"):
        with pytest.raises(ValueError, match="wire must be one of 1, 2"):
            RedisBroker(url)


def test_a_version_1_reader_refuses_a_batch_by_its_version() -> None:
    batch = encode_batch(b"new", [(b"x", 1), (b"y", 2)])
    with pytest.raises(ValueError, match="unknown frame version 0xb2"):
        decode_frame(batch)  # what a node before batches runs on every message


async def test_frames_of_a_version_1_node_are_read(make_node: Callable[..., Any]) -> None:
    b = await make_node("v2-b")
    await b.broker.subscribe("r")
    client = redis_client()
    try:  # what a node before batches publishes, back to back
        for i in range(5):
            client.publish(b.broker.channel("r"), encode_frame(b"old", f"o{i}".encode(), i))
    finally:
        client.close()
    await wait_until(lambda: len(b.got) == 5)
    assert b.got == [("r", f"o{i}".encode(), i) for i in range(5)]


def test_batches_keep_to_their_count_and_byte_caps() -> None:
    ch, other = b"p{r}", b"p{s}"
    # 600 small frames of one room: 256 + 256 + 88.
    items = [(ch, b"x", i, True) for i in range(600)]
    out = pack_round(b"n", items)
    assert [len(ix) for _, _, ix in out] == [256, 256, 88]
    assert [i for _, _, ix in out for i in ix] == list(range(600))
    assert all(len(decode_batch(w, 1 << 20)[1]) <= BATCH_MAX_FRAMES for _, w, _ in out)
    # Large frames: as many as fit in BATCH_MAX_BYTES; one larger than that goes alone.
    big = b"y" * (BATCH_MAX_BYTES // 3)
    huge = b"z" * (BATCH_MAX_BYTES + 1)
    items = [(ch, big, 1, True), (ch, big, 2, True), (ch, big, 3, True), (ch, huge, 4, True)]
    out = pack_round(b"n", items)
    assert [ix for _, _, ix in out] == [[0, 1], [2], [3]]
    assert all(len(w) <= BATCH_MAX_BYTES + 64 for _, w, ix in out if len(ix) > 1)
    assert decode_frame(out[2][1]) == (b"n", huge, 4)
    # Node payloads are never batched; rooms are batched apart, each in its order.
    items = [
        (ch, b"a", 1, True),
        (other, b"b", None, True),
        (b"p:node:{x}", b"dm", None, False),
        (ch, b"c", 2, True),
        (other, b"d", 5, True),
    ]
    out = pack_round(b"n", items)
    assert [(c, ix) for c, _, ix in out] == [(ch, [0, 3]), (other, [1, 4]), (items[2][0], [2])]
    assert decode_batch(out[0][1], 100) == (b"n", [(b"a", 1), (b"c", 2)])
    assert decode_batch(out[1][1], 100) == (b"n", [(b"b", None), (b"d", 5)])
    assert decode_frame(out[2][1]) == (b"n", b"dm", None)
    # Version 1 only: one frame per PUBLISH.
    assert [len(ix) for _, _, ix in pack_round(b"n", items, batches=False)] == [1] * 5


def test_malformed_batches_are_refused_whole() -> None:
    good = encode_batch(b"n", [(b"one", 1), (b"two", None)])
    assert decode_batch(good, 10) == (b"n", [(b"one", 1), (b"two", None)])
    bad = [
        good[:3],  # shorter than its header
        good[:-1],  # cut short
        good + b"!",  # bytes after the last frame
        good[:2] + b"\x00\x01" + good[4:],  # a count of 1
        good[:2] + b"\x01\x01" + good[4:],  # a count over the cap
        good[:1] + b"\x00" + good[2:],  # no origin
    ]
    for data in bad:
        with pytest.raises(ValueError):
            decode_batch(data, 10)
    with pytest.raises(ValueError, match="malformed frame"):
        decode_batch(good, 2)  # a frame over max_payload
    with pytest.raises(ValueError):
        encode_batch(b"n", [(b"x", 1)])  # a batch is 2 frames or more


async def test_a_malformed_batch_is_dropped_and_delivery_goes_on(
    make_node: Callable[..., Any],
) -> None:
    b = await make_node("v2-b", max_payload=100)
    await b.broker.subscribe("r")
    channel = b.broker.channel("r")
    good = encode_batch(b"other", [(b"g1", 1), (b"g2", 2)])
    client = redis_client()
    try:
        client.publish(channel, good[:-1])
        client.publish(channel, encode_batch(b"other", [(b"ok", 3), (b"x" * 101, 4)]))
        client.publish(channel, good)
    finally:
        client.close()
    await wait_until(lambda: len(b.got) == 2)
    assert b.got == [("r", b"g1", 1), ("r", b"g2", 2)]  # nothing of a bad batch
    assert b.broker.bad_frames == 2  # type: ignore[attr-defined]
