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
#: The figures of each part of a result made of parts (one per rate, one per storm size).
PART_METRICS = {
    "steady": [
        "latency_ms/p50",
        "latency_ms/p99",
        "latency_ms/p99.9",
        "server_cpu_us_per_delivery",
        "server_cpu_pct",
        "generator_cpu_pct",
        "deliveries_per_s",
        "other_cpu_pct",
    ],
    "join_storm": [
        "joined_s",
        "converged_s",
        "server_cpu_s",
        "generator_cpu_s",
        "generator_cpu_pct",
    ],
}
METRICS["reconnect_storm"] = [
    "resumed_s",
    "server_cpu_s",
    "generator_cpu_s",
    "generator_cpu_pct",
    "first_join_s",
    "other_cpu_pct",
]
CHECKS = ("lost", "duplicated", "reordered", "malformed", "disconnected", "echo_errors")
STORM_CHECKS = ("gaps", "duplicated", "bad_resume", "lost", "resets", "dropped")


def _paths(kind: str, results: list[dict[str, Any]]) -> list[str]:
    """The figures to aggregate for ``kind``; for results made of parts, each part's."""
    if kind not in PART_METRICS:
        return METRICS.get(kind, [])
    parts = dict.fromkeys(p for r in results for p in r.get("parts", []))
    return [f"{part}/{m}" for part in parts for m in PART_METRICS[kind]]


def _checks(kind: str, results: list[dict[str, Any]]) -> dict[str, int] | None:
    """Lost, duplicated, ... summed over the rounds (and the parts), or None."""
    if kind in ("fanout", "latency"):
        keys, prefixes = CHECKS, [""]
    elif kind == "steady":
        keys = CHECKS
        prefixes = [f"{p}/" for p in dict.fromkeys(p for r in results for p in r.get("parts", []))]
    elif kind == "reconnect_storm":
        keys, prefixes = STORM_CHECKS, [""]
    else:
        return None
    return {
        k: sum(int(_get(r, f"{pre}check/{k}") or 0) for r in results for pre in prefixes)
        for k in keys
    }


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
            for path in _paths(kind, results):
                agg[path] = median_of(results, path)
                agg[path + "#spread"] = spread_of(results, path)
            check = _checks(kind, results)
            if check is not None:
                agg["check"] = check
            out[name][scenario] = agg
    return out
