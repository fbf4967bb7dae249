"""Command line: ``hubbub serve``, ``hubbub chat``.

A start-up failure is one line on stderr, ``hubbub: error: <what is wrong
and what to do>``, and exit status 1; a bad flag is one line too, with
argparse's status 2. Never a traceback (``--log-level debug`` logs it for an
unexpected error).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from . import __version__
from .config import SettingError, Settings, setting_fields
from .errors import StartupError
from .store.base import StoreError

log = logging.getLogger("hubbub")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, _usage_line(self.prog, message))


def _usage_line(prog: str, message: str) -> str:
    return f"{prog}: error: {message} (see {prog} --help)\n"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535 (0 picks a free one), got {port}")
    return port


def fail(message: str, status: int = 1) -> int:
    """Print a start-up failure as one line on stderr; returns the exit status."""
    line = " ".join(message.split())  # one line, whatever the message holds
    print(f"hubbub: error: {line}", file=sys.stderr, flush=True)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    serve.add_argument("--port", type=_port, default=9502, help="TCP port (0 picks a free one)")
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
    chat.add_argument(
        "--cafile",
        default=None,
        help="PEM file of the certificate authorities to trust for wss:// "
        "(default: the system's; SSL_CERT_FILE works too)",
    )
    chat.add_argument(
        "--token",
        default=os.environ.get("HUBBUB_TOKEN"),
        help="connection token (JWT) for servers that require one; default: $HUBBUB_TOKEN",
    )
    from .apps.admin import add_rooms_command
    from .auth.cli import add_token_command

    add_token_command(sub)

    add_rooms_command(sub)
    from .apps.backup import add_backup_commands

    add_backup_commands(sub)
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
        return serve(args)
    if args.command == "chat":
        import uvloop

        from .client.terminal import run_chat

        url = args.url if "://" in args.url else f"ws://{args.url}"
        try:
            return uvloop.run(run_chat(url, args.room, args.nick, args.cafile, args.token))
        except KeyboardInterrupt:
            return 0
    if args.command in ("backup", "restore"):
        from .apps.backup import run_backup_command

        return run_backup_command(args)
    if args.command == "token":
        from .auth.cli import run_token_command

        return run_token_command(args)
    if args.command == "rooms":
        from .apps.admin import run_rooms_command

        return run_rooms_command(args)
    parser.error(f"unknown command {args.command}")
    return 2


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = Settings(**{name: getattr(args, name) for name, *_ in setting_fields()})
    except SettingError as exc:
        flag = "--" + exc.field.replace("_", "-")
        sys.stderr.write(_usage_line("hubbub serve", f"argument {flag}: {exc.problem}"))
        return 2
    from .apps.chat import create_app

    try:
        create_app(args.host, args.port, settings).start()
    except StartupError as exc:
        return fail(str(exc))
    except StoreError as exc:
        return fail(f"cannot open the history store --db {settings.db}: {exc}")
    except Exception as exc:
        # Not foreseen (a bug, or a cause worth a StartupError of its own):
        # still one line; the traceback is there with --log-level debug.
        log.debug("start-up failed", exc_info=True)
        what = str(exc) or "no details"
        return fail(
            f"cannot start: {type(exc).__name__}: {what} (--log-level debug shows where)"
        )
    return 0

