"""The report template: docs/benchmarks.md (or reports/bench/quick.md) from aggregated results.

The document is the list :data:`SECTIONS`: each section is a function of one
:class:`Context` that returns its markdown lines (none when the run did not
measure it). The fixed prose is in :mod:`benchrun.template`, with
``str.format`` fields for the run's figures; the tables are built here, row
by row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from .context import Context
from .report_steady import steady_section, steady_targets, steady_value, storm_section
from .running import Plan
from .servers import (
    BASELINE,
    CHAT_SCENARIOS,
    GENERATOR_CPU,
    NOFILE,
    ROOT,
    SERVER_CPU,
    SERVERS,
)
from .template import (
    CHAT_FANOUT,
    CHAT_SUMMARY,
    CONNECT,
    DASH,
    FANOUT,
    IDLE,
    INTRO,
    METHOD,
    PEERS,
    PER_CPU_NOTE,
    REPRODUCE,
    TIMES,
)

PER_CPU = "deliveries_per_server_cpu_s"
HS_CPU = "handshakes_per_server_cpu_s"
#: Copied into the report as it is (profiles measured by hand).
FINDINGS = ROOT / "bench" / "findings.md"


def render(
    plan: Plan,
    agg: dict[str, Any],
    charts: dict[str, Path],
    doc: Path,
    facts: dict[str, str],
    elapsed: float,
    command: str,
) -> str:
    """The markdown report; chart links are relative to ``doc``'s folder."""
    ctx = Context(plan, agg, charts, doc, facts, elapsed, command)
    lines: list[str] = []
    for section in SECTIONS:
        lines += section(ctx)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Cells


def _f(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{value / base:.2f}{TIMES}"


def _spread(agg: dict[str, Any], path: str, digits: int = 0, scale: float = 1.0) -> str:
    sp = agg.get(path + "#spread")
    if not sp or agg["rounds"] < 2:
        return ""
    return f" ({_f(sp[0] * scale, digits)}{DASH}{_f(sp[1] * scale, digits)})"


def _sat(agg: dict[str, Any]) -> str:
    values = [s for s in agg.get("saturated", []) if s]
    if not values:
        return "n/a"
    return max(set(values), key=values.count)


def _errors_cell(agg: dict[str, Any]) -> str:
    chk = agg.get("check")
    cells = []
    if chk is not None:
        cells.append(f"{chk['lost']}/{chk['duplicated']}/{chk['reordered']}")
        extra = {k: chk[k] for k in ("malformed", "disconnected", "echo_errors") if chk[k]}
        cells += [f"{v} {k.replace('_', ' ')}" for k, v in extra.items()]
    if agg["ok_rounds"] < agg["rounds"]:
        cells.append(f"**{agg['rounds'] - agg['ok_rounds']} round(s) with errors**")
    return ", ".join(cells) if cells else "none"


def noisy_pct() -> float:
    from hubbub.bench.options import NOISY_PCT

    return NOISY_PCT


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


# ---------------------------------------------------------------------------
# Sections, in the order of the document


def _intro(ctx: Context) -> list[str]:
    plan = ctx.plan
    text = INTRO.format(
        quick=" (**quick smoke run: not representative**)" if plan.quick else "",
        date=time.strftime("%Y-%m-%d"),
        rounds=plan.rounds,
        spread=f" with (min{DASH}max) over the rounds" if plan.rounds > 1 else "",
    )
    return ["# Benchmarks", "", text, ""]


def _targets(agg: dict[str, Any], plan: Plan) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of the issue's targets this run measured."""
    hub = agg.get("hubbub", {})
    base = agg.get(BASELINE, {})
    out: list[tuple[str, str, bool]] = []

    def ratio(scenario: str, path: str, base_scenario: str | None = None) -> float | None:
        a = hub.get(scenario, {}).get(path)
        b = base.get(base_scenario or scenario, {}).get(path)
        return a / b if a is not None and b else None

    r = ratio("fanout", PER_CPU)
    if r is not None:
        out.append(
            (f"seed fan-out per server CPU-s ≥ 1.5{TIMES} Node ws", f"{r:.2f}{TIMES}", r >= 1.5)
        )
    r = ratio("chat_fanout", PER_CPU, "fanout")
    if r is not None:
        out.append(
            (
                f"chat-mode fan-out per server CPU-s ≥ 1.0{TIMES} Node ws plain fan-out",
                f"{r:.2f}{TIMES}",
                r >= 1.0,
            )
        )
    kib = hub.get("idle", {}).get("rss_per_connection_kib")
    if kib is not None:
        out.append(("idle memory ≤ 8 KiB per connection", f"{kib:.2f} KiB", kib <= 8.0))
    r = ratio("connect", HS_CPU)
    if r is not None:
        out.append(
            (f"handshakes per server CPU-s ≥ 1.5{TIMES} Node ws", f"{r:.2f}{TIMES}", r >= 1.5)
        )
    return out


def _targets_section(ctx: Context) -> list[str]:
    targets = _targets(ctx.agg, ctx.plan) + steady_targets(ctx)
    if not targets:
        return []
    return [
        "## Targets",
        "",
        "The issue's targets, as ratios against Node ws measured in this same run.",
        "",
        *_noise_warning(ctx),
        "| target | measured | met |",
        "|---|---|---|",
        *(
            f"| {label} | {measured} | {'yes' if met else '**no**'} |"
            for label, measured, met in targets
        ),
        "",
    ]


def _noise_warning(ctx: Context) -> list[str]:
    """A warning above the targets when the machine was busy during the run."""
    results = [r for per in ctx.plan.results.values() for rs in per.values() for r in rs]
    noisy = [r for r in results if r.get("noisy")]
    if not noisy:
        return []
    others = sorted(r.get("other_cpu_pct") or 0.0 for r in noisy)
    return [
        f"**A busy machine: {len(noisy)} of the {len(results)} measurements of this run were "
        f"made while other processes used more than {noisy_pct():.0f}% of a core (median "
        f"{others[len(others) // 2]:.0f}%, up to {others[-1]:.0f}%).** CPU per delivery and "
        "per handshake hold up best under such sharing; times and latencies do not.",
        "",
    ]


#: The seed-mode summary's saturation columns: (scenario, figure, digits, unit).
_SUMMARY_CELLS = (
    ("fanout", "deliveries_per_server_cpu_s", 0, ""),
    ("idle", "rss_per_connection_kib", 2, " KiB"),
    ("connect", "handshakes_per_server_cpu_s", 0, ""),
)


_STEADY_CELLS = (("server_cpu_us_per_delivery", 2, " µs"), ("latency_ms/p99", 2, " ms"))


def _steady_cells(ctx: Context, name: str, scenario: str) -> list[str]:
    """Server CPU per delivery and p99 at the highest steady rate, with ratios to Node ws."""
    rates = ctx.plan.options.get(scenario, {}).get("rates") or []
    if scenario not in ctx.plan.scenarios or not rates:
        return []
    top = max(rates)
    cells = []
    for path, digits, unit in (
        ("server_cpu_us_per_delivery", 2, " µs"),
        ("latency_ms/p99", 2, " ms"),
    ):
        value = steady_value(ctx, name, scenario, top, path)
        base = steady_value(ctx, BASELINE, "steady", top, path)
        cells.append(f"{_f(value, digits)}{unit} ({_ratio(value, base)})" if value else "n/a")
    return cells


def _summary(ctx: Context) -> list[str]:
    agg, base = ctx.agg, ctx.base
    rates = ctx.plan.options.get("steady", {}).get("rates") or [0.0]
    top = max(rates) * ctx.plan.options.get("steady", {}).get("clients", 1000)
    steady_head = (
        f"steady {top:,.0f} deliveries/s: server CPU per delivery | steady: p99 | "
        if "steady" in ctx.plan.scenarios
        else ""
    )
    out = [
        "## Summary",
        "",
        "Seed mode: every server speaks the seed's plain text protocol. *Saturation* "
        "columns: as fast as the generator can go; *steady* columns: a fixed rate well below "
        "it, where a chat server spends its life (lower is better there).",
        "",
        "| server | saturation: fan-out deliveries / server CPU-s | "
        + steady_head
        + "RSS per idle connection | handshakes / server CPU-s |",
        "|---|---:|" + ("---:|---:|" if steady_head else "") + "---:|---:|",
    ]
    names = list(dict.fromkeys(ctx.names("fanout") + ctx.names("steady")))
    for name in names:
        row = [SERVERS[name].title]
        cells = []
        for scenario, path, digits, unit in _SUMMARY_CELLS:
            value = agg[name].get(scenario, {}).get(path)
            ratio = _ratio(value, base.get(scenario, {}).get(path))
            cells.append(f"{_f(value, digits)}{unit} ({ratio})" if value is not None else "n/a")
        steady = _steady_cells(ctx, name, "steady") if steady_head else []
        if steady_head and not steady:
            steady = ["n/a", "n/a"]
        row += cells[:1] + steady + cells[1:]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    chat_names = list(dict.fromkeys(ctx.names("chat_fanout") + ctx.names("chat_steady")))
    if chat_names and any(s in ctx.plan.scenarios for s in CHAT_SCENARIOS):
        out += [
            CHAT_SUMMARY,
            "",
            "| server | saturation: chat fan-out deliveries / server CPU-s "
            "| steady: server CPU per delivery | steady: p99 |",
            "|---|---:|---:|---:|",
        ]
        for name in chat_names:
            value = agg[name].get("chat_fanout", {}).get(PER_CPU)
            steady = _steady_cells(ctx, name, "chat_steady") or ["n/a", "n/a"]
            fan = f"{_f(value)} ({_ratio(value, base.get('fanout', {}).get(PER_CPU))})"
            out.append(
                f"| {SERVERS[name].title} | {fan if value else 'n/a'} | "
                + " | ".join(steady)
                + " |"
            )
        out.append("")
    return [*out, PER_CPU_NOTE, ""]


def _fanout_table(ctx: Context, scenario: str, servers: list[str]) -> list[str]:
    out = [
        "| server | deliveries/s | vs Node ws | deliveries per server CPU-s | vs Node ws "
        "| server CPU | generator CPU | saturated | lost/dup/reordered |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    # Chat mode is compared with Node ws's *plain* fan-out (the target).
    b = ctx.base.get("fanout", {})
    for name in servers:
        a = ctx.agg[name].get(scenario, {})
        out.append(
            f"| {SERVERS[name].title} "
            f"| {_f(a.get('deliveries_per_s'))}{_spread(a, 'deliveries_per_s')} "
            f"| {_ratio(a.get('deliveries_per_s'), b.get('deliveries_per_s'))} "
            f"| {_f(a.get('deliveries_per_server_cpu_s'))}"
            f"{_spread(a, 'deliveries_per_server_cpu_s')} "
            f"| {_ratio(a.get(PER_CPU), b.get(PER_CPU))} "
            f"| {_f(a.get('server_cpu_pct'))}% | {_f(a.get('generator_cpu_pct'))}% "
            f"| {_sat(a)} | {_errors_cell(a)} |"
        )
    return [*out, ""]


def _latency_table(ctx: Context, scenario: str, servers: list[str], base_name: str) -> list[str]:
    base_title = SERVERS[base_name].title if base_name in SERVERS else base_name
    out = [
        f"| server | p50 ms | p99 ms | p99.9 ms | p99 vs {base_title} | server CPU | "
        "generator CPU | lost/dup/reordered |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    b = ctx.agg.get(base_name, {}).get(scenario, {})
    for name in servers:
        a = ctx.agg[name].get(scenario, {})
        out.append(
            f"| {SERVERS[name].title} "
            f"| {_f(a.get('latency_ms/p50'), 2)}{_spread(a, 'latency_ms/p50', 2)} "
            f"| {_f(a.get('latency_ms/p99'), 2)}{_spread(a, 'latency_ms/p99', 2)} "
            f"| {_f(a.get('latency_ms/p99.9'), 2)}{_spread(a, 'latency_ms/p99.9', 2)} "
            f"| {_ratio(a.get('latency_ms/p99'), b.get('latency_ms/p99'))} "
            f"| {_f(a.get('server_cpu_pct'))}% | {_f(a.get('generator_cpu_pct'))}% "
            f"| {_errors_cell(a)} |"
        )
    return [*out, ""]


def _room_fields(o: dict[str, Any]) -> dict[str, Any]:
    """A room scenario's options, with the full run's values where a run left them out."""
    clients = o.get("clients", 1000)
    return {
        "clients": clients,
        "senders": o.get("senders", 10),
        "size": o.get("size", 100),
        "window": o.get("window", 4),
        "warmup": o.get("warmup"),
        "duration": o.get("duration"),
        "rate": o.get("rate"),
        "deliveries": o["rate"] * clients if "rate" in o else None,
    }


def _fanout(ctx: Context) -> list[str]:
    if "fanout" not in ctx.plan.scenarios:
        return []
    text = FANOUT.format(**_room_fields(ctx.plan.options["fanout"]))
    return [
        "## Fan-out",
        "",
        text,
        "",
        *_fanout_table(ctx, "fanout", ctx.names("fanout")),
        *ctx.chart("fanout", "fan-out throughput over time"),
    ]


def _chat_fanout(ctx: Context) -> list[str]:
    if "chat_fanout" not in ctx.plan.scenarios:
        return []
    text = CHAT_FANOUT.format(**_room_fields(ctx.plan.options["chat_fanout"]))
    return [
        "## Chat mode: fan-out",
        "",
        text,
        "",
        *_fanout_table(ctx, "chat_fanout", ctx.names("chat_fanout")),
        *ctx.chart("chat_fanout", "chat fan-out throughput over time"),
    ]


def _idle(ctx: Context) -> list[str]:
    if "idle" not in ctx.plan.scenarios:
        return []
    out = [
        "## Idle connections",
        "",
        IDLE.format(**ctx.plan.options["idle"]),
        "",
        "| server | KiB per idle connection | vs Node ws | RSS with all connections "
        "| server CPU per connection set-up | errors |",
        "|---|---:|---:|---:|---:|---|",
    ]
    b = ctx.base.get("idle", {})
    for name in ctx.names("idle"):
        a = ctx.agg[name].get("idle", {})
        rss = a.get("rss_after_kib")
        out.append(
            f"| {SERVERS[name].title} "
            f"| {_f(a.get('rss_per_connection_kib'), 2)}"
            f"{_spread(a, 'rss_per_connection_kib', 2)} "
            f"| {_ratio(a.get('rss_per_connection_kib'), b.get('rss_per_connection_kib'))} "
            f"| {_f(rss / 1024 if rss else None, 1)} MiB "
            f"| {_f(a.get('server_cpu_per_connection_ms'), 3)} ms "
            f"| {_errors_cell(a)} |"
        )
    return [*out, "", *ctx.chart("idle", "RSS over idle connections")]


def _connect(ctx: Context) -> list[str]:
    if "connect" not in ctx.plan.scenarios:
        return []
    out = [
        "## Connection rate",
        "",
        CONNECT.format(**ctx.plan.options["connect"]),
        "",
        "| server | handshakes/s | handshakes per server CPU-s | vs Node ws "
        "| server CPU | generator CPU | saturated | errors |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    b = ctx.base.get("connect", {})
    for name in ctx.names("connect"):
        a = ctx.agg[name].get("connect", {})
        out.append(
            f"| {SERVERS[name].title} "
            f"| {_f(a.get('handshakes_per_s'))}{_spread(a, 'handshakes_per_s')} "
            f"| {_f(a.get('handshakes_per_server_cpu_s'))}"
            f"{_spread(a, 'handshakes_per_server_cpu_s')} "
            f"| {_ratio(a.get(HS_CPU), b.get(HS_CPU))} "
            f"| {_f(a.get('server_cpu_pct'))}% | {_f(a.get('generator_cpu_pct'))}% "
            f"| {_sat(a)} | {_errors_cell(a)} |"
        )
    return [*out, "", *ctx.chart("connect", "connection rate over time")]


def _errors(ctx: Context) -> list[str]:
    errors = [
        f"- {SERVERS[name].title}, {scenario}: {e}"
        for name in ctx.plan.servers
        for scenario, a in ctx.agg[name].items()
        for e in a.get("errors", [])
    ]
    return ["## Errors reported", "", *errors, ""] if errors else []


def _findings(ctx: Context) -> list[str]:
    if not FINDINGS.exists():
        return []
    return [FINDINGS.read_text().rstrip(), ""]


def _servers(ctx: Context) -> list[str]:
    hubbub_results = [r for per in ctx.plan.results.get("hubbub", {}).values() for r in per]
    sources = sorted({r["hubbub_source"] for r in hubbub_results if "hubbub_source" in r})
    changed = any(r.get("hubbub_source_changed") for r in hubbub_results)
    out = ["## Servers", ""]
    if len(sources) == 1 and not changed:
        out += [f"hubbub measured at git {sources[0]}.", ""]
    elif sources:
        out += [
            "**Warning: hubbub's source changed while the benchmark ran; its results mix "
            "versions:** " + "; ".join(sources) + ".",
            "",
        ]
    out += ["| server | what runs | versions |", "|---|---|---|"]
    for name in ctx.plan.servers:
        spec = SERVERS[name]
        out.append(f"| {spec.title} | {spec.notes} | {spec.versions()} |")
    return [*out, "", PEERS, ""]


def _method(ctx: Context) -> list[str]:
    facts, agg = ctx.facts, ctx.agg
    fields = {
        "cpu": facts.get("cpu", "?"),
        "cpu_mhz": facts.get("cpu_mhz", "?"),
        "nproc": facts.get("nproc", "?"),
        "memory": facts.get("memory", "?"),
        "vm": ", a virtual machine" if facts.get("virtual_machine") == "yes" else "",
        "kernel": facts.get("kernel", "?"),
        "python": facts.get("python", "?"),
        "server_cpu": SERVER_CPU,
        "generator_cpu": GENERATOR_CPU,
        "nofile": NOFILE,
        "picows": _dist("picows"),
        "uvloop": _dist("uvloop"),
        "noisy_pct": noisy_pct(),
        "retries": ctx.plan.retries,
        "repeats": sum(a.get("repeats", 0) for per in agg.values() for a in per.values()),
        "noisy": sum(a.get("noisy_rounds", 0) for per in agg.values() for a in per.values()),
        "minutes": ctx.elapsed / 60,
        "budget": _budget_text(ctx.plan.budget_s),
        "skipped": _skipped_text(ctx.plan),
        "estimate": (
            f" (about {ctx.plan.estimate_s() / 60:.1f} without waits or repeats, "
            "estimated from its plan)"
        ),
        "rounds_text": ", ".join(
            _rounds_text(ctx.plan, s) for s in ctx.plan.scenarios if s in ctx.plan.options
        ),
    }
    return ["## Method and machine", "", *(line.format(**fields) for line in METHOD), ""]


def _skipped_text(plan: Plan) -> str:
    if not plan.skipped:
        return "none"
    names = ", ".join(
        f"{SERVERS[name].title} {scenario} round {r + 1}" for r, name, scenario in plan.skipped
    )
    return f"{len(plan.skipped)} ({names})"


def _budget_text(budget: float | None) -> str:
    if budget is None:
        return "not recorded"
    return f"{budget:.0f} s" if budget > 0 else "none: `--budget 0`"


def _rounds_text(plan: Plan, scenario: str) -> str:
    caps = plan.options[scenario].get("rounds_by_server", {})
    text = f"{scenario} {plan.rounds_of(scenario)}"
    capped = [
        f"{SERVERS[n].title} {plan.rounds_of(scenario, n)}"
        for n in caps
        if n in plan.servers and scenario in SERVERS[n].scenarios
    ]
    return text + (f" ({', '.join(capped)})" if capped else "")


def _reproduce(ctx: Context) -> list[str]:
    return [REPRODUCE.format(command=ctx.command)]


#: Sections of the document written by hand (by other work) that a new report keeps as
#: they are, at its end: from the heading to the next heading of the same level.
KEPT_HEADINGS = ("## Steady load: the compiled path",)


def _kept(ctx: Context) -> list[str]:
    try:
        text = ctx.doc.read_text()
    except OSError:
        return []
    out: list[str] = []
    for heading in KEPT_HEADINGS:
        start = text.find("\n" + heading + "\n")
        if start < 0:
            continue
        end = text.find("\n## ", start + 1 + len(heading))
        out += [text[start + 1 : end if end >= 0 else len(text)].rstrip(), ""]
    return out


SECTIONS: tuple[Callable[[Context], list[str]], ...] = (
    _intro,
    _targets_section,
    _summary,
    _fanout,
    steady_section,
    _chat_fanout,
    _idle,
    _connect,
    storm_section,
    _errors,
    _findings,
    _servers,
    _method,
    _reproduce,
    _kept,
)
