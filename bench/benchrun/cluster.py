"""The servers bench/scaleout.py compares (:data:`CONFIGS`) and their processes: one
``hubbub serve`` (with its workers) or several nodes on one PostgreSQL schema and Redis key
prefix, started, found (supervisor and workers), stopped and cleaned up after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hubbub.bench import proc
from hubbub.bench.options import BenchError

from .children import hubbub_argv, kill, spawn, stop


@dataclass(frozen=True)
class Config:
    name: str
    title: str
    workers: int  # --workers of one `hubbub serve`
    store: bool  # PostgreSQL (else the SQLite file)
    broker: bool  # Redis (else local)
    #: Separately started `hubbub serve` processes (each on its own port) on one store
    #: and broker: the generator's process w connects to node w, every sender on node 1.
    nodes: int = 1


CONFIGS = {
    c.name: c
    for c in (
        Config("sqlite", "1 process, SQLite + local", 1, False, False),
        Config("pg-local", "1 process, PostgreSQL + local", 1, True, False),
        Config("pg-redis", "1 worker, PostgreSQL + Redis", 1, True, True),
        Config("pg-redis-2w", "--workers 2, PostgreSQL + Redis", 2, True, True),
        Config("pg-redis-2n", "2 nodes, PostgreSQL + Redis, senders on node 1", 1, True, True, 2),
    )
}

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


def raise_nofile() -> None:
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
    """One ``hubbub serve`` (with its workers), or ``config.nodes`` of them on one store and
    broker, on a fresh schema, prefix and SQLite file."""

    def __init__(self, config: Config, tmp: Path) -> None:
        self.config = config
        self.tmp = tmp
        self.ports = [free_ports(1) for _ in range(config.nodes)]
        self.metrics_port = free_ports(config.workers) if config.workers > 1 else 0
        tag = secrets.token_hex(5)
        self.schema = f"hubbub_scaleout_{tag}"
        self.prefix = f"hubbub-scaleout-{tag}:"
        self.log = tmp / f"{config.name}-{tag}.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/" for port in self.ports]

    def argv(self, node: int = 0) -> list[str]:
        c = self.config
        return hubbub_argv(
            self.ports[node],
            max_connections=NOFILE - 500,
            db=None if c.store else self.tmp / f"{self.schema}.db",
            store=f"{PG_DSN}?schema={self.schema}" if c.store else None,
            broker=f"{REDIS_URL}?prefix={self.prefix}" if c.broker else None,
            workers=c.workers,
            metrics_port=self.metrics_port,
        )

    def start(self, timeout: float = 30.0) -> None:
        for node in range(self.config.nodes):
            self.procs.append(spawn(self.argv(node), self.log, setup=raise_nofile))
            # One at a time: the first node creates the schema, the next ones find it.
            self._wait_ready(node, timeout)

    def _wait_ready(self, node: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[node].poll() is not None:
                raise BenchError(f"{self.config.name} exited at start: {self.tail()}")
            if self._ready(node):
                time.sleep(0.3)  # start-up work (opening the store) settles
                return
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"{self.config.name} did not start within {timeout:g} s: {self.tail()}")

    def _ready(self, node: int) -> bool:
        """Every worker answers: the port (one process) or each worker's metrics port."""
        ports = [self.ports[node]]
        if self.config.workers > 1:
            if len(_children(self.procs[node].pid)) < self.config.workers:
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
        """The processes that serve: the nodes, or the supervisor's children."""
        if self.config.workers == 1:
            return [p.pid for p in self.procs]
        return [c for p in self.procs for c in _children(p.pid)]

    def pids(self) -> list[int]:
        """Every process of the server (supervisor included) for its CPU time."""
        extra = [p.pid for p in self.procs] if self.config.workers > 1 else []
        return extra + self.workers()

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        try:
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in self.procs:
                stop(p, 20, term=False)
        finally:
            for p in self.procs:
                kill(p)  # a no-op unless the loop above was interrupted
            self.procs = []
        cleanup(self.config, self.schema, self.prefix)
        with contextlib.suppress(OSError):
            (self.tmp / f"{self.schema}.db").unlink()

    def tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def public_argv(self) -> str:
        """The server's command line as a reader would type it."""
        argv = self.argv()[3:]
        for old, new in (
            (str(self.tmp), "DIR"),
            (self.schema, "hubbub_scaleout_RANDOM"),
            (self.prefix, "hubbub-scaleout-RANDOM:"),
        ):
            argv = [a.replace(old, new) for a in argv]
        ports = {str(self.ports[0]): "PORT"}
        if self.metrics_port:
            ports[str(self.metrics_port)] = "METRICS_PORT"
        text = shlex.join(["hubbub", *(ports.get(a, a) for a in argv)])
        if self.config.nodes > 1:
            text += f"  # and {self.config.nodes - 1} more on PORT2...: same store and broker"
        return text


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


def redis_pid() -> int | None:
    """The local ``redis-server``'s process id (``INFO server``), if its CPU time can be
    read here (not when Redis runs elsewhere or in another pid namespace)."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        try:
            pid = int(client.info("server")["process_id"])
        finally:
            client.close()
        if "redis" not in Path(f"/proc/{pid}/comm").read_text():
            return None
        proc.cpu_seconds(pid)
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    return pid
