"""Scale-out benchmarks: ``hubbub serve --workers 2`` against one worker, and the Redis hop.

    .venv/bin/python bench/scaleout.py                     # 3 rounds, about 15 minutes
    .venv/bin/python bench/scaleout.py --quick             # 1 short round, about 4 minutes
    .venv/bin/python bench/scaleout.py --docs docs/scaling.md --json reports/scaleout.json

Servers (each measurement starts a fresh one and stops it after):

* ``sqlite``: one process on the embedded defaults (SQLite file, local broker), the reference;
* ``pg-local``: one process on PostgreSQL with the local broker (no Redis hop);
* ``pg-redis``: one process on PostgreSQL and Redis (``--workers 1``);
* ``pg-redis-2w``: ``--workers 2`` on PostgreSQL and Redis: two nodes on one port
  (``SO_REUSEPORT``), the kernel splitting the clients between them, so every
  message reaches half its receivers through Redis.

Scenarios (the ``hubbub bench`` generator, :mod:`hubbub.bench`, used as a library):

* ``fanout`` / ``chat_fanout``: saturation (seed mode: plain clients, broadcast;
  chat mode: ``hubbub.v1``, one room), senders keep a window of messages in flight;
* ``steady`` / ``chat_steady``: a fixed rate (``--rate`` messages/s into a room of
  ``--clients``: 20 x 1,000 = 20,000 deliveries/s), latency percentiles.

Every PostgreSQL run has its own schema and every Redis run its own key prefix,
both removed after the run. Nothing is pinned: ``--workers 2`` needs both cores
of this machine, and so does the generator, PostgreSQL and Redis; the server's
CPU (every worker and the supervisor), the generator's and the rest of the
machine's (PostgreSQL, Redis, other programs) are measured beside each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# ``python bench/scaleout.py`` puts this folder first on sys.path.
from scaleout_report import CONFIGS, SCENARIOS, Config, render, write_docs

from hubbub.bench import proc
from hubbub.bench.generator import Generator, Snap
from hubbub.bench.measure import Run
from hubbub.bench.options import BenchError, Options
from hubbub.bench.scenarios import _open_room, _room_result, _room_window

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("HUBBUB_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HUBBUB_BENCH_REDIS", "redis://127.0.0.1:6379/0")
#: Open files of a server (and of the generator): the room's clients and some spare.
NOFILE = 8192


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range:
    a port from that range may be taken meanwhile by one of the generator's thousand
    client connections (worker i of ``--workers`` serves metrics on ``metrics_port + i``)."""
    low = 20_000
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = secrets.SystemRandom()
    for _ in range(200):
        base = rng.randrange(10_000, max(10_001, low - count))
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise BenchError(f"no {count} consecutive free ports below {low}")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(max(NOFILE, soft), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list in /proc/PID/task/*/children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return sorted(set(out))


def socket_count(pid: int) -> int:
    """Open sockets of a process (its clients, store and broker connections)."""
    n = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
    return n


class Server:
    """One ``hubbub serve`` (with its workers) on a fresh schema, prefix and SQLite file."""

    def __init__(self, config: Config, tmp: Path) -> None:
        self.config = config
        self.tmp = tmp
        self.port = free_ports(1)
        self.metrics_port = free_ports(config.workers) if config.workers > 1 else 0
        tag = secrets.token_hex(5)
        self.schema = f"hubbub_scaleout_{tag}"
        self.prefix = f"hubbub-scaleout-{tag}:"
        self.log = tmp / f"{config.name}-{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def argv(self) -> list[str]:
        c = self.config
        argv = [sys.executable, "-m", "hubbub", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        # The chat senders send far more than the default 20 messages/s per connection.
        argv += ["--max-connections", str(NOFILE - 500), "--rate", "0"]
        if not c.store:
            argv += ["--db", str(self.tmp / f"{self.schema}.db")]
        else:
            argv += ["--store", f"{PG_DSN}?schema={self.schema}"]
        if c.broker:
            argv += ["--broker", f"{REDIS_URL}?prefix={self.prefix}"]
        if c.workers > 1:
            argv += ["--workers", str(c.workers), "--metrics-port", str(self.metrics_port)]
        return argv

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_raise_nofile,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.config.name} exited at start: {self.tail()}")
            if self._ready():
                time.sleep(0.3)  # start-up work (opening the store) settles
                return
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"{self.config.name} did not start within {timeout:g} s: {self.tail()}")

    def _ready(self) -> bool:
        """Every worker answers: the port (one process) or each worker's metrics port."""
        ports = [self.port]
        if self.config.workers > 1:
            if len(self.workers()) < self.config.workers:
                return False
            ports = [self.metrics_port + i for i in range(self.config.workers)]
        for port in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
                    pass
            except OSError as exc:
                # The main port answers /metrics with 401/404 (token or none): it is up.
                if not hasattr(exc, "code"):
                    return False
        return True

    def workers(self) -> list[int]:
        """The processes that serve: the one process, or the supervisor's children."""
        if self.proc is None:
            return []
        if self.config.workers == 1:
            return [self.proc.pid]
        return _children(self.proc.pid)

    def pids(self) -> list[int]:
        """Every process of the server (supervisor included) for its CPU time."""
        if self.proc is None:
            return []
        extra = [self.proc.pid] if self.config.workers > 1 else []
        return extra + self.workers()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        cleanup(self.config, self.schema, self.prefix)
        with contextlib.suppress(OSError):
            (self.tmp / f"{self.schema}.db").unlink()

    def tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cleanup(config: Config, schema: str, prefix: str) -> None:
    """Drop the run's PostgreSQL schema and delete its Redis keys."""
    if config.store:
        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(PG_DSN, timeout=10)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())
    if config.broker:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def check_services(configs: list[Config]) -> list[str]:
    """What is missing, with how to start it."""
    problems = []
    if any(c.store for c in configs):
        try:
            cleanup(Config("check", "", 1, True, False), "hubbub_scaleout_check", "")
        except Exception as exc:  # any failure: reported the same way
            problems.append(f"PostgreSQL is not reachable at {PG_DSN}: {exc}")
    if any(c.broker for c in configs):
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping()
        except redis.RedisError as exc:
            problems.append(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return problems


class ServerGroupGenerator(Generator):
    """The generator with the server's CPU time and RSS summed over several processes."""

    def __init__(self, opts: Options, server_pids: list[int]) -> None:
        super().__init__(opts)
        self.server_pids = server_pids

    def snap(self) -> Snap:
        s = super().snap()
        s.server_cpu = proc.cpu_seconds_many(self.server_pids)
        rss = 0
        for pid in self.server_pids:
            with contextlib.suppress(OSError, ValueError):
                rss += proc.rss_kib(pid)
        s.server_rss = rss
        return s


async def measure(server: Server, scenario: str, fields: dict[str, Any]) -> dict[str, Any]:
    """One scenario's measured window against ``server``: the generator's result, plus
    the cores each side used and how the clients were split over the workers."""
    protocol, fixed = SCENARIOS[scenario]
    opts = Options(
        url=server.url,
        protocol=protocol,
        workers=1,
        generator_cpus=None,
        label=server.config.name,
        progress=sys.stderr.isatty(),
        **fields,
    )
    opts.validate()
    async with ServerGroupGenerator(opts, server.pids()) as gen:
        run = Run(opts, gen, scenario)
        connected, errors, greeted = await _open_room(run, scenario)
        split = [socket_count(pid) for pid in server.workers()]
        window = await _room_window(run, fixed, connected, None)
        run.show("closing")
        await gen.call("close", [{}] * gen.n)
    run.progress.end()
    result = _room_result(
        opts, "fanout" if not fixed else "latency", window, connected, greeted, errors
    )
    result.pop("cdf", None)
    result.pop("timeline", None)
    wall = result["wall_s"]
    result.update(
        scenario=scenario,
        config=server.config.name,
        worker_sockets=split,
        server_cores=(result["server_cpu_s"] or 0.0) / wall,
        generator_cores=result["generator_cpu_s"] / wall,
        other_cores=(result["other_cpu_pct"] or 0.0) / 100.0,
    )
    return result


def run_one(
    config: Config, scenario: str, fields: dict[str, Any], tmp: Path, round_no: int, timeout: float
) -> dict[str, Any]:
    server = Server(config, tmp)
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        server.start()
        result = asyncio.run(asyncio.wait_for(measure(server, scenario, fields), timeout))
        if not server.alive():
            result["errors"].append("the server died during the run")
            result["ok"] = False
    except (BenchError, OSError, TimeoutError, RuntimeError) as exc:
        result = {
            "scenario": scenario,
            "config": config.name,
            "ok": False,
            "errors": [f"{type(exc).__name__}: {exc}", server.tail()],
            "failed_to_run": True,
        }
    finally:
        server.stop()
    result["round"] = round_no
    result["started"] = started
    result["argv"] = " ".join(shlex.quote(a) for a in _public_argv(server))
    result["run_s"] = time.monotonic() - t0
    return result


def _public_argv(server: Server) -> list[str]:
    """The server's command line as a reader would type it."""
    argv = server.argv()[3:]
    for old, new in (
        (str(server.tmp), "DIR"),
        (server.schema, "hubbub_scaleout_RANDOM"),
        (server.prefix, "hubbub-scaleout-RANDOM:"),
    ):
        argv = [a.replace(old, new) for a in argv]
    ports = {str(server.port): "PORT"}
    if server.metrics_port:
        ports[str(server.metrics_port)] = "METRICS_PORT"
    argv = [ports.get(a, a) for a in argv]
    return ["hubbub", *argv]


def scenario_fields(args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "clients": args.clients,
        "senders": args.senders,
        "window": 4,
        "size": 100,
        "duration": args.duration,
        "warmup": args.warmup,
    }
    if SCENARIOS[scenario][1]:
        fields["rate"] = args.rate
    return fields


#: Set by SIGINT or SIGTERM: the measurement under way finishes (bounded by --timeout,
#: its server stopped and its schema and keys removed), the rest is skipped.
STOP: list[int] = []


def _on_signal(signum: int, _frame: object) -> None:
    if not STOP:
        print("\nstopping after the current measurement", file=sys.stderr)
    STOP.append(signum)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (config, scenario) ``args.rounds`` times; the configs' order rotates per round."""
    configs = [CONFIGS[c] for c in args.configs]
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.budget
    with tempfile.TemporaryDirectory(prefix="hubbub-scaleout-") as tmp:
        for r in range(args.rounds):
            k = r % len(configs)
            order = configs[k:] + configs[:k]
            if r % 2:
                order.reverse()
            for scenario in args.scenarios:
                for config in order:
                    if STOP:
                        print(f"stopped by signal {STOP[0]}", file=sys.stderr)
                        return results
                    if time.monotonic() > deadline:
                        print(f"budget of {args.budget:g} s spent: stopping", file=sys.stderr)
                        return results
                    res = run_one(
                        config,
                        scenario,
                        scenario_fields(args, scenario),
                        Path(tmp),
                        r + 1,
                        args.timeout,
                    )
                    print(one_line(res), file=sys.stderr, flush=True)
                    results.append(res)
    return results


def one_line(r: dict[str, Any]) -> str:
    head = f"r{r['round']} {r['scenario']:<12} {r['config']:<12}"
    if r.get("failed_to_run"):
        return f"{head} FAILED: {r['errors'][0]}"
    lat = r.get("latency_ms")
    return (
        f"{head} {r['deliveries_per_s']:>10,.0f} deliveries/s  server {r['server_cores']:.2f}"
        f" gen {r['generator_cores']:.2f} other {r['other_cores']:.2f} cores"
        + (f"  p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms" if lat else "")
        + f"  sockets/worker {r['worker_sockets']}"
        + ("" if r["ok"] else f"  ERRORS: {'; '.join(r['errors'][:3])}")
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/scaleout.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="1 round, 200 clients, 2 s windows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", default=",".join(CONFIGS), help="servers, comma-separated")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--senders", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="fixed rate, messages/s")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds")
    p.add_argument("--timeout", type=float, default=120.0, help="most seconds per measurement")
    p.add_argument("--budget", type=float, default=1500.0, help="most seconds for the whole run")
    p.add_argument("--json", metavar="FILE", help="write every run's result as JSON")
    p.add_argument(
        "--from-json", metavar="FILE", help="report the results of an earlier --json, run nothing"
    )
    p.add_argument("--markdown", metavar="FILE", help="write the tables as markdown")
    p.add_argument(
        "--docs", metavar="PAGE", help="write the tables between the scaleout markers of PAGE"
    )
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.rounds, args.clients, args.senders = 1, 200, 4
        args.duration, args.warmup = 2.0, 0.5
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for c in args.configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r} (have: {', '.join(CONFIGS)})")
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r} (have: {', '.join(SCENARIOS)})")
    if args.rounds < 1 or args.clients < 2 or not 1 <= args.senders <= args.clients:
        p.error("--rounds must be >= 1, --clients >= 2, 1 <= --senders <= --clients")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        results = saved["results"]
        args.argv = saved["argv"]
        for key in ("rounds", "clients", "senders", "rate", "duration", "warmup"):
            setattr(args, key, saved["options"][key])
    else:
        problems = check_services([CONFIGS[c] for c in args.configs])
        if problems:
            for line in problems:
                print(f"scaleout: {line}", file=sys.stderr)
            return 2
        _raise_nofile()
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        results = run_all(args)
    text = render(results, args)
    print(text)
    if args.json and not args.from_json:
        options = {k: getattr(args, k) for k in ("rounds", "clients", "senders", "rate")}
        options.update(duration=args.duration, warmup=args.warmup)
        saved = {"argv": args.argv, "options": options, "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(saved, indent=1))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    if args.docs:
        write_docs(Path(args.docs), text)
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
