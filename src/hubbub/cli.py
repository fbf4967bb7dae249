"""Command line: ``hubbub serve``."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import Settings, setting_fields


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubbub",
        description="hubbub: a real-time chat server (the Swoole chat room, done properly).",
    )
    parser.add_argument("--version", action="version", version=f"hubbub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the chat server (HTTP + WebSocket on one port)",
        description="Run the chat server: the seed's chat room for plain WebSocket clients, "
        "the chat page at /, /healthz for health checks. Ctrl-C or SIGTERM shut it down "
        "gracefully (clients get close code 1001).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=int, default=9502, help="TCP port (0 picks a free one)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging verbosity",
    )
    for name, typ, default, text in setting_fields():
        flag = "--" + name.replace("_", "-")
        if typ is bool:
            serve.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
        else:
            serve.add_argument(flag, type=typ, default=default, help=text)
    chat = sub.add_parser(
        "chat",
        help="interactive terminal chat client",
        description="Chat from a terminal. With a hubbub server: rooms, history, presence, "
        "resume after reconnects (commands: /join /leave /switch /nick /msg /who /rooms "
        "/history /quit). With any other WebSocket server: plain text, one message per line.",
    )
    sub.add_parser(
        "bench",
        help="load generator for seed-protocol chat servers (hubbub bench --help)",
        add_help=False,
    )
    chat.add_argument("url", help="server address, e.g. ws://127.0.0.1:9502")
    chat.add_argument("--room", default="lobby", help="room to join on start")
    chat.add_argument("--nick", default=None, help="nickname (default: the server's user-<fd>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["bench"]:
        # The generator has its own parser (and the `bench` extra's packages).
        from .bench import main as bench_main

        return bench_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "serve":
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        try:
            settings = Settings(**{name: getattr(args, name) for name, *_ in setting_fields()})
        except ValueError as exc:
            parser.error(str(exc))
        from .apps.chat import create_app

        create_app(args.host, args.port, settings).start()
        return 0
    if args.command == "chat":
        import uvloop

        from .client.terminal import run_chat

        url = args.url if "://" in args.url else f"ws://{args.url}"
        try:
            return uvloop.run(run_chat(url, args.room, args.nick))
        except KeyboardInterrupt:
            return 0
    parser.error(f"unknown command {args.command}")
    return 2
