"""Scale-out benchmarks: ``hubbub serve --workers 2`` against one worker, and the Redis hop.

    .venv/bin/python bench/scaleout.py                     # the full run (about 4 minutes)
    .venv/bin/python bench/scaleout.py --quick             # a smoke run (about 1 minute)
    .venv/bin/python bench/scaleout.py --docs docs/scaling.md --json reports/bench/scaleout.json

Servers (:data:`scaleout_report.CONFIGS`):

* ``pg-local``: one process on PostgreSQL with the local broker (no Redis at all);
* ``pg-redis``: one process on PostgreSQL and Redis (``--workers 1``);
* ``pg-redis-2w``: ``--workers 2`` on PostgreSQL and Redis: two nodes on one port
  (``SO_REUSEPORT``), the kernel splitting the clients between them, so every
  message reaches about half its receivers through Redis;
* ``pg-redis-2n``: two separately started processes on two ports, same PostgreSQL
  schema and Redis prefix; the generator puts half the room, every sender included,
  on node 1 and the other half on node 2, and records each half's latencies apart:
  node 2's receivers get every message through Redis, node 1's directly, in the same
  window (the Redis hop, paired);
* ``sqlite`` (with ``--configs``): the embedded defaults, for reference.

Scenarios (the ``hubbub bench`` generator, :mod:`hubbub.bench`, used as a library):
``fanout`` / ``chat_fanout`` at saturation (seed mode: plain clients, broadcast; chat
mode: ``hubbub.v1``, one room), ``steady`` / ``chat_steady`` at a fixed rate
(``--rate`` messages/s into a room of ``--clients``). :data:`scaleout_report.BLOCKS`
says which servers each scenario compares: all of them are started at once, each with
its room connected, and then measured in interleaved rounds (one window each per round,
the order alternating), so that other work on the machine falls on all of them alike.

Every PostgreSQL run has its own schema and every Redis run its own key prefix, both
removed after the scenario. Nothing is pinned: ``--workers 2`` needs both cores of this
machine, and so do the generator, PostgreSQL and Redis; the server's CPU (every worker
and the supervisor), the generator's, Redis's and the rest of the machine's are measured
beside each other. The servers and the generator's processes die with this script, even
when it is killed (``kill -9``: ``PR_SET_PDEATHSIG``, :mod:`benchrun.children`); the
schema and keys of a killed run are left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ``python bench/scaleout.py`` puts this folder first on sys.path.
from benchrun.cluster import (
    CONFIGS,
    Config,
    Server,
    check_services,
    raise_nofile,
    redis_pid,
    socket_count,
)
from scaleout_report import BLOCKS, SCENARIOS, render, write_docs

from hubbub.bench import proc
from hubbub.bench.generator import Generator, Snap
from hubbub.bench.measure import Run
from hubbub.bench.options import BenchError, Options
from hubbub.bench.scenarios import _open_room, _room_result, _room_window


@dataclass
class GroupSnap(Snap):
    redis: float | None = None


class ServerGroupGenerator(Generator):
    """The generator with the server's CPU time and RSS summed over several processes, and
    Redis's CPU time beside them."""

    def __init__(self, opts: Options, server_pids: list[int], redis: int | None = None) -> None:
        super().__init__(opts)
        self.server_pids = server_pids
        self.redis = redis

    def snap(self) -> Snap:
        s = super().snap()
        rss = 0
        for pid in self.server_pids:
            with contextlib.suppress(OSError, ValueError):
                rss += proc.rss_kib(pid)
        redis_cpu = None
        if self.redis is not None:
            with contextlib.suppress(OSError, ValueError):
                redis_cpu = proc.cpu_seconds(self.redis)
        return GroupSnap(
            s.t,
            proc.cpu_seconds_many(self.server_pids),
            s.gen_cpu,
            rss,
            s.machine,
            s.parent,
            redis_cpu,
        )

    def window_fields(self, s0: Snap, s1: Snap) -> dict[str, Any]:
        """Redis's CPU over the measured window (see :func:`hubbub.bench.scenarios`)."""
        r0, r1 = getattr(s0, "redis", None), getattr(s1, "redis", None)
        return {"redis_cpu_s": None if r0 is None or r1 is None else r1 - r0}


class Session:
    """One server with its connected room: measured one window at a time."""

    def __init__(self, server: Server, scenario: str, fields: dict[str, Any], redis: int | None):
        self.server = server
        self.scenario = scenario
        protocol, self.fixed = SCENARIOS[scenario]
        nodes = server.config.nodes
        self.opts = Options(
            url=server.urls[0],
            urls=server.urls if nodes > 1 else None,
            sender_worker=0 if nodes > 1 else None,
            protocol=protocol,
            workers=nodes,
            generator_cpus=None,
            label=server.config.name,
            progress=sys.stderr.isatty(),
            **fields,
        )
        self.opts.validate()
        self.redis = redis if server.config.broker else None
        self.gen: ServerGroupGenerator | None = None
        self.before: dict[str, int] | None = None
        self.split: list[int] = []

    async def open(self) -> None:
        self.gen = ServerGroupGenerator(self.opts, self.server.pids(), self.redis)
        await self.gen.__aenter__()
        self.run = Run(self.opts, self.gen, self.scenario)
        self.connected, self.errors, self.greeted = await _open_room(self.run, self.scenario)
        self.split = [socket_count(pid) for pid in self.server.workers()]

    async def window(self) -> dict[str, Any]:
        w = await _room_window(self.run, self.fixed, self.connected, self.before)
        self.before = w.pop("check_total")
        kind = "latency" if self.fixed else "fanout"
        result = _room_result(self.opts, kind, w, self.connected, self.greeted, self.errors)
        self.run.progress.end()
        for key in ("cdf", "timeline"):
            result.pop(key, None)
        wall = result["wall_s"]
        redis_cores = None if result.get("redis_cpu_s") is None else result["redis_cpu_s"] / wall
        other = (result["other_cpu_pct"] or 0.0) / 100.0 - (redis_cores or 0.0)
        result.update(
            scenario=self.scenario,
            config=self.server.config.name,
            worker_sockets=self.split,
            server_cores=(result["server_cpu_s"] or 0.0) / wall,
            generator_cores=result["generator_cpu_s"] / wall,
            redis_cores=redis_cores,
            other_cores=max(0.0, other),
        )
        return result

    async def close(self) -> None:
        if self.gen is not None:
            with contextlib.suppress(BenchError, OSError):
                await asyncio.wait_for(self.gen.call("close", [{}] * self.gen.n), 30)
            await self.gen.__aexit__(None, None, None)
            self.gen = None


def failed(config: Config, scenario: str, errors: list[str]) -> dict[str, Any]:
    """The result of a window that could not be measured."""
    return {
        "scenario": scenario,
        "config": config.name,
        "ok": False,
        "errors": [e for e in errors if e],
        "failed_to_run": True,
    }


def round_order(names: list[str], round_no: int) -> list[str]:
    """A B, B A, then rotated by one (B C A, A C B, ...): each server as often early as late."""
    k = (round_no // 2) % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if round_no % 2 else order


async def measure_block(
    sessions: list[Session], rounds: int, deadline: float, limit: float
) -> list[dict[str, Any]]:
    """Open every session's room, then ``rounds`` rounds of one window each (fewer if the
    deadline comes first; two at least), and close the rooms."""
    results: list[dict[str, Any]] = []
    live: dict[str, Session] = {}
    try:
        for s in sessions:
            try:
                await asyncio.wait_for(s.open(), limit)
                live[s.server.config.name] = s
            except (BenchError, OSError, TimeoutError) as exc:
                err = [f"{type(exc).__name__}: {exc}", s.server.tail()]
                results.append(dict(failed(s.server.config, s.scenario, err), round=1))
        names = [s.server.config.name for s in sessions]
        per_round = _window_estimate(sessions[0].opts) * len(names)
        for r in range(rounds):
            if (r >= 2 and time.monotonic() + per_round > deadline) or STOP:
                break
            for name in round_order(names, r):
                if name in live:
                    results.append(await _one_window(live, name, r + 1, limit))
    finally:
        for s in sessions:
            await s.close()
    return results


async def _one_window(
    live: dict[str, Session], name: str, round_no: int, limit: float
) -> dict[str, Any]:
    s = live[name]
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        res = await asyncio.wait_for(s.window(), limit)
        if not s.server.alive():
            res["errors"].append("the server died during the run")
            res["ok"] = False
    except (BenchError, OSError, TimeoutError) as exc:
        # A room that failed once is not measured again (its counters are unknown).
        del live[name]
        res = failed(s.server.config, s.scenario, [f"{type(exc).__name__}: {exc}", s.server.tail()])
    res.update(round=round_no, started=started, argv=s.server.public_argv())
    print(one_line(res), file=sys.stderr, flush=True)
    return res


def run_block(
    args: argparse.Namespace, scenario: str, tmp: Path, redis: int | None, deadline: float
) -> list[dict[str, Any]]:
    """One scenario: its servers started, measured in interleaved rounds, stopped."""
    configs = [CONFIGS[c] for c in BLOCKS[scenario] if c in args.configs]
    rounds = args.hop_rounds if scenario == "chat_steady" else args.rounds
    fields = scenario_fields(args, scenario)
    servers: list[Server] = []
    results: list[dict[str, Any]] = []
    sessions = []
    try:
        for config in configs:
            server = Server(config, tmp)
            try:
                server.start()
            except (BenchError, OSError) as exc:
                results.append(dict(failed(config, scenario, [str(exc)]), round=1))
                continue
            servers.append(server)
            sessions.append(Session(server, scenario, fields, redis))
        if sessions:
            results += asyncio.run(measure_block(sessions, rounds, deadline, args.timeout))
    finally:
        for server in servers:
            server.stop()
    return results


def scenario_fields(args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "clients": args.clients,
        "senders": args.senders,
        "window": 4,
        "size": 100,
        "duration": args.duration,
        "warmup": args.warmup,
    }
    if SCENARIOS[scenario][1]:
        fields["rate"] = args.rate
    return fields


#: Seconds (measured on this 2-core VM while other work ran) of: a server's start and
#: stop, a room's connection per client, and what a window adds to its warm-up and
#: measured seconds (the start offset, the receivers' check, the generator's answers).
START_S = {1: 2.0, 2: 4.0}
CONNECT_S_PER_CLIENT = 0.002
WINDOW_EXTRA_S = 0.8


def _window_estimate(opts: Options) -> float:
    return opts.warmup + opts.duration + WINDOW_EXTRA_S


def estimate_s(args: argparse.Namespace) -> float:
    """How long the run takes, from the constants above (see tests/bench/test_scaleout.py)."""
    total = 0.0
    for scenario in args.scenarios:
        configs = [CONFIGS[c] for c in BLOCKS[scenario] if c in args.configs]
        rounds = args.hop_rounds if scenario == "chat_steady" else args.rounds
        for c in configs:
            total += START_S[max(c.workers, c.nodes)] + CONNECT_S_PER_CLIENT * args.clients
            total += rounds * (args.warmup + args.duration + WINDOW_EXTRA_S)
    return total


#: Set by SIGINT or SIGTERM: the window under way finishes (bounded by --timeout), the
#: servers are stopped and their schemas and keys removed, the rest is skipped.
STOP: list[int] = []


def _on_signal(signum: int, _frame: object) -> None:
    if not STOP:
        print("\nstopping after the current measurement", file=sys.stderr)
    STOP.append(signum)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every scenario's block in turn. Each gets a share of ``--budget`` in proportion to
    its estimate: past its share, a block stops after its second round."""
    results: list[dict[str, Any]] = []
    redis = redis_pid() if any(CONFIGS[c].broker for c in args.configs) else None
    if redis is None:
        print("scaleout: Redis's CPU cannot be read here (not a local process)", file=sys.stderr)
    started = time.monotonic()
    total = estimate_s(args) or 1.0
    planned = 0.0
    with tempfile.TemporaryDirectory(prefix="hubbub-scaleout-") as tmp:
        for scenario in args.scenarios:
            if STOP:
                print(f"stopped by signal {STOP[0]}", file=sys.stderr)
                break
            one = argparse.Namespace(**{**vars(args), "scenarios": [scenario]})
            planned += estimate_s(one)
            deadline = started + args.budget * planned / total
            results += run_block(args, scenario, Path(tmp), redis, deadline)
    return results


def one_line(r: dict[str, Any]) -> str:
    head = f"r{r['round']} {r['scenario']:<12} {r['config']:<12}"
    if r.get("failed_to_run"):
        return f"{head} FAILED: {r['errors'][0] if r['errors'] else '?'}"
    lat = r.get("latency_ms")
    by = r.get("latency_ms_by_worker")
    redis = r.get("redis_cores")
    return (
        f"{head} {r['deliveries_per_s']:>10,.0f} deliveries/s  server {r['server_cores']:.2f}"
        f" gen {r['generator_cores']:.2f}"
        + (f" redis {redis:.3f}" if redis is not None else "")
        + f" other {r['other_cores']:.2f} cores"
        + (f"  p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms" if lat else "")
        + (f" (nodes: p99 {by[0]['p99']:.1f} / {by[1]['p99']:.1f})" if by and len(by) > 1 else "")
        + ("" if r["ok"] else f"  ERRORS: {'; '.join(r['errors'][:3])}")
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/scaleout.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="2 rounds, 200 clients, 1.5 s windows")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the --workers scenarios")
    p.add_argument("--hop-rounds", type=int, default=7, help="rounds of chat_steady (the hop)")
    p.add_argument(
        "--configs",
        default="pg-local,pg-redis,pg-redis-2w,pg-redis-2n",
        help="servers, comma-separated, from: " + ", ".join(CONFIGS),
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--senders", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="fixed rate, messages/s")
    p.add_argument("--duration", type=float, default=2.5, help="measured seconds per window")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per window")
    p.add_argument("--timeout", type=float, default=120.0, help="most seconds per window")
    p.add_argument(
        "--budget",
        type=float,
        default=245.0,
        help="seconds for the whole run: a scenario past its share stops after two rounds",
    )
    p.add_argument("--json", metavar="FILE", help="write every window's result as JSON")
    p.add_argument(
        "--from-json", metavar="FILE", help="report the results of an earlier --json, run nothing"
    )
    p.add_argument("--markdown", metavar="FILE", help="write the tables as markdown")
    p.add_argument(
        "--docs", metavar="PAGE", help="write the tables between the scaleout markers of PAGE"
    )
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.rounds, args.hop_rounds, args.clients, args.senders = 2, 3, 200, 4
        args.duration, args.warmup = 1.5, 0.5
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for c in args.configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r} (have: {', '.join(CONFIGS)})")
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r} (have: {', '.join(SCENARIOS)})")
    if args.rounds < 1 or args.hop_rounds < 1 or args.clients < 2:
        p.error("--rounds and --hop-rounds must be >= 1, --clients >= 2")
    if not 1 <= args.senders <= min(args.clients, 100):
        p.error("--senders must be between 1 and min(--clients, 100)")
    if args.duration <= 0 or args.warmup < 0 or args.rate <= 0 or args.budget < 0:
        p.error("--duration and --rate must be positive, --warmup and --budget not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        results = saved["results"]
        args.argv = saved["argv"]
        for key, value in saved["options"].items():
            setattr(args, key, value)
    else:
        problems = check_services([CONFIGS[c] for c in args.configs])
        if problems:
            for line in problems:
                print(f"scaleout: {line}", file=sys.stderr)
            return 2
        raise_nofile()
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        print(f"scaleout: estimated {estimate_s(args):.0f} s", file=sys.stderr)
        results = run_all(args)
        args.elapsed = time.monotonic() - started
    text = render(results, args)
    print(text)
    if args.json and not args.from_json:
        keys = ("rounds", "hop_rounds", "clients", "senders", "rate", "duration", "warmup")
        options = {k: getattr(args, k) for k in (*keys, "elapsed")}
        saved = {"argv": args.argv, "options": options, "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(saved, indent=1))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    if args.docs:
        write_docs(Path(args.docs), text)
    if not args.from_json:
        print(f"bench/scaleout.py took {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
