"""Helpers shared by the bench tests: generator options, a socket.io run check, the
benchmark runners' scripts and modules (bench/run.py, bench/scaleout.py, bench/benchrun)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hubbub.bench.options import Options
from hubbub.bench.scenarios import fanout, latency

ROOT = Path(__file__).resolve().parents[2]
#: ``make bench``'s scripts; they import the modules next to them, as when run as scripts.
BENCH_RUN = ROOT / "bench" / "run.py"
SCALEOUT = ROOT / "bench" / "scaleout.py"

#: The python-socketio peer, started by the socket.io generator tests.
SOCKETIO_PEER = "bench/peers/python_socketio_peer.py"


def generator_options(**fields: object) -> Options:
    """Validated Options for a test: one generator process (``--workers 1``), no pinning
    (the other core is busy with other tests), no progress line; ``fields`` set the rest
    (url, protocol, server_pid, ...)."""
    opts = Options(workers=1, generator_cpus=None, progress=False)
    for key, value in fields.items():
        setattr(opts, key, value)
    opts.validate()
    return opts


def room_options(**fields: object) -> Options:
    """:func:`generator_options` for a short room run: 100-byte messages, a window of 4;
    ``fields`` set the rest (url, clients, senders, duration, ...)."""
    return generator_options(**{"size": 100, "window": 4, **fields})


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


def load_script(path: Path, name: str) -> ModuleType:
    """The script at ``path`` as the module ``name``, its folder first on sys.path as when
    run (bench/run.py and bench/scaleout.py import the modules next to them)."""
    if name in sys.modules:
        return sys.modules[name]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_bench_run() -> ModuleType:
    """bench/run.py as a module (``bench_run``)."""
    return load_script(BENCH_RUN, "bench_run")


def load_scaleout() -> ModuleType:
    """bench/scaleout.py as a module (``bench_scaleout``)."""
    return load_script(SCALEOUT, "bench_scaleout")


def benchrun(name: str) -> ModuleType:
    """``bench/benchrun/<name>.py`` as the runners import it (``benchrun.<name>``)."""
    folder = str(BENCH_RUN.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(f"benchrun.{name}")
