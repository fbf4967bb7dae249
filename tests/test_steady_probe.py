"""tools/steady_probe: the compiled steady-rate receiver, against hubbub and against a
seed-protocol server that drops deliveries (its checker must see them missing)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tools.steady_probe import build, run_probe
from websockets.asyncio.server import ServerConnection, serve

from .bench.helpers import benchrun


@pytest.fixture(scope="module")
def probe() -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required: apt-get install gcc libssl-dev")
    return build()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hubbub_serve(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``hubbub serve`` as the benchmarks run it, on a free port: (url, pid)."""
    children = benchrun("children")
    port = _free_port()
    argv = children.hubbub_argv(port, max_connections=1000, db=tmp_path / "probe.db")
    proc: subprocess.Popen[bytes] = children.spawn(argv, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "hubbub serve did not listen within 20 s"
                time.sleep(0.02)  # polling for the listening socket, bounded by the deadline
        yield f"ws://127.0.0.1:{port}/", proc.pid
    finally:
        children.stop(proc, 8)


def test_probe_counts_every_delivery_from_hubbub(
    probe: Path, hubbub_serve: tuple[str, int]
) -> None:
    url, pid = hubbub_serve
    res = run_probe(
        probe, url, clients=50, senders=5, rates=[50], warmup=0.3, window=1.0, server_pid=pid
    )
    assert res["setup"] == {**res["setup"], "clients": 50, "greeted": 50, "failed": 0}
    (w,) = res["windows"]
    assert w["ok"], w
    assert w["rate"] == 50 and w["clients"] == 50
    # Every message sent in the window reached every client, the senders included.
    assert 40 <= w["sent"] <= 60
    assert w["deliveries"] == w["expected"] == 50 * w["sent"]
    assert w["lost"] == w["duplicated"] == w["reordered"] == w["errors"] == 0
    assert w["latency_overflow"] == 0
    assert 0 < w["p50_ms"] <= w["p90_ms"] <= w["p99_ms"] <= w["p99_9_ms"] <= w["max_ms"] < 1000
    assert w["received_in_window"] > 0 and w["probe_cpu_us_per_delivery"] > 0
    assert w["server_cpu_s"] >= 0 and w["server_us_per_delivery"] is not None
    # Over the whole run (warm-up included): exact counts, one echo per message.
    done = res["done"]
    assert done["clients_open"] == 50
    assert done["deliveries"] == done["expected"] == 50 * done["sent"]
    assert done["echoes"] == done["sent"] > w["sent"]
    assert done["lost"] == done["duplicated"] == done["reordered"] == done["errors"] == 0


class DroppingSeedServer:
    """The seed protocol (greeting, ``from <id>: T`` to all, ``server: T`` to the sender),
    except that client ``victim`` misses every ``every``-th broadcast."""

    def __init__(self, victim: int, every: int) -> None:
        self.victim = victim
        self.every = every
        self.clients: dict[int, ServerConnection] = {}
        self.broadcasts = 0
        self.dropped = 0
        self.next_id = 0

    async def handler(self, ws: ServerConnection) -> None:
        cid = self.next_id
        self.next_id += 1
        self.clients[cid] = ws
        try:
            await ws.send("Hello, welcome\n")
            async for text in ws:
                self.broadcasts += 1
                out = f"from {cid}: {text!s}"
                for other_id, other in list(self.clients.items()):
                    if other_id == self.victim and self.broadcasts % self.every == 0:
                        self.dropped += 1
                        continue
                    await other.send(out)
                await ws.send(f"server: {text!s}")
        finally:
            del self.clients[cid]


async def test_probe_reports_deliveries_a_server_drops(probe: Path) -> None:
    seed = DroppingSeedServer(victim=7, every=5)
    async with serve(seed.handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        res = await asyncio.to_thread(
            run_probe,
            probe,
            f"ws://127.0.0.1:{port}/",
            clients=20,
            senders=2,
            rates=[40],
            warmup=0.2,
            window=0.8,
            drain=0.5,
        )
    (w,) = res["windows"]
    assert not w["ok"]
    assert w["lost"] > 0
    assert w["deliveries"] < w["expected"]
    assert w["duplicated"] == w["reordered"] == w["errors"] == 0
    done = res["done"]
    # Exactly the dropped ones are missing (the victim's last message may be among them).
    assert seed.dropped > 0
    assert done["lost"] == seed.dropped
    assert done["deliveries"] == done["expected"] - seed.dropped
