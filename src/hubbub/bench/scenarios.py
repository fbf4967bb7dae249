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
import time
from typing import Any

from . import proc
from .generator import Generator, Snap
from .measure import (
    Run,
    cdf_points,
    cpu_fields,
    percentile,
    sample_times,
    split,
    timeline,
)
from .nodegen import NodeGenerator
from .options import PROTOCOL_SCENARIOS, BenchError, Options


async def _connect_room(run: Run, latency: bool) -> tuple[list[dict[str, Any]], int]:
    opts, gen = run.opts, run.gen
    counts = split(opts.clients, gen.n)
    # Sender s lives in worker s % n, as that worker's client s // n (or every sender
    # in opts.sender_worker, as its first clients).
    senders: list[dict[int, int]] = [{} for _ in range(gen.n)]
    for s in range(opts.senders):
        if opts.sender_worker is not None:
            senders[opts.sender_worker][s] = s
        else:
            senders[s % gen.n][s // gen.n] = s
    urls = opts.urls or [opts.url]
    run.show(f"connecting {opts.clients:,} clients")
    res = await gen.call(
        "connect",
        [
            {
                "url": urls[w % len(urls)],
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
        return NodeGenerator(opts)
    return Generator(opts)


#: The receivers' counters that ``finish`` reports, summed over the workers.
_CHECK_KEYS = (
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
#: The ones that are errors when not zero.
_CHECK_ERRORS = ("lost", "duplicated", "reordered", "malformed", "disconnected", "echo_errors")


async def room(opts: Options, *, latency: bool) -> dict[str, Any]:
    """The fan-out scenario (window of messages in flight) or the latency one (fixed rate)."""
    name = "latency" if latency else "fanout"
    async with make_generator(opts) as gen:
        run = Run(opts, gen, name)
        connected, errors, greeted = await _open_room(run, name)
        result = await _room_window(run, latency, connected, None)
        run.show("closing")
        await gen.call("close", [{}] * gen.n)
    run.progress.end()
    return _room_result(opts, name, result, connected, greeted, errors)


async def steady(opts: Options, rates: list[float]) -> list[dict[str, Any]]:
    """The latency scenario at each of ``rates`` (messages/s) in turn, on one connected room.

    One result per rate, each with its own warm-up, measured window and checks
    (the checks of a window count what happened in it only).
    """
    results = []
    async with make_generator(opts) as gen:
        run = Run(opts, gen, "steady")
        connected, errors, greeted = await _open_room(run, "steady")
        before: dict[str, int] | None = None
        for rate in rates:
            opts.rate = rate
            run.prefix = f"[{opts.label + ' ' if opts.label else ''}steady {rate:g}/s]"
            result = await _room_window(run, True, connected, before)
            before = result.pop("check_total")
            results.append(_room_result(opts, "steady", result, connected, greeted, errors))
        run.show("closing")
        await gen.call("close", [{}] * gen.n)
    run.progress.end()
    return results


async def _open_room(run: Run, name: str) -> tuple[int, list[str], int]:
    """Connect the room's clients: how many connected, the errors, how many were greeted."""
    conn_res, connected = await _connect_room(run, False)
    errors = [e for r in conn_res for e in r["errors"]]
    greeted = sum(r["greeted"] for r in conn_res)
    if connected == 0:
        run.progress.end()
        raise BenchError(f"{name}: no client could connect to {run.opts.url}: {errors[:3]}")
    return connected, errors, greeted


async def _room_window(
    run: Run, latency: bool, connected: int, before: dict[str, int] | None
) -> dict[str, Any]:
    """One measured window on the connected room: send, then check every receiver.

    ``before``: the receivers' cumulative counters after the previous window on
    the same clients (subtracted, so that this window's checks are its own).
    """
    opts, gen = run.opts, run.gen
    t_start = time.monotonic_ns() + 200_000_000
    t0 = t_start + int(opts.warmup * 1e9)
    t_end = t0 + int(opts.duration * 1e9)
    runs, s0, s1 = await _send_room(run, latency, t_start, t0, t_end)
    sent = [0] * opts.senders
    for r in runs:
        for sid, n in r["sent"].items():
            sent[int(sid)] = n
    run.show("checking every receiver")
    fin = await gen.call("finish", [{"sent": sent}] * gen.n)
    times = sample_times(t_start, t0, t_end, opts.sample_interval)
    i0 = times.index(t0)
    line, counts = timeline(runs, t0)
    deliveries = counts[-1] - counts[i0] if len(counts) > i0 else 0
    total = {k: sum(f[k] for f in fin) for k in _CHECK_KEYS}
    check = {k: v - (before or {}).get(k, 0) for k, v in total.items()}
    # Still missing now is missing, whatever happened in earlier windows.
    check["incomplete"] = total["incomplete"]
    messages = sum(sent) - (before or {}).get("sent", 0)
    total["sent"] = sum(sent)
    result: dict[str, Any] = {
        "messages_sent": messages,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / opts.duration,
        **cpu_fields(s0, s1, run.gen_cores, gen.n),
        "check": check,
        "check_total": total,
        "timeline": line,
        "errors": [e for f in fin for e in f["errors"]],
    }
    # A generator that measures more than the server process (e.g. the engines of a
    # cluster) adds its own figures of the window.
    extra = getattr(gen, "window_fields", None)
    if extra is not None:
        result.update(extra(s0, s1))
    cpu_s = result["server_cpu_s"]
    result["deliveries_per_server_cpu_s"] = deliveries / cpu_s if cpu_s else None
    result["server_cpu_us_per_delivery"] = (
        cpu_s / deliveries * 1e6 if cpu_s and deliveries else None
    )
    if latency:
        result.update(_latency_fields(opts, connected, runs, fin))
        if not result["latency_ms"]["count"]:
            result["errors"].append("no latency sample was recorded")
    return result


def _room_result(
    opts: Options,
    name: str,
    window: dict[str, Any],
    connected: int,
    greeted: int,
    connect_errors: list[str],
) -> dict[str, Any]:
    """One window's figures as a scenario result, with the errors that make it fail."""
    window.pop("check_total", None)
    errors = list(connect_errors)
    errors += [e for e in window.pop("errors") if e not in errors]
    if connected < opts.clients:
        errors.insert(0, f"only {connected} of {opts.clients} clients connected")
    if greeted < connected:
        errors.insert(0, f"{connected - greeted} clients got no greeting")
    check = window["check"]
    for key in _CHECK_ERRORS:
        if check[key]:
            errors.append(f"{check[key]:,} {key.replace('_', ' ')}")
    if window["messages_sent"] == 0:
        errors.append("no message was sent (did the server answer 'server: ...'?)")
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
        **window,
    }
    if name == "fanout":
        result["window"] = opts.window
    result["errors"] = errors
    result["ok"] = not errors
    return result


async def _send_room(
    run: Run, latency: bool, t_start: int, t0: int, t_end: int
) -> tuple[list[dict[str, Any]], Snap, Snap]:
    """The workers' ``run`` (senders from ``t_start`` to ``t_end``), watched; their answers
    and the snapshots at the edges of the measured window (``t0`` to ``t_end``)."""
    opts, gen = run.opts, run.gen
    args = {
        "t_start": t_start,
        "warmup": opts.warmup,
        "duration": opts.duration,
        "dt": opts.sample_interval,
        "window": 0 if latency else opts.window,
        "interval": opts.senders / opts.rate,
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
    return runs, s0, s1


def _latency_fields(
    opts: Options, connected: int, runs: list[dict[str, Any]], fin: list[dict[str, Any]]
) -> dict[str, Any]:
    """The latency scenario's own figures, from the workers' recorded latencies (ns)."""
    ms = _sorted_ms([f["latencies"] for f in fin])
    fields: dict[str, Any] = {}
    if len(fin) > 1:
        # Each generator process's receivers apart (with ``urls``: each node's).
        fields["latency_ms_by_worker"] = [_percentiles(_sorted_ms([f["latencies"]])) for f in fin]
    return {
        **fields,
        "rate_msgs_per_s": opts.rate,
        "target_deliveries_per_s": opts.rate * connected,
        "latency_ms": _percentiles(ms),
        "send_lag_max_ms": max(r["send_lag_max_ns"] for r in runs) / 1e6,
        "cdf": cdf_points(ms),
    }


def _sorted_ms(raws: list[bytes]) -> list[float]:
    """The workers' recorded latencies (int64 nanoseconds), in milliseconds, sorted."""
    values = array.array("q")
    for raw in raws:
        values.frombytes(raw)
    return sorted(v / 1e6 for v in values)


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {
        "count": len(ms),
        "mean": sum(ms) / len(ms) if ms else math.nan,
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "p99.9": percentile(ms, 99.9),
        "max": ms[-1] if ms else math.nan,
    }


async def fanout(opts: Options) -> dict[str, Any]:
    return await room(opts, latency=False)


async def latency(opts: Options) -> dict[str, Any]:
    return await room(opts, latency=True)


async def idle(opts: Options) -> dict[str, Any]:
    """Server RSS growth per idle connection, up to ``idle_clients`` connections."""
    if opts.server_pid is None:
        raise BenchError("the idle scenario needs --server-pid (it reads the server's VmRSS)")
    async with Generator(opts) as gen:
        run = Run(opts, gen, "idle")
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
                    for c in split(want, gen.n)
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
        run = Run(opts, gen, "connect")
        t_start = time.monotonic_ns() + 300_000_000
        t0 = t_start + int(opts.warmup * 1e9)
        t_end = t0 + int(opts.duration * 1e9)
        per = split(opts.connect_concurrency, gen.n)
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
    times = sample_times(t_start, t0, t_end, opts.sample_interval)
    i0 = times.index(t0)
    line, counts = timeline(runs, t0)
    handshakes = counts[-1] - counts[i0] if len(counts) > i0 else 0
    cpu = cpu_fields(s0, s1, run.gen_cores, gen.n)
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
