"""Tables (terminal and markdown) and charts of ``hubbub bench --transports``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LOAD_HEAD = (
    "N",
    "transport",
    "latency p50 ms",
    "p99 ms",
    "HTTP requests / delivery",
    "bytes / delivery",
    "server CPU µs / delivery",
    "server CPU",
    "other processes' CPU",
    "lost/dup",
)
IDLE_HEAD = (
    "N",
    "transport",
    "requests / min / client",
    "requests / s",
    "bytes / s",
    "bytes / s / client",
    "server CPU",
)


def _num(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _pct(x: float, digits: int = 0) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}%"


def load_rows(results: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for r in results:
        ld, c = r["load"], r["check"]
        lat = ld["latency_ms"]
        rows.append(
            (
                f"{r['receivers']:,}",
                r["title"],
                _num(lat["p50"], 1),
                _num(lat["p99"], 1),
                _num(ld["requests_per_delivery"], 3),
                _num(ld["bytes_per_delivery"]),
                _num(ld["server_cpu_us_per_delivery"], 1),
                _pct(ld["server_cpu_pct"]),
                _pct(ld["other_cpu_pct"]),
                f"{c['lost']}/{c['duplicated']}",
            )
        )
    return rows


def idle_rows(results: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for r in results:
        idle = r["idle"]
        rows.append(
            (
                f"{r['receivers']:,}",
                r["title"],
                _num(idle["requests_per_min_per_client"], 1),
                _num(idle["requests_per_s"], 1),
                _num(idle["bytes_per_s"]),
                _num(idle["bytes_per_s_per_client"], 1),
                _pct(idle["server_cpu_pct"], 1),
            )
        )
    return rows


def _text_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    """The terminal report: the load table, the idle table, and any errors."""
    out = [
        "under load (per delivered message):",
        _text_table(LOAD_HEAD, load_rows(results)),
        "",
        "idle (no message):",
        _text_table(IDLE_HEAD, idle_rows(results)),
    ]
    out += notes(results)
    return "\n".join(out)


def notes(results: list[dict[str, Any]]) -> list[str]:
    """One line per cell with errors, and per short-polling cell whose server ignored
    ``since`` (the pages then hold messages already seen: more bytes per delivery)."""
    out = []
    for r in results:
        where = f"{r['title']} N={r['receivers']}"
        if r["errors"]:
            out.append(f"{where}: " + "; ".join(r["errors"]))
        if r.get("timeouts"):
            out.append(
                f"{where}: {r['timeouts']} polls got no answer within 30 s (the server was "
                "saturated); each was asked again on a new connection"
            )
        if r.get("refused"):
            out.append(f"{where}: {r['refused']} polls were refused with 503 (server busy)")
        if r.get("since_ignored"):
            out.append(
                f"{where}: the server ignored ?since= in {r['since_ignored']} answers "
                "(the client filtered the pages; their bytes include messages already seen)"
            )
    return out


def _md_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 2) + "---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The two tables as markdown, with the run's options and machine."""
    o = meta["options"]
    m = meta["machine"]
    noise = max((r["load"]["other_cpu_pct"] for r in results), default=0.0)
    return "\n\n".join(
        [
            f"One sender, {o['rate']:g} messages/s of {o['size']} bytes; load window "
            f"{o['duration']:g} s after {o['warmup']:g} s of warm-up; idle window "
            f"{o['idle']:g} s. Machine: {m.get('cpu', '?')}, {m.get('nproc', '?')} CPUs; "
            f"other processes used up to {noise:.0f}% of a CPU during a load window.",
            "**Under load**, per delivered message:",
            _md_table(LOAD_HEAD, load_rows(results)),
            "**Idle** (the room is silent):",
            _md_table(IDLE_HEAD, idle_rows(results)),
            "\n".join(f"- {line}" for line in notes(results)),
        ]
    ).rstrip()


BEGIN = "<!-- transports:begin (written by hubbub bench --transports --markdown) -->"
END = "<!-- transports:end -->"


def write_markdown(path: str, text: str) -> None:
    """Write the tables to ``path``: between the :data:`BEGIN` and :data:`END` markers
    if the file has them (a page around the generated tables), else the whole file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.read_text() if target.exists() else ""
    if BEGIN in old and END in old.split(BEGIN, 1)[1]:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        target.write_text(f"{head}{BEGIN}\n\n{text}\n\n{END}{tail}")
    else:
        target.write_text(text + "\n")


def plot(results: list[dict[str, Any]], folder: str) -> list[str]:
    """push-vs-polling-{latency,bytes,cpu}.png in ``folder``; their paths. Each chart
    has two panels: latency p50 | p99, and for bytes and CPU load | idle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(r["transport"] for r in results))
    series = {
        n: sorted((r for r in results if r["transport"] == n), key=lambda r: r["receivers"])
        for n in names
    }
    paths = []
    for key, panels in _CHARTS.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110)
        for ax, (which, ylabel, scale) in zip(axes, panels, strict=True):
            for i, name in enumerate(names):
                rows = series[name]
                xs = [r["receivers"] for r in rows]
                ys = [_y(key, which, r) for r in rows]
                ax.plot(xs, ys, "-", marker="o", color=f"C{i}", label=rows[0]["title"])
            ax.set_xscale("log")
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=1.0)
                ax.set_ylim(bottom=0)
            else:
                ax.set_yscale(scale)
            ax.set_xlabel("receivers N (log)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(_chart_title(key))
        fig.tight_layout()
        path = out / f"push-vs-polling-{key}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(str(path))
    return paths


#: chart -> its two panels: (figure, y label, y scale).
_CHARTS = {
    "latency": (
        ("p50", "p50 latency, ms (log)", "log"),
        ("p99", "p99 latency, ms (log)", "log"),
    ),
    "bytes": (
        ("load", "load: bytes per delivered message", "log"),
        ("idle", "idle: bytes/s per client (symlog)", "symlog"),
    ),
    "cpu": (
        ("load", "load: server CPU µs per delivered message", "log"),
        ("idle", "idle: server CPU, % of a core (symlog)", "symlog"),
    ),
}


def _y(key: str, which: str, r: dict[str, Any]) -> float:
    if key == "latency":
        return float(r["load"]["latency_ms"][which])
    if key == "bytes":
        if which == "load":
            return float(r["load"]["bytes_per_delivery"])
        return float(r["idle"]["bytes_per_s_per_client"])
    if which == "load":
        return float(r["load"]["server_cpu_us_per_delivery"])
    return float(r["idle"]["server_cpu_pct"])


def _chart_title(key: str) -> str:
    return {
        "latency": "send-to-receipt latency vs N",
        "bytes": "bytes on the wire (both directions, HTTP heads included) vs N",
        "cpu": "server CPU vs N",
    }[key]
