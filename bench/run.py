"""``make bench``: hubbub against other chat servers, same generator, same work.

    .venv/bin/python bench/run.py            # the full run (about 10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # a smoke run (about 2 minutes)

Installs nothing: ``pip install -e '.[bench]'``,
``npm install --prefix bench/peers/node_ws``,
``npm install --prefix bench/peers/uws_node`` and
``npm install --prefix bench/peers/socketio_node`` come first (``make bench``
does all four).

Three families of scenarios. *Seed mode* (idle, fanout, steady, connect):
one-room servers speaking the seed's plain text protocol (hubbub with and
without its compiled path, Node ws, picows; uWebSockets.js, the C++ engine
standing in for Swoole, in the steady rates and handshakes; websockets and
aiohttp with ``--servers``). *Chat mode* (chat_fanout, chat_steady): the same room and
load as chat frameworks do it, hubbub with its ``hubbub.v1`` JSON protocol
and durable history, Node socket.io (and python-socketio with ``--servers``)
with socket.io events driven by socket.io-client workers. *Storms*
(join_storm, reconnect_storm, :mod:`hubbub.bench.storms`): N clients joining
one room at once, and 10,000 clients resuming after a server restart, hubbub
in chat mode against Node ws's handshake storm. The steady rates (20 and 80
messages/s into a room of 1,000) run 5 rounds (3 for hubbub without its
compiled path, which is no peer), connect 3, idle 1, the others 2.

The run keeps to a time budget (``--budget``, 635 s by default: with
bench/scaleout.py's 245 s a whole ``make bench`` stays within 15 minutes):
it estimates every measurement's time from its options
(:func:`benchrun.running.estimate`), and waits for a quiet machine or repeats
a noisy measurement only while the rest of the plan still fits.

For every round, every server and every scenario it runs, a fresh server
process is started on CPU 1 with a raised open-file limit, the generator
(:mod:`hubbub.bench`) runs on CPU 0, and the server is stopped again. Servers and
generator processes die with this script, even when it is killed (``kill -9``:
``PR_SET_PDEATHSIG``, :mod:`benchrun.children`). The server order alternates between
rounds. The report takes the median of the
rounds, computes ratios against Node's ws and is written to
docs/benchmarks.md with charts in docs/img/ (``--quick`` writes to
reports/bench/ instead, leaving the docs alone).

The work is in the package next to this script, ``bench/benchrun/``:
``servers`` (the servers compared and their processes), ``children`` (the
``hubbub serve`` command line and how children are started and stopped), ``running``
(planning and running the measurements), ``aggregate`` (medians over the
rounds), ``charts`` and ``report`` (the markdown report's template).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# ``python bench/run.py`` puts this folder first on sys.path: benchrun is the package here.
from benchrun.aggregate import aggregate
from benchrun.charts import write_charts
from benchrun.report import render
from benchrun.running import DEFAULT_BUDGET_S, QUICK_BUDGET_S, Plan, execute, make_plan
from benchrun.servers import (
    DEFAULT_SERVERS,
    GENERATOR_CPU,
    NODE_DIR,
    ROOT,
    SCENARIO_ORDER,
    SERVERS,
    SOCKETIO_DIR,
    UWS_DIR,
)


def check_prerequisites(servers: list[str]) -> list[str]:
    problems = []
    try:
        import matplotlib  # noqa: F401
        import picows  # noqa: F401
    except ImportError as exc:
        problems.append(f"{exc.name} is missing: .venv/bin/pip install -e '.[bench]'")
    for name, dist in (("aiohttp", "aiohttp"), ("picows", "picows"), ("websockets", "websockets")):
        if name in servers:
            try:
                metadata.version(dist)
            except metadata.PackageNotFoundError:
                problems.append(f"{dist} is missing: .venv/bin/pip install -e '.[bench]'")
    if "node_ws" in servers and not (NODE_DIR / "node_modules" / "ws").is_dir():
        problems.append("Node ws is not installed: npm install --prefix bench/peers/node_ws")
    if "uws" in servers and not (UWS_DIR / "node_modules" / "@trufflesuite").is_dir():
        problems.append(
            "uWebSockets.js is not installed: npm install --prefix bench/peers/uws_node"
        )
    if (
        any(s in servers for s in ("socketio_node", "python_socketio"))
        and not (SOCKETIO_DIR / "node_modules" / "socket.io-client").is_dir()
    ):
        problems.append(
            "socket.io is not installed: npm install --prefix bench/peers/socketio_node"
        )
    if "python_socketio" in servers:
        try:
            metadata.version("python-socketio")
        except metadata.PackageNotFoundError:
            problems.append("python-socketio is missing: .venv/bin/pip install -e '.[bench]'")
    if (os.cpu_count() or 1) < 2:
        problems.append("needs at least 2 CPUs (server on CPU 1, generator on CPU 0)")
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark hubbub against Node ws, uWebSockets.js, websockets, aiohttp and "
        "picows (seed mode) and Node socket.io and python-socketio (chat mode); see "
        "docs/benchmarks.md."
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (~2 min)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of every scenario (default: 5 of the steady rates, 3 of connect, 1 of "
        "idle, 2 of the others; 1 with --quick, 2 of the steady rates)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=2.5,
        help="measured seconds of the saturation and connection-rate scenarios",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="runs again (up to this many times) a measurement during which other "
        "processes used the CPUs (default 2)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds the whole run should take: it waits for a quiet machine and repeats "
        f"noisy measurements only while the rest of the plan still fits (default "
        f"{DEFAULT_BUDGET_S:g}, {QUICK_BUDGET_S:g} with --quick: with bench/scaleout.py's, "
        "make bench stays within 15 minutes; 0: never)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help="comma-separated (default %(default)s), from: " + ", ".join(SERVERS),
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIO_ORDER),
        help="comma-separated, from: " + ", ".join(SCENARIO_ORDER),
    )
    parser.add_argument(
        "--out",
        help="markdown report (default docs/benchmarks.md; reports/bench/quick.md with --quick)",
    )
    parser.add_argument(
        "--img", help="chart folder (default docs/img; reports/bench/img with --quick)"
    )
    parser.add_argument("--json", help="raw results (default reports/bench/results.json)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report and charts again from the raw results of the last run",
    )
    return parser


#: What a report is made of besides the plan: elapsed seconds, command line, machine facts.
RunInfo = tuple[float, str, dict[str, Any]]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.servers if s not in SERVERS]
    unknown += [s for s in args.scenarios if s not in SCENARIO_ORDER]
    if unknown:
        parser.error(f"unknown server or scenario: {', '.join(unknown)}")
    args.scenarios = [s for s in SCENARIO_ORDER if s in args.scenarios]
    problems = check_prerequisites(args.servers)
    if problems:
        for p in problems:
            print(f"bench/run.py: {p}", file=sys.stderr)
        return 2

    raw = Path(args.json) if args.json else ROOT / "reports/bench/results.json"
    if args.report_only:
        plan, info = load_results(raw, parser)
    else:
        ran = run_and_save(args, argv, raw)
        if isinstance(ran, int):
            return ran
        plan, info = ran
    return write_report(plan, info, args, raw)


def load_results(raw: Path, parser: argparse.ArgumentParser) -> tuple[Plan, RunInfo]:
    """The plan and results of an earlier run, from its raw results (``--report-only``)."""
    try:
        saved = json.loads(raw.read_text())
        meta = saved["plan"]
    except (OSError, ValueError, KeyError) as exc:
        parser.error(f"--report-only needs the results of a run in {raw}: {exc}")
    plan = Plan(
        rounds=meta["rounds"],
        servers=meta["servers"],
        scenarios=meta["scenarios"],
        options=saved["options"],
        quick=meta["quick"],
        retries=meta["retries"],
        results=saved["results"],
        default_rounds=meta.get("default_rounds", 3),
        budget_s=meta.get("budget"),
        skipped=[tuple(m) for m in meta.get("skipped", [])],
    )
    return plan, (meta["elapsed"], meta["command"], meta["facts"])


def run_and_save(
    args: argparse.Namespace, argv: list[str] | None, raw: Path
) -> tuple[Plan, RunInfo] | int:
    """Run every measurement of the plan and save the raw results to ``raw``; or the exit
    status if interrupted."""
    from hubbub.bench import proc

    facts = proc.machine_facts()  # before pinning: nproc counts the CPUs we may use
    os.sched_setaffinity(0, {GENERATOR_CPU})
    proc.raise_nofile()
    plan = make_plan(args)
    given = argv if argv is not None else sys.argv[1:]
    command = ".venv/bin/python bench/run.py" + (" " + shlex.join(given) if given else "")
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as tmp:
        try:
            execute(plan, Path(tmp), log)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
    elapsed = time.monotonic() - started
    print(
        f"bench/run.py took {elapsed:.0f} s (estimated {plan.estimate_s():.0f} s without "
        f"waits or repeats; budget {plan.budget_s:.0f} s)",
        flush=True,
    )
    with contextlib.suppress(OSError):
        facts["virtual_machine"] = (
            "yes" if " hypervisor" in Path("/proc/cpuinfo").read_text() else "no"
        )
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(
        json.dumps(
            {
                "plan": {
                    "rounds": plan.rounds,
                    "servers": plan.servers,
                    "scenarios": plan.scenarios,
                    "quick": plan.quick,
                    "retries": plan.retries,
                    "default_rounds": plan.default_rounds,
                    "budget": plan.budget_s,
                    "estimate": plan.estimate_s(),
                    "skipped": plan.skipped,
                    "elapsed": elapsed,
                    "command": command,
                    "facts": facts,
                },
                "options": plan.options,
                "aggregate": aggregate(plan),
                "results": plan.results,
            },
            indent=1,
            default=lambda o: None,
        )
    )
    return plan, (elapsed, command, facts)


def write_report(plan: Plan, info: RunInfo, args: argparse.Namespace, raw: Path) -> int:
    """The markdown report and its charts; the exit status (1 if any round had errors)."""
    elapsed, command, facts = info
    out = (
        Path(args.out)
        if args.out
        else ROOT / ("reports/bench/quick.md" if plan.quick else "docs/benchmarks.md")
    )
    img = Path(args.img) if args.img else ROOT / ("reports/bench/img" if plan.quick else "docs/img")
    agg = aggregate(plan)
    charts = write_charts(plan, img)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(plan, agg, charts, out, facts, elapsed, command))
    print(f"report: {out}\ncharts: {img}\nraw results: {raw}")
    bad = [
        (n, s)
        for n, per in plan.results.items()
        for s, rs in per.items()
        if any(not r["ok"] for r in rs)
    ]
    if bad:
        print("errors in: " + ", ".join(f"{n}/{s}" for n, s in bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
