"""``hubbub bench --transports``: push vs polling, measured (docs/push-vs-polling.md).

The same chat load, N members of one room and one sender at M messages/s,
delivered to N receivers by each carriage in turn: WebSocket push, server-sent
events, long polling, and short polling of the history API every 1 s and every
5 s. For each transport and each N a fresh ``hubbub serve`` is started (pinned
to ``server_cpus`` when the machine has two or more CPUs, the generator to the
others), and three phases follow:

1. *setup*: the sender and the N receivers connect and join (not measured).
2. *idle*: ``idle`` seconds with no message: requests, bytes and server CPU
   spent asking for nothing.
3. *load*: the sender sends ``rate`` messages/s for ``warmup + duration``
   seconds; the window of ``duration`` seconds after the warm-up gives
   requests, bytes and server CPU per delivered message, the latency of the
   messages sent in it (p50/p99, send to receipt); then every receiver must
   hold every message exactly once, in order.

The figures are measured, not estimated: bytes are counted on the client
sockets (both directions, HTTP heads included: see
:mod:`hubbub.bench.httpclient`), server CPU is the server process's
utime + stime from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec

from . import proc
from .httpclient import HttpError, Meter
from .measure import Progress, percentile
from .polling_clients import (
    LongPollReceiver,
    Receiver,
    Sender,
    ShortPollReceiver,
    SseReceiver,
    Tally,
    WsReceiver,
)
from .transport_server import HubbubServer

#: The carriages, in report order; ``poll`` expands to one per ``poll_every``.
TRANSPORTS = ("ws", "sse", "longpoll", "poll")
TITLES = {"ws": "WebSocket push", "sse": "SSE", "longpoll": "long polling"}


def transport_names(transports: list[str], poll_every: list[float]) -> list[str]:
    names: list[str] = []
    for t in transports:
        if t == "poll":
            names += [f"poll-{_secs(s)}s" for s in poll_every]
        else:
            names.append(t)
    return names


def _secs(s: float) -> str:
    return f"{s:g}"


def title(name: str) -> str:
    if name.startswith("poll-"):
        return f"short polling every {name[5:]}"
    return TITLES[name]


@dataclass
class TransportOptions:
    receivers: list[int] = field(default_factory=lambda: [10, 100, 1000, 5000])
    transports: list[str] = field(default_factory=lambda: list(TRANSPORTS))
    poll_every: list[float] = field(default_factory=lambda: [1.0, 5.0])
    #: Messages per second from the one sender.
    rate: float = 2.0
    size: int = 100
    #: Seconds of the idle window (25: the server's default poll_timeout, so every
    #: long poller asks about once in it).
    idle: float = 25.0
    warmup: float = 2.0
    duration: float = 10.0
    #: Seconds to wait after the last send for every receipt (beyond the longest
    #: poll interval).
    drain: float = 10.0
    #: Seconds the setup (connect, join, settle) of one cell may take.
    setup_timeout: float = 400.0
    connect_concurrency: int = 200
    room: str = "bench"
    server_cpus: set[int] | None = None
    generator_cpus: set[int] | None = None
    progress: bool = True
    stream: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def messages(self) -> int:
        return math.ceil(self.rate * (self.warmup + self.duration))

    def validate(self) -> None:
        if not self.receivers or min(self.receivers) < 1:
            raise ValueError("--receivers: counts of at least 1")
        if max(self.receivers) > 10_000:
            raise ValueError("--receivers: at most 10000 (open-file limits)")
        unknown = [t for t in self.transports if t not in TRANSPORTS]
        if unknown or not self.transports:
            raise ValueError(f"--transport-list: from {', '.join(TRANSPORTS)}")
        if not self.poll_every or min(self.poll_every) <= 0:
            raise ValueError("--poll-every: positive seconds")
        if not 0 < self.rate <= 1000:
            raise ValueError("--msg-rate: from 0 to 1000 messages/s")
        if self.idle <= 0 or self.duration <= 0 or self.warmup < 0:
            raise ValueError("--idle-seconds and --load-seconds must be positive")
        if self.size < 16:
            raise ValueError("--size: at least 16 bytes")


# -- one cell: one transport, N receivers ------------------------------------


class SetupError(Exception):
    """The receivers of a cell could not all connect and join in time."""


@dataclass
class Snap:
    t: float
    out: int
    into: int
    requests: int
    connects: int
    server_cpu: float
    gen_cpu: float
    machine: float
    deliveries: int


class Cell:
    """The clients of one transport x N run and their counters."""

    def __init__(self, opts: TransportOptions, name: str, n: int, port: int) -> None:
        self.opts = opts
        self.name = name
        self.n = n
        self.port = port
        self.meter = Meter()
        self.tally = Tally(n, opts.messages)
        self.sender = Sender(self.tally, "127.0.0.1", port, opts.room, opts.size)
        self.receivers = [self._receiver(i) for i in range(n)]
        #: Receivers connected and joined so far.
        self.opened = 0

    def _receiver(self, i: int) -> Receiver:
        args = (i, self.tally, "127.0.0.1", self.port, self.opts.room)
        if self.name == "ws":
            return WsReceiver(*args)
        if self.name == "sse":
            return SseReceiver(*args, self.meter)
        if self.name == "longpoll":
            return LongPollReceiver(*args, self.meter)
        return ShortPollReceiver(*args, self.meter, float(self.name[5:-1]))

    def snap(self, server_pid: int) -> Snap:
        out, into = self.meter.bytes_out, self.meter.bytes_in
        if self.name == "ws":
            for r in self.receivers:
                o, i = r.wire()
                out += o
                into += i
        return Snap(
            time.monotonic(),
            out,
            into,
            self.meter.requests,
            self.meter.connects,
            proc.cpu_seconds(server_pid),
            time.process_time(),
            proc.machine_busy_seconds(),
            self.tally.deliveries,
        )

    async def open_all(self, progress: Progress, prefix: str) -> None:
        """Connect and join every receiver (a few at a time), then wait until each
        has its ``room`` frame; fallback receivers stop pacing their setup then."""
        sem = asyncio.Semaphore(self.opts.connect_concurrency)

        async def one(r: Receiver) -> None:
            async with sem:
                await r.open()
            self.opened += 1
            progress.show(f"{prefix} connected {self.opened:,}/{self.n:,}")

        await self.sender.open()
        await asyncio.gather(*(one(r) for r in self.receivers))
        progress.show(f"{prefix} waiting for every receiver's room frame")
        for r in self.receivers:
            r.go_live()
        await asyncio.gather(*(r.ready.wait() for r in self.receivers))

    def close(self) -> None:
        self.sender.close()
        for r in self.receivers:
            r.close()


def _rates(s0: Snap, s1: Snap, cores: int) -> dict[str, Any]:
    wall = s1.t - s0.t
    server = s1.server_cpu - s0.server_cpu
    gen = s1.gen_cpu - s0.gen_cpu
    other = max(0.0, (s1.machine - s0.machine) - server - gen)
    return {
        "seconds": wall,
        "requests": s1.requests - s0.requests,
        "connects": s1.connects - s0.connects,
        "bytes_out": s1.out - s0.out,
        "bytes_in": s1.into - s0.into,
        "deliveries": s1.deliveries - s0.deliveries,
        "server_cpu_s": server,
        "server_cpu_pct": 100.0 * server / wall,
        "generator_cpu_pct": 100.0 * gen / wall,
        "other_cpu_pct": 100.0 * other / wall,
        "cores": cores,
    }


def idle_figures(s0: Snap, s1: Snap, n: int, cores: int) -> dict[str, Any]:
    r = _rates(s0, s1, cores)
    wall = r["seconds"]
    total = r["bytes_out"] + r["bytes_in"]
    r.update(
        requests_per_s=r["requests"] / wall,
        requests_per_min_per_client=60.0 * r["requests"] / wall / n,
        bytes_per_s=total / wall,
        bytes_per_s_per_client=total / wall / n,
    )
    return r


def load_figures(s0: Snap, s1: Snap, tally: Tally, window: range, cores: int) -> dict[str, Any]:
    r = _rates(s0, s1, cores)
    d = r["deliveries"]
    lat = sorted(v / 1e6 for v, i in zip(tally.lat, tally.lat_index, strict=True) if i in window)
    per = (lambda x: x / d) if d else (lambda x: math.nan)
    r.update(
        latency_ms={
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "max": lat[-1] if lat else math.nan,
            "count": len(lat),
        },
        requests_per_delivery=per(r["requests"]),
        bytes_per_delivery=per(r["bytes_out"] + r["bytes_in"]),
        bytes_in_per_delivery=per(r["bytes_in"]),
        bytes_out_per_delivery=per(r["bytes_out"]),
        server_cpu_us_per_delivery=per(r["server_cpu_s"] * 1e6),
    )
    return r


async def _settle(server: HubbubServer, limit: float) -> float:
    """Wait (up to ``limit`` s) until both the server and this generator use under 10%
    of a core over half a second: the presence frames of N joins (N^2/2 of them) are
    written and read. The seconds it took."""
    t0 = time.monotonic()
    prev = proc.cpu_seconds(server.pid), time.process_time()
    while time.monotonic() - t0 < limit:
        await asyncio.sleep(0.5)
        cur = proc.cpu_seconds(server.pid), time.process_time()
        if cur[0] - prev[0] < 0.05 and cur[1] - prev[1] < 0.05:
            break
        prev = cur
    return time.monotonic() - t0


async def _phase_load(
    cell: Cell, server: HubbubServer, opts: TransportOptions
) -> tuple[Snap, Snap]:
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    t0 = start + opts.warmup
    t_end = t0 + opts.duration
    sending = asyncio.create_task(cell.sender.run(opts.messages, opts.rate, start))
    await asyncio.sleep(max(0.0, t0 - loop.time()))
    s0 = cell.snap(server.pid)
    await asyncio.sleep(max(0.0, t_end - loop.time()))
    s1 = cell.snap(server.pid)
    await sending
    return s0, s1


async def _measure(
    cell: Cell, server: HubbubServer, progress: Progress, prefix: str, cores: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Setup, idle window, load window and drain of one cell: (idle, load, timings)."""
    opts, name, n = cell.opts, cell.name, cell.n
    timings: dict[str, float] = {}
    t_setup = time.monotonic()
    try:
        async with asyncio.timeout(opts.setup_timeout):
            await cell.open_all(progress, prefix)
    except TimeoutError:
        ready = sum(r.ready.is_set() for r in cell.receivers)
        took = time.monotonic() - t_setup
        what = (
            f"setup not done within {opts.setup_timeout:g}s"
            if took >= opts.setup_timeout - 0.5
            else f"a setup request got no answer in time (after {took:.0f}s)"
        )
        raise SetupError(
            f"{what}: {cell.opened:,} of {n:,} receivers connected and joined, "
            f"{ready:,} had their room frame"
        ) from None
    if not name.startswith("poll-"):  # pollers are no members: nothing to settle
        progress.show(f"{prefix} settling")
        timings["settle_s"] = await _settle(server, opts.setup_timeout / 2)
    timings["setup_s"] = time.monotonic() - t_setup
    progress.show(f"{prefix} idle {opts.idle:g}s")
    s0 = cell.snap(server.pid)
    await asyncio.sleep(opts.idle)
    idle = idle_figures(s0, cell.snap(server.pid), n, cores)
    progress.show(f"{prefix} load {opts.rate:g} msg/s")
    s0, s1 = await _phase_load(cell, server, opts)
    drain = opts.drain + max(opts.poll_every)
    try:
        await asyncio.wait_for(cell.tally.complete.wait(), drain)
    except TimeoutError:
        cell.tally.error(
            f"not every message arrived within {drain:g}s of the last send (counted as lost)"
        )
    lo = math.ceil(opts.rate * opts.warmup)
    load = load_figures(s0, s1, cell.tally, range(lo, opts.messages), cores)
    return idle, load, timings


_COMMON = (
    "seconds requests connects bytes_out bytes_in deliveries server_cpu_s server_cpu_pct "
    "generator_cpu_pct other_cpu_pct"
).split()
_IDLE = "requests_per_s requests_per_min_per_client bytes_per_s bytes_per_s_per_client".split()
_LOAD = (
    "requests_per_delivery bytes_per_delivery bytes_in_per_delivery bytes_out_per_delivery "
    "server_cpu_us_per_delivery"
).split()


def _no_figures() -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures of a cell that could not be measured: all NaN."""
    idle = dict.fromkeys(_COMMON + _IDLE, math.nan)
    load: dict[str, Any] = dict.fromkeys(_COMMON + _LOAD, math.nan)
    load["latency_ms"] = {"p50": math.nan, "p99": math.nan, "max": math.nan, "count": 0}
    return idle, load


async def run_cell(opts: TransportOptions, name: str, n: int, workdir: Path) -> dict[str, Any]:
    """One transport with ``n`` receivers on a fresh server: the result dict. A cell
    that fails (setup too slow, refused requests...) is a result with its errors."""
    progress = Progress(opts.progress, opts.stream)
    prefix = f"[{name} N={n:,}]"
    cores = len(opts.server_cpus) if opts.server_cpus else (os.cpu_count() or 1)
    result: dict[str, Any] = {"transport": name, "title": title(name), "receivers": n}
    idle, load = _no_figures()
    async with HubbubServer(workdir / f"{name}-{n}", opts.server_cpus) as server:
        cell = Cell(opts, name, n, server.port)
        try:
            idle, load, timings = await _measure(cell, server, progress, prefix, cores)
            result.update(timings)
        except SetupError as exc:
            cell.tally.error(str(exc))
        except (TimeoutError, OSError, HttpError, msgspec.DecodeError) as exc:
            cell.tally.error(f"cell failed: {type(exc).__name__}: {exc}")
        finally:
            cell.close()
        server_log = server.tail()
    check = cell.tally.check()
    result.update(
        idle=idle,
        load=load,
        check=check,
        since_ignored=cell.tally.since_ignored,
        timeouts=cell.tally.timeouts,
        refused=cell.tally.refused,
        errors=cell.tally.errors,
        ok=not cell.tally.errors and check["lost"] == check["duplicated"] == 0,
    )
    if not result["ok"] and server_log:
        result["server_log"] = server_log
    progress.end(f"{prefix} " + one_line(result))
    return result


def one_line(r: dict[str, Any]) -> str:
    ld, idle, c = r["load"], r["idle"], r["check"]
    return (
        f"p50 {ld['latency_ms']['p50']:.1f} ms, p99 {ld['latency_ms']['p99']:.1f} ms, "
        f"{ld['requests_per_delivery']:.2f} req/delivery, "
        f"{ld['bytes_per_delivery']:.0f} B/delivery, "
        f"{ld['server_cpu_us_per_delivery']:.0f} us CPU/delivery; idle "
        f"{idle['requests_per_s']:.1f} req/s, {idle['bytes_per_s']:.0f} B/s, "
        f"server CPU {idle['server_cpu_pct']:.1f}%; lost {c['lost']} dup {c['duplicated']}"
    )


async def run_all(opts: TransportOptions) -> list[dict[str, Any]]:
    names = transport_names(opts.transports, opts.poll_every)
    results = []
    with tempfile.TemporaryDirectory(prefix="hubbub-transports-") as tmp:
        for n in opts.receivers:
            for name in names:
                results.append(await run_cell(opts, name, n, Path(tmp)))
    return results


# -- command line (wired into ``hubbub bench`` by cli.py) ----------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("push vs polling (--transports; docs/push-vs-polling.md)")
    g.add_argument(
        "--transports",
        action="store_true",
        help="run the push-vs-polling comparison instead of the scenarios: it starts its "
        "own `hubbub serve` for every transport and N (--url and --server-pid are ignored)",
    )
    g.add_argument("--receivers", default="10,100,1000,5000", help="N values (%(default)s)")
    g.add_argument("--transport-list", default=",".join(TRANSPORTS), help="carriages (%(default)s)")
    g.add_argument("--poll-every", default="1,5", help="short polling intervals, s (%(default)s)")
    g.add_argument("--msg-rate", type=float, default=2.0, help="messages/s (%(default)s)")
    g.add_argument("--idle-seconds", type=float, default=25.0, help="idle window (%(default)s)")
    g.add_argument("--load-seconds", type=float, default=10.0, help="load window (%(default)s)")
    g.add_argument(
        "--quick",
        action="store_true",
        help="a short run for development: N=10,100, idle 5 s, load 4 s",
    )
    g.add_argument("--markdown", metavar="FILE", help="write the result tables as markdown")


def options_from_args(args: argparse.Namespace) -> TransportOptions:
    pin = args.pin if args.pin is not None else (os.cpu_count() or 1) >= 2
    opts = TransportOptions(
        receivers=[int(x) for x in args.receivers.split(",") if x.strip()],
        transports=[x.strip() for x in args.transport_list.split(",") if x.strip()],
        poll_every=[float(x) for x in args.poll_every.split(",") if x.strip()],
        rate=args.msg_rate,
        size=args.size,
        idle=args.idle_seconds,
        duration=args.load_seconds,
        server_cpus=proc.parse_cpus(args.server_cpus) if pin else None,
        generator_cpus=proc.parse_cpus(args.generator_cpus) if pin else None,
        progress=not args.quiet,
    )
    if args.quick:
        opts.receivers = [n for n in opts.receivers if n <= 100] or [10]
        opts.idle, opts.duration, opts.warmup, opts.drain = 5.0, 4.0, 1.0, 5.0
    return opts


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        opts = options_from_args(args)
        opts.validate()
    except ValueError as exc:
        parser.error(str(exc))
    facts = proc.machine_facts()  # before pinning: nproc counts the CPUs we may use
    if opts.generator_cpus:
        os.sched_setaffinity(0, opts.generator_cpus)
    proc.raise_nofile()
    started = time.monotonic()
    try:
        results = asyncio.run(run_all(opts))
    except KeyboardInterrupt:
        print("\nhubbub bench: interrupted", file=sys.stderr)
        return 130
    print(f"hubbub bench --transports took {time.monotonic() - started:.0f} s", file=sys.stderr)
    from .report import write_json
    from .transports_report import markdown, plot, table, write_markdown

    print(table(results))
    meta = {"options": public(opts), "machine": facts}
    if args.json:
        write_json(args.json, {**meta, "results": results})
        print(f"results written to {args.json}")
    if args.markdown:
        write_markdown(args.markdown, markdown(results, meta))
        print(f"tables written to {args.markdown}")
    if args.plot:
        for path in plot(results, args.plot):
            print(f"chart written to {path}")
    return 0 if all(r["ok"] for r in results) else 1


def public(opts: TransportOptions) -> dict[str, Any]:
    out = {k: v for k, v in vars(opts).items() if k != "stream"}
    for key in ("server_cpus", "generator_cpus"):
        if out[key] is not None:
            out[key] = sorted(out[key])
    out["messages"] = opts.messages
    return out
