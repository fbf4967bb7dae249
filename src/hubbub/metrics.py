"""Prometheus metrics: ``/metrics`` in the text format, with ``prometheus_client``.

Two kinds, chosen so that the hot paths stay fast:

* **State read at scrape time** (:class:`ChatCollector`): connections by
  protocol and transport, send-buffer bytes, rooms and members, the journal's
  queue, the broker's and the sequencer's counters. Nothing runs for them
  between scrapes; a scrape walks the connections once (about 1 us each).
* **Events counted where they happen**: module-level counters and histograms,
  one line per site (``metrics.frame_in(decoded)``, ``metrics.closed(...)``).
  A counter increment is a lock and an add (~0.2 us); a fan-out counts once
  per ``push_many``, never per recipient.

Counters are per process (the Prometheus convention: one process, one
target), in :data:`REGISTRY`, which also has the process and GC collectors.

Exposed (docs in the README's operations section):

* on the main port: ``GET /metrics`` with ``Authorization: Bearer
  <metrics_token>``; 401 without it; 404 when no token is set;
* or, unprotected, on ``metrics_port`` (same host): a second hubbub
  :class:`~hubbub.server.Server` (its HTTP limits apply) in the same event
  loop: the collectors read the app's tables on the loop's thread, never
  concurrently with it (``prometheus_client.start_http_server`` would read
  them from its own thread while the loop changes them).

:func:`install` wires both into a chat server (``hubbub serve`` calls it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import time
import typing
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from . import protocol as p

log = logging.getLogger("hubbub.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
for _c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    with contextlib.suppress(ValueError):  # already registered (a reload in tests)
        REGISTRY.register(_c)

#: Seconds between event-loop lag samples.
LAG_PERIOD = 0.5
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# -- events (one line per site) --------------------------------------------------


class Tally:
    """A counter for hot paths: one dict add per event (~60 ns, a third of
    ``prometheus_client.Counter.inc``'s lock and checks), turned into a counter
    family when Prometheus scrapes (:class:`ChatCollector`). The event loop's
    thread is the only writer."""

    __slots__ = ("counts", "doc", "labels", "name")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labels = labels
        self.counts: dict[tuple[str, ...], float] = {}
        TALLIES.append(self)

    def inc(self, *values: str, amount: float = 1) -> None:
        """Count ``amount`` events with these label values (in ``labels`` order)."""
        counts = self.counts
        counts[values] = counts.get(values, 0) + amount

    def zero(self, *values: str) -> None:
        """Make the series exist (at 0) before its first event."""
        self.counts.setdefault(values, 0)

    def value(self, *values: str) -> float:
        return self.counts.get(values, 0)

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=list(self.labels))
        for values, n in sorted(self.counts.copy().items()):
            family.add_metric(list(values), n)
        return family


TALLIES: list[Tally] = []

handshakes = Tally("hubbub_handshakes", "WebSocket handshakes accepted, by protocol", ("protocol",))
handshake_failures = Tally(
    "hubbub_handshake_failures",
    "Connections or handshakes refused, by reason (max_connections_per_ip, "
    "max_pending_handshakes, origin, token, http_400...)",
    ("reason",),
)
frames_in = Tally(
    "hubbub_frames_in", "hubbub.v1 frames received, by type (invalid: not decodable)", ("type",)
)
frames_out = Tally(
    "hubbub_frames_out",
    "hubbub.v1 frames sent, by type (a fan-out counts each recipient; event: presence, typing)",
    ("type",),
)
errors = Tally("hubbub_error_frames", "error frames sent, by code", ("code",))
rate_limited = Tally(
    "hubbub_rate_limited", "frames refused by a rate limit, by protocol", ("protocol",)
)
closes = Tally(
    "hubbub_closes",
    "WebSocket connections closed, by the first closer's code and who it was "
    "(server, client, abnormal: no close frame)",
    ("code", "by"),
)
slow_consumers = Tally(
    "hubbub_slow_consumers_dropped",
    "Clients dropped for not reading, by where (send_buffer, replay)",
    ("where",),
)
messages_stored = Tally(
    "hubbub_messages_stored", "messages written to the store (not counting duplicates)"
)
duplicates = Tally(
    "hubbub_duplicates", "sends with a client id already stored (acked again, not stored)"
)
store_failures = Tally(
    "hubbub_journal_failures", "messages the store refused (senders told to retry)"
)
resumes = Tally(
    "hubbub_resumes",
    "joins with a resume position, by outcome (resumed, or reset: epoch, retention, "
    "too_far, overflow)",
    ("outcome",),
)
replayed = Tally("hubbub_replayed_messages", "messages replayed to resuming clients")
journal_commit = Histogram(
    "hubbub_journal_commit_seconds",
    "time to store one journal batch (group commit)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
journal_batch = Histogram(
    "hubbub_journal_batch_messages",
    "messages per journal batch",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
    registry=REGISTRY,
)
delivery_latency = Histogram(
    "hubbub_delivery_latency_seconds",
    "per journal batch, from its commit to the end of the event-loop tick that wrote its "
    "frames to this node's members (local broker) or queued its publish (redis)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
loop_lag = Histogram(
    "hubbub_event_loop_lag_seconds",
    f"how late a {LAG_PERIOD}s timer fires (what every callback waits behind)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
loop_lag_last = Gauge(
    "hubbub_event_loop_lag_last_seconds", "the latest event-loop lag sample", registry=REGISTRY
)

#: Label values that exist from the start (at 0), so that dashboards and alerts
#: see a series before its first event.
HANDSHAKE_REFUSALS = (
    "max_connections",
    "max_connections_per_ip",
    "max_pending_handshakes",
    "max_pending_handshakes_per_ip",
    "shutting_down",
    "origin",
    "token",
)
CLOSE_CODES = ("1000", "1001", "1006", "1008", "1009", "1011", "1013", "4401")


def _zero_series() -> None:
    for tally in TALLIES:
        if not tally.labels:
            tally.zero()
    for proto in ("seed", "hubbub.v1"):
        handshakes.zero(proto)
        rate_limited.zero(proto)
    for reason in HANDSHAKE_REFUSALS:
        handshake_failures.zero(reason)
    for cls in typing.get_args(p.ClientFrame):
        frames_in.zero(_tag(cls))
    frames_in.zero("invalid")
    for cls in typing.get_args(p.ServerFrame):
        frames_out.zero(_tag(cls))
    frames_out.zero("event")
    for name, code in vars(p).items():
        if name.startswith("E_") and isinstance(code, str):
            errors.zero(code)
    for code in CLOSE_CODES:
        closes.zero(code, "abnormal" if code == "1006" else "server")
        if code != "1006":
            closes.zero(code, "client")
    for where in ("send_buffer", "replay"):
        slow_consumers.zero(where)
    for outcome in ("resumed", "epoch", "retention", "too_far", "overflow"):
        resumes.zero(outcome)


#: Frame class -> its label key (``("send",)``), built on first sight.
_KEYS: dict[type, tuple[str]] = {}


def _tag(cls: type) -> str:
    config = getattr(cls, "__struct_config__", None)
    tag = getattr(config, "tag", None)
    return tag if isinstance(tag, str) else cls.__name__.lower()


def _key(cls: type) -> tuple[str]:
    key = _KEYS[cls] = (_tag(cls),)
    return key


def frame_in(frame: object) -> None:
    """A decoded hubbub.v1 client frame (``ChatApp.on_message``)."""
    key = _KEYS.get(type(frame)) or _key(type(frame))
    counts = frames_in.counts
    counts[key] = counts.get(key, 0) + 1


def frame_invalid() -> None:
    """A hubbub.v1 frame that could not be decoded (bad JSON, binary...)."""
    frames_in.inc("invalid")


def frame_out(frame: object) -> None:
    """One server frame sent to one connection (``ChatApp.reply``)."""
    cls = type(frame)
    key = _KEYS.get(cls) or _key(cls)
    counts = frames_out.counts
    counts[key] = counts.get(key, 0) + 1
    if cls is p.Error:
        code = frame.code  # type: ignore[attr-defined]
        errors.inc(code)
        if code == p.E_RATE_LIMITED:
            rate_limited.inc("hubbub.v1")


_MESSAGE = ("message",)
_EVENT = ("event",)


def fanout(seq: int | None, recipients: int) -> None:
    """A room frame written to ``recipients`` members (``ChatApp._emit``): a
    message when it has a seq, else presence or typing (``event``)."""
    key = _EVENT if seq is None else _MESSAGE
    counts = frames_out.counts
    counts[key] = counts.get(key, 0) + recipients


def closed(sent: int | None, received: int | None, client_first: bool | None) -> None:
    """A WebSocket connection is gone: the code of the close frame it sent and
    received (None: none) and who sent first (``Protocol.close_rcvd_then_sent``);
    counted under the first closer's code (1006: no close frame at all)."""
    if client_first is True or (client_first is None and received is not None):
        closes.inc(str(received), "client")
    elif sent is not None:
        closes.inc(str(sent), "server")
    else:
        closes.inc("1006", "abnormal")


# -- state read at scrape time ------------------------------------------------------


class ChatCollector(Collector):
    """Reads the attached servers' tables when Prometheus scrapes (summed)."""

    def __init__(self) -> None:
        self.servers: list[Any] = []

    def attach(self, server: Any) -> None:
        if server not in self.servers:
            self.servers.append(server)

    def detach(self, server: Any) -> None:
        with contextlib.suppress(ValueError):
            self.servers.remove(server)

    def collect(self) -> Iterator[Any]:
        info = GaugeMetricFamily("hubbub_info", "hubbub version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        for tally in TALLIES:
            yield tally.family()
        yield from self._connections()
        yield from self._chat()
        yield from self._journal_and_broker()

    def _connections(self) -> Iterable[Any]:
        conns = GaugeMetricFamily(
            "hubbub_connections",
            "open client connections, by protocol (seed, hubbub.v1) and transport",
            labels=["protocol", "transport"],
        )
        buffered = GaugeMetricFamily(
            "hubbub_send_buffer_bytes", "bytes queued for clients and not yet sent"
        )
        largest = GaugeMetricFamily(
            "hubbub_send_buffer_max_bytes", "the largest one connection's send buffer"
        )
        counts: dict[tuple[str, str], int] = {}
        total = biggest = 0
        for server in self.servers:
            for fd in list(server.connections):
                meta = server.connection_info(fd) or {}
                proto = "hubbub.v1" if meta.get("subprotocol") == "hubbub.v1" else "seed"
                key = (proto, str(meta.get("transport") or "websocket"))
                counts[key] = counts.get(key, 0) + 1
                n = server.buffered(fd) or 0
                total += n
                biggest = max(biggest, n)
        for proto in ("seed", "hubbub.v1"):
            counts.setdefault((proto, "websocket"), 0)
        for (proto, transport), n in sorted(counts.items()):
            conns.add_metric([proto, transport], n)
        buffered.add_metric([], total)
        largest.add_metric([], biggest)
        return (conns, buffered, largest)

    def _chat(self) -> Iterable[Any]:
        rooms = GaugeMetricFamily("hubbub_rooms", "rooms with members on this node")
        known = GaugeMetricFamily("hubbub_rooms_known", "rooms that exist (max_rooms counts these)")
        members = GaugeMetricFamily("hubbub_members", "room memberships on this node")
        sessions = GaugeMetricFamily("hubbub_sessions", "hubbub.v1 sessions on this node")
        r = k = m = s = 0
        for server in self.servers:
            core = getattr(server.app, "core", None)
            if core is None:
                continue
            counts = core.member_counts()
            r += sum(1 for n in counts.values() if n)
            m += sum(counts.values())
            k += len(core.known)
            s += len(core.sessions)
        rooms.add_metric([], r)
        known.add_metric([], k)
        members.add_metric([], m)
        sessions.add_metric([], s)
        return (rooms, known, members, sessions)

    def _journal_and_broker(self) -> Iterable[Any]:
        depth = GaugeMetricFamily(
            "hubbub_journal_queue_depth", "messages accepted and waiting to be stored"
        )
        broker = CounterMetricFamily(
            "hubbub_broker_frames",
            "frames between nodes, by event (published, received, dropped, bad)",
            labels=["event"],
        )
        subs = GaugeMetricFamily("hubbub_broker_subscriptions", "rooms this node follows")
        queued = GaugeMetricFamily(
            "hubbub_broker_queue_depth", "frames waiting to be published to the broker"
        )
        seqr = CounterMetricFamily(
            "hubbub_sequencer_messages",
            "room messages by what the sequencer did (delivered, duplicate: dropped as "
            "already delivered, backfilled: read from the store to fill a gap, skipped: "
            "gone from the store)",
            labels=["event"],
        )
        reconnects = CounterMetricFamily("hubbub_broker_reconnects", "reconnections to the broker")
        q = n_subs = n_reconnects = n_queued = 0
        b = dict.fromkeys(("published", "received", "dropped", "bad"), 0)
        sq = dict.fromkeys(("delivered", "duplicate", "backfilled", "skipped"), 0)
        for server in self.servers:
            app = server.app
            journal = getattr(app, "journal", None)
            if journal is not None:
                q += journal.backlog
            br = getattr(app, "broker", None)
            if br is not None:
                n_subs += len(br.subscribed)
                stats = br.stats() if hasattr(br, "stats") else {}
                b["published"] += stats.get("published", 0)
                b["received"] += stats.get("delivered", 0)
                b["dropped"] += stats.get("dropped", 0)
                b["bad"] += stats.get("bad_frames", 0)
                n_reconnects += stats.get("reconnects", 0)
                n_queued += stats.get("backlog", 0)
            sequencer = getattr(app, "sequencer", None)
            if sequencer is not None:
                sq["delivered"] += sequencer.delivered
                sq["duplicate"] += sequencer.dropped
                sq["backfilled"] += sequencer.backfilled
                sq["skipped"] += sequencer.skipped
        depth.add_metric([], q)
        subs.add_metric([], n_subs)
        reconnects.add_metric([], n_reconnects)
        queued.add_metric([], n_queued)
        for event, n in b.items():
            broker.add_metric([event], n)
        for event, n in sq.items():
            seqr.add_metric([event], n)
        return (depth, broker, subs, queued, reconnects, seqr)


_zero_series()
COLLECTOR = ChatCollector()
REGISTRY.register(COLLECTOR)


# -- serving -------------------------------------------------------------------------


def scrape() -> bytes:
    """The current metrics, in the Prometheus text format."""
    return generate_latest(REGISTRY)


def _answer(request: Any, response: Any) -> None:
    if request.method not in ("GET", "HEAD"):
        response.status(405)
        response.header("Allow", "GET, HEAD")
        response.end("method not allowed\n")
        return
    response.header("Content-Type", CONTENT_TYPE_LATEST)
    response.header("Cache-Control", "no-store")
    response.end(scrape())


def handle_request(request: Any, response: Any, token: str) -> bool:
    """``/metrics`` on the main port: True if this request was it (answered).

    Needs ``Authorization: Bearer <token>``; with no token set the path is
    404 (metrics are off there, or on ``metrics_port`` only)."""
    if request.path != "/metrics":
        return False
    if not token:
        response.status(404)
        response.end("metrics are not served here (see --metrics-token, --metrics-port)\n")
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        response.status(401)
        response.header("WWW-Authenticate", 'Bearer realm="metrics"')
        response.end("missing or wrong 'Authorization: Bearer <metrics token>'\n")
        return True
    _answer(request, response)
    return True


def _metrics_port_app(request: Any, response: Any) -> None:
    if request.path == "/metrics":
        _answer(request, response)
    else:
        response.status(404)
        response.end("only /metrics here\n")


async def _lag_monitor(period: float = LAG_PERIOD) -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        lag = max(0.0, loop.time() - before - period)
        loop_lag.observe(lag)
        loop_lag_last.set(lag)


class Ops:
    """The metrics of one server: the scrape collector, /metrics, the lag monitor."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.port_server: Any = None
        self._lag: asyncio.Task[None] | None = None
        self._start = _handler(server, "start")
        self._shutdown = _handler(server, "shutdown")
        self._request = _handler(server, "request")
        server.on("start", self.on_start)
        server.on("shutdown", self.on_shutdown)
        server.on("request", self.on_request)

    def on_request(self, request: Any, response: Any) -> Any:
        if handle_request(request, response, self.server.settings.metrics_token):
            return None
        if self._request is None:
            response.status(404)
            response.end("Not Found\n")
            return None
        return self._request(request, response)

    async def on_start(self, server: Any) -> None:
        if self._start is not None:
            result = self._start(server)
            if inspect.isawaitable(result):
                await result
        COLLECTOR.attach(server)
        self._lag = asyncio.ensure_future(_lag_monitor())
        port = server.settings.metrics_port
        if port:
            await self._serve_port(server, port)

    async def _serve_port(self, server: Any, port: int) -> None:
        from .server import Server

        # No WebSocket here (max_connections 0: a handshake gets 503), no health path.
        settings = server.settings.with_overrides(max_connections=0, certfile="", keyfile="")
        metrics_server = Server(server.host, port, settings, health_path=None)
        metrics_server.on("request", _metrics_port_app)
        await metrics_server.listen()
        self.port_server = metrics_server
        log.info("metrics on http://%s:%d/metrics", _url_host(server.host), metrics_server.port)

    async def on_shutdown(self, server: Any) -> None:
        COLLECTOR.detach(server)
        if self._lag is not None:
            self._lag.cancel()
            self._lag = None
        if self.port_server is not None:
            await self.port_server.shutdown()
            self.port_server = None
        if self._shutdown is not None:
            result = self._shutdown(server)
            if inspect.isawaitable(result):
                await result


def _handler(server: Any, event: str) -> Any:
    """The handler ``server`` has for ``event`` (None: none), to be wrapped."""
    getter = getattr(server, "handler", None)
    if callable(getter):
        return getter(event)
    return server._endpoint.handlers.get(event)  # until Server.handler(event) exists


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def install(server: Any) -> Ops:
    """Serve metrics for ``server`` (a chat server from ``create_app``): wraps the
    start/shutdown/request handlers it has (call it after they are set); returns the
    :class:`Ops` (its ``port_server`` is the ``metrics_port`` server once started)."""
    return Ops(server)


def timed() -> float:
    """A start time for a histogram (``time.perf_counter``)."""
    return time.perf_counter()
