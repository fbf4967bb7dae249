"""Command line: ``hubbub serve``, ``hubbub chat``, ``hubbub config``, ...

A start-up failure is one line on stderr, ``hubbub: error: <what is wrong
and what to do>``, and exit status 1; a bad flag or setting is one line too,
with argparse's status 2. Never a traceback (``--log-level debug`` logs it for
an unexpected error).

``hubbub serve``'s settings come from one schema (:mod:`hubbub.config_file`):
flags > ``HUBBUB_*`` environment variables > the ``--config`` TOML file >
defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

from . import __version__
from .config_file import SCHEMA, ConfigError, Effective, Key, resolve
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


def _add_setting(parser: argparse.ArgumentParser, key: Key) -> None:
    """One schema key as a flag. Its default is not set on the namespace
    (SUPPRESS): a flag given is told from one left out (the precedence)."""
    default = "empty" if key.default == "" else key.default
    text = f"{key.help} (default: {default}; env {key.env})".replace("%", "%%")
    if key.type is bool:
        parser.add_argument(
            key.flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
        )
    elif key.name == "port":
        parser.add_argument(key.flag, type=_port, default=argparse.SUPPRESS, help=text)
    elif key.name == "log_level":
        parser.add_argument(
            key.flag,
            choices=["debug", "info", "warning", "error"],
            default=argparse.SUPPRESS,
            help=text,
        )
    else:
        parser.add_argument(key.flag, type=key.type, default=argparse.SUPPRESS, help=text)


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the chat server (HTTP + WebSocket on one port)",
        description="Run the chat server: the seed's chat room for plain WebSocket clients, "
        "the chat page at /, /healthz for health checks. Ctrl-C or SIGTERM shut it down "
        "gracefully (clients get close code 1001). Every setting can be a flag, an "
        "environment variable HUBBUB_<NAME> or a key of the --config file; precedence: "
        "flags > environment > file > defaults (hubbub config check shows the result).",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file of settings (keys as below, e.g. max_message_size = 65536; "
        "default: $HUBBUB_CONFIG, else none)",
    )
    for key in SCHEMA.values():
        _add_setting(serve, key)


def _add_config(sub: Any) -> None:
    config = sub.add_parser(
        "config",
        help="check a config file, print the effective settings or an example file",
        description="hubbub config check [FILE]: validate FILE (else $HUBBUB_CONFIG) with "
        "the HUBBUB_* environment and print every setting with its source (secrets "
        "masked). hubbub config example: the example file, every setting at its default.",
    )
    verbs = config.add_subparsers(dest="config_command", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="validate a config file, print the effective settings")
    check.add_argument("file", nargs="?", default=None, help="TOML file (default: $HUBBUB_CONFIG)")
    verbs.add_parser("example", help="print an example file with every setting and its default")


def _add_chat(sub: Any) -> None:
    chat = sub.add_parser(
        "chat",
        help="interactive terminal chat client",
        description="Chat from a terminal. With a hubbub server: rooms, history, presence, "
        "resume after reconnects (commands: /join /leave /switch /nick /msg /who /rooms "
        "/history /quit). With any other WebSocket server: plain text, one message per line.",
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hubbub",
        description="hubbub: a real-time chat server (the Swoole chat room, done properly).",
    )
    parser.add_argument("--version", action="version", version=f"hubbub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    _add_chat(sub)
    sub.add_parser(
        "bench",
        help="load generator for seed-protocol chat servers (hubbub bench --help)",
        add_help=False,
    )
    _add_config(sub)
    from .apps.admin import add_rooms_command
    from .apps.backup import add_backup_commands
    from .apps.migrate import add_migrate_command
    from .auth.cli import add_token_command

    add_token_command(sub)
    add_rooms_command(sub)
    add_backup_commands(sub)
    add_migrate_command(sub)
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
    return _dispatch(parser, args)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = args.command
    if command == "serve":
        return serve(args)
    if command == "config":
        return config_command(args)
    if command == "chat":
        return _chat(args)
    if command in ("backup", "restore"):
        from .apps.backup import run_backup_command

        return run_backup_command(args)
    if command == "token":
        from .auth.cli import run_token_command

        return run_token_command(args)
    if command == "rooms":
        from .apps.admin import run_rooms_command

        return run_rooms_command(args)
    if command == "migrate":
        from .apps.migrate import run_migrate_command

        return run_migrate_command(args)
    parser.error(f"unknown command {command}")
    return 2


def _chat(args: argparse.Namespace) -> int:
    import uvloop

    from .client.terminal import run_chat

    url = args.url if "://" in args.url else f"ws://{args.url}"
    try:
        return uvloop.run(run_chat(url, args.room, args.nick, args.cafile, args.token))
    except KeyboardInterrupt:
        return 0


def config_command(args: argparse.Namespace) -> int:
    from .config_file import example, exposure_warnings, report, warnings

    if args.config_command == "example":
        sys.stdout.write(example())
        return 0
    try:
        eff = resolve({}, config=args.file)
    except ConfigError as exc:
        return fail(str(exc), 2)
    for warning in warnings(eff) + exposure_warnings(eff):
        print(f"hubbub: warning: {warning}", file=sys.stderr)
    sys.stdout.write(report(eff))
    return 0


def effective_settings(args: argparse.Namespace) -> Effective | int:
    """The settings of ``hubbub serve`` (or the exit status of a refused one)."""
    flags = {name: value for name, value in vars(args).items() if name in SCHEMA}
    try:
        return resolve(flags, config=args.config)
    except ConfigError as exc:
        if exc.source == "flag":
            sys.stderr.write(_usage_line("hubbub serve", str(exc)))
            return 2
        return fail(str(exc), 2)


def serve(args: argparse.Namespace) -> int:
    eff = effective_settings(args)
    if isinstance(eff, int):
        return eff
    from . import logs

    logs.setup(eff.log_level, eff.settings.log_format)
    from .config_file import warnings

    for warning in warnings(eff):
        log.warning("%s", warning)
    settings, host, port = eff.settings, eff.host, eff.port
    try:
        if settings.workers > 1:
            from .supervisor import serve_workers

            return serve_workers(host, port, settings)
        from .apps.chat import create_app
        from .metrics import install

        server = create_app(host, port, settings)
        install(server)
        server.start()
    except StartupError as exc:
        return fail(str(exc))
    except StoreError as exc:
        return fail(f"cannot open the history store --db {settings.db}: {exc}")
    except Exception as exc:
        # Not foreseen (a bug, or a cause worth a StartupError of its own):
        # still one line; the traceback is there with --log-level debug.
        log.debug("start-up failed", exc_info=True)
        what = str(exc) or "no details"
        return fail(f"cannot start: {type(exc).__name__}: {what} (--log-level debug shows where)")
    return 0
