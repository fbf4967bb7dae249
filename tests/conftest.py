"""Shared fixtures: real servers on 127.0.0.1, free ports, torn down after each test."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from hubbub import Server
from hubbub.apps.chat import create_app
from hubbub.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    # The server runs on uvloop in production; tests exercise the same loop.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Any]]:
    """``await make_server(setup=fn, **settings)``: a listening Server on a free port.

    ``setup(server)`` registers handlers before it listens.
    """
    servers: list[Server] = []

    async def factory(setup: Callable[[Server], None] | None = None, **overrides: Any) -> Server:
        server = Server("127.0.0.1", 0, **overrides)
        if setup is not None:
            setup(server)
        await server.listen()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def make_chat(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await make_chat(**settings)``: the built-in chat (``hubbub serve``) on a free port,
    with its SQLite file in the test's temporary directory unless ``db`` is given."""
    servers: list[Server] = []

    async def factory(**overrides: Any) -> Server:
        overrides.setdefault("db", str(tmp_path / "hubbub.db"))
        server = create_app("127.0.0.1", 0, Settings(**overrides))
        await server.listen()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def seed_server(make_chat: Callable[..., Any]) -> Server:
    """The built-in chat (``hubbub serve``) on a free port."""
    return await make_chat()


def ws_url(server: Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def serve_args(port: int, *extra: str) -> tuple[str, ...]:
    """Arguments after ``python`` that run ``hubbub serve`` on 127.0.0.1:``port``."""
    return ("-m", "hubbub", "serve", "--host", "127.0.0.1", "--port", str(port), *extra)


#: Ports free_port() handed out in this test run. The kernel may give the same
#: free port to two binds in a row once the first socket is closed; two servers
#: told to use one port would then race (the loser exits, and a test that waits
#: for "the port" finds the winner). A port is never handed out twice.
_HANDED_OUT: set[int] = set()
#: Under pytest-xdist (make test runs the suite in several processes), worker i
#: of n only hands out ports p with p % n == i: two workers never get one port.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)


def free_port() -> int:
    """A port of this worker's share that nothing holds now and that was not handed out.

    Candidates are drawn at random from the ephemeral range rather than taken from
    ``bind(port 0)``: Linux gives even ports to ``bind(0)`` first (odd ones are kept
    for ``connect``), so with two workers the second would almost never get one.
    The test bind proves the port free at this moment.
    """
    low, high = _port_range()
    rng = random.Random()
    for _ in range(10_000):
        port = rng.randrange(low, high + 1)
        if port % _WORKERS != _WORKER or port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port that was not handed out already")


def _port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a process (a server) that is killed at teardown if still running."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, port: int | None = None) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        if port is not None:
            try:
                wait_for_port(port)
            except TimeoutError:
                proc.kill()
                out = proc.communicate()[0]
                raise AssertionError(f"server did not start:\n{out}") from None
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def recv_all(ws: Any, n: int, within: float = 5.0) -> list[Any]:
    """Receive exactly ``n`` messages, each within ``within`` seconds."""
    return [await asyncio.wait_for(ws.recv(), within) for _ in range(n)]
