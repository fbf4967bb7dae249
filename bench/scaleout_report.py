"""What bench/scaleout.py compares (the servers and scenarios) and how its results become
tables: medians with their spread over the rounds, written as markdown, into a page between
two markers (``--docs``)."""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubbub.bench import proc

#: Markers of the generated part of ``--docs`` (the tables are replaced between them).
BEGIN = "<!-- scaleout:begin (bench/scaleout.py writes between these markers) -->"
END = "<!-- scaleout:end -->"


@dataclass(frozen=True)
class Config:
    name: str
    title: str
    workers: int
    store: bool  # PostgreSQL (else the SQLite file)
    broker: bool  # Redis (else local)


CONFIGS = {
    c.name: c
    for c in (
        Config("sqlite", "1 process, SQLite + local", 1, False, False),
        Config("pg-local", "1 process, PostgreSQL + local", 1, True, False),
        Config("pg-redis", "1 worker, PostgreSQL + Redis", 1, True, True),
        Config("pg-redis-2w", "--workers 2, PostgreSQL + Redis", 2, True, True),
    )
}
#: scenario -> (protocol, fixed rate?)
SCENARIOS = {
    "fanout": ("seed", False),
    "chat_fanout": ("hubbub.v1", False),
    "steady": ("seed", True),
    "chat_steady": ("hubbub.v1", True),
}


# -- aggregation and the report ------------------------------------------------------------

METRICS = {
    "deliveries_per_s": lambda r: r["deliveries_per_s"],
    "per_cpu_s": lambda r: r["deliveries_per_server_cpu_s"],
    "us_per_delivery": lambda r: r["server_cpu_us_per_delivery"],
    "server_cores": lambda r: r["server_cores"],
    "generator_cores": lambda r: r["generator_cores"],
    "other_cores": lambda r: r["other_cores"],
    "p50": lambda r: r["latency_ms"]["p50"] if "latency_ms" in r else None,
    "p99": lambda r: r["latency_ms"]["p99"] if "latency_ms" in r else None,
}


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (scenario, config): median, min and max of each metric over the rounds that ran,
    and the checks summed over them."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["scenario"], r["config"]), []).append(r)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, rs in groups.items():
        ran = [r for r in rs if not r.get("failed_to_run")]
        agg: dict[str, Any] = {"runs": len(rs), "ran": len(ran), "ok": sum(r["ok"] for r in rs)}
        for name, get in METRICS.items():
            vals = [v for v in (get(r) for r in ran) if v is not None]
            if vals:
                agg[name] = (statistics.median(vals), min(vals), max(vals))
        agg["check"] = {
            k: sum(r["check"][k] for r in ran)
            for k in ("expected", "deliveries", "lost", "duplicated", "reordered")
        }
        agg["noisy"] = sum(bool(r.get("noisy")) for r in ran)
        agg["errors"] = sorted({e for r in rs for e in r["errors"] if e})[:3]
        agg["split"] = [r["worker_sockets"] for r in ran]
        out[key] = agg
    return out


DASH, TIMES = "\u2013", "\u00d7"


def _fmt(agg: dict[str, Any], name: str, spec: str, spread: bool = True) -> str:
    if name not in agg:
        return "n/a"
    med, lo, hi = agg[name]
    text = format(med, spec)
    if spread and agg["ran"] > 1:
        return f"{text} ({format(lo, spec)}{DASH}{format(hi, spec)})"
    return text


def _checks(agg: dict[str, Any]) -> str:
    c = agg["check"]
    text = f"{c['lost']:,}/{c['duplicated']:,}/{c['reordered']:,}"
    return text if agg["ok"] == agg["runs"] else f"{text} ({agg['runs'] - agg['ok']} failed)"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


#: Columns of the tables: (heading, metric, format, with spread); "ratio" and "checks" are
#: computed.
SATURATION_COLUMNS = [
    ("deliveries/s", "deliveries_per_s", ",.0f", True),
    ("vs 1 worker (`pg-redis`)", "ratio", "", False),
    ("deliveries per server CPU-s", "per_cpu_s", ",.0f", True),
]
STEADY_COLUMNS = [
    ("deliveries/s", "deliveries_per_s", ",.0f", False),
    ("server CPU \u00b5s per delivery", "us_per_delivery", ".2f", True),
    ("p50 ms", "p50", ".2f", True),
    ("p99 ms", "p99", ".2f", True),
]
CPU_COLUMNS = [
    ("server cores", "server_cores", ".2f", True),
    ("generator cores", "generator_cores", ".2f", True),
    ("other cores", "other_cores", ".2f", True),
    ("lost/dup/reordered", "checks", "", False),
]


def table(aggs: dict[tuple[str, str], dict[str, Any]], scenario: str) -> list[str]:
    """One scenario's table: a row per server that ran it."""
    columns = (STEADY_COLUMNS if SCENARIOS[scenario][1] else SATURATION_COLUMNS) + CPU_COLUMNS
    base = aggs.get((scenario, "pg-redis"), {}).get("deliveries_per_s")
    lines = [
        _row(["server", *(c[0] for c in columns)]),
        _row(["---", *("---" if c[1] == "checks" else "---:" for c in columns)]),
    ]
    for name, config in CONFIGS.items():
        agg = aggs.get((scenario, name))
        if agg is None:
            continue
        cells = [f"`{name}`: {config.title}"]
        for _head, metric, spec, spread in columns:
            if metric == "checks":
                cells.append(_checks(agg))
            elif metric == "ratio":
                ok = base and "deliveries_per_s" in agg
                cells.append(f"{agg['deliveries_per_s'][0] / base[0]:.2f}{TIMES}" if ok else "n/a")
            else:
                cells.append(_fmt(agg, metric, spec, spread))
        lines.append(_row(cells))
    return lines


def redis_hop_table(aggs: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    base = aggs.get(("chat_steady", "pg-local"), {}).get("p99")
    lines = [
        _row(["chat mode, fixed rate", "p99 ms", "p99 added vs `pg-local`", "target \u2264 2 ms"]),
        _row(["---", "---:", "---:", "---"]),
    ]
    for name in ("pg-local", "pg-redis", "pg-redis-2w"):
        agg = aggs.get(("chat_steady", name))
        if agg is None or "p99" not in agg:
            continue
        added = None if base is None or name == "pg-local" else agg["p99"][0] - base[0]
        met = "-" if added is None else _hop_verdict(added, agg["p99"], base)
        cells = [f"`{name}`: {CONFIGS[name].title}", _fmt(agg, "p99", ".2f")]
        lines.append(_row([*cells, "-" if added is None else f"{added:+.2f} ms", met]))
    return lines


def _hop_verdict(added: float, p99: tuple[float, ...], base: tuple[float, ...]) -> str:
    """yes or **no**; not shown when the rounds' p99 ranges overlap and are wider than the
    target: then the noise is larger than what is measured."""
    overlap = p99[1] <= base[2] and base[1] <= p99[2]
    spread = max(base[2] - base[1], p99[2] - p99[1])
    if overlap and spread > 2.0:
        return f"not shown: the rounds' p99 ranges overlap (spread up to {spread:.0f} ms)"
    return "yes" if added <= 2.0 else "**no**"


def scaleout_lines(aggs: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The saturation target, measured and as implied by the CPU cost per delivery."""
    lines = []
    for scenario in ("fanout", "chat_fanout"):
        one, two = aggs.get((scenario, "pg-redis")), aggs.get((scenario, "pg-redis-2w"))
        if not one or not two or "per_cpu_s" not in one or "per_cpu_s" not in two:
            continue
        measured = two["deliveries_per_s"][0] / one["deliveries_per_s"][0]
        implied = 2 * two["per_cpu_s"][0] / one["per_cpu_s"][0]
        lost = two["check"]["lost"]
        lines.append(
            f"- `{scenario}`: `--workers 2` delivered {measured:.2f}{TIMES} one worker's "
            f"deliveries/s (target 1.7{TIMES}), with {two['server_cores'][0]:.2f} server cores "
            f"against {one['server_cores'][0]:.2f}. Per server CPU-second, two workers "
            f"deliver {two['per_cpu_s'][0] / one['per_cpu_s'][0]:.2f}{TIMES} what one does, "
            f"so two workers with a whole core each would deliver {implied:.2f}{TIMES} one "
            "worker with one core"
            + (f" (but {lost:,} deliveries were lost: not the same work)." if lost else ".")
        )
    return lines


def _when(results: list[dict[str, Any]]) -> str:
    """When the first measurement started (now, for results recorded before this field)."""
    times = [r["started"] for r in results if "started" in r]
    return min(times) if times else time.strftime("%Y-%m-%d %H:%M")


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    aggs = aggregate(results)
    facts = proc.machine_facts()
    out = [
        f"Generated by `bench/scaleout.py` on {_when(results)} "
        f"({facts.get('cpu', '?')}, {facts.get('nproc', '?')} CPUs, Python "
        f"{facts.get('python', '?')}): {args.rounds} round(s), medians with (min{DASH}max) over "
        f"the rounds. Room of {args.clients:,} clients, {args.senders} senders, 100-byte "
        f"messages; {args.warmup:g} s warm-up, {args.duration:g} s measured; fixed rate "
        f"{args.rate:g} messages/s = {args.rate * args.clients:,.0f} deliveries/s. "
        "Cores are CPU-seconds per second of the measured window: *server* is every "
        "process of `hubbub serve` (with `--workers 2`: both workers and the supervisor), "
        "*generator* the load generator's process, *other* the rest of the machine "
        "(PostgreSQL, Redis, and anything else running: this machine is shared, see the "
        "spread). Nothing is pinned.",
        "",
    ]
    for scenario, title in (
        ("fanout", "Saturation, seed mode (plain clients, broadcast)"),
        ("chat_fanout", "Saturation, chat mode (hubbub.v1, one room)"),
        ("steady", "Fixed rate, seed mode"),
        ("chat_steady", "Fixed rate, chat mode"),
    ):
        if not any(k[0] == scenario for k in aggs):
            continue
        out += [f"### {title}", "", *table(aggs, scenario), ""]
        splits = aggs.get((scenario, "pg-redis-2w"), {}).get("split")
        if splits:
            out += [
                f"Sockets per worker with `--workers 2` (clients, store and broker "
                f"connections; one list per round): {splits}.",
                "",
            ]
    target = scaleout_lines(aggs)
    if target:
        out += ["### `--workers 2` against one worker", "", *target, ""]
    if ("chat_steady", "pg-local") in aggs:
        out += ["### The Redis hop (chat mode, fixed rate)", "", *redis_hop_table(aggs), ""]
    out += [
        "### Commands",
        "",
        "```",
        "# the runner (all of the above):",
        "python bench/scaleout.py " + " ".join(shlex.quote(a) for a in args.argv),
        "# the servers it starts (a fresh schema, prefix and file per run):",
    ]
    seen = set()
    for r in results:
        if r["config"] not in seen:
            seen.add(r["config"])
            out.append(r["argv"])
    out += ["```", ""]
    return "\n".join(out)


def write_docs(path: Path, text: str) -> None:
    """Replace the text between :data:`BEGIN` and :data:`END` of ``path`` (append both if
    the page has no markers yet)."""
    page = path.read_text() if path.exists() else ""
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        page = f"{head}{BEGIN}\n{text}\n{END}{tail}"
    else:
        page = page.rstrip("\n") + f"\n\n{BEGIN}\n{text}\n{END}\n"
    path.write_text(page)
