"""Command line of ``hubbub bench`` (also ``python -m hubbub.bench``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from . import proc
from .options import (
    ALL_ORDER,
    PROTOCOL_SCENARIOS,
    PROTOCOLS,
    SCENARIOS,
    SOCKETIO_CLIENTS,
    BenchError,
    Options,
)
from .scenarios import run_scenarios
from .transports import add_arguments as add_transport_arguments

EXAMPLES = """\
examples:
  hubbub serve --host 127.0.0.1 --port 9502 --max-connections 20000 &
  hubbub bench --url ws://127.0.0.1:9502/ --scenario all --server-pid $!
  hubbub bench --scenario fanout --clients 200 --senders 4 --duration 3 --json out.json

The server should be started with a raised open-file limit for the idle
scenario (e.g. `prlimit --nofile=20000 hubbub serve ...`). With --pin (the
default on a machine with 2 or more CPUs) the generator runs on
--generator-cpus and the --server-pid process is moved to --server-cpus.
Exit status: 0 when every scenario ran without errors, 1 when a scenario
reported errors (lost, duplicated or reordered messages, failed
connections...), 2 when the benchmark could not run.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubbub bench",
        description="Load generator for WebSocket chat servers speaking the seed's plain "
        "text protocol (greeting 'Hello, welcome\\n', 'from <fd>: T' to everyone, "
        "'server: T' to the sender).",
        epilog=EXAMPLES,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100),
    )
    d = Options()
    _what_to_run(p, d)
    _load(p, d)
    _processes_and_output(p)
    add_transport_arguments(p)
    return p


def _what_to_run(p: argparse.ArgumentParser, d: Options) -> None:
    p.add_argument("--url", default=d.url, help=f"server URL (default {d.url})")
    p.add_argument(
        "--scenario",
        default="all",
        choices=[*SCENARIOS, "all"],
        help="what to run (default all: " + ", ".join(ALL_ORDER) + ")",
    )
    p.add_argument(
        "--protocol",
        default=d.protocol,
        choices=PROTOCOLS,
        help="what the clients speak: seed (plain text, any seed-style server), hubbub.v1 "
        "(hubbub's JSON protocol: join, send, ack, message; fanout and latency only) or "
        "socket.io (the same work as socket.io events over Engine.IO v4 / Socket.IO v5; "
        "see --socketio-client) (default %(default)s)",
    )
    p.add_argument(
        "--socketio-client",
        default=d.socketio_client,
        choices=SOCKETIO_CLIENTS,
        help="who generates --protocol socket.io: picows (the generator's own Python workers "
        "speaking the protocol directly: the fastest, so the generator is not what saturates "
        "first) or node (the reference socket.io-client in Node workers, as a cross-check; "
        "needs `npm install --prefix bench/peers/socketio_node`) (default %(default)s)",
    )
    p.add_argument(
        "--room", default=d.room, help="room to join (hubbub.v1, socket.io; default %(default)s)"
    )


def _load(p: argparse.ArgumentParser, d: Options) -> None:
    p.add_argument(
        "--clients",
        type=int,
        default=d.clients,
        help="clients in the room (fanout, latency; default %(default)s)",
    )
    p.add_argument(
        "--senders", type=int, default=d.senders, help="clients that send (default %(default)s)"
    )
    p.add_argument(
        "--window",
        type=int,
        default=d.window,
        help="fanout: messages each sender keeps in flight (default %(default)s)",
    )
    p.add_argument(
        "--size", type=int, default=d.size, help="message size in bytes (default %(default)s)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=d.duration,
        help="measured seconds per scenario (default %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help="seconds of load before the measured window (default %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="latency: messages per second, all senders together (default %(default)s)",
    )
    p.add_argument(
        "--idle-clients",
        type=int,
        default=d.idle_clients,
        help="idle: connections to open (default %(default)s)",
    )
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=d.connect_concurrency,
        help="connect: handshakes in progress at once (default %(default)s)",
    )


def _processes_and_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server-pid", type=int, help="server process, for its CPU time and memory (/proc/PID)"
    )
    p.add_argument(
        "--workers", type=int, help="generator processes (default: one per generator CPU)"
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pin generator and server to different CPUs (default: on with 2+ CPUs)",
    )
    p.add_argument(
        "--generator-cpus",
        default="0",
        help="CPUs of the generator when pinning (default %(default)s)",
    )
    p.add_argument(
        "--server-cpus", default="1", help="CPUs of --server-pid when pinning (default %(default)s)"
    )
    p.add_argument("--label", default="", help="name of the server in the output")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument(
        "--plot", metavar="DIR", help="write PNG charts (throughput over time, latency CDF, RSS)"
    )
    p.add_argument("--quiet", action="store_true", help="no live progress line")


def options_from_args(args: argparse.Namespace) -> Options:
    pin = args.pin if args.pin is not None else (os.cpu_count() or 1) >= 2
    gen_cpus = proc.parse_cpus(args.generator_cpus) if pin else None
    workers = args.workers or (len(gen_cpus) if gen_cpus else 1)
    return Options(
        url=args.url,
        clients=args.clients,
        senders=args.senders,
        window=args.window,
        size=args.size,
        duration=args.duration,
        warmup=args.warmup,
        rate=args.rate,
        idle_clients=args.idle_clients,
        connect_concurrency=args.connect_concurrency,
        server_pid=args.server_pid,
        workers=workers,
        generator_cpus=gen_cpus,
        protocol=args.protocol,
        room=args.room,
        socketio_client=args.socketio_client,
        label=args.label,
        progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
        import picows  # noqa: F401
    except ImportError as exc:
        print(
            f"hubbub bench: {exc.name} is missing; install the bench extra: "
            "pip install 'hubbub[bench]'",
            file=sys.stderr,
        )
        return 2
    if args.transports:
        from . import transports

        return transports.main(args, parser)
    opts = options_from_args(args)
    try:
        opts.validate()
    except ValueError as exc:
        parser.error(str(exc))
    if args.scenario == "all":
        names = [n for n in ALL_ORDER if n in PROTOCOL_SCENARIOS[opts.protocol]]
    else:
        names = [args.scenario]
    if opts.server_pid is None:
        if args.scenario == "idle":
            parser.error("the idle scenario needs --server-pid (it reads the server's VmRSS)")
        if "idle" in names:
            print(
                "hubbub bench: no --server-pid: skipping idle; no server CPU figures",
                file=sys.stderr,
            )
            names.remove("idle")
    elif not os.path.exists(f"/proc/{opts.server_pid}"):
        parser.error(f"no process {opts.server_pid}")
    if opts.generator_cpus:
        os.sched_setaffinity(0, opts.generator_cpus)
        if opts.server_pid is not None:
            server_cpus = proc.parse_cpus(args.server_cpus)
            if server_cpus:
                proc.pin(opts.server_pid, server_cpus)
    proc.raise_nofile()
    try:
        results: list[dict[str, Any]] = asyncio.run(run_scenarios(opts, names))
    except BenchError as exc:
        print(f"hubbub bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nhubbub bench: interrupted", file=sys.stderr)
        return 130
    from .report import plot_results, table, write_json

    print(table(results))
    if args.json:
        write_json(args.json, {"options": _public(opts), "results": results})
        print(f"results written to {args.json}")
    if args.plot:
        for path in plot_results(results, args.plot):
            print(f"chart written to {path}")
    return 0 if all(r["ok"] for r in results) else 1


def _public(opts: Options) -> dict[str, Any]:
    out = {k: v for k, v in vars(opts).items() if k not in ("stream",)}
    if out.get("generator_cpus") is not None:
        out["generator_cpus"] = sorted(out["generator_cpus"])
    return out
