"""``hubbub token``: mint a connection token for tests and operators."""

from __future__ import annotations

import argparse


def add_token_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser(
        "token",
        help="mint a signed connection token (JWT) for a user",
        description="Print a connection token signed with the server's key, for "
        "tests, bots and operators. Give the same --secret (or the private key of "
        "--jwt-public-key) that `hubbub serve` verifies with.",
    )
    key = token.add_mutually_exclusive_group()
    key.add_argument("--secret", help="HS256 shared secret (HUBBUB_JWT_SECRET works too)")
    key.add_argument("--private-key", help="PEM private key file (RS256 or ES256)")
    token.add_argument("--sub", required=True, help="user id (the 'sub' claim)")
    token.add_argument("--name", default=None, help="display nickname (the 'name' claim)")
    token.add_argument(
        "--rooms", default=None, help="rooms the user may join, comma-separated, or '*'"
    )
    token.add_argument("--roles", default=None, help="roles, comma-separated (e.g. admin)")
    token.add_argument("--ttl", default="1h", help="lifetime, e.g. 90s, 30m, 1h, 7d")
    token.add_argument("--audience", default=None, help="the 'aud' claim")
    token.add_argument("--issuer", default=None, help="the 'iss' claim")


def run_token_command(args: argparse.Namespace) -> int:
    from .tokens import mint_from_args

    return mint_from_args(args)
