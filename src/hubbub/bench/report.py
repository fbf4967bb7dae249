"""Turning results into a table, a JSON file and PNG charts."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float | int):
        text = f"{value:,.{digits}f}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows of one scenario result."""
    name = result["scenario"]
    out: list[tuple[str, str]] = []
    if name in ("fanout", "latency"):
        out += _room_rows(result)
    elif name == "idle":
        out += _idle_rows(result)
    elif name == "connect":
        out += _connect_rows(result)
    if "server_cpu_pct" in result:
        out += _cpu_rows(result)
    out.append(("result", "OK" if result["ok"] else "ERRORS: " + "; ".join(result["errors"])))
    return out


def _room_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    name = result["scenario"]
    chk = result["check"]
    out = [
        ("clients connected", f"{result['connected']:,} of {result['clients']:,}"),
        (
            "senders",
            f"{result['senders']} x "
            + (
                f"window {result['window']}"
                if name == "fanout"
                else f"{result['rate_msgs_per_s'] / result['senders']:g} msg/s"
            ),
        ),
        ("message size", fmt(result["size"], unit="bytes")),
        ("messages sent", fmt(result["messages_sent"])),
        ("deliveries/s", fmt(result["deliveries_per_s"])),
        ("deliveries per server CPU-s", fmt(result["deliveries_per_server_cpu_s"])),
    ]
    if name == "latency":
        lat = result["latency_ms"]
        out += [
            ("latency p50", fmt(lat["p50"], 3, "ms")),
            ("latency p99", fmt(lat["p99"], 3, "ms")),
            ("latency p99.9", fmt(lat["p99.9"], 3, "ms")),
            ("latency max", fmt(lat["max"], 3, "ms")),
            ("latency samples", fmt(lat["count"])),
        ]
    out += [
        (
            "received / expected",
            f"{chk['deliveries']:,} / {chk['expected']:,}",
        ),
        (
            "lost / duplicated / reordered",
            f"{chk['lost']:,} / {chk['duplicated']:,} / {chk['reordered']:,}",
        ),
    ]
    return out


def _idle_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("idle connections", f"{result['connected']:,} of {result['clients']:,}"),
        ("server RSS before", fmt(result["rss_before_kib"] / 1024, 1, "MiB")),
        ("server RSS after", fmt(result["rss_after_kib"] / 1024, 1, "MiB")),
        ("RSS per idle connection", fmt(result["rss_per_connection_kib"], 2, "KiB")),
        ("RSS slope (least squares)", fmt(result["rss_slope_kib"], 2, "KiB/conn")),
        (
            "server CPU per connection",
            fmt(result["server_cpu_per_connection_ms"], 3, "ms"),
        ),
    ]


def _connect_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("concurrent connectors", fmt(result["concurrency"])),
        ("handshakes/s", fmt(result["handshakes_per_s"])),
        ("handshakes per server CPU-s", fmt(result["handshakes_per_server_cpu_s"])),
        ("unclean closes", fmt(result["unclean_closes"])),
    ]


def _cpu_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            "server CPU",
            f"{fmt(result['server_cpu_s'], 2, 's')} ({fmt(result['server_cpu_pct'], 0)}%)",
        ),
        (
            "generator CPU",
            f"{fmt(result['generator_cpu_s'], 2, 's')} ({fmt(result['generator_cpu_pct'], 0)}%"
            f" of {result['generator_cores']} core"
            f"{'s' if result['generator_cores'] != 1 else ''}, "
            f"{result['generator_processes']} process"
            f"{'es' if result['generator_processes'] != 1 else ''})",
        ),
        ("saturated", result["saturated"]),
        (
            "other CPU on the machine",
            fmt(result.get("other_cpu_pct"), 0, "% of a core")
            + (" (NOISY: other processes competed for CPU)" if result.get("noisy") else ""),
        ),
    ]


def table(results: Iterable[Mapping[str, Any]]) -> str:
    """The final table: one block per scenario."""
    lines: list[str] = []
    for result in results:
        r = rows(result)
        width = max(len(k) for k, _ in r)
        title = result["scenario"] + (f" ({result['label']})" if result.get("label") else "")
        lines.append(f"== {title} ==")
        lines += [f"  {k:<{width}}  {v}" for k, v in r]
        lines.append("")
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return None
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ---------------------------------------------------------------------------
# Charts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_UNITS = {
    "fanout": "deliveries/s",
    "latency": "deliveries/s",
    "connect": "handshakes/s",
}


def plot_timeline(
    series: Mapping[str, Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Throughput over time, one line per label; the measured window starts at t=0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    scenario = ""
    for label, result in series.items():
        scenario = result["scenario"]
        line = result.get("timeline") or []
        if line:
            ax.plot([p[0] for p in line], [p[1] for p in line], label=label, linewidth=1.5)
    ax.axvline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("seconds (measured window starts at 0; before it: warm-up)")
    ax.set_ylabel(_UNITS.get(scenario, "per second"))
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_title(title or f"{scenario}: throughput over time")
    ax.grid(True, alpha=0.3)
    if len(series) > 1 or next(iter(series), ""):
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_cdf(
    series: Mapping[str, Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Latency CDF (log x axis), one line per label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    for label, result in series.items():
        cdf = result.get("cdf") or []
        if cdf:
            ax.step([p[0] for p in cdf], [p[1] for p in cdf], where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("send-to-receive latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "latency CDF")
    if series:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_rss(
    series: Mapping[str, Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Server RSS growth over idle connections, one line per label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    for label, result in series.items():
        pts = result.get("rss_points") or []
        if pts:
            base = pts[0][1]
            ax.plot(
                [p[0] for p in pts],
                [(p[1] - base) / 1024 for p in pts],
                marker="o",
                markersize=3,
                label=label,
            )
    ax.set_xlabel("idle connections")
    ax.set_ylabel("server RSS growth (MiB)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "server memory per idle connection")
    if series:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_results(results: Iterable[Mapping[str, Any]], outdir: str | Path) -> list[Path]:
    """The charts of one run (``hubbub bench --plot DIR``)."""
    outdir = Path(outdir)
    written = []
    for result in results:
        label = result.get("label") or result["scenario"]
        name = result["scenario"]
        if name in ("fanout", "latency", "connect"):
            written.append(plot_timeline({label: result}, outdir / f"{name}_throughput.png"))
        if name == "latency":
            written.append(plot_cdf({label: result}, outdir / "latency_cdf.png"))
        if name == "idle":
            written.append(plot_rss({label: result}, outdir / "idle_rss.png"))
    return written
