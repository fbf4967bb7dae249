"""Prometheus metrics: ``/metrics`` in the text format, with ``prometheus_client``.

Two kinds, chosen so that the hot paths stay fast:

* **State read at scrape time** (:class:`ChatCollector`): connections by
  protocol and transport, send-buffer bytes, rooms and members, the journal's
  queue, the broker's and the sequencer's counters. Nothing runs for them
  between scrapes; a scrape walks the connections once (about 1 us each).
* **Events counted where they happen**: :class:`Tally` counters (a dict add,
  about 60 ns; ``prometheus_client.Counter.inc`` takes a lock and costs several
  times that), one line per site (``metrics.frame_in(decoded)``,
  ``metrics.closed(...)``), made into counter families at scrape time; a
  fan-out counts once per ``push_many``, never per recipient. Latencies (per
  journal batch, per lag sample) are prometheus_client histograms.

Memory: a few hundred series, bounded (label values are frame types, error
codes, close codes and refusal causes: never client text).

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

import contextlib
import typing

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily

from .. import protocol as p

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
    "TCP connections, HTTP requests and WebSocket handshakes refused, by reason: an "
    "admission limit (max_connections_per_ip...) or the HTTP status answered (403: origin, "
    "401: token, 503: max_connections or shutting down...)",
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
    # Admission limits (transport.guard.RefusalLog causes)...
    "max_connections_per_ip",
    "max_pending_handshakes",
    "max_pending_handshakes_per_ip",
    # ...and the HTTP status of a refused request or handshake (HttpConnection.reject).
    "400",
    "401",
    "403",
    "408",
    "413",
    "414",
    "431",
    "503",
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


# The scrape-time collector and the HTTP side (they import the names above).
from .collector import COLLECTOR, ChatCollector  # noqa: E402
from .http import Ops, handle_request, install, scrape  # noqa: E402

_zero_series()
REGISTRY.register(COLLECTOR)

__all__ = [
    "COLLECTOR",
    "REGISTRY",
    "TALLIES",
    "ChatCollector",
    "Ops",
    "Tally",
    "closed",
    "fanout",
    "frame_in",
    "frame_invalid",
    "frame_out",
    "handle_request",
    "install",
    "scrape",
]
