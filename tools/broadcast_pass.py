"""Time hubbub's broadcast passes at a steady rate: wall time, CPU per delivery, pauses.

A profiling aid for the steady scenarios of ``make bench`` (see
``bench/findings.md``). It runs ``hubbub serve`` with hooks on
:meth:`Server.push_many <hubbub.server.Server.push_many>` (the fan-out of
both the seed room and the chat rooms) and on the end-of-tick flush
(:meth:`ServerEndpoint.flush_writes <hubbub.endpoint.ServerEndpoint.flush_writes>`).
A *pass* is one ``push_many`` to more than ``--min-recipients`` clients, from
its call to the end of its writes: the return of ``push_many`` when every
frame went out directly (the compiled path), else the end of the flush of the
same loop tick. For each pass it records the wall time and the thread's CPU
time (``CLOCK_THREAD_CPUTIME_ID``: user and system time of the system calls,
exact, not the tick-based ``/proc`` figures); in chat mode also the time from
the message's arrival (``ChatApp.on_message``) to its pass (journal, commit,
sequencer). Garbage collections are timed too (``gc.callbacks``): a pause
delays every delivery of the passes waiting behind it. On exit (SIGTERM or
Ctrl-C) it prints (seed mode, 80 messages/s, on a machine shared with other work:
most ticks then carry several messages, whose frames are queued and flushed)::

    400 passes (105 direct, 295 queued), 1,000 recipients each (median)
    pass wall: p50 19.16 ms, p99 77.81 ms, max 78.14 ms
    pass CPU: 2.18 µs per delivery (median; p90 4.49); direct passes 3.79
    gc: gen0 110 x 0.02 ms (max 29.13), gen1 9 x 0.07 ms (max 12.68), gen2 1 x 68.59 ms
    full collections at -3.0 s from the first pass
    server CPU: user 0.60 s, system 0.89 s; from the first pass to the end of the last
    1.08 s, of which outside the passes 150 µs per pass

("Outside the passes" counts the process CPU between the first pass and the end
of the last one that no pass used: receiving the messages, the senders' echoes,
the loop. The clients' teardown and the shutdown come after the last pass and
are not in it; before, they were, and made up most of the figure.)

Usage (the generator's own ``--server-pid`` gives the /proc figures too)::

    taskset -c 1 .venv/bin/python -m tools.broadcast_pass --port 9600 &
    .venv/bin/python -m hubbub.bench --url ws://127.0.0.1:9600/ --scenario latency \\
        --rate 80 --server-pid $! --duration 5
    kill %1

Add ``--protocol hubbub.v1`` to the generator for chat mode. Every other
argument goes to ``hubbub serve`` (``--log-level warning``, ``--rate 0``,
``--max-connections 20000`` and a throw-away ``--db`` are the defaults here).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hubbub.apps.chat import ChatApp
from hubbub.cli import main as hubbub_main
from hubbub.endpoint import ServerEndpoint
from hubbub.server import Server


@dataclass
class Record:
    """What the hooks collect (times in ms unless said otherwise)."""

    min_recipients: int
    wall: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # CPU µs per delivery, per pass
    direct_cpu_us: list[float] = field(default_factory=list)  # the same, direct passes only
    recipients: list[int] = field(default_factory=list)
    direct: int = 0
    arrival: list[float] = field(default_factory=list)  # chat: on_message -> its pass
    gc: dict[int, list[float]] = field(default_factory=dict)
    #: When each full (gen2) collection began, in seconds from the first pass
    #: (negative: before it, e.g. while the clients connected).
    full_gc: list[float] = field(default_factory=list)
    first_pass: float | None = None
    pass_cpu_s: float = 0.0
    #: Process CPU seconds (user + system) when the first pass began and when the
    #: last one ended: "outside the passes" is the CPU between them that no pass
    #: used (the clients' teardown and the shutdown after the last pass are not).
    cpu_at_first: float | None = None
    cpu_at_last: float | None = None
    # Passes whose frames were queued this tick, (wall start, cpu start, recipients):
    # the end-of-tick flush ends them, their CPU shared per delivery.
    queued: list[tuple[float, int, int]] = field(default_factory=list)
    arrivals: deque[float] = field(default_factory=deque)


def install(min_recipients: int) -> Record:
    """Wrap push_many, the end-of-tick flush, the chat handler and the GC; returns the record."""
    rec = Record(min_recipients)
    push_many = Server.push_many
    flush = ServerEndpoint.flush_writes
    on_message = ChatApp.on_message

    def end_passes(passes: list[tuple[float, int, int]], direct: bool) -> None:
        t1, c1 = time.perf_counter(), time.thread_time_ns()
        cpu = c1 - passes[0][1]
        per_delivery = cpu / 1000 / sum(n for _, _, n in passes)
        for t0, _, n in passes:
            rec.wall.append((t1 - t0) * 1000)
            rec.cpu_us.append(per_delivery)
            rec.recipients.append(n)
            if direct:
                rec.direct_cpu_us.append(per_delivery)
        rec.pass_cpu_s += cpu / 1e9
        rec.direct += len(passes) if direct else 0
        rec.cpu_at_last = time.process_time()

    def timed_push_many(self: Server, fds: Any, data: Any, opcode: Any = None) -> int:
        if rec.cpu_at_first is None:
            rec.cpu_at_first = time.process_time()
            rec.first_pass = time.perf_counter()
        t0, c0 = time.perf_counter(), time.thread_time_ns()
        n = push_many(self, fds, data, opcode)
        if n > rec.min_recipients:
            if rec.arrivals:
                rec.arrival.append((t0 - rec.arrivals.popleft()) * 1000)
            if len(self._endpoint._dirty) >= n // 2:
                rec.queued.append((t0, c0, n))  # ends with this tick's flush
            else:
                end_passes([(t0, c0, n)], True)
        return n

    def timed_flush(self: ServerEndpoint) -> None:
        flush(self)
        if rec.queued:
            passes, rec.queued = rec.queued, []
            end_passes(passes, False)

    def timed_on_message(self: ChatApp, server: Server, frame: Any) -> None:
        data = frame.data
        if isinstance(data, str) and data.startswith('{"type":"send"') and frame.fd in self.v1:
            if len(rec.arrivals) < 100_000:  # bounded: one room's messages in order
                rec.arrivals.append(time.perf_counter())
        on_message(self, server, frame)

    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pause = (time.perf_counter() - started[0]) * 1000
            rec.gc.setdefault(info["generation"], []).append(pause)
            if info["generation"] == 2:
                rec.full_gc.append(started[0])

    Server.push_many = timed_push_many  # type: ignore[method-assign]
    ServerEndpoint.flush_writes = timed_flush  # type: ignore[method-assign]
    ChatApp.on_message = timed_on_message  # type: ignore[method-assign]
    gc.callbacks.append(on_gc)
    return rec


def _q(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def report(rec: Record) -> str:
    if not rec.wall:
        return "no broadcast pass timed"
    n = len(rec.wall)
    lines = [
        f"{n} passes ({rec.direct} direct, {n - rec.direct} queued), "
        f"{statistics.median(rec.recipients):,.0f} recipients each (median)",
        f"pass wall: p50 {_q(rec.wall, 0.5):.2f} ms, p99 {_q(rec.wall, 0.99):.2f} ms, "
        f"max {max(rec.wall):.2f} ms",
        f"pass CPU: {statistics.median(rec.cpu_us):.2f} µs per delivery "
        f"(median; p90 {_q(rec.cpu_us, 0.9):.2f})"
        + (
            f"; direct passes {statistics.median(rec.direct_cpu_us):.2f}"
            if rec.direct_cpu_us
            else ""
        ),
    ]
    if rec.arrival:
        lines.append(
            f"arrival to pass (chat): p50 {_q(rec.arrival, 0.5):.2f} ms, "
            f"p99 {_q(rec.arrival, 0.99):.2f} ms"
        )
    if rec.gc:
        lines.append(
            "gc: "
            + ", ".join(
                f"gen{g} {len(v)} x {statistics.median(v):.2f} ms (max {max(v):.2f})"
                for g, v in sorted(rec.gc.items())
            )
        )
    if rec.full_gc and rec.first_pass is not None:
        lines.append(
            "full collections at "
            + ", ".join(f"{t - rec.first_pass:+.1f} s" for t in rec.full_gc)
            + " from the first pass"
        )
    cpu = os.times()
    span = (rec.cpu_at_last or 0.0) - (rec.cpu_at_first or 0.0)
    outside = (span - rec.pass_cpu_s) / n * 1e6
    lines.append(
        f"server CPU: user {cpu.user:.2f} s, system {cpu.system:.2f} s; from the first pass "
        f"to the end of the last {span:.2f} s, of which outside the passes {outside:,.0f} µs "
        "per pass"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--min-recipients", type=int, default=100)
    args, rest = parser.parse_known_args()
    rec = install(args.min_recipients)
    with tempfile.TemporaryDirectory() as tmp:
        defaults = ["--host", "127.0.0.1", "--log-level", "warning", "--rate", "0"]
        defaults += ["--max-connections", "20000", "--db", os.path.join(tmp, "pass.db")]
        try:
            return hubbub_main(["serve", *defaults, *rest])
        finally:
            print(report(rec), file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
