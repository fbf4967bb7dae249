"""The generator against a real hubbub server, and its ordering checker on synthetic input.

No timing assertions: only that the numbers exist, are positive where they
must be, and that every lost, duplicated or reordered message is reported.
"""

from __future__ import annotations

import os

import pytest

from hubbub import Server
from hubbub.bench.checker import (
    GREETING,
    MIN_SIZE,
    SeqChecker,
    filler,
    make_body,
    parse_tail,
)
from hubbub.bench.measure import percentile
from hubbub.bench.options import Options
from hubbub.bench.scenarios import connect, fanout, latency

from ..conftest import ws_url
from .helpers import room_options

pytest.importorskip("picows", reason="the bench extra is not installed")


def small_room(server: Server, **overrides: object) -> Options:
    # The server runs in this process, on this event loop.
    fields: dict[str, object] = {"clients": 50, "senders": 3, "duration": 2.0, "warmup": 0.3}
    return room_options(url=ws_url(server), server_pid=os.getpid(), **{**fields, **overrides})


# -- the ordering checker -----------------------------------------------------


def test_in_order_sequences_are_clean() -> None:
    chk = SeqChecker(2)
    chk.feed_all([(0, 1), (1, 1), (0, 2), (0, 3), (1, 2)])
    assert (chk.duplicated, chk.reordered, chk.gaps()) == (0, 0, 0)
    assert chk.complete([3, 2])
    assert chk.lost([3, 2]) == 0
    assert chk.received() == 5


def test_checker_detects_a_gap() -> None:
    chk = SeqChecker(1)
    chk.feed_all([(0, 1), (0, 2), (0, 5), (0, 6)])  # 3 and 4 never come
    assert chk.gaps() == 2
    assert chk.lost([6]) == 2
    assert (chk.duplicated, chk.reordered) == (0, 0)


def test_checker_detects_a_duplicate() -> None:
    chk = SeqChecker(1)
    chk.feed_all([(0, 1), (0, 2), (0, 2), (0, 3), (0, 1)])
    assert chk.duplicated == 2
    assert chk.reordered == 0
    assert chk.lost([3]) == 0


def test_checker_detects_a_reorder() -> None:
    chk = SeqChecker(1)
    chk.feed_all([(0, 1), (0, 3), (0, 2), (0, 4)])  # 2 arrives after 3
    assert chk.reordered == 1
    assert chk.duplicated == 0
    assert chk.lost([4]) == 0  # late, but it did arrive
    chk.feed(0, 2)  # a second copy of the late one is a duplicate
    assert chk.duplicated == 1


def test_checker_counts_messages_missing_at_the_end_as_lost() -> None:
    chk = SeqChecker(2)
    chk.feed_all([(0, 1), (0, 2), (1, 1)])
    assert not chk.complete([3, 1])
    assert chk.lost([3, 1]) == 1  # sender 0's third message never came
    assert chk.lost([3, 4]) == 4


def test_checker_keeps_senders_apart() -> None:
    chk = SeqChecker(3)
    chk.feed_all([(2, 1), (0, 1), (2, 2), (1, 2), (1, 1)])  # sender 1: 2 before 1
    assert chk.reordered == 1
    assert chk.lost([1, 2, 2]) == 0


def test_bodies_have_the_size_asked_for_and_parse_back() -> None:
    head = filler(100)
    body = make_body(head, 123_456_789, 7, 42)
    assert len(body) == 100
    body.decode("ascii")  # valid UTF-8 text
    # What a receiver sees: the server's prefix in front of the body.
    assert parse_tail(b"from 17: " + body) == (123_456_789, 7, 42)
    assert parse_tail(b"server: " + body) == (123_456_789, 7, 42)
    with pytest.raises(ValueError):
        parse_tail(GREETING)
    with pytest.raises(ValueError):
        filler(MIN_SIZE - 1)


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 1001))
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile(values, 100) == 1000
    assert percentile([5], 99.9) == 5


# -- scenarios against a real server -----------------------------------------


async def test_fanout_against_hubbub_loses_nothing(seed_server: Server) -> None:
    result = await fanout(small_room(seed_server))
    assert result["errors"] == []
    assert result["ok"]
    assert result["connected"] == 50
    chk = result["check"]
    assert chk["lost"] == chk["duplicated"] == chk["reordered"] == 0
    assert chk["malformed"] == chk["disconnected"] == chk["echo_errors"] == 0
    assert result["messages_sent"] > 0
    # Every client received every message, the senders included.
    assert chk["deliveries"] == chk["expected"] == 50 * result["messages_sent"]
    assert result["deliveries"] > 0
    assert result["deliveries_per_s"] > 0
    assert result["server_cpu_s"] is not None and result["server_cpu_s"] > 0
    assert result["deliveries_per_server_cpu_s"] > 0
    assert result["generator_cpu_s"] > 0
    assert result["timeline"]


async def test_latency_records_every_delivery_in_the_window(seed_server: Server) -> None:
    result = await latency(small_room(seed_server, clients=20, senders=2, duration=1.0))
    assert result["ok"], result["errors"]
    lat = result["latency_ms"]
    assert lat["count"] > 0
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert result["check"]["lost"] == 0


async def test_connect_scenario_completes_handshakes(seed_server: Server) -> None:
    opts = small_room(seed_server, duration=1.0, connect_concurrency=8)
    result = await connect(opts)
    assert result["ok"], result["errors"]
    assert result["handshakes"] > 0
    assert result["handshakes_per_server_cpu_s"] > 0
    assert result["failed"] == 0


async def test_a_server_that_drops_and_repeats_messages_is_caught(make_server) -> None:
    """A room that skips some deliveries to one client and repeats some to another."""
    counter = {"n": 0}

    def setup(server: Server) -> None:
        @server.on("open")
        def on_open(server: Server, request) -> None:
            server.push(request.fd, GREETING.decode())

        @server.on("message")
        def on_message(server: Server, frame) -> None:
            counter["n"] += 1
            out = f"from {frame.fd}: {frame.data}"
            for fd in list(server.connections):
                if fd == 5 and counter["n"] % 5 == 0:
                    continue  # dropped
                server.push(fd, out)
                if fd == 6 and counter["n"] % 7 == 0:
                    server.push(fd, out)  # duplicated
            server.push(frame.fd, f"server: {frame.data}")

    server = await make_server(setup=setup)
    result = await fanout(small_room(server, clients=10, senders=2, duration=1.0))
    assert not result["ok"]
    chk = result["check"]
    assert chk["lost"] > 0
    assert chk["duplicated"] > 0
    assert any("lost" in e for e in result["errors"])
    assert any("duplicated" in e for e in result["errors"])


# -- chat mode (hubbub.v1) -----------------------------------------------------


async def test_chat_fanout_loses_nothing_and_runs_twice_on_one_server(make_chat) -> None:
    """The hubbub.v1 clients join, send with client ids, and check every message.

    A second run against the same server (same room, same nicknames) must be
    clean too: the client ids carry a per-run nonce, since the server acks an
    id it already stored without delivering it again.
    """
    server = await make_chat(rate=0)
    for _ in range(2):
        result = await fanout(
            small_room(server, protocol="hubbub.v1", clients=30, senders=3, duration=1.0)
        )
        assert result["errors"] == []
        assert result["ok"]
        assert result["protocol"] == "hubbub.v1"
        chk = result["check"]
        assert chk["lost"] == chk["duplicated"] == chk["reordered"] == 0
        assert chk["malformed"] == chk["echo_errors"] == 0
        assert result["messages_sent"] > 0
        assert chk["deliveries"] == chk["expected"] == 30 * result["messages_sent"]


async def test_chat_latency_records_deliveries(make_chat) -> None:
    server = await make_chat(rate=0)
    opts = small_room(server, protocol="hubbub.v1", clients=10, senders=2, duration=1.0)
    result = await latency(opts)
    assert result["ok"], result["errors"]
    assert result["latency_ms"]["count"] > 0
    assert result["check"]["lost"] == 0


async def test_chat_mode_reports_the_servers_refusals(make_chat) -> None:
    """With the default rate limit the senders get 'rate_limited' errors: reported, not hidden."""
    server = await make_chat(rate=5, burst=5)
    result = await fanout(
        small_room(server, protocol="hubbub.v1", clients=5, senders=1, duration=0.5)
    )
    assert not result["ok"]
    assert result["check"]["malformed"] > 0
    assert any("rate_limited" in e for e in result["errors"])


async def test_protocols_run_only_their_scenarios(seed_server: Server) -> None:
    from hubbub.bench.options import BenchError
    from hubbub.bench.scenarios import run_scenarios

    opts = small_room(seed_server, protocol="hubbub.v1")
    with pytest.raises(BenchError, match=r"not available with --protocol hubbub\.v1"):
        await run_scenarios(opts, ["idle"])
