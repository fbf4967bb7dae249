"""``hubbub bench --transports``: push vs polling, measured (docs/push-vs-polling.md).

A tiny real run (a `hubbub serve` subprocess per transport, 5 receivers, a few
seconds) over every transport: the report has its figures, every receiver got
every message exactly once, polling asks when there is nothing to say and push
does not. Plus unit tests of the pieces that decide those figures: the tally,
the event-stream parser, and the byte meter checked against the kernel's own
per-socket counters.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from hubbub.bench.cli import build_parser
from hubbub.bench.httpclient import HttpClient, Meter, tcp_bytes
from hubbub.bench.polling_clients import SseReceiver, Tally, message_text
from hubbub.bench.transport_server import HubbubServer
from hubbub.bench.transports import TransportOptions, options_from_args, run_all
from hubbub.bench.transports_report import BEGIN, END, markdown, plot, table, write_markdown

N = 5


def tiny_options() -> TransportOptions:
    return TransportOptions(
        receivers=[N],
        poll_every=[1.0, 2.0],
        rate=5.0,
        idle=2.5,
        warmup=0.5,
        duration=2.0,
        drain=8.0,
        setup_timeout=60.0,
        progress=False,
    )


@pytest.mark.timeout(240)
async def test_every_transport_delivers_every_message_once(tmp_path: Path) -> None:
    opts = tiny_options()
    results = await run_all(opts)
    names = [r["transport"] for r in results]
    assert names == ["ws", "sse", "longpoll", "poll-1s", "poll-2s"]
    by = {r["transport"]: r for r in results}
    for r in results:
        name = r["transport"]
        assert r["errors"] == [], (name, r["errors"], r.get("server_log"))
        c = r["check"]
        # Every receiver got each of the 13 messages exactly once, in order.
        assert c["expected"] == N * opts.messages == N * 13, name
        assert c["lost"] == c["duplicated"] == c["reordered"] == c["unknown"] == 0, (name, c)
        assert c["received"] == c["expected"], name
        assert r["ok"], name
        load = r["load"]
        assert load["deliveries"] > 0, name
        lat = load["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"], name
        assert load["bytes_per_delivery"] > len(message_text(0, opts.size)), name
        assert load["server_cpu_s"] >= 0 and load["seconds"] == pytest.approx(2.0, abs=0.5)
    # Push asks for nothing: no HTTP request after the upgrade, idle or not.
    assert by["ws"]["idle"]["requests"] == by["ws"]["load"]["requests"] == 0
    assert by["sse"]["load"]["requests"] == 0
    # Long polling: about one request per batch of frames.
    assert by["longpoll"]["load"]["requests"] > 0
    for name, every in (("poll-1s", 1.0), ("poll-2s", 2.0)):
        idle = by[name]["idle"]
        # Asking when there is nothing to say: requests, none delivering anything.
        assert idle["deliveries"] == 0
        assert idle["requests"] > idle["deliveries"]
        assert idle["requests"] >= N * math.floor(opts.idle / every) * 0.8, (name, idle)
        assert idle["bytes_per_s"] > 0
        # Latency is about half the interval on average, never more than the interval
        # plus the request (with a margin for a busy machine).
        assert by[name]["load"]["latency_ms"]["p99"] < every * 1000 + 500
    assert by["poll-1s"]["idle"]["requests"] > by["poll-2s"]["idle"]["requests"]
    # The latency of push is well under the polling interval.
    assert by["ws"]["load"]["latency_ms"]["p50"] < 250
    check_report(results, opts, tmp_path)


def check_report(results: list[dict[str, Any]], opts: TransportOptions, tmp_path: Path) -> None:
    """The terminal table, the markdown tables and the three charts of a run."""
    text = table(results)
    assert "short polling every 2s" in text and "WebSocket push" in text
    meta = {"options": {**vars(opts), "messages": opts.messages}, "machine": {}}
    md = markdown(results, meta)
    assert md.count("| 5 |") == 2 * len(results)
    paths = plot(results, str(tmp_path))
    assert [Path(p).name for p in paths] == [
        "push-vs-polling-latency.png",
        "push-vs-polling-bytes.png",
        "push-vs-polling-cpu.png",
    ]
    assert all(Path(p).stat().st_size > 10_000 for p in paths)


def test_tally_counts_lost_duplicated_and_reordered() -> None:
    tally = Tally(receivers=2, messages=3)
    for i in (0, 1, 2):
        tally.deliver(0, message_text(i, 40))
    tally.deliver(1, message_text(2, 40))
    tally.deliver(1, message_text(0, 40))  # out of order
    tally.deliver(1, message_text(0, 40))  # twice
    tally.deliver(1, "not a bench message")
    assert tally.check() == {
        "expected": 6,
        "received": 6,
        "lost": 1,
        "duplicated": 1,
        "reordered": 1,
        "unknown": 0,
    }
    assert not tally.complete.is_set()
    tally.deliver(1, message_text(1, 40))
    assert tally.complete.is_set()
    assert len(tally.lat) == len(tally.lat_index) == 7


async def test_sse_parser_handles_split_events_comments_and_ids() -> None:
    tally = Tally(receivers=1, messages=2)
    r = SseReceiver(0, tally, "127.0.0.1", 1, "bench", Meter())
    r.buf, r.last_id = b"", 0
    frame = b'{"type":"message","room":"bench","text":"%s"}'
    stream = (
        b": ping\n\nid: 1\ndata: "
        + frame % message_text(0, 40).encode()
        + b"\n\nid: 2\ndata: "
        + frame % message_text(1, 40).encode()
        + b'\n\nid: 3\ndata: {"type":"room"}\n\n'
    )
    for i in range(0, len(stream), 7):  # in pieces that cut lines and events
        r._chunk(stream[i : i + 7])
    assert tally.check()["lost"] == 0
    assert r.last_id == 3
    assert r.ready.is_set()
    r._chunk(b'event: close\ndata: {"code": 1013}\n\n')
    assert tally.errors and "close" in tally.errors[0]


async def test_meter_counts_what_the_kernel_counts(tmp_path: Path) -> None:
    """The bytes the HTTP client counts are the TCP payload bytes the kernel counted."""
    async with HubbubServer(tmp_path, None) as server:
        meter = Meter()
        http = HttpClient("127.0.0.1", server.port, meter)
        for _ in range(3):
            status, body = await http.request("GET", "/healthz", within=10)
            assert status == 200
        assert http.conn is not None and meter.requests == 3 and meter.connects == 1
        sock = http.conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sent, received = tcp_bytes(sock)
        # Every byte written was acknowledged at once on the loopback (wait for it).
        for _ in range(100):
            if sent == meter.bytes_out:
                break
            await asyncio.sleep(0.01)
            sent, received = tcp_bytes(sock)
        assert (sent, received) == (meter.bytes_out, meter.bytes_in)
        assert meter.bytes_in > 3 * len(body)
        http.close()


def test_command_line_options() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["--transports", "--quick", "--receivers", "10,100,5000", "--poll-every", "1,5"]
    )
    assert args.transports
    opts = options_from_args(args)
    opts.validate()
    assert opts.receivers == [10, 100]
    assert opts.poll_every == [1.0, 5.0]
    full = options_from_args(parser.parse_args(["--transports", "--no-pin"]))
    assert full.receivers == [10, 100, 1000, 5000]
    assert full.server_cpus is None and full.idle == 25.0
    with pytest.raises(ValueError, match="transport-list"):
        options_from_args(parser.parse_args(["--transports", "--transport-list", "x"])).validate()


def test_markdown_goes_between_the_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"# title\n\nbefore\n\n{BEGIN}\n\nold tables\n\n{END}\n\nafter\n")
    write_markdown(str(page), "new tables")
    assert page.read_text() == f"# title\n\nbefore\n\n{BEGIN}\n\nnew tables\n\n{END}\n\nafter\n"
    bare = tmp_path / "sub" / "bare.md"
    write_markdown(str(bare), "tables only")
    assert bare.read_text() == "tables only\n"
