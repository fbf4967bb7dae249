"""The report's steady-rate and storm sections, and their targets (see :mod:`benchrun.report`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .servers import BASELINE, SERVERS
from .template import DASH, JOIN_STORM, RECONNECT_STORM, STEADY, TIMES

if TYPE_CHECKING:
    from .context import Context


def noisy_pct() -> float:
    from hubbub.bench.options import NOISY_PCT

    return NOISY_PCT


#: No run's p99 above this at the highest steady rate (the issue's bound on a quiet machine).
P99_RUN_MAX_MS = 15.0
#: The issue's p99 target at the highest steady rate.
P99_TARGET_MS = 5.0
#: Server CPU per delivery at the highest steady rate, against Node ws's.
CPU_TARGET = 0.65
#: Join storm targets: clients -> seconds.
JOIN_TARGETS = {2000: 2.0, 10_000: 10.0}
#: Reconnect storm target (seconds) for the full run's 10,000 clients.
RECONNECT_TARGET_S = 15.0


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{value / base:.2f}{TIMES}"


def _cell(agg: dict[str, Any], path: str, digits: int) -> str:
    """Median, then (min-max over the rounds)."""
    value = agg.get(path)
    sp = agg.get(path + "#spread")
    text = _f(value, digits)
    if sp and agg.get("rounds", 0) > 1:
        text += f" ({_f(sp[0], digits)}{DASH}{_f(sp[1], digits)})"
    return text


def rates(ctx: Context, scenario: str) -> list[float]:
    return list(ctx.plan.options.get(scenario, {}).get("rates", []))


def _part(rate: float) -> str:
    return f"r{rate:g}"


def steady_value(ctx: Context, name: str, scenario: str, rate: float, path: str) -> float | None:
    value = ctx.agg.get(name, {}).get(scenario, {}).get(f"{_part(rate)}/{path}")
    return float(value) if value is not None else None


def _check_cell(a: dict[str, Any]) -> str:
    chk = a.get("check")
    cells = []
    if chk:
        cells.append(f"{chk['lost']}/{chk['duplicated']}/{chk['reordered']}")
        cells += [
            f"{chk[k]} {k.replace('_', ' ')}"
            for k in ("malformed", "disconnected", "echo_errors")
            if chk.get(k)
        ]
    if a.get("ok_rounds", 0) < a.get("rounds", 0):
        cells.append(f"**{a['rounds'] - a['ok_rounds']} round(s) with errors**")
    return ", ".join(cells) if cells else "none"


def _steady_table(ctx: Context, scenario: str, rate: float) -> list[str]:
    """One rate: CPU per delivery and latency of every server, ratios against Node ws."""
    part = _part(rate)
    base = ctx.agg.get(BASELINE, {}).get("steady", {})
    out = [
        f"**{rate:g} messages/s** ({rate * _clients(ctx, scenario):,.0f} deliveries/s):",
        "",
        "| server | server CPU µs per delivery | vs Node ws | server CPU | p50 ms | p99 ms "
        "| p99 vs Node ws | p99.9 ms | generator CPU | other processes | runs "
        "| lost/dup/reordered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ctx.names(scenario):
        a = ctx.agg[name].get(scenario, {})
        cpu = a.get(f"{part}/server_cpu_us_per_delivery")
        p99 = a.get(f"{part}/latency_ms/p99")
        out.append(
            f"| {SERVERS[name].title} "
            f"| {_cell(a, f'{part}/server_cpu_us_per_delivery', 2)} "
            f"| {_ratio(cpu, base.get(f'{part}/server_cpu_us_per_delivery'))} "
            f"| {_f(a.get(f'{part}/server_cpu_pct'))}% "
            f"| {_cell(a, f'{part}/latency_ms/p50', 2)} "
            f"| {_cell(a, f'{part}/latency_ms/p99', 2)} "
            f"| {_ratio(p99, base.get(f'{part}/latency_ms/p99'))} "
            f"| {_cell(a, f'{part}/latency_ms/p99.9', 2)} "
            f"| {_f(a.get(f'{part}/generator_cpu_pct'))}% "
            f"| {_f(a.get(f'{part}/other_cpu_pct'))}% "
            f"| {a.get('rounds', 0)} | {_check_cell(a)} |"
        )
    return [*out, ""]


def _clients(ctx: Context, scenario: str) -> int:
    return int(ctx.plan.options.get(scenario, {}).get("clients", 1000))


def steady_section(ctx: Context) -> list[str]:
    out: list[str] = []
    for scenario, title in (("steady", "seed mode"), ("chat_steady", "chat mode")):
        if scenario not in ctx.plan.scenarios or not rates(ctx, scenario):
            continue
        o = ctx.plan.options[scenario]
        out += [
            f"## Steady load, {title}",
            "",
            STEADY.format(
                clients=o.get("clients", 1000),
                senders=o.get("senders", 10),
                size=o.get("size", 100),
                rates=" and ".join(f"{r:g}" for r in o["rates"]),
                warmup=o.get("warmup", 1.0),
                duration=o.get("duration", 4.0),
                noisy=noisy_pct(),
                mode=(
                    "the seed's plain text"
                    if scenario == "steady"
                    else "`hubbub.v1` for hubbub (each message validated, numbered and stored "
                    "in SQLite before it is delivered) and socket.io events for Node socket.io "
                    "(numbered, acked, stored nowhere); the ratios are against Node ws's "
                    "seed-mode figures above"
                ),
            ),
            "",
        ]
        for rate in rates(ctx, scenario):
            out += _steady_table(ctx, scenario, rate)
        out += ctx.chart(scenario, f"{title} latency CDF at {max(rates(ctx, scenario)):g}/s")
    return out


def storm_section(ctx: Context) -> list[str]:
    out: list[str] = []
    if "join_storm" in ctx.plan.scenarios:
        out += _join_storm(ctx)
    if "reconnect_storm" in ctx.plan.scenarios:
        out += _reconnect_storm(ctx)
    return out


def _join_storm(ctx: Context) -> list[str]:
    sizes = ctx.plan.options["join_storm"]["sizes"]
    base = ctx.agg.get(BASELINE, {}).get("join_storm", {})
    out = [
        "## Join storm",
        "",
        JOIN_STORM,
        "",
        "| server | clients | all joined (s) | vs Node ws | presence converged (s) "
        "| server CPU-s | vs Node ws | generator CPU | runs | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ctx.names("join_storm"):
        a = ctx.agg[name].get("join_storm", {})
        for n in sizes:
            p = f"n{n}"
            out.append(
                f"| {SERVERS[name].title} | {n:,} "
                f"| {_cell(a, f'{p}/joined_s', 2)} "
                f"| {_ratio(a.get(f'{p}/joined_s'), base.get(f'{p}/joined_s'))} "
                f"| {_cell(a, f'{p}/converged_s', 2)} "
                f"| {_cell(a, f'{p}/server_cpu_s', 2)} "
                f"| {_ratio(a.get(f'{p}/server_cpu_s'), base.get(f'{p}/server_cpu_s'))} "
                f"| {_f(a.get(f'{p}/generator_cpu_pct'))}% "
                f"| {a.get('rounds', 0)} | {_errors(a, p)} |"
            )
    return [*out, ""]


def _errors(a: dict[str, Any], part: str | None = None) -> str:
    errors = [e for e in a.get("errors", []) if part is None or e.startswith(part + ":")]
    if a.get("ok_rounds", 0) < a.get("rounds", 0) and errors:
        return f"**{len(errors)} error(s)**, see below"
    return "none"


def _reconnect_storm(ctx: Context) -> list[str]:
    o = ctx.plan.options["reconnect_storm"]
    base = ctx.agg.get(BASELINE, {}).get("reconnect_storm", {})
    out = [
        "## Reconnect storm",
        "",
        RECONNECT_STORM.format(**o),
        "",
        "| server | clients | all resumed (s) | vs Node ws | server CPU-s | vs Node ws "
        "| generator CPU | runs | gaps/duplicated/bad resumed/lost | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name in ctx.names("reconnect_storm"):
        a = ctx.agg[name].get("reconnect_storm", {})
        chk = a.get("check") or {}
        checks = (
            f"{chk['gaps']}/{chk['duplicated']}/{chk['bad_resume']}/{chk['lost']}"
            if SERVERS[name].storm_protocol != "seed" and chk
            else "n/a (no resume)"
        )
        out.append(
            f"| {SERVERS[name].title} | {o['clients']:,} "
            f"| {_cell(a, 'resumed_s', 2)} "
            f"| {_ratio(a.get('resumed_s'), base.get('resumed_s'))} "
            f"| {_cell(a, 'server_cpu_s', 2)} "
            f"| {_ratio(a.get('server_cpu_s'), base.get('server_cpu_s'))} "
            f"| {_f(a.get('generator_cpu_pct'))}% "
            f"| {a.get('rounds', 0)} | {checks} | {_errors(a)} |"
        )
    return [*out, ""]


def steady_targets(ctx: Context) -> list[tuple[str, str, bool]]:
    """The issue's steady-rate and storm targets this run measured: (target, measured, met)."""
    out: list[tuple[str, str, bool]] = []
    for scenario, mode in (("steady", "seed mode"), ("chat_steady", "chat mode")):
        if scenario not in ctx.plan.scenarios or not rates(ctx, scenario):
            continue
        top = max(rates(ctx, scenario))
        deliveries = top * _clients(ctx, scenario)
        cpu = steady_value(ctx, "hubbub", scenario, top, "server_cpu_us_per_delivery")
        node = steady_value(ctx, BASELINE, "steady", top, "server_cpu_us_per_delivery")
        if cpu is not None and node:
            out.append(
                (
                    f"{mode}, {deliveries:,.0f} deliveries/s: server CPU per delivery "
                    f"≤ {CPU_TARGET}{TIMES} Node ws",
                    f"{cpu / node:.2f}{TIMES} ({cpu:.2f} vs {node:.2f} µs)",
                    cpu / node <= CPU_TARGET,
                )
            )
        a = ctx.agg.get("hubbub", {}).get(scenario, {})
        p99 = a.get(f"{_part(top)}/latency_ms/p99")
        sp = a.get(f"{_part(top)}/latency_ms/p99#spread")
        if p99 is not None:
            worst = sp[1] if sp else p99
            out.append(
                (
                    f"{mode}, {deliveries:,.0f} deliveries/s: p99 ≤ {P99_TARGET_MS:g} ms "
                    f"(median), no run above {P99_RUN_MAX_MS:g} ms",
                    f"{p99:.2f} ms (worst run {worst:.2f} ms)",
                    p99 <= P99_TARGET_MS and worst <= P99_RUN_MAX_MS,
                )
            )
    out += _storm_targets(ctx)
    return out


def _storm_targets(ctx: Context) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    a = ctx.agg.get("hubbub", {}).get("join_storm", {})
    for n, limit in JOIN_TARGETS.items():
        joined = a.get(f"n{n}/joined_s")
        if joined is None:
            continue
        bad = [e for e in a.get("errors", []) if e.startswith(f"n{n}:")]
        out.append(
            (
                f"join storm: {n:,} clients joined, presence converged, within {limit:g} s",
                f"{joined:.2f} s" + (" (with errors)" if bad else ""),
                joined <= limit and not bad,
            )
        )
    a = ctx.agg.get("hubbub", {}).get("reconnect_storm", {})
    resumed = a.get("resumed_s")
    if resumed is not None:
        n = ctx.plan.options["reconnect_storm"]["clients"]
        chk = a.get("check") or {}
        clean = not any(chk.values()) and a.get("ok_rounds") == a.get("rounds")
        out.append(
            (
                f"reconnect storm: {n:,} clients resumed (no gap, no duplicate) within "
                f"{RECONNECT_TARGET_S:g} s",
                f"{resumed:.2f} s" + ("" if clean else " (with errors)"),
                resumed <= RECONNECT_TARGET_S and clean,
            )
        )
    return out
