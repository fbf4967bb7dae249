"""The servers ``make bench`` compares, and how one is started, checked and stopped."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .children import ROOT, hubbub_argv, spawn, stop

PEERS = ROOT / "bench" / "peers"
NODE_DIR = PEERS / "node_ws"
BASELINE = "node_ws"
SEED_SCENARIOS = ("idle", "fanout", "steady", "connect")
CHAT_SCENARIOS = ("chat_fanout", "chat_steady")
#: Many clients joining one room at once, and reconnecting together after a restart
#: (in chat mode for hubbub; connect and greeting only for the seed baseline).
STORM_SCENARIOS = ("join_storm", "reconnect_storm")
SCENARIO_ORDER = SEED_SCENARIOS + CHAT_SCENARIOS + STORM_SCENARIOS
SOCKETIO_DIR = PEERS / "socketio_node"
UWS_DIR = PEERS / "uws_node"
SERVER_CPU = 1
GENERATOR_CPU = 0
NOFILE = 20_000


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
    #: Environment variables set for the server process.
    env: dict[str, str] = field(default_factory=dict)
    #: What it speaks in the storm scenarios (``seed``: connect and greeting only).
    storm_protocol: str = "seed"


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


#: The saturation scenarios only (the peers left out of the steady rates by default).
_SATURATION = ("idle", "fanout", "connect")


def _hubbub_argv(port: int, tmp: Path) -> list[str]:
    return hubbub_argv(port, max_connections=NOFILE, db=tmp / "hubbub.db")


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "hubbub",
            "hubbub",
            _hubbub_argv,
            _py_versions("hubbub", "websockets", "httptools", "uvloop", "msgspec"),
            "`hubbub serve` (the full chat app with its SQLite store; plain clients get the "
            "seed room; `--rate 0`: no per-connection rate limit)",
            SCENARIO_ORDER,
            "hubbub.v1",
            storm_protocol="hubbub.v1",
        ),
        ServerSpec(
            "hubbub_nospeedups",
            "hubbub, no compiled path",
            _hubbub_argv,
            _py_versions("hubbub"),
            "`hubbub serve` as above with `HUBBUB_NO_SPEEDUPS=1` (the pure-Python fan-out "
            "and handshake: what the compiled path buys)",
            ("steady",),
            "hubbub.v1",
            env={"HUBBUB_NO_SPEEDUPS": "1"},
        ),
        ServerSpec(
            "node_ws",
            "Node ws",
            lambda port, tmp: ["node", str(NODE_DIR / "server.js"), str(port)],
            _node_versions(NODE_DIR, ("ws", "bufferutil")),
            "bench/peers/node_ws/server.js",
            SEED_SCENARIOS + STORM_SCENARIOS,
        ),
        ServerSpec(
            "uws",
            "uWebSockets",
            lambda port, tmp: ["node", str(UWS_DIR / "server.js"), str(port)],
            _node_versions(UWS_DIR, ("@trufflesuite/uws-js-unofficial",)),
            "bench/peers/uws_node/server.js (uWebSockets.js: C++ engine, `app.publish` "
            "fans out in C++; the stand-in for Swoole)",
            # What the issue compares with Swoole: steady-rate CPU and handshakes.
            ("steady", "connect"),
        ),
        ServerSpec(
            "websockets",
            "websockets",
            lambda port, tmp: [sys.executable, str(PEERS / "websockets_peer.py"), str(port)],
            _py_versions("websockets", "uvloop"),
            "bench/peers/websockets_peer.py (asyncio server, `broadcast()`)",
            _SATURATION,
        ),
        ServerSpec(
            "aiohttp",
            "aiohttp",
            lambda port, tmp: [sys.executable, str(PEERS / "aiohttp_peer.py"), str(port)],
            _py_versions("aiohttp", "uvloop"),
            "bench/peers/aiohttp_peer.py (`send_frame` to each client)",
            _SATURATION,
        ),
        ServerSpec(
            "picows",
            "picows",
            lambda port, tmp: [sys.executable, str(PEERS / "picows_peer.py"), str(port)],
            _py_versions("picows", "uvloop"),
            "bench/peers/picows_peer.py (`WSTransport.send` to each client)",
            # The fastest Python peer, where it says most: saturation and steady rates.
            ("fanout", "steady"),
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
            ("chat_fanout",),
        ),
    )
}


#: The servers of a default run: hubbub (with and without its compiled path), the
#: baseline, uWebSockets (the C++ engine standing in for Swoole) and the fastest Python
#: peer, and Node socket.io in chat mode. websockets, aiohttp
#: and python-socketio (slower than Node ws in every earlier run) with ``--servers``.
DEFAULT_SERVERS = ("hubbub", "hubbub_nospeedups", "node_ws", "uws", "picows", "socketio_node")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_preexec() -> None:
    """In the server's process before ``exec``: pinned to the server's CPU, open-file limit
    raised (it runs in a session of its own and dies with the runner: :func:`spawn`)."""
    os.sched_setaffinity(0, {SERVER_CPU})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(max(NOFILE, _soft), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


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
        self.proc = spawn(self.argv, self.log, env=self.spec.env, setup=_server_preexec)
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
        try:
            stop(self.proc, 8)
        finally:
            self.proc = None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
