"""``hubbub serve --workers N`` (hubbub.supervisor): real processes on one port, the
machine's PostgreSQL and Redis (tests/services.py: own schema and key prefix).

Which worker a client landed on is read from /proc: the worker process whose TCP
sockets have the client's local port as their peer port (no endpoint needed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from hubbub.config import Settings
from hubbub.errors import StartupError
from hubbub.supervisor import RestartPolicy, check_shared, describe_exit
from tests.cluster.checker import check
from tests.cluster.drill import DrillClient, Node, peer_ports, settle, shut, wait_for
from tests.services import PG_DSN, REDIS_URL, pg_schema, redis_prefix  # noqa: F401

from .conftest import ROOT, free_port, serve_args

# -- what is refused, and the restart policy (no processes) -----------------------------


@pytest.mark.parametrize(
    ("store", "broker", "port", "says"),
    [
        ("", "redis://h", 9, "needs a shared store: SQLite has one writer"),
        ("sqlite:///x.db", "redis://h", 9, "needs a shared store"),
        ("postgresql://u@h/db", "local", 9, "needs a shared broker"),
        ("postgresql://u@h/db", "redis://h", 0, "needs a fixed --port"),
    ],
)
def test_what_cannot_work_with_workers_is_refused(
    store: str, broker: str, port: int, says: str
) -> None:
    settings = Settings(workers=2, store=store, broker=broker)
    with pytest.raises(StartupError, match=says) as info:
        check_shared(port, settings)
    assert "\n" not in str(info.value) and "--workers 2" in str(info.value)


def test_cli_refuses_workers_on_sqlite_in_one_line(tmp_path: Any) -> None:
    args = serve_args(free_port(), "--workers", "2", "--db", str(tmp_path / "h.db"))
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "hubbub: error: --workers 2 needs a shared store"
    ), proc.stderr
    assert "Traceback" not in proc.stderr


def test_restart_back_off_doubles_and_a_crash_loop_gives_up() -> None:
    policy = RestartPolicy(max_restarts=3, window=60.0, first=0.5, ceiling=1.5)
    assert [policy.next_delay(t) for t in (0.0, 1.0, 2.0)] == [0.5, 1.0, 1.5]
    assert policy.next_delay(3.0) is None  # a 4th within the minute: crash loop
    # A minute after the first, that restart no longer counts.
    assert policy.next_delay(60.5) == 1.5
    fresh = RestartPolicy(max_restarts=3, window=60.0)
    fresh.next_delay(0.0)
    assert fresh.next_delay(100.0) == 0.5  # an old restart is forgotten


def test_exit_statuses_are_described() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "could not start (its reason is above)"
    assert describe_exit(1) == "exited with status 1"


# -- real workers ------------------------------------------------------------------------


class Workers(Node):
    """``hubbub serve --workers 2``: the parent is ``proc``."""

    extra: tuple[str, ...] = ()

    def start(self) -> subprocess.Popen[str]:
        args = serve_args(
            self.port, "--store", self.store, "--broker", self.broker, "--rate", "0",
            "--no-access-log", "--workers", "2", *self.extra,
        )  # fmt: skip
        self.proc = self.spawn(*args, port=self.port)
        return self.proc


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return sorted(int(p) for p in f.read().split())
    return []


def listening_workers(parent: int) -> list[int]:
    """The parent's children, once there are two of them."""
    pids = children(parent)
    return pids if len(pids) == 2 else []


def placement(clients: list[DrillClient], pids: list[int]) -> dict[str, int]:
    """Client name -> the pid of the worker serving its connection."""
    peers = {pid: peer_ports(pid) for pid in pids}
    out = {}
    for c in clients:
        if c.ws is None:
            continue
        port = c.ws.local_address[1]
        for pid, ports in peers.items():
            if port in ports:
                out[c.name] = pid
    return out


async def connect_over_both(
    url: str, pids: list[int], stop: asyncio.Event, readers: list[asyncio.Task[None]]
) -> tuple[list[DrillClient], dict[str, int]]:
    """Clients one by one until each worker has two (the kernel picks the worker)."""
    clients: list[DrillClient] = []
    where: dict[str, int] = {}
    for i in range(40):
        c = DrillClient(f"c{i}", url)
        clients.append(c)
        readers.append(asyncio.create_task(c.run(stop)))
        await wait_for(lambda c=c: c.ws is not None, 20, f"client {c.name} joined")
        await wait_for(
            lambda: len(placement(clients, pids)) == len(clients), 10, "clients placed"
        )
        where = placement(clients, pids)
        if all(list(where.values()).count(pid) >= 2 for pid in pids):
            return clients, where
    raise AssertionError(f"40 connections did not reach both workers: {where}")


async def test_two_workers_one_port_kill_9_restart_and_sigterm(
    spawn, pg_schema, redis_prefix  # noqa: F811
) -> None:
    store = f"{PG_DSN}?schema={pg_schema}"
    broker = f"{REDIS_URL}?prefix={redis_prefix}"
    node = await asyncio.to_thread(Workers, spawn, free_port(), store, broker)
    parent = node.proc.pid
    await wait_for(lambda: listening_workers(parent), 30, "two workers")
    pids = listening_workers(parent)
    url = f"ws://127.0.0.1:{node.port}/"
    stop_reading, stop_sending = asyncio.Event(), asyncio.Event()
    readers: list[asyncio.Task[None]] = []
    senders: list[asyncio.Task[None]] = []
    clients: list[DrillClient] = []

    def acked() -> int:
        return sum(len(c.log.acked) for c in clients)

    try:
        clients, where = await connect_over_both(url, pids, stop_reading, readers)
        senders += [asyncio.create_task(c.send_until(stop_sending, 0.05)) for c in clients]
        await wait_for(lambda: acked() >= 40, 30, "traffic across both workers")
        victim = pids[0]
        moved = [c for c in clients if where[c.name] == victim]
        sessions = {c.name: c.connections for c in moved}
        os.kill(victim, signal.SIGKILL)
        await wait_for(
            lambda: (now := children(parent)) and len(now) == 2 and victim not in now,
            30,
            "the parent restarted the killed worker",
        )
        await wait_for(
            lambda: all(c.connections > sessions[c.name] for c in moved),
            30,
            "the killed worker's clients reconnected",
        )
        before = acked()
        await wait_for(lambda: acked() >= before + 40, 30, "traffic after the restart")
        history = await settle(clients, senders, stop_sending, node.port)
    finally:
        await shut(clients, [*readers, *senders], stop_sending, stop_reading)
    workers_now = children(parent)
    await asyncio.to_thread(node.stop, signal.SIGTERM)  # asserts the parent exits 0
    alive = [pid for pid in workers_now if await asyncio.to_thread(os.path.exists, f"/proc/{pid}")]
    assert alive == [], "workers outlived the parent"
    logs = [c.log for c in clients]
    assert len(history) == sum(len(log.sent) for log in logs)
    assert [m.seq for m in history] == list(range(1, len(history) + 1))
    assert check(logs, history) == []
    for log in logs:
        assert log.received[0].seq == 1 and len(log.received) == len(history), log.name


def test_workers_that_cannot_start_stop_the_parent_with_status_1(
    spawn, pg_schema, redis_prefix  # noqa: F811
) -> None:
    """The port is held by a program without SO_REUSEPORT: each worker says why,
    the parent stops the others and exits 1 (no restart loop)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    store = f"{PG_DSN}?schema={pg_schema}"
    broker = f"{REDIS_URL}?prefix={redis_prefix}"
    try:
        proc = spawn(*serve_args(port, "--workers", "2", "--store", store, "--broker", broker))
        out = proc.communicate(timeout=90)[0]
    finally:
        holder.close()
    assert proc.returncode == 1, out
    errors = [line for line in out.splitlines() if line.startswith("hubbub: error: worker")]
    assert errors and all(str(port) in line for line in errors), out
    assert "restarting" not in out and "Traceback" not in out, out


async def test_workers_stop_when_the_parent_is_killed(
    spawn, pg_schema, redis_prefix  # noqa: F811
) -> None:
    """kill -9 of the parent: the kernel sends each worker SIGTERM (PDEATHSIG), no
    orphan keeps serving the port."""
    store = f"{PG_DSN}?schema={pg_schema}"
    broker = f"{REDIS_URL}?prefix={redis_prefix}"
    node = await asyncio.to_thread(Workers, spawn, free_port(), store, broker)
    parent = node.proc.pid
    await wait_for(lambda: listening_workers(parent), 30, "two workers")
    pids = listening_workers(parent)
    node.proc.kill()
    await asyncio.to_thread(node.proc.wait, 30)

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") for pid in pids)

    await wait_for(gone, 30, "the workers exit after their parent")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", node.port), timeout=2).close()


def two_free_ports() -> int:
    """A port P with P + 1 free too."""
    for _ in range(50):
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port + 1))
            return port
    raise AssertionError("no two free ports in a row")


async def test_each_worker_serves_its_metrics_on_a_port_of_its_own(
    spawn, pg_schema, redis_prefix  # noqa: F811
) -> None:
    metrics = two_free_ports()

    class WithMetrics(Workers):
        extra = ("--metrics-port", str(metrics))

    store = f"{PG_DSN}?schema={pg_schema}"
    broker = f"{REDIS_URL}?prefix={redis_prefix}"
    node = await asyncio.to_thread(WithMetrics, spawn, free_port(), store, broker)

    def scrape(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.status == 200 and b"hubbub_" in r.read()
        except OSError:
            return False

    await wait_for(lambda: scrape(metrics) and scrape(metrics + 1), 30, "both metrics ports")
    assert len(listening_workers(node.proc.pid)) == 2  # neither worker died on a clash
    await asyncio.to_thread(node.stop, signal.SIGTERM)
