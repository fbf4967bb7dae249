"""The report's charts (PNG, matplotlib via :mod:`hubbub.bench.report`): the median round of
each server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .aggregate import median_result
from .running import Plan
from .servers import SERVERS
from .template import TIMES


def write_charts(plan: Plan, img: Path) -> dict[str, Path]:
    from hubbub.bench.report import plot_cdf, plot_rss, plot_timeline

    charts: dict[str, Path] = {}

    def pick(scenario: str, path: str) -> dict[str, dict[str, Any]]:
        series = {}
        for name in plan.servers:
            chosen = median_result(plan.results[name].get(scenario, []), path)
            if chosen is not None:
                series[SERVERS[name].title] = chosen
        return series

    if "fanout" in plan.scenarios:
        charts["fanout"] = plot_timeline(
            pick("fanout", "deliveries_per_s"),
            img / "fanout_throughput.png",
            f"fan-out, 1000 clients, 10 senders {TIMES} window 4: deliveries/s (median round)"
            if not plan.quick
            else "fan-out (quick run)",
        )
    if "latency" in plan.scenarios:
        charts["latency"] = plot_cdf(
            pick("latency", "latency_ms/p99"),
            img / "latency_cdf.png",
            f"send-to-receive latency at 20 msg/s {TIMES} 1000 clients (median round)"
            if not plan.quick
            else "latency CDF (quick run)",
        )
    if "idle" in plan.scenarios:
        charts["idle"] = plot_rss(
            pick("idle", "rss_per_connection_kib"),
            img / "idle_rss.png",
            "server RSS growth with idle connections (median round)",
        )
    if "chat_fanout" in plan.scenarios:
        charts["chat_fanout"] = plot_timeline(
            pick("chat_fanout", "deliveries_per_s"),
            img / "chat_fanout_throughput.png",
            "chat mode fan-out (hubbub.v1 / socket.io): deliveries/s (median round)"
            if not plan.quick
            else "chat fan-out (quick run)",
        )
    if "chat_latency" in plan.scenarios:
        charts["chat_latency"] = plot_cdf(
            pick("chat_latency", "latency_ms/p99"),
            img / "chat_latency_cdf.png",
            "chat mode send-to-receive latency (median round)"
            if not plan.quick
            else "chat latency CDF (quick run)",
        )
    if "connect" in plan.scenarios:
        charts["connect"] = plot_timeline(
            pick("connect", "handshakes_per_s"),
            img / "connect_throughput.png",
            "connection rate: connect, greeting, close; 64 at once (median round)",
        )
    return charts
