"""What a benchmark run is told: :class:`Options`, the scenario and protocol names, and
:class:`BenchError` (the benchmark could not run). Shared by the scenarios, the
generator processes (Python and Node) and the command line."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from .checker import MAX_SENDERS, MIN_SIZE

SCENARIOS = ("fanout", "latency", "idle", "connect")
#: What the clients speak. ``seed``: the seed's plain text (any plain
#: WebSocket chat server). ``hubbub.v1``: hubbub's JSON protocol (join a
#: room, ``send`` with a client id, ``ack``, ``message``): the product's real
#: path, durable history included. ``socket.io``: the same work as
#: socket.io events (``join``, ``send`` with an ack, ``message``), generated
#: by the picows workers speaking Engine.IO v4 / Socket.IO v5 themselves
#: (:class:`hubbub.bench.sioclients.SocketIOClient`) or, with
#: ``Options.socketio_client = "node"``, by Node socket.io-client workers
#: (:mod:`hubbub.bench.nodegen`).
PROTOCOLS = ("seed", "hubbub.v1", "socket.io")
#: Who generates ``--protocol socket.io``. ``picows``: the Python workers
#: (picows + msgspec), the cheaper per delivery, so the generator is not the
#: side that saturates first. ``node``: the reference client, socket.io-client
#: in Node, as a cross-check of the picows one (about twice the CPU per
#: delivery of the Node socket.io server itself).
SOCKETIO_CLIENTS = ("picows", "node")
#: Scenarios each protocol can run (idle and connect measure the seed path).
PROTOCOL_SCENARIOS = {
    "seed": SCENARIOS,
    "hubbub.v1": ("fanout", "latency"),
    "socket.io": ("fanout", "latency"),
}
#: Order of ``--scenario all``: idle first, on a server that has not yet
#: allocated (and kept) memory for other work.
ALL_ORDER = ("idle", "fanout", "latency", "connect")
#: CPU use (percent of the cores a side may use) at which that side counts as saturated.
SATURATED_PCT = 90.0
#: CPU used by other processes on the machine (percent of one core) during a
#: measured window above which the result is marked noisy. On a quiet machine
#: it stays within a few percent.
NOISY_PCT = 15.0


class BenchError(RuntimeError):
    """The benchmark could not run (not: the server made errors; those are results)."""


@dataclass
class Options:
    url: str = "ws://127.0.0.1:9502/"
    clients: int = 1000
    senders: int = 10
    window: int = 4
    size: int = 100
    duration: float = 6.0
    warmup: float = 1.0
    #: latency scenario: messages per second, all senders together.
    rate: float = 20.0
    idle_clients: int = 10_000
    idle_steps: int = 10
    connect_concurrency: int = 64
    server_pid: int | None = None
    workers: int = 1
    generator_cpus: set[int] | None = None
    sample_interval: float = 0.25
    connect_concurrency_per_worker: int = 128
    #: One of :data:`PROTOCOLS`.
    protocol: str = "seed"
    #: The room the clients join (hubbub.v1 and socket.io).
    room: str = "bench"
    #: socket.io only, one of :data:`SOCKETIO_CLIENTS`: picows workers or Node ones.
    socketio_client: str = "picows"
    #: Several servers of one cluster (nodes on a shared broker): generator process
    #: ``w`` connects its clients to ``urls[w % len(urls)]`` instead of ``url``.
    urls: list[str] | None = None
    #: Every sender in this generator process (by default sender ``s`` is in process
    #: ``s % workers``): with ``urls``, all messages enter the cluster on one node.
    sender_worker: int | None = None
    label: str = ""
    progress: bool = True
    stream: TextIO = field(default_factory=lambda: sys.stderr)

    def validate(self) -> None:
        if self.clients < 1:
            raise ValueError("--clients must be at least 1")
        if not 1 <= self.senders <= min(self.clients, MAX_SENDERS):
            raise ValueError(f"--senders must be between 1 and min(--clients, {MAX_SENDERS})")
        if self.size < MIN_SIZE:
            raise ValueError(f"--size must be at least {MIN_SIZE} bytes")
        if self.window < 1:
            raise ValueError("--window must be at least 1")
        if self.duration <= 0 or self.warmup < 0:
            raise ValueError("--duration must be positive and --warmup not negative")
        if self.rate <= 0:
            raise ValueError("--rate must be positive")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
        if self.socketio_client not in SOCKETIO_CLIENTS:
            raise ValueError(f"--socketio-client must be one of {', '.join(SOCKETIO_CLIENTS)}")
        if self.urls is not None and not self.urls:
            raise ValueError("urls: at least one")
        if self.sender_worker is not None and not 0 <= self.sender_worker < self.workers:
            raise ValueError("sender_worker: one of the generator processes")
        if self.idle_clients < 1 or self.connect_concurrency < 1:
            raise ValueError("--idle-clients and --connect-concurrency must be positive")
