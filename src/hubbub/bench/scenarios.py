"""The four scenarios, run from a parent process that drives generator workers.

The parent starts the worker processes (:mod:`hubbub.bench.worker`), tells
them what to do, reads the server's CPU time and memory from /proc at the
edges of each measured window, prints a live progress line and turns what
the workers report into one result dict per scenario (JSON-serializable).

Everything here is ``async`` so that a server running on the caller's own
event loop (as in the tests) keeps serving while the parent waits.
"""

from __future__ import annotations

import array
import asyncio
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import proc
from .checker import MAX_SENDERS, MIN_SIZE

SCENARIOS = ("fanout", "latency", "idle", "connect")
#: What the clients speak. ``seed``: the seed's plain text (any plain
#: WebSocket chat server). ``hubbub.v1``: hubbub's JSON protocol (join a
#: room, ``send`` with a client id, ``ack``, ``message``): the product's real
#: path, durable history included. ``socket.io``: the same work as
#: socket.io events (``join``, ``send`` with an ack, ``message``), generated
#: by the picows workers speaking Engine.IO v4 / Socket.IO v5 themselves
#: (:class:`hubbub.bench.worker.SocketIOClient`) or, with
#: ``Options.socketio_client = "node"``, by Node socket.io-client workers
#: (:mod:`hubbub.bench.nodegen`).
PROTOCOLS = ("seed", "hubbub.v1", "socket.io")
#: Who generates ``--protocol socket.io``. ``picows``: the Python workers
#: (picows + msgspec), the cheaper per delivery, so the generator is not the
#: side that saturates first. ``node``: the reference client, socket.io-client
#: in Node, as a cross-check of the picows one (about twice the CPU per
#: delivery of the Node socket.io server itself).
SOCKETIO_CLIENTS = ("picows", "node")
#: Scenarios each protocol can run (idle and connect measure the seed path).
PROTOCOL_SCENARIOS = {
    "seed": SCENARIOS,
    "hubbub.v1": ("fanout", "latency"),
    "socket.io": ("fanout", "latency"),
}
#: Order of ``--scenario all``: idle first, on a server that has not yet
#: allocated (and kept) memory for other work.
ALL_ORDER = ("idle", "fanout", "latency", "connect")
#: CPU use (percent of the cores a side may use) at which that side counts as saturated.
SATURATED_PCT = 90.0
#: CPU used by other processes on the machine (percent of one core) during a
#: measured window above which the result is marked noisy. On a quiet machine
#: it stays within a few percent.
NOISY_PCT = 15.0


class BenchError(RuntimeError):
    """The benchmark could not run (not: the server made errors; those are results)."""


@dataclass
class Options:
    url: str = "ws://127.0.0.1:9502/"
    clients: int = 1000
    senders: int = 10
    window: int = 4
    size: int = 100
    duration: float = 6.0
    warmup: float = 1.0
    #: latency scenario: messages per second, all senders together.
    rate: float = 20.0
    idle_clients: int = 10_000
    idle_steps: int = 10
    connect_concurrency: int = 64
    server_pid: int | None = None
    workers: int = 1
    generator_cpus: set[int] | None = None
    sample_interval: float = 0.25
    connect_concurrency_per_worker: int = 128
    #: One of :data:`PROTOCOLS`.
    protocol: str = "seed"
    #: The room the clients join (hubbub.v1 and socket.io).
    room: str = "bench"
    #: socket.io only, one of :data:`SOCKETIO_CLIENTS`: picows workers or Node ones.
    socketio_client: str = "picows"
    label: str = ""
    progress: bool = True
    stream: TextIO = field(default_factory=lambda: sys.stderr)

    def validate(self) -> None:
        if self.clients < 1:
            raise ValueError("--clients must be at least 1")
        if not 1 <= self.senders <= min(self.clients, MAX_SENDERS):
            raise ValueError(f"--senders must be between 1 and min(--clients, {MAX_SENDERS})")
        if self.size < MIN_SIZE:
            raise ValueError(f"--size must be at least {MIN_SIZE} bytes")
        if self.window < 1:
            raise ValueError("--window must be at least 1")
        if self.duration <= 0 or self.warmup < 0:
            raise ValueError("--duration must be positive and --warmup not negative")
        if self.rate <= 0:
            raise ValueError("--rate must be positive")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
        if self.socketio_client not in SOCKETIO_CLIENTS:
            raise ValueError(f"--socketio-client must be one of {', '.join(SOCKETIO_CLIENTS)}")
        if self.idle_clients < 1 or self.connect_concurrency < 1:
            raise ValueError("--idle-clients and --connect-concurrency must be positive")


# ---------------------------------------------------------------------------
# Progress line


class Progress:
    """One status line: rewritten in place on a terminal, every 2 s otherwise."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled = enabled
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last = 0.0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last >= 2.0:
            self._last = now
            self.stream.write(text + "\n")
            self.stream.flush()

    def end(self, text: str | None = None) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K")
        if text:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last = 0.0


# ---------------------------------------------------------------------------
# Generator processes


@dataclass
class Snap:
    t: float
    server_cpu: float | None
    gen_cpu: float
    server_rss: int | None
    #: CPU seconds of the whole machine (not idle) and of this (parent) process.
    machine: float = 0.0
    parent: float = 0.0


class Generator:
    """The worker processes of one scenario run (an async context manager)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.n = opts.workers
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.progress: Any = None

    async def __aenter__(self) -> Generator:
        from .worker import worker_main

        ctx = multiprocessing.get_context("spawn")
        self.progress = ctx.RawArray("q", self.n)
        cpus = sorted(self.opts.generator_cpus) if self.opts.generator_cpus else None
        for i in range(self.n):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=worker_main,
                args=(child, i, self.progress, cpus, None),
                name=f"hubbub-bench-{i}",
                daemon=True,
            )
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.conns:
            try:
                conn.send(("exit", {}))
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not any(p.is_alive() for p in self.procs):
                break
            await asyncio.sleep(0.02)
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(1)
        for conn in self.conns:
            conn.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def total(self) -> int:
        return int(sum(self.progress))

    def snap(self) -> Snap:
        pid = self.opts.server_pid
        server_cpu = server_rss = None
        if pid is not None:
            server_cpu = proc.cpu_seconds(pid)
            server_rss = proc.rss_kib(pid)
        own = 0.0 if pid == os.getpid() else proc.cpu_seconds(os.getpid())
        return Snap(
            time.monotonic(),
            server_cpu,
            proc.cpu_seconds_many(self.pids),
            server_rss,
            proc.machine_busy_seconds(),
            own,
        )

    def send(self, cmd: str, args: list[dict[str, Any]]) -> None:
        for conn, a in zip(self.conns, args, strict=True):
            conn.send((cmd, a))

    async def wait(self, cmd: str, on_tick: Any = None) -> list[dict[str, Any]]:
        """The answers to ``cmd`` from every worker."""
        results: list[dict[str, Any] | None] = [None] * self.n
        while any(r is None for r in results):
            for i, conn in enumerate(self.conns):
                if results[i] is None and conn.poll():
                    results[i] = conn.recv()
                elif results[i] is None and not self.procs[i].is_alive():
                    raise BenchError(f"generator process {i} died during {cmd!r}")
            if on_tick is not None:
                on_tick()
            await asyncio.sleep(0.005)
        for r in results:
            assert r is not None
            if "error" in r:
                raise BenchError(f"generator: {r['error']}")
        return results  # type: ignore[return-value]

    async def call(
        self, cmd: str, args: list[dict[str, Any]], on_tick: Any = None
    ) -> list[dict[str, Any]]:
        self.send(cmd, args)
        return await self.wait(cmd, on_tick)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _pct(cpu: float | None, wall: float, cores: int = 1) -> float | None:
    if cpu is None or wall <= 0:
        return None
    return 100.0 * cpu / (wall * cores)


def _saturation(server_pct: float | None, gen_pct: float | None) -> str:
    sides = []
    if server_pct is not None and server_pct >= SATURATED_PCT:
        sides.append("server")
    if gen_pct is not None and gen_pct >= SATURATED_PCT:
        sides.append("generator")
    if sides:
        return "+".join(sides)
    if server_pct is None:
        return "unknown (no --server-pid)" if (gen_pct or 0) < SATURATED_PCT else "generator"
    return "neither"


class _Run:
    """Shared plumbing of one scenario: progress line, CPU snapshots at window edges."""

    def __init__(self, opts: Options, gen: Generator, name: str) -> None:
        self.opts = opts
        self.gen = gen
        self.name = name
        self.progress = Progress(opts.progress, opts.stream)
        self.prefix = f"[{opts.label + ' ' if opts.label else ''}{name}]"
        self.gen_cores = len(opts.generator_cpus) if opts.generator_cpus else (os.cpu_count() or 1)
        self.gen_cores = min(self.gen_cores, opts.workers)

    def show(self, text: str) -> None:
        self.progress.show(f"{self.prefix} {text}")

    async def watch(
        self, t0: int, t_end: int, task: asyncio.Future[Any], unit: str
    ) -> tuple[Snap, Snap]:
        """Snapshots at t0 and t_end (monotonic ns) and a progress line meanwhile."""
        snap0: Snap | None = None
        snap1: Snap | None = None
        prev_t, prev_n = time.monotonic(), self.gen.total()
        prev = self.gen.snap()
        next_show = time.monotonic() + 0.5
        while snap1 is None:
            now_ns = time.monotonic_ns()
            if snap0 is None and now_ns >= t0:
                snap0 = self.gen.snap()
            if now_ns >= t_end:
                snap1 = self.gen.snap()
                break
            if task.done():
                task.result()  # raises the worker's error
                raise BenchError(f"{self.name}: generator finished before the window ended")
            if time.monotonic() >= next_show:
                cur = self.gen.snap()
                n = self.gen.total()
                dt = cur.t - prev_t
                rate = (n - prev_n) / dt if dt > 0 else 0.0
                elapsed = (now_ns - t0) / 1e9
                phase = "warm-up" if elapsed < 0 else f"{elapsed:4.1f}s"
                srv = _pct(
                    None
                    if cur.server_cpu is None or prev.server_cpu is None
                    else cur.server_cpu - prev.server_cpu,
                    cur.t - prev.t,
                )
                gen_pct = _pct(cur.gen_cpu - prev.gen_cpu, cur.t - prev.t, self.gen_cores)
                self.show(
                    f"{phase}  {rate:>11,.0f} {unit}/s"
                    + (f"  server CPU {srv:3.0f}%" if srv is not None else "")
                    + f"  generator CPU {gen_pct or 0:3.0f}%"
                )
                prev_t, prev_n, prev = cur.t, n, cur
                next_show += 0.5
            wake_ns = min(t_end, t0 if snap0 is None else t_end)
            delay = min(
                max(0.0, (wake_ns - time.monotonic_ns()) / 1e9), next_show - time.monotonic()
            )
            await asyncio.sleep(max(0.0, min(delay, 0.1)))
        assert snap0 is not None
        return snap0, snap1


def _cpu_fields(s0: Snap, s1: Snap, gen_cores: int, workers: int) -> dict[str, Any]:
    wall = s1.t - s0.t
    server_cpu = None if s0.server_cpu is None else s1.server_cpu - s0.server_cpu  # type: ignore[operator]
    gen_cpu = s1.gen_cpu - s0.gen_cpu
    server_pct = _pct(server_cpu, wall)
    gen_pct = _pct(gen_cpu, wall, gen_cores)
    # Everything else the machine did meanwhile: other people's processes
    # (noise) or, without --server-pid, the server itself.
    other = (s1.machine - s0.machine) - gen_cpu - (s1.parent - s0.parent) - (server_cpu or 0.0)
    other_pct = _pct(max(0.0, other), wall)
    return {
        "other_cpu_pct": other_pct,
        "noisy": server_cpu is not None and (other_pct or 0.0) > NOISY_PCT,
        "wall_s": wall,
        "server_cpu_s": server_cpu,
        "server_cpu_pct": server_pct,
        "generator_cpu_s": gen_cpu,
        "generator_cpu_pct": gen_pct,
        "generator_processes": workers,
        "generator_cores": gen_cores,
        "saturated": _saturation(server_pct, gen_pct),
    }


def _sample_times(t_start: int, t0: int, t_end: int, dt: float) -> list[int]:
    return sorted({*range(t_start, t_end, int(dt * 1e9)), t0, t_end})


def _timeline(
    runs: list[dict[str, Any]], t0: int, key: str = "samples"
) -> tuple[list[list[float]], list[int]]:
    """Summed worker samples -> [[seconds from t0, rate], ...] and the summed counts."""
    per = [r[key] for r in runs]
    k = min(len(s) for s in per)
    counts = [sum(s[i][1] for s in per) for i in range(k)]
    times = [per[0][i][0] for i in range(k)]
    line = []
    for i in range(1, k):
        dt = (times[i] - times[i - 1]) / 1e9
        if dt > 0:
            line.append([round((times[i] - t0) / 1e9, 3), (counts[i] - counts[i - 1]) / dt])
    return line, counts


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    # The epsilon keeps float noise (99.9 / 100 * 1000 = 999.0000000000001) off the rank.
    rank = max(1, math.ceil(q * n / 100.0 - 1e-9))
    return float(sorted_values[min(n, rank) - 1])


def _cdf_points(sorted_ms: list[float]) -> list[list[float]]:
    if not sorted_ms:
        return []
    qs = sorted({i / 200 for i in range(201)} | {0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0})
    n = len(sorted_ms)
    return [[sorted_ms[min(n - 1, max(0, math.ceil(q * n - 1e-9) - 1))], q] for q in qs]


# ---------------------------------------------------------------------------
# Scenarios


async def _connect_room(run: _Run, latency: bool) -> tuple[list[dict[str, Any]], int]:
    opts, gen = run.opts, run.gen
    counts = _split(opts.clients, gen.n)
    # Sender s lives in worker s % n, as that worker's client s // n.
    senders: list[dict[int, int]] = [{} for _ in range(gen.n)]
    for s in range(opts.senders):
        senders[s % gen.n][s // gen.n] = s
    run.show(f"connecting {opts.clients:,} clients")
    res = await gen.call(
        "connect",
        [
            {
                "url": opts.url,
                "count": counts[w],
                "senders": senders[w],
                "nsenders": opts.senders,
                "size": opts.size,
                "concurrency": opts.connect_concurrency_per_worker,
                "protocol": opts.protocol,
                "room": opts.room,
                # Globally unique client numbers (nicknames), worker by worker.
                "first": sum(counts[:w]),
            }
            for w in range(gen.n)
        ],
        on_tick=lambda: run.show(f"connecting: {gen.total():,}/{opts.clients:,}"),
    )
    connected = sum(r["connected"] for r in res)
    return res, connected


def make_generator(opts: Options) -> Generator:
    """The generator processes for ``opts.protocol`` (and ``opts.socketio_client``)."""
    if opts.protocol == "socket.io" and opts.socketio_client == "node":
        from .nodegen import NodeGenerator

        return NodeGenerator(opts)
    return Generator(opts)


async def room(opts: Options, *, latency: bool) -> dict[str, Any]:
    """The fan-out scenario (window of messages in flight) or the latency one (fixed rate)."""
    name = "latency" if latency else "fanout"
    async with make_generator(opts) as gen:
        run = _Run(opts, gen, name)
        conn_res, connected = await _connect_room(run, latency)
        errors = [e for r in conn_res for e in r["errors"]]
        greeted = sum(r["greeted"] for r in conn_res)
        if connected == 0:
            run.progress.end()
            raise BenchError(f"{name}: no client could connect to {opts.url}: {errors[:3]}")
        t_start = time.monotonic_ns() + 200_000_000
        t0 = t_start + int(opts.warmup * 1e9)
        t_end = t0 + int(opts.duration * 1e9)
        interval = opts.senders / opts.rate
        args = {
            "t_start": t_start,
            "warmup": opts.warmup,
            "duration": opts.duration,
            "dt": opts.sample_interval,
            "window": 0 if latency else opts.window,
            "interval": interval,
            "offsets": {s: s / opts.rate for s in range(opts.senders)},
            "latency": latency,
        }
        gen.send("run", [args] * gen.n)
        task = asyncio.ensure_future(gen.wait("run"))
        try:
            s0, s1 = await run.watch(t0, t_end, task, "deliveries")
            run.show("draining")
            runs = await task
        finally:
            if not task.done():
                task.cancel()
        sent = [0] * opts.senders
        for r in runs:
            for sid, n in r["sent"].items():
                sent[int(sid)] = n
        run.show("checking every receiver")
        fin = await gen.call("finish", [{"sent": sent}] * gen.n)
        run.show("closing")
        await gen.call("close", [{}] * gen.n)
    run.progress.end()

    times = _sample_times(t_start, t0, t_end, opts.sample_interval)
    i0 = times.index(t0)
    line, counts = _timeline(runs, t0)
    deliveries = counts[-1] - counts[i0] if len(counts) > i0 else 0
    cpu = _cpu_fields(s0, s1, run.gen_cores, gen.n)
    check = {
        k: sum(f[k] for f in fin)
        for k in (
            "expected",
            "deliveries",
            "lost",
            "duplicated",
            "reordered",
            "malformed",
            "disconnected",
            "echo_errors",
            "incomplete",
        )
    }
    errors += [e for f in fin for e in f["errors"] if e not in errors]
    if connected < opts.clients:
        errors.insert(0, f"only {connected} of {opts.clients} clients connected")
    if greeted < connected:
        errors.insert(0, f"{connected - greeted} clients got no greeting")
    for key in ("lost", "duplicated", "reordered", "malformed", "disconnected", "echo_errors"):
        if check[key]:
            errors.append(f"{check[key]:,} {key.replace('_', ' ')}")
    if sum(sent) == 0:
        errors.append("no message was sent (did the server answer 'server: ...'?)")
    wall = opts.duration
    result: dict[str, Any] = {
        "scenario": name,
        "label": opts.label,
        "url": opts.url,
        "protocol": opts.protocol,
        **({"socketio_client": opts.socketio_client} if opts.protocol == "socket.io" else {}),
        "clients": opts.clients,
        "connected": connected,
        "senders": opts.senders,
        "size": opts.size,
        "duration_s": opts.duration,
        "warmup_s": opts.warmup,
        "messages_sent": sum(sent),
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / wall,
        **cpu,
        "deliveries_per_server_cpu_s": (
            deliveries / cpu["server_cpu_s"] if cpu["server_cpu_s"] else None
        ),
        "check": check,
        "timeline": line,
    }
    if latency:
        raw = b"".join(f["latencies"] for f in fin)
        values = array.array("q")
        values.frombytes(raw)
        ms = sorted(v / 1e6 for v in values)
        result.update(
            {
                "rate_msgs_per_s": opts.rate,
                "target_deliveries_per_s": opts.rate * connected,
                "latency_ms": {
                    "count": len(ms),
                    "mean": sum(ms) / len(ms) if ms else math.nan,
                    "p50": percentile(ms, 50),
                    "p90": percentile(ms, 90),
                    "p99": percentile(ms, 99),
                    "p99.9": percentile(ms, 99.9),
                    "max": ms[-1] if ms else math.nan,
                },
                "send_lag_max_ms": max(r["send_lag_max_ns"] for r in runs) / 1e6,
                "cdf": _cdf_points(ms),
            }
        )
        if not ms:
            errors.append("no latency sample was recorded")
    else:
        result["window"] = opts.window
    result["errors"] = errors
    result["ok"] = not errors
    return result


async def fanout(opts: Options) -> dict[str, Any]:
    return await room(opts, latency=False)


async def latency(opts: Options) -> dict[str, Any]:
    return await room(opts, latency=True)


async def idle(opts: Options) -> dict[str, Any]:
    """Server RSS growth per idle connection, up to ``idle_clients`` connections."""
    if opts.server_pid is None:
        raise BenchError("the idle scenario needs --server-pid (it reads the server's VmRSS)")
    async with Generator(opts) as gen:
        run = _Run(opts, gen, "idle")
        pid = opts.server_pid
        # Warm-up: the first handshakes may load code or fill caches.
        await gen.call(
            "connect",
            [{"url": opts.url, "count": 5, "senders": {}, "nsenders": 0, "read_buffer": 1024}]
            + [{"url": opts.url, "count": 0, "senders": {}, "nsenders": 0}] * (gen.n - 1),
        )
        await gen.call("close", [{}] * gen.n)
        await asyncio.sleep(0.5)
        rss0 = proc.rss_kib(pid)
        cpu0 = proc.cpu_seconds(pid)
        points: list[list[int]] = [[0, rss0]]
        steps = max(1, opts.idle_steps)
        done = 0
        failed = 0
        errors: list[str] = []
        t_start = time.monotonic()
        for k in range(steps):
            target = round(opts.idle_clients * (k + 1) / steps)
            want = target - done
            res = await gen.call(
                "connect",
                [
                    {
                        "url": opts.url,
                        "count": c,
                        "senders": {},
                        "nsenders": 0,
                        "read_buffer": 1024,
                        "concurrency": opts.connect_concurrency_per_worker,
                    }
                    for c in _split(want, gen.n)
                ],
                on_tick=lambda done=done: run.show(
                    f"connecting: {done + gen.total():,}/{opts.idle_clients:,} "
                    f"server RSS {proc.rss_kib(pid) / 1024:,.1f} MiB"
                ),
            )
            done += sum(r["connected"] for r in res)
            failed += sum(r["failed"] for r in res)
            errors += [e for r in res for e in r["errors"] if e not in errors]
            points.append([done, proc.rss_kib(pid)])
        connect_s = time.monotonic() - t_start
        cpu1 = proc.cpu_seconds(pid)
        await asyncio.sleep(1.0)  # let the server settle (lazy buffers, GC)
        rss1 = proc.rss_kib(pid)
        points[-1] = [done, rss1]
        run.show(f"{done:,} idle connections, server RSS {rss1 / 1024:,.1f} MiB; closing")
        await gen.call("close", [{"wait_s": 10.0}] * gen.n)
    run.progress.end()
    if failed:
        errors.insert(0, f"{failed:,} of {opts.idle_clients:,} connections failed")
    per_conn = (rss1 - rss0) / done if done else math.nan
    slope = _slope(points)
    return {
        "scenario": "idle",
        "label": opts.label,
        "url": opts.url,
        "clients": opts.idle_clients,
        "connected": done,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_per_connection_kib": per_conn,
        "rss_slope_kib": slope,
        "rss_points": points,
        "connect_s": connect_s,
        "server_cpu_per_connection_ms": (cpu1 - cpu0) / done * 1000 if done else None,
        "errors": errors,
        "ok": not errors,
    }


def _slope(points: list[list[int]]) -> float:
    """Least-squares slope of RSS (KiB) over connections."""
    n = len(points)
    if n < 2:
        return math.nan
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx if sxx else math.nan


async def connect(opts: Options) -> dict[str, Any]:
    """Completed handshakes (connect, upgrade, greeting, close) per server CPU-second."""
    async with Generator(opts) as gen:
        run = _Run(opts, gen, "connect")
        t_start = time.monotonic_ns() + 300_000_000
        t0 = t_start + int(opts.warmup * 1e9)
        t_end = t0 + int(opts.duration * 1e9)
        per = _split(opts.connect_concurrency, gen.n)
        args = [
            {
                "url": opts.url,
                "t_start": t_start,
                "warmup": opts.warmup,
                "duration": opts.duration,
                "dt": opts.sample_interval,
                "concurrency": max(1, c),
            }
            for c in per
        ]
        gen.send("churn", args)
        task = asyncio.ensure_future(gen.wait("churn"))
        try:
            s0, s1 = await run.watch(t0, t_end, task, "handshakes")
            runs = await task
        finally:
            if not task.done():
                task.cancel()
    run.progress.end()
    times = _sample_times(t_start, t0, t_end, opts.sample_interval)
    i0 = times.index(t0)
    line, counts = _timeline(runs, t0)
    handshakes = counts[-1] - counts[i0] if len(counts) > i0 else 0
    cpu = _cpu_fields(s0, s1, run.gen_cores, gen.n)
    errors: list[str] = []
    failed = sum(r["failed"] for r in runs)
    if failed:
        errors.append(f"{failed:,} handshake cycles failed")
    errors += [e for r in runs for e in r["errors"] if e not in errors]
    if handshakes == 0:
        errors.append("no handshake completed")
    return {
        "scenario": "connect",
        "label": opts.label,
        "url": opts.url,
        "concurrency": opts.connect_concurrency,
        "duration_s": opts.duration,
        "warmup_s": opts.warmup,
        "handshakes": handshakes,
        "handshakes_per_s": handshakes / opts.duration,
        **cpu,
        "handshakes_per_server_cpu_s": (
            handshakes / cpu["server_cpu_s"] if cpu["server_cpu_s"] else None
        ),
        "completed_total": sum(r["completed"] for r in runs),
        "unclean_closes": sum(r["unclean"] for r in runs),
        "failed": failed,
        "timeline": line,
        "errors": errors,
        "ok": not errors,
    }


RUNNERS = {"fanout": fanout, "latency": latency, "idle": idle, "connect": connect}


async def run_scenarios(opts: Options, names: list[str]) -> list[dict[str, Any]]:
    """Run the named scenarios in order against one server; one result each."""
    opts.validate()
    allowed = PROTOCOL_SCENARIOS[opts.protocol]
    for name in names:
        if name not in allowed:
            raise BenchError(
                f"scenario {name!r} is not available with --protocol {opts.protocol} "
                f"(it has: {', '.join(allowed)})"
            )
    results = []
    for name in names:
        results.append(await RUNNERS[name](opts))
    return results
