"""Metrics read when Prometheus scrapes: the attached servers' tables, summed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import __version__
from . import TALLIES


class ChatCollector(Collector):
    """Reads the attached servers' tables when Prometheus scrapes (summed)."""

    def __init__(self) -> None:
        self.servers: list[Any] = []
        # Per server (same index): fd -> (protocol, transport), see _connections.
        self._kinds: list[dict[int, tuple[str, str]]] = []

    def attach(self, server: Any) -> None:
        if server not in self.servers:
            self.servers.append(server)
            self._kinds.append({})

    def detach(self, server: Any) -> None:
        with contextlib.suppress(ValueError):
            i = self.servers.index(server)
            del self.servers[i]
            del self._kinds[i]

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
            "open client connections, by protocol (seed, hubbub.v1) and transport "
            "(websocket, sse, poll)",
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
        for i, server in enumerate(self.servers):
            # An fd's kind never changes and fds are never reused: classified once,
            # the cache rebuilt each scrape (so it holds only live fds).
            known = self._kinds[i]
            kinds = self._kinds[i] = {}
            buffered_of = server.buffered
            for fd in list(server.connections):
                key = known.get(fd) or _kind(server, fd)
                kinds[fd] = key
                counts[key] = counts.get(key, 0) + 1
                n = buffered_of(fd) or 0
                total += n
                if n > biggest:
                    biggest = n
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


def _kind(server: Any, fd: int) -> tuple[str, str]:
    """(protocol, transport) of a connection: seed or hubbub.v1; websocket, or
    what ``connection_info`` says (sse, poll), else sse/poll for a session
    (opened by ``POST /v1/sessions``), as the admin page tells them."""
    info = server.connection_info(fd) or {}
    proto = "hubbub.v1" if info.get("subprotocol") == "hubbub.v1" else "seed"
    transport = info.get("transport")
    if not transport:
        path = str(info.get("path", ""))
        transport = "sse/poll" if path.startswith("/v1/sessions") else "websocket"
    return proto, str(transport)


COLLECTOR = ChatCollector()
