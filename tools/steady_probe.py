"""Steady-rate latency with a compiled receiver: what the servers' p99 is without the generator's.

``make bench``'s steady scenario (1,000 clients in one room, 10 senders, 20 and 80
messages/s of 100 bytes) reads its deliveries with the Python generator, which spends about
12 µs of CPU per delivery: at 80,000 deliveries/s its own reading delay is most of the p99
it reports. ``tools/steady_probe.c`` (its header comment has the protocol, the checks and
the output) does the same work in C with epoll; this module builds it with gcc into
``reports/probe-build/`` (one binary per source hash, written under a temporary name and
renamed into place) and runs it::

    # one run against a running server; with its PID, the server's CPU per delivery
    .venv/bin/python -m tools.steady_probe --url ws://127.0.0.1:9600/ --server-pid 1234

    # make bench's servers, each started on CPU 1 (bench/benchrun/servers.py), the probe
    # on CPU 0, the server order alternating between rounds; a markdown table of medians
    .venv/bin/python -m tools.steady_probe --servers hubbub,node_ws,uws,picows --rounds 5

The server's CPU comes from ``/proc/PID/stat`` (utime + stime), sampled when the probe
prints that a measured window starts and ends; per delivery it divides by the deliveries
the probe received inside the window, as does the probe's own CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).with_name("steady_probe.c")
BUILD_DIR = ROOT / "reports" / "probe-build"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=c11"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
BASELINE = "node_ws"


class ProbeError(Exception):
    """A one-line reason the probe could not run (no gcc, server not reachable, ...)."""


def build(build_dir: Path = BUILD_DIR) -> Path:
    """The probe's binary for the current source, compiled if not cached yet."""
    source = SOURCE.read_bytes()
    binary = build_dir / f"steady_probe-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ProbeError("gcc not found: install it with `apt-get install gcc libssl-dev`")
    build_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=binary.name + ".", suffix=".tmp", dir=build_dir)
    os.close(fd)
    try:
        done = subprocess.run(
            [gcc, *CFLAGS, "-o", tmp, str(SOURCE), "-lcrypto"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise ProbeError(f"gcc failed ({first}); is libssl-dev installed?")
        os.replace(tmp, binary)  # a running binary keeps its old inode
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


def server_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds (``/proc/PID/stat``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError as exc:
        raise ProbeError(f"cannot read /proc/{pid}/stat: {exc.strerror}") from None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_probe(
    binary: Path,
    url: str,
    *,
    clients: int = 1000,
    senders: int = 10,
    size: int = 100,
    rates: Iterable[float] = (20.0, 80.0),
    warmup: float = 1.0,
    window: float = 2.5,
    drain: float = 3.0,
    setup_timeout: float = 30.0,
    server_pid: int | None = None,
    cpu: int | None = None,
) -> dict[str, Any]:
    """One probe run: ``{"setup": ..., "windows": [...], "done": ...}``.

    With ``server_pid``, each window also gets ``server_cpu_s`` and
    ``server_us_per_delivery``; with ``cpu``, the probe runs pinned to that CPU.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname or not parts.port:
        raise ProbeError(f"expected a ws://HOST:PORT/ URL, got {url!r}")
    rates = list(rates)
    argv = [str(binary), "--clients", str(clients), "--senders", str(senders)]
    argv += ["--size", str(size), "--rates", ",".join(f"{r:g}" for r in rates)]
    argv += ["--warmup", str(warmup), "--window", str(window), "--drain", str(drain)]
    argv += ["--setup-timeout", str(setup_timeout), "--path", parts.path or "/"]
    argv += [parts.hostname, str(parts.port)]
    preexec: Callable[[], None] | None = None
    if cpu is not None:
        pinned = cpu
        preexec = lambda: os.sched_setaffinity(0, {pinned})  # noqa: E731
    result: dict[str, Any] = {"windows": []}
    cpu_at: dict[str, float] = {}
    # The probe bounds every wait itself; this is the backstop if it ever did not.
    limit = setup_timeout + len(rates) * (warmup + window + drain) + 30
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=preexec
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    raise ProbeError(f"unexpected probe output {line[:80]!r}") from None
                if "window" in msg:
                    if server_pid is not None:
                        cpu_at[msg["window"]] = server_cpu_s(server_pid)
                elif "setup" in msg:
                    result["setup"] = msg["setup"]
                elif "done" in msg:
                    result["done"] = msg
                else:
                    if server_pid is not None:
                        used = cpu_at["end"] - cpu_at["start"]
                        msg["server_cpu_s"] = used
                        got = msg["received_in_window"]
                        msg["server_us_per_delivery"] = used * 1e6 / got if got else None
                    result["windows"].append(msg)
            code = proc.wait(timeout=limit)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
    if code != 0:
        setup = result.get("setup")
        if setup and setup["greeted"] == 0:
            raise ProbeError(f"server not reachable at {url} (no client connected and greeted)")
        raise ProbeError(stderr.splitlines()[-1] if stderr else f"probe exited with {code}")
    return result


def _load_bench() -> tuple[Any, Any]:
    """bench/benchrun's servers and running modules, imported as bench/run.py does."""
    folder = str(ROOT / "bench")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    from benchrun import running, servers

    return servers, running


def run_servers(
    binary: Path, names: list[str], rounds: int, probe: dict[str, Any], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Each round, each server (order alternating) started on its CPU, probed, stopped."""
    servers, running = _load_bench()
    unknown = [n for n in names if n not in servers.SERVERS]
    if unknown:
        raise ProbeError(
            f"unknown server(s) {', '.join(unknown)}; known: {', '.join(servers.SERVERS)}"
        )
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="steady-probe-") as tmp:
        for r in range(rounds):
            for name in running.server_order(names, r):
                server = servers.ServerProcess(servers.SERVERS[name], Path(tmp))
                try:
                    server.start()
                except RuntimeError as exc:
                    raise ProbeError(str(exc).splitlines()[0]) from None
                try:
                    assert server.proc is not None
                    res = run_probe(
                        binary,
                        server.url,
                        server_pid=server.proc.pid,
                        cpu=servers.GENERATOR_CPU,
                        **probe,
                    )
                finally:
                    server.stop()
                for w in res["windows"]:
                    w.update(server=name, round=r + 1)
                    out.append(w)
                    log(
                        f"round {r + 1} {name:<8} {w['rate']:>4g}/s: "
                        f"server {w['server_us_per_delivery'] or 0:.2f} µs/delivery, "
                        f"p99 {w['p99_ms']:.2f} ms, probe CPU {w['probe_cpu_pct']:.0f}%"
                        + ("" if w["ok"] else " NOT OK")
                    )
    return out


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _of(results: list[dict[str, Any]], name: str, rate: float, key: str) -> list[float]:
    return [
        w[key] for w in results if w["server"] == name and w["rate"] == rate and w[key] is not None
    ]


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    """Markdown: per rate and server, medians (min-max) over the rounds."""
    lines = [
        "| rate/s | server | server µs/delivery | vs node_ws | p50 ms | p99 ms | p99.9 ms "
        "| probe CPU % | probe µs/delivery | lost/dup/reord/err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rates = sorted({w["rate"] for w in results})
    for rate in rates:
        base = _of(results, BASELINE, rate, "server_us_per_delivery")
        for name in names:
            rows = [w for w in results if w["server"] == name and w["rate"] == rate]
            if not rows:
                continue
            us = _of(results, name, rate, "server_us_per_delivery")
            ratio = (
                f"{statistics.median(us) / statistics.median(base):.2f}x" if us and base else "-"
            )
            bad = "/".join(
                str(sum(w[k] for w in rows)) for k in ("lost", "duplicated", "reordered", "errors")
            )
            cells = [f"{rate:g}", name, _spread(us, ".2f"), ratio]
            for key, fmt in (
                ("p50_ms", ".2f"),
                ("p99_ms", ".2f"),
                ("p99_9_ms", ".2f"),
                ("probe_cpu_pct", ".0f"),
                ("probe_cpu_us_per_delivery", ".2f"),
            ):
                cells.append(_spread(_of(results, name, rate, key), fmt))
            cells.append(bad)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="probe one running server, e.g. ws://127.0.0.1:9600/")
    target.add_argument("--servers", help="comma list of bench servers to start and probe")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's PID")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rates", default="20,80", help="messages/s over all senders")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=2.5)
    parser.add_argument("--drain", type=float, default=3.0)
    parser.add_argument("--cpu", type=int, help="with --url: pin the probe to this CPU")
    parser.add_argument("--json", type=Path, help="write the raw results to this file")
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",")]
        probe: dict[str, Any] = {
            "clients": args.clients,
            "senders": args.senders,
            "size": args.size,
            "rates": rates,
            "warmup": args.warmup,
            "window": args.window,
            "drain": args.drain,
        }
    except ValueError:
        print(f"steady_probe: bad --rates {args.rates!r}", file=sys.stderr)
        return 2
    try:
        binary = build()
        if args.url:
            res = run_probe(binary, args.url, server_pid=args.server_pid, cpu=args.cpu, **probe)
            for w in res["windows"]:
                print(json.dumps(w))
            raw: Any = res
            ok = all(w["ok"] for w in res["windows"])
        else:
            names = [n.strip() for n in args.servers.split(",") if n.strip()]
            started = time.monotonic()
            load = Path("/proc/loadavg").read_text().split()[:3]
            results = run_servers(
                binary, names, args.rounds, probe, lambda s: print(s, file=sys.stderr)
            )
            print(table(results, names))
            print(
                f"\n{args.rounds} rounds, {args.clients} clients, {args.senders} senders, "
                f"{args.size} B, window {args.window:g} s; load before {' '.join(load)}, after "
                f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
                f"{time.monotonic() - started:.0f} s"
            )
            raw = results
            ok = all(w["ok"] for w in results)
    except ProbeError as exc:
        print(f"steady_probe: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
