"""Soak: a bounded mixed load with misbehaving clients beside well-behaved ones.

    python -m tools.soak --duration 600 [--json reports/soak.json]

Starts ``hubbub serve`` (a real process, free port, temporary database, limits
set so that misbehaviour is caught within seconds) and runs, concurrently:

* well-behaved hubbub.v1 clients in a few rooms, each sending at a steady rate
  with client ids; every one checks that it receives every room message once,
  in seq order, and records the latency of the messages it sees;
* non-readers (connect, join the busiest room, never read; small receive buffer);
* garbage senders (invalid JSON, unknown types, binary and oversized frames,
  raw HTTP garbage), reconnecting when the server closes them;
* a reconnect storm (connect, join with resume, close, again);
* pipelined HTTP non-readers (hundreds of GET / on one socket, never read);

while sampling the server's RSS every second. At the end it asserts that the
well-behaved clients lost nothing and saw no duplicate, that their p99 latency
is under ``--p99-bound`` seconds, that the RSS at the end is within
``--rss-margin`` of the RSS after the warm-up, that no ERROR or traceback was
logged and that the server still answers /healthz; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "hubbub.v1"
ROOT = Path(__file__).resolve().parent.parent
#: Limits of the server under soak: misbehaviour caught in seconds, not minutes.
SERVER_FLAGS = (
    "--no-access-log",
    "--max-send-buffer", "65536",
    "--handshake-timeout", "3",
    "--close-timeout", "2",
    "--ping-interval", "5",
    "--ping-timeout", "5",
    "--max-message-size", "16384",
    "--max-invalid-frames", "5",
    "--room-create-rate", "0",
)  # fmt: skip


@dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    send_errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    #: room -> seqs each well-behaved client received, per client
    received: dict[str, list[list[int]]] = field(default_factory=dict)
    #: room -> seqs acked to the senders (every one must reach every member)
    acked_seqs: dict[str, set[int]] = field(default_factory=dict)
    order_errors: list[str] = field(default_factory=list)
    unexpected_closes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    rss: list[tuple[float, int]] = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/"


async def well_behaved(
    port: int, room: str, name: str, rate: float, stop: asyncio.Event, stats: Stats
) -> None:
    """Join ``room``, send ``rate`` messages/s until ``stop``, receive everything."""
    seqs: list[int] = []
    stats.received.setdefault(room, []).append(seqs)
    acked = stats.acked_seqs.setdefault(room, set())
    sent_at: dict[str, float] = {}
    joined = asyncio.Event()
    async with connect(ws_url(port), subprotocols=[SUBPROTOCOL], max_size=None) as ws:

        async def reader() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                now = time.monotonic()
                if kind == "room":
                    joined.set()
                elif kind == "message" and frame["room"] == room:
                    seq = frame["seq"]
                    if seqs and seq <= seqs[-1]:
                        stats.order_errors.append(f"{name}: seq {seq} after {seqs[-1]}")
                    seqs.append(seq)
                    cid = frame.get("client_id") or ""
                    if cid.startswith(f"{room}/") and cid in _SENT:
                        stats.latencies.append(now - _SENT[cid])
                elif kind == "ack":
                    stats.acked += 1
                    acked.add(frame["seq"])
                    sent_at.pop(frame["id"], None)
                elif kind == "error":
                    stats.send_errors.append(f"{name}: {frame}")

        task = asyncio.ensure_future(reader())
        await ws.send(json.dumps({"type": "join", "room": room, "nick": name}))
        await asyncio.wait_for(joined.wait(), 30)
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            n += 1
            cid = f"{room}/{name}/{n}"
            _SENT[cid] = sent_at[cid] = time.monotonic()
            await ws.send(json.dumps({"type": "send", "room": room, "id": cid, "text": f"m{n}"}))
            stats.sent += 1
            next_at += 1.0 / rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        # Let the last messages and acks arrive, then leave cleanly.
        deadline = time.monotonic() + 15
        while sent_at and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded poll)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        if task.done() and task.exception() is not None:
            stats.unexpected_closes.append(f"{name}: {task.exception()!r}")
        await ws.close()
        with contextlib.suppress(Exception):
            await task
    if sent_at:
        stats.send_errors.append(f"{name}: {len(sent_at)} sends never acked")


#: client id -> send time (shared: a receiver measures the latency of others' messages)
_SENT: dict[str, float] = {}


def handshake(room: str) -> bytes:
    return (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    ).encode()


def masked_text(payload: bytes) -> bytes:
    """One masked client text frame (mask of zeros: the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def raw_socket(port: int, rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def non_reader(port: int, room: str, hold: float, stop: asyncio.Event, stats: Stats) -> None:
    """Connect with a tiny receive buffer, join, never read; after ``hold`` s, again."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sock = await raw_socket(port)
        try:
            await loop.sock_sendall(sock, handshake(room))
            frame = json.dumps({"type": "join", "room": room}).encode()
            await loop.sock_sendall(sock, masked_text(frame))
            stats.count("non-reader connections")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), hold)
        except OSError:
            stats.count("non-reader connections refused")
        finally:
            sock.close()


GARBAGE: list[str | bytes] = [
    "{not json",
    '{"type":"bogus"}',
    '{"type":"send","room":"","id":"","text":""}',
    "[" * 3000 + "]" * 3000,
    b"\x00\x01\x02binary",
    '{"type":"join","room":"a","since":' + "9" * 300 + "}",
    "x" * 20000,  # over --max-message-size: 1009
]


async def garbage_sender(port: int, stop: asyncio.Event, stats: Stats) -> None:
    """hubbub.v1 garbage until the server closes the connection; then again. Every
    few rounds, raw garbage on the HTTP port too."""
    i = 0
    while not stop.is_set():
        i += 1
        try:
            async with connect(ws_url(port), subprotocols=[SUBPROTOCOL], max_size=None) as ws:
                for frame in GARBAGE * 4:
                    await ws.send(frame)
                    stats.count("garbage frames")
                    await asyncio.sleep(0.02)
                    if stop.is_set():
                        break
                with contextlib.suppress(TimeoutError):
                    async for _ in ws:
                        pass
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else "no close frame"
            stats.count(f"garbage closed ({code})")
        except OSError:
            stats.count("garbage refused")
        if i % 5 == 0:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(os.urandom(512) + b"\r\n\r\n")
                with contextlib.suppress(TimeoutError, OSError):
                    await asyncio.wait_for(reader.read(), 10)
                writer.close()
                stats.count("raw HTTP garbage")
        await asyncio.sleep(0.2)


async def reconnect_storm(port: int, room: str, stop: asyncio.Event, stats: Stats) -> None:
    """connect, join (resuming from the last seq seen), close; as fast as answered."""
    since: int | None = None
    epoch: str | None = None
    while not stop.is_set():
        try:
            async with connect(ws_url(port), subprotocols=[SUBPROTOCOL], max_size=None) as ws:
                join: dict[str, Any] = {"type": "join", "room": room}
                if since is not None:
                    join.update(since=since, epoch=epoch)
                await ws.send(json.dumps(join))
                async with asyncio.timeout(30):
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame.get("type") == "room":
                            epoch, since = frame["epoch"], since or frame["seq"]
                            if "since" not in join:
                                break
                        elif frame.get("type") == "message":
                            since = frame["seq"]
                        elif frame.get("type") in ("resumed", "reset"):
                            since = frame["seq"]
                            break
                        elif frame.get("type") == "error":
                            stats.count(f"storm error {frame.get('code')}")
                            break
            stats.count("storm cycles")
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            stats.count(f"storm failed ({type(exc).__name__})")
        await asyncio.sleep(0.05)


async def pipelined_non_reader(port: int, hold: float, stop: asyncio.Event, stats: Stats) -> None:
    """Hundreds of pipelined GET / on one socket, never read; after ``hold`` s, again."""
    loop = asyncio.get_running_loop()
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    while not stop.is_set():
        sock = await raw_socket(port)
        try:
            for _ in range(20):
                await asyncio.wait_for(loop.sock_sendall(sock, request * 50), 1.0)
            stats.count("pipelined connections")
        except (OSError, TimeoutError):
            stats.count("pipelined connections (server stopped reading)")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), hold)
        sock.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def sample_rss(pid: int, stop: asyncio.Event, stats: Stats, t0: float) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            stats.rss.append((time.monotonic() - t0, rss_kib(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def healthz(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200 ")
    except OSError:
        return False


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    log_path = workdir / "server.log"
    log = log_path.open("wb")
    cmd = [sys.executable, "-m", "hubbub", "serve", "--host", "127.0.0.1", "--port", "0",
           "--db", str(workdir / "soak.db"), *SERVER_FLAGS]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", log_path.read_text())
        if m:
            return proc, int(m.group(1)), log_path
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"hubbub serve did not start:\n{log_path.read_text()}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check(stats: Stats, args: argparse.Namespace, log_text: str, healthy: bool) -> dict[str, Any]:
    """The verdicts, each with its numbers."""
    lost = duplicates = 0
    for room, clients in stats.received.items():
        expected = stats.acked_seqs.get(room, set())
        for seqs in clients:
            got = set(seqs)
            duplicates += len(seqs) - len(got)
            lost += len(expected - got)
    warm = [kib for t, kib in stats.rss if args.warmup <= t < args.warmup + 10]
    tail = [kib for t, kib in stats.rss[-10:]]
    rss_warm = statistics.median(warm) if warm else 0
    rss_end = statistics.median(tail) if tail else 0
    rss_bound = rss_warm * (1 + args.rss_margin) + 4096
    p99 = percentile(stats.latencies, 0.99)
    bad_log = [
        line for line in log_text.splitlines() if "Traceback" in line or " ERROR " in line
    ]
    verdicts = {
        "nothing lost": lost == 0 and not stats.send_errors and stats.acked == stats.sent,
        "no duplicate, in order": duplicates == 0 and not stats.order_errors,
        "well-behaved never dropped": not stats.unexpected_closes,
        f"p99 latency < {args.p99_bound * 1000:.0f} ms": p99 < args.p99_bound,
        f"RSS flat (end <= warm-up x {1 + args.rss_margin:.2f} + 4 MiB)": 0 < rss_end <= rss_bound,
        "no ERROR/traceback logged": not bad_log,
        "/healthz answers": healthy,
    }
    return {
        "verdicts": verdicts,
        "sent": stats.sent,
        "acked": stats.acked,
        "deliveries checked": sum(len(s) for c in stats.received.values() for s in c),
        "lost": lost,
        "duplicates": duplicates,
        "send errors": stats.send_errors[:20],
        "order errors": stats.order_errors[:20],
        "unexpected closes": stats.unexpected_closes[:20],
        "latency p50 ms": round(percentile(stats.latencies, 0.5) * 1000, 1),
        "latency p99 ms": round(p99 * 1000, 1),
        "latency max ms": round(max(stats.latencies, default=0) * 1000, 1),
        "rss warm-up KiB": rss_warm,
        "rss end KiB": rss_end,
        "rss max KiB": max((k for _, k in stats.rss), default=0),
        "misbehaviour": dict(sorted(stats.counts.items())),
        "server drops logged": {
            "send buffer (1013)": log_text.count("bytes waiting in its send buffer"),
            "ping timeout (1011)": log_text.count("no answer to ping"),
            "HTTP answers unread": log_text.count("of answers unread"),
        },
        "bad log lines": bad_log[:20],
    }


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-soak-"))
    proc, port, log_path = start_server(workdir)
    stats = Stats()
    stop = asyncio.Event()
    t0 = time.monotonic()
    rooms = [f"room{i}" for i in range(args.rooms)]
    busy = rooms[0]
    tasks = [asyncio.ensure_future(sample_rss(proc.pid, stop, stats, t0))]
    good = [
        asyncio.ensure_future(well_behaved(port, room, f"{room}-c{j}", args.rate, stop, stats))
        for room in rooms
        for j in range(args.clients)
    ]
    each = range(args.misbehaving)
    bad = (
        [asyncio.ensure_future(non_reader(port, busy, 20, stop, stats)) for _ in each]
        + [asyncio.ensure_future(garbage_sender(port, stop, stats)) for _ in each]
        + [asyncio.ensure_future(reconnect_storm(port, rooms[i % len(rooms)], stop, stats))
           for i in range(args.misbehaving)]
        + [asyncio.ensure_future(pipelined_non_reader(port, 8, stop, stats))
           for _ in range(max(1, args.misbehaving // 2))]
    )  # fmt: skip
    # A busy room: big messages, so that the non-readers' buffers fill.
    big = asyncio.ensure_future(big_sender(port, busy, stop, stats))
    try:
        await asyncio.sleep(args.duration)
    finally:
        stop.set()
        await asyncio.wait(good, timeout=60)
        await asyncio.wait([*bad, big, *tasks], timeout=30)
        for task in [*bad, big, *tasks, *good]:
            task.cancel()
        for task in good:
            if task.done() and not task.cancelled() and task.exception() is not None:
                stats.unexpected_closes.append(repr(task.exception()))
    healthy = healthz(port)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    result = check(stats, args, log_path.read_text(errors="replace"), healthy)
    result["duration s"] = args.duration
    result["command"] = " ".join(["python -m tools.soak", *sys.argv[1:]])
    result["server flags"] = " ".join(SERVER_FLAGS)
    result["load"] = {
        "rooms": args.rooms,
        "well-behaved clients per room": args.clients,
        "messages/s per client": args.rate,
        "each kind of misbehaving client": args.misbehaving,
    }
    report(result)
    if args.json:
        write_json(Path(args.json), result)
    return 0 if all(result["verdicts"].values()) else 1


async def big_sender(port: int, room: str, stop: asyncio.Event, stats: Stats) -> None:
    """A well-behaved member of the busy room posting 6 KB messages at 10/s."""
    async with connect(ws_url(port), subprotocols=[SUBPROTOCOL], max_size=None) as ws:
        await ws.send(json.dumps({"type": "join", "room": room, "nick": "big"}))
        drain = asyncio.ensure_future(_drain(ws))
        n = 0
        while not stop.is_set():
            n += 1
            frame = {"type": "send", "room": room, "id": f"big/{n}", "text": "b" * 6000}
            await ws.send(json.dumps(frame))
            stats.count("big messages")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        drain.cancel()


async def _drain(ws: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def report(result: dict[str, Any]) -> None:
    print(f"\nsoak: {result['duration s']} s, {result['command']}")
    rows = [
        ("messages sent / acked", f"{result['sent']} / {result['acked']}"),
        ("deliveries checked", result["deliveries checked"]),
        ("lost / duplicates", f"{result['lost']} / {result['duplicates']}"),
        ("latency p50 / p99 / max (ms)",
         f"{result['latency p50 ms']} / {result['latency p99 ms']} / {result['latency max ms']}"),
        ("RSS warm-up / end / max (MiB)",
         f"{result['rss warm-up KiB'] / 1024:.1f} / {result['rss end KiB'] / 1024:.1f} / "
         f"{result['rss max KiB'] / 1024:.1f}"),
    ]  # fmt: skip
    rows += [(k, v) for k, v in result["misbehaviour"].items()]
    rows += [(f"server dropped: {k}", v) for k, v in result["server drops logged"].items()]
    width = max(len(str(k)) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print()
    for name, ok in result["verdicts"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    for key in ("send errors", "order errors", "unexpected closes", "bad log lines"):
        for line in result[key]:
            print(f"  {key}: {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the RSS reference (default: 20%% of the duration)")
    ap.add_argument("--rooms", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4, help="well-behaved clients per room")
    ap.add_argument("--rate", type=float, default=2.0, help="messages/s per well-behaved client")
    ap.add_argument("--misbehaving", type=int, default=4, help="clients of each bad kind")
    ap.add_argument("--p99-bound", type=float, default=0.5, help="seconds (default 0.5)")
    ap.add_argument("--rss-margin", type=float, default=0.10,
                    help="allowed RSS growth after warm-up, fraction (default 0.10, + 4 MiB)")
    ap.add_argument("--json", default="reports/soak.json", help="where to write the result")
    args = ap.parse_args(argv)  # fmt: skip
    if args.warmup is None:
        args.warmup = min(60.0, 0.2 * args.duration)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
