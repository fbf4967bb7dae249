"""Planning and running: which server runs which scenario with which options, in what order,
each measurement in a fresh server process, again when the machine was busy."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .servers import (
    CHAT_SCENARIOS,
    GENERATOR_CPU,
    SERVERS,
    STORM_SCENARIOS,
    ServerProcess,
    ServerSpec,
    hubbub_source,
)

#: ``--budget``'s default: with ``bench/scaleout.py``'s (245 s) and make's own work, a
#: full ``make bench`` stays within 15 minutes (10:35 + 4:05 of plans).
DEFAULT_BUDGET_S = 635.0
#: ``--budget``'s default with ``--quick`` (a plan of about 2.5 minutes).
QUICK_BUDGET_S = 240.0
#: Seconds of a measurement besides its windows, measured on the 2-core VM of the
#: reports (other work running): a server's start and stop, connecting a room (per
#: client; chat clients also join), a window's start offset and the receivers' check,
#: the storms' time per client (chat: handshake, join, presence or resume; seed: the
#: handshake and greeting only).
START_S = 0.8
CONNECT_S = {"seed": 0.0015, "chat": 0.002}
WINDOW_S = 0.4
JOIN_S = {"seed": 0.0003, "chat": 0.0012}
RECONNECT_S = {"seed": 0.0004, "chat": 0.0038}
IDLE_S = 0.0006


@dataclass
class Plan:
    """What a run measures; ``rounds`` is the most rounds any scenario has."""

    rounds: int
    servers: list[str]
    scenarios: list[str]
    options: dict[str, dict[str, Any]]
    quick: bool
    retries: int = 2
    #: Seconds the whole run should take: waiting for a quiet machine and repeating a
    #: noisy measurement happen only while the rest of the plan still fits in them.
    budget_s: float | None = DEFAULT_BUDGET_S
    #: Rounds of a scenario whose options do not say (``rounds``).
    default_rounds: int = 3
    results: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    #: (round, server, scenario) of the measurements skipped to keep to the budget.
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def rounds_of(self, scenario: str, server: str | None = None) -> int:
        """Rounds of ``scenario`` (of ``server``'s measurements, if its options cap them)."""
        o = self.options.get(scenario, {})
        rounds = int(o.get("rounds", self.default_rounds))
        return min(rounds, int(o.get("rounds_by_server", {}).get(server, rounds)))

    def floor(self, scenario: str, server: str) -> int:
        """Rounds of ``scenario`` against ``server`` that are run even behind the budget."""
        o = self.options.get(scenario, {})
        rounds = self.rounds_of(scenario, server)
        if server in o.get("rounds_by_server", {}):
            return min(1, rounds)
        return min(rounds, int(o.get("min_rounds", rounds)))

    def measurements(self) -> list[tuple[int, str, str]]:
        """(round, server, scenario) of every measurement, in the order they run."""
        out = []
        for r in range(self.rounds):
            for name in server_order(self.servers, r):
                for scenario in self.scenarios:
                    if scenario in SERVERS[name].scenarios and r < self.rounds_of(scenario, name):
                        out.append((r, name, scenario))
        return out

    def estimate_s(self) -> float:
        """How long the plan takes on this machine without waits or repeats."""
        return sum(estimate(self, name, scenario) for _r, name, scenario in self.measurements())


def estimate(plan: Plan, name: str, scenario: str) -> float:
    """Seconds one measurement of ``scenario`` against server ``name`` takes (see above)."""
    o = plan.options[scenario]
    spec = SERVERS[name]
    if scenario in STORM_SCENARIOS:
        kind = "chat" if spec.storm_protocol != "seed" else "seed"
    else:
        kind = "chat" if scenario in CHAT_SCENARIOS else "seed"
    room = CONNECT_S[kind] * o.get("clients", 0)
    window = o.get("warmup", 1.0) + o.get("duration", 5.0) + WINDOW_S
    if scenario == "idle":
        return START_S + 2.0 + IDLE_S * o["idle_clients"]
    if scenario == "connect":
        return START_S + window
    if scenario == "join_storm":
        return START_S + sum(0.5 + JOIN_S[kind] * n for n in o["sizes"])
    if scenario == "reconnect_storm":
        return 2 * START_S + 2.0 + RECONNECT_S[kind] * o["clients"]
    if "rates" in o:
        return START_S + room + len(o["rates"]) * window
    return START_S + room + window


def make_plan(args: argparse.Namespace) -> Plan:
    """What runs: each scenario's options, and its rounds (``rounds`` in its options).

    Steady rates vary most from run to run (p99 above all), so they get the most
    rounds; memory per idle connection varies least.
    """
    if args.quick:
        room = {"clients": 200, "senders": 4, "window": 4, "duration": 2.0, "warmup": 0.5}
        options: dict[str, dict[str, Any]] = {
            "fanout": room,
            "steady": {**room, "rates": [20.0, 80.0], "rounds": 2},
            "idle": {"idle_clients": 2000, "idle_steps": 4},
            "connect": {"duration": 2.0, "warmup": 0.5, "connect_concurrency": 32},
            "chat_fanout": room,
            "chat_steady": {**room, "rates": [20.0, 80.0], "rounds": 2},
            "join_storm": {"sizes": [200, 1000]},
            "reconnect_storm": {"clients": 1000, "rooms": 10, "history": 20, "missed": 10},
        }
    else:
        options = full_options(args)
    rounds = args.rounds if args.rounds else (1 if args.quick else 3)
    if args.rounds:
        for o in options.values():
            o.pop("rounds", None)
            o.pop("rounds_by_server", None)
            o.pop("min_rounds", None)
    return Plan(
        rounds=max([rounds, *(o.get("rounds", 0) for o in options.values())]),
        servers=args.servers,
        scenarios=args.scenarios,
        options=options,
        quick=args.quick,
        retries=args.retries,
        budget_s=(
            args.budget
            if args.budget is not None
            else (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
        ),
        default_rounds=rounds,
    )


def full_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The full run's scenarios. ``rounds``: how many; ``min_rounds``: how many are kept when
    the run falls behind its budget (the rest are skipped: see :func:`execute`). The
    steady rates are never cut (the issue asks for 5 rounds); a server whose rounds are
    capped (``rounds_by_server``) is no peer, and one round is its floor."""
    room = {"clients": 1000, "senders": 10, "window": 4, "size": 100}
    # The steady rates, 5 rounds each (p99 varies most from run to run).
    # hubbub without its compiled path is no peer: 3 rounds show what that path buys.
    steady = {
        **room,
        "rates": [20.0, 80.0],
        "duration": 2.5,
        "warmup": 1.0,
        "rounds": 5,
        "rounds_by_server": {"hubbub_nospeedups": 2},
    }
    # Saturation: what varies least between rounds (deliveries per server CPU-second)
    # needs neither many rounds nor long windows.
    saturation = {**room, "duration": args.duration, "warmup": 1.0, "rounds": 2, "min_rounds": 1}
    return {
        "fanout": saturation,
        "steady": steady,
        # Memory per idle connection varies by less than 1% between rounds.
        "idle": {"idle_clients": 10_000, "idle_steps": 10, "rounds": 1},
        # Node's JIT needs about 2 s of this load to reach its steady rate
        # (seen in the connection-rate chart); measured before that, Node ws,
        # the baseline of every ratio, would look slower than it is.
        "connect": {
            "duration": args.duration,
            "warmup": 2.5,
            "connect_concurrency": 32,
            "min_rounds": 2,
        },
        "chat_fanout": saturation,
        "chat_steady": steady,
        # Two rounds of each storm (a hubbub reconnect storm takes 20 to 90 s here); one is
        # enough for the ratio against Node ws when the run is behind its budget.
        "join_storm": {"sizes": [1000, 2000, 10_000], "rounds": 2, "min_rounds": 1},
        "reconnect_storm": {
            "clients": 10_000,
            "rooms": 10,
            "history": 50,
            "missed": 20,
            "rounds": 2,
            "min_rounds": 1,
        },
    }


def server_order(servers: list[str], round_index: int) -> list[str]:
    """Round 0 as given, round 1 reversed, round 2 rotated by one, ... ."""
    k = round_index % len(servers)
    order = servers[k:] + servers[:k]
    if round_index % 2 == 1:
        order.reverse()
    return order


def run_one(
    spec: ServerSpec, scenario: str, plan: Plan, tmp: Path, round_index: int
) -> dict[str, Any]:
    from hubbub.bench.options import BenchError

    server = ServerProcess(spec, tmp)
    label = f"{spec.name} r{round_index + 1}"
    source = hubbub_source() if spec.name.startswith("hubbub") else None
    try:
        server.start()
        assert server.proc is not None
        result = asyncio.run(_measure(spec, scenario, plan, server, label))
        result["scenario"] = scenario
        if not server.alive():
            result["errors"].append("the server process died during the run")
            result["ok"] = False
    except (BenchError, RuntimeError, OSError) as exc:
        result = {
            "scenario": scenario,
            "label": label,
            "ok": False,
            "errors": [f"{type(exc).__name__}: {exc}"],
            "failed_to_run": True,
        }
        tail = server.tail()
        if tail:
            result["errors"].append("server log: " + tail[-600:])
    finally:
        server.stop()
    result["server"] = spec.name
    result["round"] = round_index + 1
    if source is not None:
        result["hubbub_source"] = source
        if hubbub_source() != source:
            result["hubbub_source_changed"] = True
    return result


async def _measure(
    spec: ServerSpec, scenario: str, plan: Plan, server: ServerProcess, label: str
) -> dict[str, Any]:
    """One scenario against the running ``server``: its result (a dict, JSON-ready)."""
    from hubbub.bench.options import Options
    from hubbub.bench.scenarios import RUNNERS, steady
    from hubbub.bench.storms import join_storm, reconnect_storm

    assert server.proc is not None
    chat = scenario in CHAT_SCENARIOS
    o = {k: v for k, v in plan.options[scenario].items() if k not in _PLAN_KEYS}
    protocol = spec.chat_protocol if chat else "seed"
    if scenario in STORM_SCENARIOS:
        protocol = spec.storm_protocol
    opts = Options(
        protocol=protocol,
        url=server.url,
        server_pid=server.proc.pid,
        workers=1,
        generator_cpus={GENERATOR_CPU},
        label=label,
        progress=sys.stderr.isatty(),
        **o,
    )
    opts.validate()
    kind = scenario.removeprefix("chat_")
    if kind == "steady":
        return merge_parts(
            await steady(opts, plan.options[scenario]["rates"]), "r", "rate_msgs_per_s"
        )
    if scenario == "join_storm":
        parts = [await join_storm(opts, n) for n in plan.options[scenario]["sizes"]]
        return merge_parts(parts, "n", "clients")
    if scenario == "reconnect_storm":
        so = plan.options[scenario]

        async def restart() -> int | None:
            server.stop()
            server.start()
            return server.proc.pid if server.proc is not None else None

        return await reconnect_storm(
            opts, so["clients"], so["rooms"], so["history"], so["missed"], restart
        )
    result: dict[str, Any] = await RUNNERS[kind](opts)
    return result


#: Plan options that are not :class:`hubbub.bench.options.Options` fields.
_PLAN_KEYS = (
    "rounds",
    "rounds_by_server",
    "min_rounds",
    "rates",
    "sizes",
    "rooms",
    "history",
    "missed",
)


def merge_parts(parts: list[dict[str, Any]], prefix: str, key: str) -> dict[str, Any]:
    """Several results of one server run (one per rate or size) as one result: each under
    ``<prefix><its key's value>`` (``r80``, ``n10000``), errors and noise merged."""
    out: dict[str, Any] = {
        "parts": [f"{prefix}{part[key]:g}" for part in parts],
        "errors": [],
        "noisy": any(part.get("noisy") for part in parts),
        "other_cpu_pct": max((part.get("other_cpu_pct") or 0.0 for part in parts), default=0.0),
    }
    for name, part in zip(out["parts"], parts, strict=True):
        out[name] = part
        out["errors"] += [f"{name}: {e}" for e in part["errors"]]
    out["ok"] = not out["errors"]
    return out


def machine_busy_pct(seconds: float) -> float:
    """CPU use of the whole machine over ``seconds``, in percent of one core."""
    from hubbub.bench import proc

    b0, t0 = proc.machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    b1, t1 = proc.machine_busy_seconds(), time.monotonic()
    return 100.0 * (b1 - b0) / (t1 - t0)


def wait_quiet(log: Callable[[str], None], limit: float = 30.0) -> None:
    """Wait (up to ``limit`` s) until other processes leave the CPUs alone."""
    from hubbub.bench.options import NOISY_PCT

    deadline = time.monotonic() + limit
    warned = False
    while True:
        busy = machine_busy_pct(0.3)
        if busy < NOISY_PCT:
            return
        if time.monotonic() > deadline:
            log(f"  the machine is still busy ({busy:.0f}% of a core): going on anyway")
            return
        if not warned:
            log(f"  other processes use {busy:.0f}% of a core: waiting for a quiet machine")
            warned = True
        time.sleep(1.0)


class Clock:
    """The run's time against its budget: how much is left once the rest of the plan is
    done at the pace measured so far (the estimates times what the measurements so far
    took over what they were estimated to take)."""

    def __init__(self, plan: Plan) -> None:
        self.start = time.monotonic()
        self.budget = plan.budget_s or 0.0
        self.remaining = plan.estimate_s()
        self.took = 0.0
        self.estimated = 0.0
        self.behind = False

    @property
    def pace(self) -> float:
        if self.estimated < 30.0:  # too little measured to tell
            return 1.0
        return min(3.0, max(0.5, self.took / self.estimated))

    def slack(self) -> float:
        """Seconds to spare: the budget minus the time spent and the rest of the plan."""
        return self.budget - (time.monotonic() - self.start) - self.pace * self.remaining

    def skip(self, estimate: float) -> None:
        self.remaining -= estimate
        self.behind = True

    def spare(self) -> float:
        """Seconds that may go to waits and repeats: none once the run had to skip (what a
        skip saves is not spent on waiting)."""
        return 0.0 if self.behind else self.slack()

    def done(self, estimate: float, took: float) -> None:
        self.remaining -= estimate
        self.took += took
        self.estimated += estimate


def execute(plan: Plan, tmp: Path, log: Callable[[str], None]) -> None:
    """Every measurement of the plan, rounds alternating the server order. Before one,
    wait (up to 30 s) for a quiet machine, and run one again (up to ``plan.retries``
    times) if other processes used the CPUs meanwhile: both only with time to spare
    (:class:`Clock`), so that a busy machine cannot stretch the run beyond its budget.
    Behind the budget, the rounds above a scenario's floor (:meth:`Plan.floor`) are
    skipped."""
    clock = Clock(plan)
    log(
        f"plan: {len(plan.measurements())} measurements, about {clock.remaining:.0f} s "
        f"without repeats (budget {plan.budget_s:.0f} s)"
    )
    for name in plan.servers:
        plan.results[name] = {s: [] for s in plan.scenarios if s in SERVERS[name].scenarios}
    last_round = -1
    for r, name, scenario in plan.measurements():
        if r != last_round:
            last_round = r
            log(f"round {r + 1}/{plan.rounds}: {', '.join(server_order(plan.servers, r))}")
        est = estimate(plan, name, scenario)
        if r >= plan.floor(scenario, name) and clock.slack() < 0:
            clock.skip(est)
            plan.skipped.append((r, name, scenario))
            log(f"  {name:<10} {scenario:<8} round {r + 1} skipped: the run is behind its budget")
            continue
        t = time.monotonic()
        for attempt in range(1 + plan.retries):
            if clock.spare() > 4.0:  # half of it at most: some is kept for repeats
                wait_quiet(log, min(30.0, clock.spare() / 2))
            t_run = time.monotonic()
            result = run_one(SERVERS[name], scenario, plan, tmp, r)
            result["attempts"] = attempt + 1
            if not result.get("noisy"):
                break
            took = time.monotonic() - t_run
            again = attempt < plan.retries and clock.spare() - took * clock.pace > 0
            log(
                f"  {name:<10} {scenario:<8} noisy: other processes used "
                f"{result['other_cpu_pct']:.0f}% of a core"
                + ("; running it again" if again else "; keeping it")
            )
            if not again:
                break
        clock.done(est, time.monotonic() - t)
        plan.results[name][scenario].append(result)
        log(f"  {name:<10} {scenario:<8} {summary(result)}  ({time.monotonic() - t:.0f}s)")


def summary(result: dict[str, Any]) -> str:
    from hubbub.bench.report import fmt

    s = result["scenario"].removeprefix("chat_")
    if result.get("failed_to_run"):
        return "FAILED: " + "; ".join(result["errors"])[:300]
    if "parts" in result:
        text = "; ".join(f"{p}: {summary(result[p])}" for p in result["parts"])
        return text if result["ok"] else text + "  ERRORS: " + "; ".join(result["errors"])[:300]
    if s == "steady":
        lat = result["latency_ms"]
        text = (
            f"p50 {fmt(lat['p50'], 2)} ms, p99 {fmt(lat['p99'], 2)} ms, "
            f"server {fmt(result['server_cpu_us_per_delivery'], 2)} µs/delivery "
            f"({fmt(result['server_cpu_pct'])}% CPU)"
        )
    elif s == "join_storm":
        text = (
            f"joined in {fmt(result['joined_s'], 2)} s, server "
            f"{fmt(result['server_cpu_s'], 2)} CPU-s, generator {fmt(result['generator_cpu_pct'])}%"
        )
    elif s == "reconnect_storm":
        text = (
            f"resumed in {fmt(result['resumed_s'], 2)} s, server "
            f"{fmt(result['server_cpu_s'], 2)} CPU-s, generator {fmt(result['generator_cpu_pct'])}%"
        )
    elif s == "fanout":
        text = (
            f"{fmt(result['deliveries_per_s'])} deliveries/s, "
            f"{fmt(result['deliveries_per_server_cpu_s'])} per server CPU-s, "
            f"CPU server {fmt(result['server_cpu_pct'])}% generator "
            f"{fmt(result['generator_cpu_pct'])}%"
        )
    elif s == "latency":
        lat = result["latency_ms"]
        text = (
            f"p50 {fmt(lat['p50'], 2)} ms, p99 {fmt(lat['p99'], 2)} ms, "
            f"p99.9 {fmt(lat['p99.9'], 2)} ms, server CPU {fmt(result['server_cpu_pct'])}%"
        )
    elif s == "idle":
        text = (
            f"{fmt(result['rss_per_connection_kib'], 2)} KiB per idle connection "
            f"({result['connected']:,} connections)"
        )
    else:
        text = (
            f"{fmt(result['handshakes_per_s'])} handshakes/s, "
            f"{fmt(result['handshakes_per_server_cpu_s'])} per server CPU-s, "
            f"CPU server {fmt(result['server_cpu_pct'])}% generator "
            f"{fmt(result['generator_cpu_pct'])}%"
        )
    if not result["ok"]:
        text += "  ERRORS: " + "; ".join(result["errors"])[:300]
    return text
