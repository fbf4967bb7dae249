"""Time hubbub's broadcast pass: from a seed-room message to the end of its writes.

A profiling aid for the latency scenario of ``make bench`` (see
``bench/findings.md``). It runs ``hubbub serve`` with two hooks: the time a
seed-room message reaches :meth:`SeedRoom.message`, and the end of the
:meth:`ServerEndpoint.flush_writes` (:mod:`hubbub.endpoint`) that hands the
resulting frames to the transports. On exit (SIGTERM or Ctrl-C) it prints the
distribution of the difference, over passes that wrote to more than
``--min-recipients`` clients, and the server's user and system CPU time::

    taskset -c 1 .venv/bin/python -m tools.broadcast_pass --port 9600 &
    .venv/bin/python -m hubbub.bench --url ws://127.0.0.1:9600/ --scenario latency \\
        --server-pid $! --duration 5
    kill %1

Every other argument goes to ``hubbub serve`` (``--log-level warning``,
``--max-connections 20000`` and a throw-away ``--db`` are the defaults here).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from hubbub.apps import seed
from hubbub.cli import main as hubbub_main
from hubbub.endpoint import ServerEndpoint


def install(min_recipients: int) -> list[float]:
    """Wrap the seed room and the end-of-tick flush; returns the list samples go to (ms)."""
    samples: list[float] = []
    started = [0.0]
    message = seed.SeedRoom.message
    flush = ServerEndpoint.flush_writes

    def timed_message(self: seed.SeedRoom, frame: object) -> None:
        if not started[0]:
            started[0] = time.perf_counter()
        message(self, frame)  # type: ignore[arg-type]

    def timed_flush(self: ServerEndpoint) -> None:
        recipients = len(self._dirty)
        flush(self)
        if started[0] and recipients > min_recipients:
            samples.append((time.perf_counter() - started[0]) * 1000)
        started[0] = 0.0

    seed.SeedRoom.message = timed_message  # type: ignore[method-assign]
    ServerEndpoint.flush_writes = timed_flush  # type: ignore[method-assign]
    return samples


def report(samples: list[float]) -> str:
    s = sorted(samples)
    if not s:
        return "no broadcast pass timed"

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    cpu = os.times()
    return (
        f"{len(s)} broadcast passes: p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, "
        f"max {s[-1]:.2f} ms; server CPU user {cpu.user:.2f} s, system {cpu.system:.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-recipients", type=int, default=100)
    args, rest = parser.parse_known_args()
    samples = install(args.min_recipients)
    with tempfile.TemporaryDirectory() as tmp:
        defaults = ["--host", "127.0.0.1", "--log-level", "warning"]
        defaults += ["--max-connections", "20000", "--db", os.path.join(tmp, "pass.db")]
        try:
            return hubbub_main(["serve", *defaults, *rest])
        finally:
            print(report(samples), file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
