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
    for scenario, file, mode in (
        ("steady", "bench-steady-cdf.png", "seed mode"),
        ("chat_steady", "bench-chat-steady-cdf.png", "chat mode"),
    ):
        rates = plan.options.get(scenario, {}).get("rates")
        if scenario in plan.scenarios and rates:
            part = f"r{max(rates):g}"
            series = {
                title: result[part]
                for title, result in pick(scenario, f"{part}/latency_ms/p99").items()
                if part in result
            }
            charts[scenario] = plot_cdf(
                series,
                img / file,
                f"{mode}: latency at a steady {max(rates):g} msg/s {TIMES} 1000 clients "
                "(median round)"
                if not plan.quick
                else f"{mode}: steady latency CDF (quick run)",
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
    if "connect" in plan.scenarios:
        charts["connect"] = plot_timeline(
            pick("connect", "handshakes_per_s"),
            img / "connect_throughput.png",
            f"connection rate: connect, greeting, close; "
            f"{plan.options['connect'].get('connect_concurrency', 64)} at once (median round)",
        )
    return charts
