"""``make bench``: hubbub against other chat servers, same generator, same work.

    .venv/bin/python bench/run.py            # the full run (about 13 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # a smoke run (about 3 minutes)

Installs nothing: ``pip install -e '.[bench]'``,
``npm install --prefix bench/peers/node_ws`` and
``npm install --prefix bench/peers/socketio_node`` come first (``make bench``
does all three).

Two families of scenarios. *Seed mode* (idle, fanout, latency, connect):
one-room servers speaking the seed's plain text protocol (hubbub, Node ws,
websockets, aiohttp, picows). *Chat mode* (chat_fanout, chat_latency): the
same room and load as chat frameworks do it, hubbub with its ``hubbub.v1``
JSON protocol and durable history, Node socket.io and python-socketio with
socket.io events driven by socket.io-client workers.

For every round, every server and every scenario it runs, a fresh server
process is started on CPU 1 with a raised open-file limit, the generator
(:mod:`hubbub.bench`) runs on CPU 0, and the server is stopped again. The
server order alternates between rounds. The report takes the median of the
rounds, computes ratios against Node's ws and is written to
docs/benchmarks.md with charts in docs/img/ (``--quick`` writes to
reports/bench/ instead, leaving the docs alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
NODE_DIR = PEERS / "node_ws"
BASELINE = "node_ws"
SEED_SCENARIOS = ("idle", "fanout", "latency", "connect")
CHAT_SCENARIOS = ("chat_fanout", "chat_latency")
SCENARIO_ORDER = SEED_SCENARIOS + CHAT_SCENARIOS
SOCKETIO_DIR = PEERS / "socketio_node"
SERVER_CPU = 1
GENERATOR_CPU = 0
NOFILE = 20_000
TIMES = "\u00d7"  # the multiplication sign of "1.40x"
DASH = "\u2013"  # en dash of "(min-max)"
PER_CPU = "deliveries_per_server_cpu_s"
HS_CPU = "handshakes_per_server_cpu_s"


@dataclass
class ServerSpec:
    name: str
    title: str
    argv: Callable[[int, Path], list[str]]
    versions: Callable[[], str]
    notes: str = ""
    #: Scenarios this server takes part in.
    scenarios: tuple[str, ...] = SEED_SCENARIOS
    #: What the generator speaks to it in the chat scenarios.
    chat_protocol: str = "socket.io"


def _py_versions(*dists: str) -> Callable[[], str]:
    def get() -> str:
        parts = []
        for dist in dists:
            try:
                parts.append(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                parts.append(f"{dist} (not installed)")
        return ", ".join(parts) + f", CPython {platform.python_version()}"

    return get


def hubbub_source() -> str:
    """Git revision of hubbub plus a hash of its sources (excluding the bench package).

    Recorded with every hubbub measurement: if the server's code changes while
    the benchmark runs, the report says so instead of mixing versions silently.
    """
    digest = hashlib.sha256()
    src = ROOT / "src" / "hubbub"
    for path in sorted(src.rglob("*")):
        if path.is_file() and "bench" not in path.relative_to(src).parts[:1]:
            if path.suffix in (".py", ".html", ".js", ".css"):
                digest.update(str(path.relative_to(src)).encode())
                digest.update(path.read_bytes())
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # Dirty only if hubbub's own sources differ from the commit.
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "src/hubbub", ":!src/hubbub/bench"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if changes:
            rev += " + uncommitted changes"
    except (OSError, subprocess.CalledProcessError):
        rev = "no git"
    return f"{rev} (sources {digest.hexdigest()[:12]})"


def _node_versions(folder: Path, packages: tuple[str, ...]) -> Callable[[], str]:
    return lambda: _node_package_versions(folder, packages)


def _node_package_versions(folder: Path, packages: tuple[str, ...]) -> str:
    parts = []
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
        parts.append(f"Node {node.stdout.strip()}")
    except (OSError, subprocess.CalledProcessError):
        parts.append("Node (not found)")
    for pkg in packages:
        manifest = folder / "node_modules" / pkg / "package.json"
        try:
            parts.append(f"{pkg} {json.loads(manifest.read_text())['version']}")
        except (OSError, ValueError, KeyError):
            parts.append(f"{pkg} (not installed)")
    return ", ".join(parts)


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "hubbub",
            "hubbub",
            lambda port, tmp: [
                sys.executable,
                "-m",
                "hubbub",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--max-connections",
                str(NOFILE),
                "--db",
                str(tmp / "hubbub.db"),
                # The chat scenarios' senders send far more than the default
                # 20 messages/s per connection.
                "--rate",
                "0",
            ],
            _py_versions("hubbub", "websockets", "httptools", "uvloop", "msgspec"),
            "`hubbub serve` (the full chat app with its SQLite store; plain clients get the "
            "seed room; `--rate 0`: no per-connection rate limit)",
            SCENARIO_ORDER,
            "hubbub.v1",
        ),
        ServerSpec(
            "node_ws",
            "Node ws",
            lambda port, tmp: ["node", str(NODE_DIR / "server.js"), str(port)],
            _node_versions(NODE_DIR, ("ws", "bufferutil")),
            "bench/peers/node_ws/server.js",
        ),
        ServerSpec(
            "websockets",
            "websockets",
            lambda port, tmp: [sys.executable, str(PEERS / "websockets_peer.py"), str(port)],
            _py_versions("websockets", "uvloop"),
            "bench/peers/websockets_peer.py (asyncio server, `broadcast()`)",
        ),
        ServerSpec(
            "aiohttp",
            "aiohttp",
            lambda port, tmp: [sys.executable, str(PEERS / "aiohttp_peer.py"), str(port)],
            _py_versions("aiohttp", "uvloop"),
            "bench/peers/aiohttp_peer.py (`send_frame` to each client)",
        ),
        ServerSpec(
            "picows",
            "picows",
            lambda port, tmp: [sys.executable, str(PEERS / "picows_peer.py"), str(port)],
            _py_versions("picows", "uvloop"),
            "bench/peers/picows_peer.py (`WSTransport.send` to each client)",
        ),
        ServerSpec(
            "socketio_node",
            "Node socket.io",
            lambda port, tmp: ["node", str(SOCKETIO_DIR / "server.js"), str(port)],
            _node_versions(SOCKETIO_DIR, ("socket.io", "socket.io-client", "bufferutil")),
            "bench/peers/socketio_node/server.js (`io.to(room).emit`, ack callback)",
            CHAT_SCENARIOS,
        ),
        ServerSpec(
            "python_socketio",
            "python-socketio",
            lambda port, tmp: [sys.executable, str(PEERS / "python_socketio_peer.py"), str(port)],
            _py_versions("python-socketio", "aiohttp", "uvloop"),
            "bench/peers/python_socketio_peer.py (aiohttp, uvloop, `emit(..., room=...)`)",
            CHAT_SCENARIOS,
        ),
    )
}


# ---------------------------------------------------------------------------
# Server processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_preexec() -> None:
    os.sched_setaffinity(0, {SERVER_CPU})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(max(NOFILE, _soft), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    os.setsid()


class ServerProcess:
    def __init__(self, spec: ServerSpec, tmp: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.log = tmp / f"{spec.name}.log"
        self.argv = spec.argv(self.port, tmp)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_server_preexec,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited at start:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.3)  # let start-up work (e.g. hubbub opening its store) finish
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.spec.name} did not listen within {timeout}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ---------------------------------------------------------------------------
# Running


@dataclass
class Plan:
    rounds: int
    servers: list[str]
    scenarios: list[str]
    options: dict[str, dict[str, Any]]
    quick: bool
    retries: int = 2
    budget_s: float = 540.0
    results: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        room = {"clients": 200, "senders": 4, "window": 4, "duration": 2.0, "warmup": 0.5}
        options = {
            "fanout": room,
            "latency": {**room, "rate": 20.0},
            "idle": {"idle_clients": 2000, "idle_steps": 4},
            "connect": {"duration": 2.0, "warmup": 0.5, "connect_concurrency": 32},
            "chat_fanout": room,
            "chat_latency": {**room, "rate": 20.0},
        }
    else:
        room = {"clients": 1000, "senders": 10, "window": 4, "size": 100}
        options = {
            "fanout": {**room, "duration": args.duration, "warmup": 1.5},
            "latency": {**room, "rate": 20.0, "duration": args.duration, "warmup": 1.0},
            "idle": {"idle_clients": 10_000, "idle_steps": 10},
            # Node's JIT needs about 2 s of this load to reach its steady rate
            # (seen in the connection-rate chart); measured before that, Node ws,
            # the baseline of every ratio, would look slower than it is.
            "connect": {"duration": args.duration, "warmup": 3.0, "connect_concurrency": 64},
            "chat_fanout": {**room, "duration": args.duration, "warmup": 1.5},
            "chat_latency": {**room, "rate": 20.0, "duration": args.duration, "warmup": 1.0},
        }
    return Plan(
        rounds=args.rounds if args.rounds else (1 if args.quick else 3),
        servers=args.servers,
        scenarios=args.scenarios,
        options=options,
        quick=args.quick,
        retries=args.retries,
        budget_s=args.budget,
    )


def server_order(servers: list[str], round_index: int) -> list[str]:
    """Round 0 as given, round 1 reversed, round 2 rotated by one, ... ."""
    k = round_index % len(servers)
    order = servers[k:] + servers[:k]
    if round_index % 2 == 1:
        order.reverse()
    return order


def run_one(
    spec: ServerSpec, scenario: str, plan: Plan, tmp: Path, round_index: int
) -> dict[str, Any]:
    from hubbub.bench.options import BenchError, Options
    from hubbub.bench.scenarios import RUNNERS

    server = ServerProcess(spec, tmp)
    label = f"{spec.name} r{round_index + 1}"
    source = hubbub_source() if spec.name == "hubbub" else None
    try:
        server.start()
        assert server.proc is not None
        chat = scenario in CHAT_SCENARIOS
        opts = Options(
            protocol=spec.chat_protocol if chat else "seed",
            url=server.url,
            server_pid=server.proc.pid,
            workers=1,
            generator_cpus={GENERATOR_CPU},
            label=label,
            progress=sys.stderr.isatty(),
            **plan.options[scenario],
        )
        opts.validate()
        result: dict[str, Any] = asyncio.run(RUNNERS[scenario.removeprefix("chat_")](opts))
        result["scenario"] = scenario
        if not server.alive():
            result["errors"].append("the server process died during the run")
            result["ok"] = False
    except (BenchError, RuntimeError, OSError) as exc:
        result = {
            "scenario": scenario,
            "label": label,
            "ok": False,
            "errors": [f"{type(exc).__name__}: {exc}"],
            "failed_to_run": True,
        }
        tail = server.tail()
        if tail:
            result["errors"].append("server log: " + tail[-600:])
    finally:
        server.stop()
    result["server"] = spec.name
    result["round"] = round_index + 1
    if source is not None:
        result["hubbub_source"] = source
        if hubbub_source() != source:
            result["hubbub_source_changed"] = True
    return result


def machine_busy_pct(seconds: float) -> float:
    """CPU use of the whole machine over ``seconds``, in percent of one core."""
    from hubbub.bench import proc

    b0, t0 = proc.machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    b1, t1 = proc.machine_busy_seconds(), time.monotonic()
    return 100.0 * (b1 - b0) / (t1 - t0)


def wait_quiet(log: Callable[[str], None], limit: float = 30.0) -> None:
    """Wait (up to ``limit`` s) until other processes leave the CPUs alone."""
    from hubbub.bench.options import NOISY_PCT

    deadline = time.monotonic() + limit
    warned = False
    while True:
        busy = machine_busy_pct(0.3)
        if busy < NOISY_PCT:
            return
        if time.monotonic() > deadline:
            log(f"  the machine is still busy ({busy:.0f}% of a core): going on anyway")
            return
        if not warned:
            log(f"  other processes use {busy:.0f}% of a core: waiting for a quiet machine")
            warned = True
        time.sleep(1.0)


def execute(plan: Plan, tmp: Path, log: Callable[[str], None]) -> None:
    # Past the budget, no more waiting for a quiet machine and no repeats, so
    # that a busy machine cannot stretch the run much beyond it.
    budget_end = time.monotonic() + plan.budget_s
    for name in plan.servers:
        plan.results[name] = {s: [] for s in plan.scenarios if s in SERVERS[name].scenarios}
    for r in range(plan.rounds):
        order = server_order(plan.servers, r)
        log(f"round {r + 1}/{plan.rounds}: {', '.join(order)}")
        for name in order:
            for scenario in plan.scenarios:
                if scenario not in SERVERS[name].scenarios:
                    continue
                t = time.monotonic()
                for attempt in range(1 + plan.retries):
                    in_budget = time.monotonic() < budget_end
                    if in_budget:
                        wait_quiet(log)
                    result = run_one(SERVERS[name], scenario, plan, tmp, r)
                    result["attempts"] = attempt + 1
                    if not result.get("noisy"):
                        break
                    again = attempt < plan.retries and time.monotonic() < budget_end
                    log(
                        f"  {name:<10} {scenario:<8} noisy: other processes used "
                        f"{result['other_cpu_pct']:.0f}% of a core"
                        + ("; running it again" if again else "; keeping it")
                    )
                    if not again:
                        break
                plan.results[name][scenario].append(result)
                log(f"  {name:<10} {scenario:<8} {summary(result)}  ({time.monotonic() - t:.0f}s)")


def summary(result: dict[str, Any]) -> str:
    from hubbub.bench.report import fmt

    s = result["scenario"].removeprefix("chat_")
    if result.get("failed_to_run"):
        return "FAILED: " + "; ".join(result["errors"])[:300]
    if s == "fanout":
        text = (
            f"{fmt(result['deliveries_per_s'])} deliveries/s, "
            f"{fmt(result['deliveries_per_server_cpu_s'])} per server CPU-s, "
            f"CPU server {fmt(result['server_cpu_pct'])}% generator "
            f"{fmt(result['generator_cpu_pct'])}%"
        )
    elif s == "latency":
        lat = result["latency_ms"]
        text = (
            f"p50 {fmt(lat['p50'], 2)} ms, p99 {fmt(lat['p99'], 2)} ms, "
            f"p99.9 {fmt(lat['p99.9'], 2)} ms, server CPU {fmt(result['server_cpu_pct'])}%"
        )
    elif s == "idle":
        text = (
            f"{fmt(result['rss_per_connection_kib'], 2)} KiB per idle connection "
            f"({result['connected']:,} connections)"
        )
    else:
        text = (
            f"{fmt(result['handshakes_per_s'])} handshakes/s, "
            f"{fmt(result['handshakes_per_server_cpu_s'])} per server CPU-s, "
            f"CPU server {fmt(result['server_cpu_pct'])}% generator "
            f"{fmt(result['generator_cpu_pct'])}%"
        )
    if not result["ok"]:
        text += "  ERRORS: " + "; ".join(result["errors"])[:300]
    return text


# ---------------------------------------------------------------------------
# Aggregation


def _get(result: dict[str, Any], path: str) -> float | None:
    value: Any = result
    for part in path.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def median_of(results: list[dict[str, Any]], path: str) -> float | None:
    values = [
        v for r in results if not r.get("failed_to_run") for v in [_get(r, path)] if v is not None
    ]
    return statistics.median(values) if values else None


def spread_of(results: list[dict[str, Any]], path: str) -> tuple[float, float] | None:
    values = [
        v for r in results if not r.get("failed_to_run") for v in [_get(r, path)] if v is not None
    ]
    return (min(values), max(values)) if values else None


def median_result(results: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    """The round whose value of ``path`` is the median (for the charts)."""
    ok = [r for r in results if not r.get("failed_to_run") and _get(r, path) is not None]
    if not ok:
        return None
    ok.sort(key=lambda r: _get(r, path) or 0.0)
    return ok[(len(ok) - 1) // 2]


METRICS = {
    "fanout": [
        "deliveries_per_s",
        "deliveries_per_server_cpu_s",
        "server_cpu_pct",
        "generator_cpu_pct",
    ],
    "latency": [
        "latency_ms/p50",
        "latency_ms/p99",
        "latency_ms/p99.9",
        "server_cpu_pct",
        "generator_cpu_pct",
        "deliveries_per_s",
    ],
    "idle": ["rss_per_connection_kib", "rss_after_kib", "server_cpu_per_connection_ms"],
    "connect": [
        "handshakes_per_s",
        "handshakes_per_server_cpu_s",
        "server_cpu_pct",
        "generator_cpu_pct",
    ],
}
CHECKS = ("lost", "duplicated", "reordered", "malformed", "disconnected", "echo_errors")


def aggregate(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, per in plan.results.items():
        out[name] = {}
        for scenario, results in per.items():
            agg: dict[str, Any] = {
                "rounds": len(results),
                "ok_rounds": sum(1 for r in results if r["ok"]),
                "errors": sorted({e for r in results for e in r.get("errors", [])})[:6],
                "saturated": [r.get("saturated") for r in results if "saturated" in r],
                "noisy_rounds": sum(1 for r in results if r.get("noisy")),
                "repeats": sum(r.get("attempts", 1) - 1 for r in results),
            }
            kind = scenario.removeprefix("chat_")
            for path in METRICS.get(kind, []):
                agg[path] = median_of(results, path)
                agg[path + "#spread"] = spread_of(results, path)
            if kind in ("fanout", "latency"):
                agg["check"] = {
                    k: sum(int(_get(r, f"check/{k}") or 0) for r in results) for k in CHECKS
                }
            out[name][scenario] = agg
    return out


# ---------------------------------------------------------------------------
# Report


def _f(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{value / base:.2f}{TIMES}"


def _spread(agg: dict[str, Any], path: str, digits: int = 0, scale: float = 1.0) -> str:
    sp = agg.get(path + "#spread")
    if not sp or agg["rounds"] < 2:
        return ""
    return f" ({_f(sp[0] * scale, digits)}{DASH}{_f(sp[1] * scale, digits)})"


def _sat(agg: dict[str, Any]) -> str:
    values = [s for s in agg.get("saturated", []) if s]
    if not values:
        return "n/a"
    return max(set(values), key=values.count)


def _errors_cell(agg: dict[str, Any]) -> str:
    chk = agg.get("check")
    cells = []
    if chk is not None:
        cells.append(f"{chk['lost']}/{chk['duplicated']}/{chk['reordered']}")
        extra = {k: chk[k] for k in ("malformed", "disconnected", "echo_errors") if chk[k]}
        cells += [f"{v} {k.replace('_', ' ')}" for k, v in extra.items()]
    if agg["ok_rounds"] < agg["rounds"]:
        cells.append(f"**{agg['rounds'] - agg['ok_rounds']} round(s) with errors**")
    return ", ".join(cells) if cells else "none"


def write_charts(plan: Plan, img: Path) -> dict[str, Path]:
    from hubbub.bench.report import plot_cdf, plot_rss, plot_timeline

    charts: dict[str, Path] = {}

    def pick(scenario: str, path: str) -> dict[str, dict[str, Any]]:
        series = {}
        for name in plan.servers:
            chosen = median_result(plan.results[name].get(scenario, []), path)
            if chosen is not None:
                series[SERVERS[name].title] = chosen
        return series

    if "fanout" in plan.scenarios:
        charts["fanout"] = plot_timeline(
            pick("fanout", "deliveries_per_s"),
            img / "fanout_throughput.png",
            f"fan-out, 1000 clients, 10 senders {TIMES} window 4: deliveries/s (median round)"
            if not plan.quick
            else "fan-out (quick run)",
        )
    if "latency" in plan.scenarios:
        charts["latency"] = plot_cdf(
            pick("latency", "latency_ms/p99"),
            img / "latency_cdf.png",
            f"send-to-receive latency at 20 msg/s {TIMES} 1000 clients (median round)"
            if not plan.quick
            else "latency CDF (quick run)",
        )
    if "idle" in plan.scenarios:
        charts["idle"] = plot_rss(
            pick("idle", "rss_per_connection_kib"),
            img / "idle_rss.png",
            "server RSS growth with idle connections (median round)",
        )
    if "chat_fanout" in plan.scenarios:
        charts["chat_fanout"] = plot_timeline(
            pick("chat_fanout", "deliveries_per_s"),
            img / "chat_fanout_throughput.png",
            "chat mode fan-out (hubbub.v1 / socket.io): deliveries/s (median round)"
            if not plan.quick
            else "chat fan-out (quick run)",
        )
    if "chat_latency" in plan.scenarios:
        charts["chat_latency"] = plot_cdf(
            pick("chat_latency", "latency_ms/p99"),
            img / "chat_latency_cdf.png",
            "chat mode send-to-receive latency (median round)"
            if not plan.quick
            else "chat latency CDF (quick run)",
        )
    if "connect" in plan.scenarios:
        charts["connect"] = plot_timeline(
            pick("connect", "handshakes_per_s"),
            img / "connect_throughput.png",
            "connection rate: connect, greeting, close; 64 at once (median round)",
        )
    return charts


def _targets(agg: dict[str, Any], plan: Plan) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of the issue's targets this run measured."""
    hub = agg.get("hubbub", {})
    base = agg.get(BASELINE, {})
    out: list[tuple[str, str, bool]] = []

    def ratio(scenario: str, path: str, base_scenario: str | None = None) -> float | None:
        a = hub.get(scenario, {}).get(path)
        b = base.get(base_scenario or scenario, {}).get(path)
        return a / b if a is not None and b else None

    r = ratio("fanout", PER_CPU)
    if r is not None:
        out.append(
            (f"seed fan-out per server CPU-s ≥ 1.5{TIMES} Node ws", f"{r:.2f}{TIMES}", r >= 1.5)
        )
    r = ratio("chat_fanout", PER_CPU, "fanout")
    if r is not None:
        out.append(
            (
                f"chat-mode fan-out per server CPU-s ≥ 1.0{TIMES} Node ws plain fan-out",
                f"{r:.2f}{TIMES}",
                r >= 1.0,
            )
        )
    p99 = hub.get("latency", {}).get("latency_ms/p99")
    if p99 is not None:
        peers = {
            SERVERS[n].title: v
            for n, per in agg.items()
            if n != "hubbub"
            for v in [per.get("latency", {}).get("latency_ms/p99")]
            if v is not None
        }
        best = min(peers.items(), key=lambda kv: kv[1]) if peers else None
        text = f"{p99:.2f} ms" + (f" (best peer: {best[0]} {best[1]:.2f} ms)" if best else "")
        out.append(
            (
                "seed latency p99 ≤ 10 ms and below every peer",
                text,
                p99 <= 10.0 and (best is None or p99 < best[1]),
            )
        )
    kib = hub.get("idle", {}).get("rss_per_connection_kib")
    if kib is not None:
        out.append(("idle memory ≤ 8 KiB per connection", f"{kib:.2f} KiB", kib <= 8.0))
    r = ratio("connect", HS_CPU)
    if r is not None:
        out.append(
            (f"handshakes per server CPU-s ≥ 1.5{TIMES} Node ws", f"{r:.2f}{TIMES}", r >= 1.5)
        )
    return out


def render(
    plan: Plan,
    agg: dict[str, Any],
    charts: dict[str, Path],
    doc: Path,
    facts: dict[str, str],
    elapsed: float,
    command: str,
) -> str:
    base = agg.get(BASELINE, {})
    names = plan.servers
    rel = os.path.relpath
    L: list[str] = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(
        "hubbub against other chat servers doing the same work, driven by the same load "
        "generator (`hubbub bench`, `src/hubbub/bench/`): in *seed mode* one-room servers "
        "that speak exactly the seed's plain text protocol, in *chat mode* hubbub's "
        "`hubbub.v1` protocol with durable history against socket.io (Node and Python). "
        "Generated by `bench/run.py`"
        + (" (**quick smoke run: not representative**)" if plan.quick else "")
        + f" on {time.strftime('%Y-%m-%d')}; {plan.rounds} round(s), medians shown"
        + (f" with (min{DASH}max) over the rounds" if plan.rounds > 1 else "")
        + f". Ratios are against Node's ws: above 1{TIMES} means more than Node ws, "
        "which is better for rates and worse for latency and memory."
    )
    w("")
    seed_names = [n for n in names if "fanout" in SERVERS[n].scenarios]
    chat_names = [n for n in names if "chat_fanout" in SERVERS[n].scenarios]
    targets = _targets(agg, plan)
    if targets:
        w("## Targets")
        w("")
        w("The issue's targets, as ratios against Node ws measured in this same run.")
        w("")
        w("| target | measured | met |")
        w("|---|---|---|")
        for label, measured, met in targets:
            w(f"| {label} | {measured} | {'yes' if met else '**no**'} |")
        w("")
    w("## Summary")
    w("")
    w("Seed mode: every server speaks the seed's plain text protocol.")
    w("")
    w(
        "| server | fan-out deliveries / server CPU-s | latency p99 | "
        "RSS per idle connection | handshakes / server CPU-s |"
    )
    w("|---|---:|---:|---:|---:|")
    cells = (
        ("fanout", "deliveries_per_server_cpu_s", 0, ""),
        ("latency", "latency_ms/p99", 2, " ms"),
        ("idle", "rss_per_connection_kib", 2, " KiB"),
        ("connect", "handshakes_per_server_cpu_s", 0, ""),
    )
    for name in seed_names:
        row = [SERVERS[name].title]
        for scenario, path, digits, unit in cells:
            value = agg[name].get(scenario, {}).get(path)
            ratio = _ratio(value, base.get(scenario, {}).get(path))
            row.append(f"{_f(value, digits)}{unit} ({ratio})" if value is not None else "n/a")
        w("| " + " | ".join(row) + " |")
    w("")
    if chat_names and any(s in plan.scenarios for s in CHAT_SCENARIOS):
        w(
            "Chat mode: hubbub's `hubbub.v1` protocol with durable history against "
            "socket.io servers (ratios of fan-out against Node ws's plain fan-out, of "
            "latency against Node socket.io)."
        )
        w("")
        w("| server | chat fan-out deliveries / server CPU-s | chat latency p99 |")
        w("|---|---:|---:|")
        sio = agg.get("socketio_node", {}).get("chat_latency", {})
        for name in chat_names:
            a = agg[name]
            value = a.get("chat_fanout", {}).get(PER_CPU)
            p99 = a.get("chat_latency", {}).get("latency_ms/p99")
            w(
                f"| {SERVERS[name].title} "
                f"| {_f(value)} ({_ratio(value, base.get('fanout', {}).get(PER_CPU))}) "
                f"| {_f(p99, 2)} ms ({_ratio(p99, sio.get('latency_ms/p99'))}) |"
            )
        w("")
    w(
        "Per server CPU-second figures are the fairest comparison here: server and "
        "generator each have one core, and in the fan-out and connection-rate scenarios "
        "one of them is at or near 100% (see the *saturated* columns below)."
    )
    w("")

    def fanout_table(scenario: str, servers: list[str]) -> None:
        w(
            "| server | deliveries/s | vs Node ws | deliveries per server CPU-s | vs Node ws "
            "| server CPU | generator CPU | saturated | lost/dup/reordered |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---|---|")
        # Chat mode is compared with Node ws's *plain* fan-out (the target).
        b = base.get("fanout", {})
        for name in servers:
            a = agg[name].get(scenario, {})
            w(
                f"| {SERVERS[name].title} "
                f"| {_f(a.get('deliveries_per_s'))}{_spread(a, 'deliveries_per_s')} "
                f"| {_ratio(a.get('deliveries_per_s'), b.get('deliveries_per_s'))} "
                f"| {_f(a.get('deliveries_per_server_cpu_s'))}"
                f"{_spread(a, 'deliveries_per_server_cpu_s')} "
                f"| {_ratio(a.get(PER_CPU), b.get(PER_CPU))} "
                f"| {_f(a.get('server_cpu_pct'))}% | {_f(a.get('generator_cpu_pct'))}% "
                f"| {_sat(a)} | {_errors_cell(a)} |"
            )
        w("")

    def latency_table(scenario: str, servers: list[str], base_name: str) -> None:
        base_title = SERVERS[base_name].title if base_name in SERVERS else base_name
        w(
            f"| server | p50 ms | p99 ms | p99.9 ms | p99 vs {base_title} | server CPU | "
            "generator CPU | lost/dup/reordered |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---|")
        b = agg.get(base_name, {}).get(scenario, {})
        for name in servers:
            a = agg[name].get(scenario, {})
            w(
                f"| {SERVERS[name].title} "
                f"| {_f(a.get('latency_ms/p50'), 2)}{_spread(a, 'latency_ms/p50', 2)} "
                f"| {_f(a.get('latency_ms/p99'), 2)}{_spread(a, 'latency_ms/p99', 2)} "
                f"| {_f(a.get('latency_ms/p99.9'), 2)}{_spread(a, 'latency_ms/p99.9', 2)} "
                f"| {_ratio(a.get('latency_ms/p99'), b.get('latency_ms/p99'))} "
                f"| {_f(a.get('server_cpu_pct'))}% | {_f(a.get('generator_cpu_pct'))}% "
                f"| {_errors_cell(a)} |"
            )
        w("")

    if "fanout" in plan.scenarios:
        o = plan.options["fanout"]
        w("## Fan-out")
        w("")
        w(
            f"{o.get('clients', 1000):,} clients in one room; {o.get('senders', 10)} of them "
            f"send {o.get('size', 100)}-byte messages, each keeping a window of "
            f"{o.get('window', 4)} in flight (the next one goes out when the sender gets the "
            f"`server: …` echo of an earlier one). A delivery is one `from <fd>: …` frame "
            f"received by one client. {o['warmup']:g} s warm-up, then {o['duration']:g} s "
            f"measured. Every receiver checks every sender's sequence numbers: lost / "
            f"duplicated / reordered are counted after the run (every message sent must "
            f"arrive)."
        )
        w("")
        fanout_table("fanout", seed_names)
        if "fanout" in charts:
            w(f"![fan-out throughput over time]({rel(charts['fanout'], doc.parent)})")
            w("")

    if "latency" in plan.scenarios:
        o = plan.options["latency"]
        clients = o.get("clients", 1000)
        w("## Latency")
        w("")
        w(
            f"Same room ({clients:,} clients), {o.get('senders', 10)} senders at a fixed "
            f"{o['rate']:g} messages/s in total (= {o['rate'] * clients:,.0f} deliveries/s), "
            f"open loop. Each body carries its send time (`time.monotonic_ns()`, one clock: "
            f"all generator processes run on this machine); latency is receive time minus "
            f"send time over every delivery in the {o['duration']:g} s window, so it "
            f"includes the time the server takes to write one message to all "
            f"{clients:,} clients, and the time the generator (one process, one core) "
            f"takes to read {clients:,} frames."
        )
        w("")
        latency_table("latency", seed_names, BASELINE)
        if "latency" in charts:
            w(f"![latency CDF]({rel(charts['latency'], doc.parent)})")
            w("")

    if "chat_fanout" in plan.scenarios:
        o = plan.options["chat_fanout"]
        w("## Chat mode: fan-out")
        w("")
        w(
            f"The fan-out scenario as a chat product does it: {o.get('clients', 1000):,} "
            f"clients join one room, {o.get('senders', 10)} of them send "
            f"{o.get('size', 100)}-byte texts with a client id and a window of "
            f"{o.get('window', 4)} messages waiting for their ack. **hubbub** "
            "(`hubbub.v1` subprotocol): each `send` frame is validated (msgspec), "
            "checked against the client ids already stored (retry dedupe), given the "
            "room's next sequence number and stored in SQLite (WAL, group commit) "
            "*before* the `message` frame goes to every member and the `ack` to the "
            "sender. **socket.io** servers: `send` event with an ack callback, the "
            "server numbers the message and `emit`s a `message` event to the room; they "
            "store nothing. Same checks as above, plus each receiver checks that the "
            "room's sequence numbers only go up. Ratios are against Node ws's *plain* "
            "seed-mode fan-out above (the issue's target)."
        )
        w("")
        fanout_table("chat_fanout", chat_names)
        if "chat_fanout" in charts:
            w(f"![chat fan-out throughput over time]({rel(charts['chat_fanout'], doc.parent)})")
            w("")

    if "chat_latency" in plan.scenarios:
        o = plan.options["chat_latency"]
        clients = o.get("clients", 1000)
        w("## Chat mode: latency")
        w("")
        w(
            f"The latency scenario in chat mode: {o['rate']:g} messages/s into the room "
            f"of {clients:,} (= {o['rate'] * clients:,.0f} deliveries/s); for hubbub each "
            "message is stored before it is delivered."
        )
        w("")
        latency_table("chat_latency", chat_names, "socketio_node")
        if "chat_latency" in charts:
            w(f"![chat latency CDF]({rel(charts['chat_latency'], doc.parent)})")
            w("")

    if "idle" in plan.scenarios:
        o = plan.options["idle"]
        w("## Idle connections")
        w("")
        w(
            f"Server RSS (VmRSS from /proc/<pid>/status) before and after opening "
            f"{o['idle_clients']:,} idle WebSocket connections (each has had its greeting), "
            f"divided by the number of connections. Kernel socket buffers are not in RSS. "
            f"The server is fresh (a handful of warm-up connections only)."
        )
        w("")
        w(
            "| server | KiB per idle connection | vs Node ws | RSS with all connections "
            "| server CPU per connection set-up | errors |"
        )
        w("|---|---:|---:|---:|---:|---|")
        for name in (n for n in names if "idle" in SERVERS[n].scenarios):
            a = agg[name].get("idle", {})
            b = base.get("idle", {})
            rss = a.get("rss_after_kib")
            w(
                f"| {SERVERS[name].title} "
                f"| {_f(a.get('rss_per_connection_kib'), 2)}"
                f"{_spread(a, 'rss_per_connection_kib', 2)} "
                f"| {_ratio(a.get('rss_per_connection_kib'), b.get('rss_per_connection_kib'))} "
                f"| {_f(rss / 1024 if rss else None, 1)} MiB "
                f"| {_f(a.get('server_cpu_per_connection_ms'), 3)} ms "
                f"| {_errors_cell(a)} |"
            )
        w("")
        if "idle" in charts:
            w(f"![RSS over idle connections]({rel(charts['idle'], doc.parent)})")
            w("")

    if "connect" in plan.scenarios:
        o = plan.options["connect"]
        w("## Connection rate")
        w("")
        w(
            f"{o['connect_concurrency']} connections in progress at once, each: TCP "
            f"connect, HTTP upgrade (the `Sec-WebSocket-Accept` is checked), read the "
            f"greeting, send a Close frame, wait for the server's Close and end of stream. "
            f"{o['warmup']:g} s warm-up, {o['duration']:g} s measured."
        )
        w("")
        w(
            "| server | handshakes/s | handshakes per server CPU-s | vs Node ws "
            "| server CPU | generator CPU | saturated | errors |"
        )
        w("|---|---:|---:|---:|---:|---:|---|---|")
        for name in (n for n in names if "connect" in SERVERS[n].scenarios):
            a = agg[name].get("connect", {})
            b = base.get("connect", {})
            w(
                f"| {SERVERS[name].title} "
                f"| {_f(a.get('handshakes_per_s'))}{_spread(a, 'handshakes_per_s')} "
                f"| {_f(a.get('handshakes_per_server_cpu_s'))}"
                f"{_spread(a, 'handshakes_per_server_cpu_s')} "
                f"| {_ratio(a.get(HS_CPU), b.get(HS_CPU))} "
                f"| {_f(a.get('server_cpu_pct'))}% | {_f(a.get('generator_cpu_pct'))}% "
                f"| {_sat(a)} | {_errors_cell(a)} |"
            )
        w("")
        if "connect" in charts:
            w(f"![connection rate over time]({rel(charts['connect'], doc.parent)})")
            w("")

    errors = [
        (name, scenario, e)
        for name in names
        for scenario, a in agg[name].items()
        for e in a.get("errors", [])
    ]
    if errors:
        w("## Errors reported")
        w("")
        for name, scenario, e in errors:
            w(f"- {SERVERS[name].title}, {scenario}: {e}")
        w("")

    findings = ROOT / "bench" / "findings.md"
    if findings.exists():
        L.append(findings.read_text().rstrip())
        w("")
    w("## Servers")
    w("")
    sources = sorted(
        {
            r["hubbub_source"]
            for per in plan.results.get("hubbub", {}).values()
            for r in per
            if "hubbub_source" in r
        }
    )
    changed = any(
        r.get("hubbub_source_changed")
        for per in plan.results.get("hubbub", {}).values()
        for r in per
    )
    if len(sources) == 1 and not changed:
        w(f"hubbub measured at git {sources[0]}.")
        w("")
    elif sources:
        w(
            "**Warning: hubbub's source changed while the benchmark ran; its results mix "
            "versions:** " + "; ".join(sources) + "."
        )
        w("")
    w("| server | what runs | versions |")
    w("|---|---|---|")
    for name in names:
        spec = SERVERS[name]
        w(f"| {spec.title} | {spec.notes} | {spec.versions()} |")
    w("")
    w(
        "Every peer is a minimal one-room server speaking exactly the seed protocol "
        "(greeting, `from <fd>: T` to everyone, `server: T` to the sender), written the "
        "fastest way each library's public API allows: the message to broadcast is built "
        "once and handed to each connection; Python servers run on uvloop; no "
        "compression (the generator does not offer permessage-deflate); no per-connection "
        "logging (hubbub runs with `--log-level warning`, since its seed room logs one "
        "INFO line per closed connection). hubbub runs as `hubbub serve`: the whole chat "
        "product (SQLite store, hubbub.v1 subprotocol) with plain clients in the seed room."
        " The socket.io peers are minimal one-room socket.io servers (`join` with an ack, "
        "`send` with an ack, `message` emitted to the room with a per-room sequence "
        "number), WebSocket transport only; their generator is `bench/peers/socketio_node/"
        "worker.js` (socket.io-client), commanded by the same scenario code."
    )
    w("")
    w("## Method and machine")
    w("")
    vm = ", a virtual machine" if facts.get("virtual_machine") == "yes" else ""
    w(
        f"- Machine: {facts.get('cpu', '?')} ({facts.get('cpu_mhz', '?')} MHz), "
        f"`nproc` = {facts.get('nproc', '?')}, {facts.get('memory', '?')} RAM{vm}, Linux "
        f"{facts.get('kernel', '?')}, CPython {facts.get('python', '?')}."
    )
    w(
        f"- Each server process is pinned to CPU {SERVER_CPU} (all its threads) and gets "
        f"an open-file soft limit of {NOFILE:,}; the generator and this script run on "
        f"CPU {GENERATOR_CPU}. Everything goes over loopback (127.0.0.1)."
    )
    w(
        "- A fresh server process for every (round, server, scenario); rounds alternate "
        "the server order (forward, reversed, rotated, …); medians over the rounds."
    )
    w(
        "- CPU: utime + stime of the server (and of the generator processes) from "
        "`/proc/<pid>/stat` at the start and the end of the measured window, divided by "
        "`SC_CLK_TCK`. *Saturated* names the side that used at least 90% of its core(s) "
        "in most rounds; when the generator saturates, the rate is a lower bound for the "
        "server and the per-CPU-second figure is the one to compare."
    )
    w(
        f"- Generator: `hubbub bench` with picows {_dist('picows')} clients (Cython frame "
        f"parsing) on uvloop {_dist('uvloop')}, one process on one core; the connection "
        f"rate scenario uses a raw asyncio protocol (fixed upgrade request, Close frame)."
    )
    repeats = sum(a.get("repeats", 0) for per in agg.values() for a in per.values())
    noisy = sum(a.get("noisy_rounds", 0) for per in agg.values() for a in per.values())
    w(
        "- Noise guard: before each measurement the script waits for the machine to be "
        "quiet, and it reads the CPU time of the whole machine (`/proc/stat`) over each "
        "measured window; a measurement during which other processes used more than "
        f"{noisy_pct():.0f}% of a core is run again (up to {plan.retries} times). "
        f"In this run: {repeats} measurement(s) repeated, {noisy} kept although noisy."
    )
    w(f"- This run took {elapsed / 60:.1f} minutes.")
    w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("make bench")
    w("# which is:")
    w(".venv/bin/pip install -e '.[bench]'")
    w("npm install --prefix bench/peers/node_ws")
    w("npm install --prefix bench/peers/socketio_node")
    w(command)
    w("```")
    w("")
    w("One scenario against one running server:")
    w("")
    w("```sh")
    w(
        "prlimit --nofile=20000 taskset -c 1 .venv/bin/hubbub serve --host 127.0.0.1 "
        "--port 9502 --log-level warning --max-connections 20000 &"
    )
    w(
        ".venv/bin/python -m hubbub.bench --url ws://127.0.0.1:9502/ --scenario fanout "
        "--server-pid $! --json out.json --plot out/"
    )
    w("# chat mode (start hubbub with --rate 0):")
    w(
        ".venv/bin/python -m hubbub.bench --url ws://127.0.0.1:9502/ --protocol hubbub.v1 "
        "--scenario fanout --server-pid $!"
    )
    w("```")
    w("")
    return "\n".join(L)


def noisy_pct() -> float:
    from hubbub.bench.options import NOISY_PCT

    return NOISY_PCT


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


# ---------------------------------------------------------------------------


def check_prerequisites(servers: list[str]) -> list[str]:
    problems = []
    try:
        import matplotlib  # noqa: F401
        import picows  # noqa: F401
    except ImportError as exc:
        problems.append(f"{exc.name} is missing: .venv/bin/pip install -e '.[bench]'")
    for name, dist in (("aiohttp", "aiohttp"), ("picows", "picows"), ("websockets", "websockets")):
        if name in servers:
            try:
                metadata.version(dist)
            except metadata.PackageNotFoundError:
                problems.append(f"{dist} is missing: .venv/bin/pip install -e '.[bench]'")
    if "node_ws" in servers and not (NODE_DIR / "node_modules" / "ws").is_dir():
        problems.append("Node ws is not installed: npm install --prefix bench/peers/node_ws")
    if (
        any(s in servers for s in ("socketio_node", "python_socketio"))
        and not (SOCKETIO_DIR / "node_modules" / "socket.io-client").is_dir()
    ):
        problems.append(
            "socket.io is not installed: npm install --prefix bench/peers/socketio_node"
        )
    if "python_socketio" in servers:
        try:
            metadata.version("python-socketio")
        except metadata.PackageNotFoundError:
            problems.append("python-socketio is missing: .venv/bin/pip install -e '.[bench]'")
    if (os.cpu_count() or 1) < 2:
        problems.append("needs at least 2 CPUs (server on CPU 1, generator on CPU 0)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark hubbub against Node ws, websockets, aiohttp and picows (seed "
        "mode) and Node socket.io and python-socketio (chat mode); see docs/benchmarks.md."
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (~2 min)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds per scenario run"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="runs again (up to this many times) a measurement during which other "
        "processes used the CPUs (default 2)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds after which noisy measurements are kept instead of repeated "
        "(default 540: a full run takes about 13 minutes without repeats, so it stays within 15)",
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated, from: " + ", ".join(SERVERS)
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIO_ORDER),
        help="comma-separated, from: " + ", ".join(SCENARIO_ORDER),
    )
    parser.add_argument(
        "--out",
        help="markdown report (default docs/benchmarks.md; reports/bench/quick.md with --quick)",
    )
    parser.add_argument(
        "--img", help="chart folder (default docs/img; reports/bench/img with --quick)"
    )
    parser.add_argument("--json", help="raw results (default reports/bench/results.json)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report and charts again from the raw results of the last run",
    )
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.servers if s not in SERVERS]
    unknown += [s for s in args.scenarios if s not in SCENARIO_ORDER]
    if unknown:
        parser.error(f"unknown server or scenario: {', '.join(unknown)}")
    args.scenarios = [s for s in SCENARIO_ORDER if s in args.scenarios]
    problems = check_prerequisites(args.servers)
    if problems:
        for p in problems:
            print(f"bench/run.py: {p}", file=sys.stderr)
        return 2

    raw = Path(args.json) if args.json else ROOT / "reports/bench/results.json"
    from hubbub.bench import proc

    if args.report_only:
        try:
            saved = json.loads(raw.read_text())
            meta = saved["plan"]
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"--report-only needs the results of a run in {raw}: {exc}")
        plan = Plan(
            rounds=meta["rounds"],
            servers=meta["servers"],
            scenarios=meta["scenarios"],
            options=saved["options"],
            quick=meta["quick"],
            retries=meta["retries"],
            results=saved["results"],
        )
        elapsed, command, facts = meta["elapsed"], meta["command"], meta["facts"]
    else:
        facts = proc.machine_facts()  # before pinning: nproc counts the CPUs we may use
        os.sched_setaffinity(0, {GENERATOR_CPU})
        proc.raise_nofile()
        plan = make_plan(args)
        given = argv if argv is not None else sys.argv[1:]
        command = ".venv/bin/python bench/run.py" + (" " + shlex.join(given) if given else "")
        started = time.monotonic()

        def log(text: str) -> None:
            print(f"[{time.monotonic() - started:6.0f}s] {text}", flush=True)

        with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as tmp:
            try:
                execute(plan, Path(tmp), log)
            except KeyboardInterrupt:
                print("\ninterrupted", file=sys.stderr)
                return 130
        elapsed = time.monotonic() - started
        with contextlib.suppress(OSError):
            facts["virtual_machine"] = (
                "yes" if " hypervisor" in Path("/proc/cpuinfo").read_text() else "no"
            )
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(
            json.dumps(
                {
                    "plan": {
                        "rounds": plan.rounds,
                        "servers": plan.servers,
                        "scenarios": plan.scenarios,
                        "quick": plan.quick,
                        "retries": plan.retries,
                        "elapsed": elapsed,
                        "command": command,
                        "facts": facts,
                    },
                    "options": plan.options,
                    "aggregate": aggregate(plan),
                    "results": plan.results,
                },
                indent=1,
                default=lambda o: None,
            )
        )
    out = (
        Path(args.out)
        if args.out
        else ROOT / ("reports/bench/quick.md" if plan.quick else "docs/benchmarks.md")
    )
    img = Path(args.img) if args.img else ROOT / ("reports/bench/img" if plan.quick else "docs/img")
    agg = aggregate(plan)
    charts = write_charts(plan, img)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(plan, agg, charts, out, facts, elapsed, command))
    print(f"report: {out}\ncharts: {img}\nraw results: {raw}")
    bad = [
        (n, s)
        for n, per in plan.results.items()
        for s, rs in per.items()
        if any(not r["ok"] for r in rs)
    ]
    if bad:
        print("errors in: " + ", ".join(f"{n}/{s}" for n, s in bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
