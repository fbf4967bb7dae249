"""Aggregation: the rounds of each (server, scenario) reduced to medians, spreads and counts."""

from __future__ import annotations

import statistics
from typing import Any

from .running import Plan


def _get(result: dict[str, Any], path: str) -> float | None:
    value: Any = result
    for part in path.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def median_of(results: list[dict[str, Any]], path: str) -> float | None:
    values = [
        v for r in results if not r.get("failed_to_run") for v in [_get(r, path)] if v is not None
    ]
    return statistics.median(values) if values else None


def spread_of(results: list[dict[str, Any]], path: str) -> tuple[float, float] | None:
    values = [
        v for r in results if not r.get("failed_to_run") for v in [_get(r, path)] if v is not None
    ]
    return (min(values), max(values)) if values else None


def median_result(results: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    """The round whose value of ``path`` is the median (for the charts)."""
    ok = [r for r in results if not r.get("failed_to_run") and _get(r, path) is not None]
    if not ok:
        return None
    ok.sort(key=lambda r: _get(r, path) or 0.0)
    return ok[(len(ok) - 1) // 2]


METRICS = {
    "fanout": [
        "deliveries_per_s",
        "deliveries_per_server_cpu_s",
        "server_cpu_pct",
        "generator_cpu_pct",
    ],
    "latency": [
        "latency_ms/p50",
        "latency_ms/p99",
        "latency_ms/p99.9",
        "server_cpu_pct",
        "generator_cpu_pct",
        "deliveries_per_s",
    ],
    "idle": ["rss_per_connection_kib", "rss_after_kib", "server_cpu_per_connection_ms"],
    "connect": [
        "handshakes_per_s",
        "handshakes_per_server_cpu_s",
        "server_cpu_pct",
        "generator_cpu_pct",
    ],
}
CHECKS = ("lost", "duplicated", "reordered", "malformed", "disconnected", "echo_errors")


def aggregate(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, per in plan.results.items():
        out[name] = {}
        for scenario, results in per.items():
            agg: dict[str, Any] = {
                "rounds": len(results),
                "ok_rounds": sum(1 for r in results if r["ok"]),
                "errors": sorted({e for r in results for e in r.get("errors", [])})[:6],
                "saturated": [r.get("saturated") for r in results if "saturated" in r],
                "noisy_rounds": sum(1 for r in results if r.get("noisy")),
                "repeats": sum(r.get("attempts", 1) - 1 for r in results),
            }
            kind = scenario.removeprefix("chat_")
            for path in METRICS.get(kind, []):
                agg[path] = median_of(results, path)
                agg[path + "#spread"] = spread_of(results, path)
            if kind in ("fanout", "latency"):
                agg["check"] = {
                    k: sum(int(_get(r, f"check/{k}") or 0) for r in results) for k in CHECKS
                }
            out[name][scenario] = agg
    return out
