"""Helpers shared by the bench tests: room options, a socket.io run check, bench/run.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hubbub.bench.options import Options
from hubbub.bench.scenarios import fanout, latency

ROOT = Path(__file__).resolve().parents[2]
#: ``make bench``'s script; it imports the modules next to it, as when run as a script.
BENCH_RUN = ROOT / "bench" / "run.py"

#: The python-socketio peer, started by the socket.io generator tests.
SOCKETIO_PEER = "bench/peers/python_socketio_peer.py"


def room_options(**fields: object) -> Options:
    """Validated Options for a short room run in a test: one generator process,
    no pinning, no progress line, 100-byte messages, a window of 4; ``fields``
    set the rest (url, clients, senders, duration, ...)."""
    opts = Options(size=100, window=4, workers=1, generator_cpus=None, progress=False)
    for key, value in fields.items():
        setattr(opts, key, value)
    opts.validate()
    return opts


def socketio_room(url: str, pid: int, **overrides: object) -> Options:
    """A 20-client socket.io room (2 senders, 0.5 s) against the server at ``url``."""
    fields: dict[str, object] = {
        "protocol": "socket.io",
        "url": url,
        "clients": 20,
        "senders": 2,
        "duration": 0.5,
        "warmup": 0.2,
        "rate": 40.0,
        "server_pid": pid,
    }
    return room_options(**{**fields, **overrides})


async def check_socketio_runs(url: str, pid: int, socketio_client: str) -> None:
    """A fan-out then a latency run against a socket.io server: nothing lost, all counted."""
    result = await fanout(socketio_room(url, pid, socketio_client=socketio_client))
    assert result["errors"] == []
    assert result["ok"]
    assert result["protocol"] == "socket.io"
    assert result["socketio_client"] == socketio_client
    assert result["connected"] == 20
    chk = result["check"]
    assert chk["lost"] == chk["duplicated"] == chk["reordered"] == 0
    assert chk["malformed"] == chk["disconnected"] == chk["echo_errors"] == 0
    assert result["messages_sent"] > 0
    # Every client received every message, the senders included.
    assert chk["deliveries"] == chk["expected"] == 20 * result["messages_sent"]
    assert result["deliveries_per_server_cpu_s"] > 0
    assert result["generator_cpu_s"] > 0

    # Same server, same room, same nicknames: a second run is clean too (the
    # room's seq goes on from where it was; each receiver only needs it to grow).
    result = await latency(socketio_room(url, pid, socketio_client=socketio_client))
    assert result["ok"], result["errors"]
    assert result["check"]["lost"] == 0
    assert result["check"]["malformed"] == 0
    lat = result["latency_ms"]
    # Only deliveries of messages sent in the window are timed, none of the warm-up.
    assert 0 < lat["count"] < result["check"]["deliveries"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 5_000


def load_bench_run() -> ModuleType:
    """bench/run.py as a module (``bench_run``), its folder on sys.path as when run."""
    if "bench_run" in sys.modules:
        return sys.modules["bench_run"]
    folder = str(BENCH_RUN.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("bench_run", BENCH_RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module
