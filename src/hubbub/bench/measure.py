"""What the parent measures around a scenario: the progress line, CPU snapshots at the
edges of the measured window, and the figures made of them (CPU shares,
saturation, timelines, percentiles)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any, TextIO

from .generator import Generator, Snap
from .options import NOISY_PCT, SATURATED_PCT, BenchError, Options


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


def split(total: int, parts: int) -> list[int]:
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


class Run:
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


def cpu_fields(s0: Snap, s1: Snap, gen_cores: int, workers: int) -> dict[str, Any]:
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


def sample_times(t_start: int, t0: int, t_end: int, dt: float) -> list[int]:
    return sorted({*range(t_start, t_end, int(dt * 1e9)), t0, t_end})


def timeline(
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


def cdf_points(sorted_ms: list[float]) -> list[list[float]]:
    if not sorted_ms:
        return []
    qs = sorted({i / 200 for i in range(201)} | {0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0})
    n = len(sorted_ms)
    return [[sorted_ms[min(n - 1, max(0, math.ceil(q * n - 1e-9) - 1))], q] for q in qs]
