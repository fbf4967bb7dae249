"""What bench/scaleout.py compares (the servers, the scenarios and which servers each
scenario interleaves) and how its results become tables: medians with their spread over
the rounds, paired comparisons (round by round, or node by node within one window) with a
bootstrap interval of their median, written as markdown into a page between two markers
(``--docs``)."""

from __future__ import annotations

import argparse
import math
import random
import shlex
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchrun.cluster import CONFIGS

from hubbub.bench import proc

#: Markers of the generated part of ``--docs`` (the tables are replaced between them).
BEGIN = "<!-- scaleout:begin (bench/scaleout.py writes between these markers) -->"
END = "<!-- scaleout:end -->"


#: scenario -> (protocol, fixed rate?)
SCENARIOS = {
    "fanout": ("seed", False),
    "chat_fanout": ("hubbub.v1", False),
    "steady": ("seed", True),
    "chat_steady": ("hubbub.v1", True),
}
#: The servers each scenario interleaves, round after round (all up at once, each with
#: its room connected; one measured window each per round).
BLOCKS = {
    "fanout": ("pg-redis", "pg-redis-2w"),
    "chat_fanout": ("pg-redis", "pg-redis-2w"),
    "steady": ("pg-redis", "pg-redis-2w"),
    "chat_steady": ("pg-local", "pg-redis", "pg-redis-2w", "pg-redis-2n"),
}
#: The scale-out target (deliveries/s of --workers 2 against one worker), the Redis
#: hop's (milliseconds added to p99).
WORKERS_TARGET = 1.7
HOP_TARGET_MS = 2.0
ONE, TWO = "pg-redis", "pg-redis-2w"
DASH, TIMES, MU = "\u2013", "\u00d7", "\u00b5"


# -- statistics ------------------------------------------------------------------------------


def bootstrap_median_ci(
    values: list[float], level: float = 0.95, resamples: int = 4000, seed: int = 1
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (repeatable: fixed seed)."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    k = len(values)
    meds = sorted(statistics.median(rng.choices(values, k=k)) for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    lo = meds[int(tail * resamples)]
    hi = meds[min(resamples - 1, int((1.0 - tail) * resamples))]
    return lo, hi


def _latency(r: dict[str, Any], key: str, worker: int | None = None) -> float | None:
    if worker is not None:
        per = r.get("latency_ms_by_worker") or []
        return per[worker].get(key) if worker < len(per) else None
    lat = r.get("latency_ms")
    return lat.get(key) if lat else None


METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "deliveries_per_s": lambda r: r.get("deliveries_per_s"),
    "per_cpu_s": lambda r: r.get("deliveries_per_server_cpu_s"),
    "us_per_delivery": lambda r: r.get("server_cpu_us_per_delivery"),
    "server_cores": lambda r: r.get("server_cores"),
    "generator_cores": lambda r: r.get("generator_cores"),
    "redis_cores": lambda r: r.get("redis_cores"),
    "other_cores": lambda r: r.get("other_cores"),
    "p50": lambda r: _latency(r, "p50"),
    "p99": lambda r: _latency(r, "p99"),
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
        agg["split"] = next((r["worker_sockets"] for r in ran if r.get("worker_sockets")), None)
        out[key] = agg
    return out


def paired(
    results: list[dict[str, Any]],
    scenario: str,
    a: str,
    b: str,
    get: Callable[[dict[str, Any]], float | None],
    op: Callable[[float, float], float],
) -> list[float]:
    """``op(value of b, value of a)`` for every round in which both ran (b against a in
    the same round: their windows were next to each other)."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        if r["scenario"] == scenario and not r.get("failed_to_run"):
            by_round.setdefault(r["round"], {})[r["config"]] = r
    out = []
    for rnd in sorted(by_round):
        pair = by_round[rnd]
        if a in pair and b in pair:
            va, vb = get(pair[a]), get(pair[b])
            if va is not None and vb is not None and not (op is _ratio and va == 0):
                out.append(op(vb, va))
    return out


def _diff(b: float, a: float) -> float:
    return b - a


def _ratio(b: float, a: float) -> float:
    return b / a


def within_window(
    results: list[dict[str, Any]], scenario: str, config: str, key: str
) -> list[float]:
    """Node 2's receivers minus node 1's (the senders' node), window by window."""
    out = []
    for r in results:
        if r["scenario"] == scenario and r["config"] == config and not r.get("failed_to_run"):
            local, remote = _latency(r, key, 0), _latency(r, key, 1)
            if local is not None and remote is not None:
                out.append(remote - local)
    return out


# -- the tables ------------------------------------------------------------------------------


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


#: Columns of the tables: (heading, metric, format, with spread); "checks" is computed.
SATURATION_COLUMNS = [
    ("deliveries/s", "deliveries_per_s", ",.0f", True),
    ("deliveries per server CPU-s", "per_cpu_s", ",.0f", True),
]
STEADY_COLUMNS = [
    ("deliveries/s", "deliveries_per_s", ",.0f", False),
    (f"server CPU {MU}s per delivery", "us_per_delivery", ".2f", True),
    ("p50 ms", "p50", ".2f", True),
    ("p99 ms", "p99", ".2f", True),
]
CPU_COLUMNS = [
    ("server cores", "server_cores", ".2f", True),
    ("generator cores", "generator_cores", ".2f", True),
    ("Redis cores", "redis_cores", ".3f", True),
    ("other cores", "other_cores", ".2f", True),
    ("lost/dup/reordered", "checks", "", False),
]


def table(aggs: dict[tuple[str, str], dict[str, Any]], scenario: str) -> list[str]:
    """One scenario's table: a row per server that ran it."""
    columns = (STEADY_COLUMNS if SCENARIOS[scenario][1] else SATURATION_COLUMNS) + CPU_COLUMNS
    lines = [
        _row(["server", "windows", *(c[0] for c in columns)]),
        _row(["---", "---:", *("---" if c[1] == "checks" else "---:" for c in columns)]),
    ]
    for name, config in CONFIGS.items():
        agg = aggs.get((scenario, name))
        if agg is None:
            continue
        cells = [f"`{name}`: {config.title}", f"{agg['ran']}"]
        for _head, metric, spec, spread in columns:
            cells.append(_checks(agg) if metric == "checks" else _fmt(agg, metric, spec, spread))
        lines.append(_row(cells))
    if aggs.get((scenario, TWO), {}).get("split"):
        lines += [
            "",
            f"Sockets per worker with `--workers 2` (clients, store and broker connections): "
            f"{aggs[(scenario, TWO)]['split']}.",
        ]
    return lines


def _spread(values: list[float], spec: str, unit: str = "") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{format(med, spec)}{unit}"
    return (
        f"{format(med, spec)}{unit} ({format(min(values), spec)}{DASH}{format(max(values), spec)})"
    )


def workers_lines(results: list[dict[str, Any]], aggs: dict[tuple[str, str], Any]) -> list[str]:
    """--workers 2 against one worker, round by round, and what the cores went to."""
    lines = []
    for scenario in SCENARIOS:
        one, two = aggs.get((scenario, ONE)), aggs.get((scenario, TWO))
        if not one or not two or "server_cores" not in one or "server_cores" not in two:
            continue
        per_cpu = paired(results, scenario, ONE, TWO, METRICS["per_cpu_s"], _ratio)
        if not SCENARIOS[scenario][1]:
            rate = paired(results, scenario, ONE, TWO, METRICS["deliveries_per_s"], _ratio)
            head = (
                f"- `{scenario}` (saturation): `--workers 2` delivered "
                f"{_spread(rate, '.2f', TIMES)} one worker's deliveries/s (target "
                f"{WORKERS_TARGET}{TIMES}; median of {len(rate)} rounds, each the ratio of two "
                f"windows next to each other)."
            )
        else:
            p99 = paired(results, scenario, ONE, TWO, METRICS["p99"], _diff)
            head = (
                f"- `{scenario}` (fixed rate, same deliveries/s): p99 with `--workers 2` minus "
                f"one worker's: {_spread(p99, '+.2f', ' ms')} over {len(p99)} rounds."
            )
        if per_cpu and not SCENARIOS[scenario][1]:
            head += (
                f" Per server CPU-second it delivers {_spread(per_cpu, '.2f', TIMES)} what one "
                "worker does: with a whole core for each worker (and the generator, PostgreSQL "
                f"and Redis elsewhere) two workers would deliver about "
                f"{2 * statistics.median(per_cpu):.2f}{TIMES} one worker on one core."
            )
        elif per_cpu:
            cost = [1 / x for x in per_cpu if x]
            head += (
                f" Server CPU per delivery: {_spread(cost, '.2f', TIMES)} one worker's (the "
                "work that crossing Redis adds, spread over two processes)."
            )
        lines.append(head)
        lines.append("  " + _cores_text(one, two, scenario))
    return lines


def _cores(a: dict[str, Any]) -> str:
    parts = [
        f"{name} {a[key][0]:.{3 if key == 'redis_cores' else 2}f}"
        for name, key in (
            ("server", "server_cores"),
            ("generator", "generator_cores"),
            ("Redis", "redis_cores"),
            ("other", "other_cores"),
        )
        if key in a
    ]
    keys = ("server_cores", "generator_cores", "redis_cores", "other_cores")
    total = sum(a[k][0] for k in keys if k in a)
    return ", ".join(parts) + f" (all busy: {total:.2f} of 2)"


def costs(a: dict[str, Any]) -> dict[str, float]:
    """CPU microseconds per delivery of the server, the generator and Redis (medians)."""
    d = a["deliveries_per_s"][0]
    out = {}
    for side in ("server", "generator", "redis"):
        key = f"{side}_cores"
        out[side] = a[key][0] / d * 1e6 if key in a and d else 0.0
    return out


def ceiling(c: dict[str, float], servers: int, generators: int = 1) -> tuple[float, str]:
    """The most deliveries/s a quiet 2-core machine allows at these costs per delivery, and
    what bounds it: each server process and each generator process can use one core at
    most, and all of them (with Redis) two."""
    gen = "the generator's one core" if generators == 1 else "the generator's cores"
    bounds = [
        (servers * 1e6 / c["server"] if c["server"] else math.inf, "the server's cores"),
        (generators * 1e6 / c["generator"] if c["generator"] else math.inf, gen),
        (2e6 / sum(c.values()) if sum(c.values()) else math.inf, "the machine's two cores"),
    ]
    return min(bounds)


def _cores_text(one: dict[str, Any], two: dict[str, Any], scenario: str) -> str:
    """Where the machine's cores went in both windows, and the most a quiet 2-core machine
    would give each at the costs per delivery measured."""
    text = f"Cores (medians): one worker: {_cores(one)}; `--workers 2`: {_cores(two)}."
    if SCENARIOS[scenario][1] or "deliveries_per_s" not in one or "deliveries_per_s" not in two:
        return text
    c1, c2 = costs(one), costs(two)
    (d1, why1), (d2, why2) = ceiling(c1, 1), ceiling(c2, 2)
    (e1, _), (e2, why3) = ceiling(c1, 1, 2), ceiling(c2, 2, 2)
    return text + (
        f" CPU per delivery ({MU}s): one worker: server {c1['server']:.2f}, generator "
        f"{c1['generator']:.2f}, Redis {c1['redis']:.3f}; `--workers 2`: server "
        f"{c2['server']:.2f}, generator {c2['generator']:.2f}, Redis {c2['redis']:.3f}. "
        f"On a quiet 2-core machine at these costs one worker would reach at most "
        f"{d1:,.0f} deliveries/s (bound: {why1}) and two workers {d2:,.0f} (bound: {why2}): "
        f"**{d2 / d1:.2f}{TIMES}** at best; with the generator spread over both cores, "
        f"{e2 / e1:.2f}{TIMES} (bound: {why3})."
    )


def _verdict(ci: tuple[float, float]) -> str:
    lo, hi = ci
    if hi <= HOP_TARGET_MS:
        return "yes"
    if lo > HOP_TARGET_MS:
        return "**no**"
    return f"not decided (the interval spans {HOP_TARGET_MS:g} ms)"


def hop_table(results: list[dict[str, Any]]) -> list[str]:
    """The Redis hop: paired differences, their median and its bootstrap 95% interval."""
    rows = []
    for b, what in (
        ("pg-redis", "one node on Redis against `pg-local` (same round)"),
        ("pg-redis-2n", "two nodes on Redis against `pg-local` (same round)"),
        ("pg-redis-2w", "`--workers 2` against `pg-local` (same round)"),
    ):
        for key in ("p50", "p99"):
            diffs = paired(results, "chat_steady", "pg-local", b, METRICS[key], _diff)
            if diffs:
                rows.append((f"`{b}`: {what}", key, diffs))
    for key in ("p50", "p99"):
        diffs = within_window(results, "chat_steady", "pg-redis-2n", key)
        if diffs:
            what = "`pg-redis-2n`: node 2's receivers against node 1's (same window)"
            rows.append((what, key, diffs))
    if not rows:
        return []
    lines = [
        _row(
            [
                "comparison",
                "",
                "pairs",
                "added ms, median (min\u2013max)",
                "95% interval of the median",
                "worse in",
                f"p99 target \u2264 {HOP_TARGET_MS:g} ms met",
            ]
        ),
        _row(["---", "---", "---:", "---:", "---:", "---:", "---"]),
    ]
    for what, key, diffs in rows:
        ci = bootstrap_median_ci(diffs)
        worse = sum(d > 0 for d in diffs)
        lines.append(
            _row(
                [
                    what,
                    key,
                    str(len(diffs)),
                    _spread(diffs, "+.2f"),
                    f"{ci[0]:+.2f} to {ci[1]:+.2f}",
                    f"{worse} of {len(diffs)}",
                    _verdict(ci) if key == "p99" else "-",
                ]
            )
        )
    return lines


# -- the page --------------------------------------------------------------------------------

TITLES = {
    "fanout": "Saturation, seed mode (plain clients, one broadcast room)",
    "chat_fanout": "Saturation, chat mode (hubbub.v1, one room)",
    "steady": "Fixed rate, seed mode",
    "chat_steady": "Fixed rate, chat mode (and the Redis hop)",
}


def _when(results: list[dict[str, Any]]) -> str:
    """When the first measurement started (now, for results recorded before this field)."""
    times = [r["started"] for r in results if "started" in r]
    return min(times) if times else time.strftime("%Y-%m-%d %H:%M")


def _intro(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    facts = proc.machine_facts()
    took = f" It took {args.elapsed / 60:.1f} minutes." if getattr(args, "elapsed", None) else ""
    return [
        f"Generated by `bench/scaleout.py` on {_when(results)} ({facts.get('cpu', '?')}, "
        f"{facts.get('nproc', '?')} CPUs, Python {facts.get('python', '?')}).{took} "
        f"A room of {args.clients:,} clients, {args.senders} senders, 100-byte messages; "
        f"fixed rate {args.rate:g} messages/s = {args.rate * args.clients:,.0f} deliveries/s.",
        "",
        "How it is measured: for each scenario, every server it compares is started at once "
        "(each on its own PostgreSQL schema and Redis key prefix, removed after) and gets its "
        "own connected room; then, round after round, each server has one measured window "
        f"({args.warmup:g} s warm-up, {args.duration:g} s measured) while the other rooms sit "
        "idle, the order alternating (A B, B A, ...), so that whatever else the machine does "
        f"falls on every server alike. Medians over the windows with (min{DASH}max). Nothing is "
        "pinned: `--workers 2` needs both cores. *Cores* are CPU-seconds per second of the "
        "window: *server* is every process of the server (with `--workers 2` both workers and "
        "the supervisor), *generator* the load generator's processes, *Redis* the "
        "`redis-server` process (its pid from `INFO server`; it serves other programs too), "
        "*other* the rest of the machine (PostgreSQL, the idle rooms, anything else running).",
        "",
        "`pg-redis-2n` is two `hubbub serve` processes on their own ports, on the same "
        "PostgreSQL schema and Redis prefix (what `--workers 2` starts, with the clients "
        "placed by the generator instead of the kernel): the generator's first process "
        "connects half of the room, every sender included, to node 1, the second process "
        "the other half to node 2. A message reaches node 1's receivers from node 1 itself and "
        "node 2's through Redis, in the same window: the difference between the two halves' "
        "latencies is the Redis hop, with everything else (the machine's load, the room, the "
        "pass over 500 receivers) the same.",
        "",
    ]


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    aggs = aggregate(results)
    out = _intro(results, args)
    for scenario, title in TITLES.items():
        if not any(k[0] == scenario for k in aggs):
            continue
        out += [f"### {title}", "", *table(aggs, scenario), ""]
    target = workers_lines(results, aggs)
    if target:
        out += ["### `--workers 2` against one worker", "", *target, ""]
    hop = hop_table(results)
    if hop:
        out += [
            "### The Redis hop (chat mode, fixed rate)",
            "",
            "Added latency, in pairs: two servers' windows of the same round, or the two "
            "nodes' receivers in the same window. The interval is a bootstrap (4,000 "
            "resamples of the pairs) of the median difference: the target is met when the "
            f"whole interval is at most {HOP_TARGET_MS:g} ms, missed when all of it is above.",
            "",
            *hop,
            "",
        ]
    out += _commands(results, args)
    return "\n".join(out)


def _commands(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    out = [
        "### Commands",
        "",
        "```",
        "# the runner (all of the above):",
        ".venv/bin/python bench/scaleout.py " + " ".join(shlex.quote(a) for a in args.argv),
        "# the servers it starts (a fresh schema, prefix and file per scenario):",
    ]
    seen = set()
    for r in results:
        if r["config"] not in seen and r.get("argv"):
            seen.add(r["config"])
            out.append(r["argv"])
    return [*out, "```", ""]


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
