"""The generator's worker processes, seen from the parent: start, command, read, stop.

:class:`Generator` runs :mod:`hubbub.bench.worker` processes (picows
clients); :class:`hubbub.bench.nodegen.NodeGenerator` has the same interface
over Node socket.io-client workers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from . import proc
from .options import BenchError, Options


@dataclass
class Snap:
    t: float
    server_cpu: float | None
    gen_cpu: float
    server_rss: int | None
    #: CPU seconds of the whole machine (not idle) and of this (parent) process.
    machine: float = 0.0
    parent: float = 0.0


def _worker(parent: int, *args: Any) -> None:
    """A worker process: killed when the parent (the runner) dies, even by ``kill -9``,
    rather than finishing its command for no one; then :func:`worker.worker_main`."""
    from .worker import worker_main

    proc.die_with_parent(signal.SIGKILL, parent)
    worker_main(*args)


class Generator:
    """The worker processes of one scenario run (an async context manager)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.n = opts.workers
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.progress: Any = None

    async def __aenter__(self) -> Generator:
        ctx = multiprocessing.get_context("spawn")
        self.progress = ctx.RawArray("q", self.n)
        cpus = sorted(self.opts.generator_cpus) if self.opts.generator_cpus else None
        for i in range(self.n):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker,
                args=(os.getpid(), child, i, self.progress, cpus, None),
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
