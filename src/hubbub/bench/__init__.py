"""``hubbub bench``: a load generator for WebSocket chat servers speaking the seed protocol.

The protocol: on connect the server sends ``Hello, welcome\\n``; a text
message T from connection fd goes to every connected client (the sender
too) as ``from <fd>: T``, and the sender also gets ``server: T``.

Scenarios: ``fanout`` (1000 clients, 10 senders with a window of messages
in flight; deliveries/s, deliveries per server CPU-second and a check that
every receiver got every message once and in order), ``latency`` (same room
at a fixed rate; p50/p99/p99.9), ``idle`` (server RSS per idle connection)
and ``connect`` (handshakes per server CPU-second).

Use :func:`main` (the CLI) or :func:`hubbub.bench.scenarios.run_scenarios`
(with :class:`hubbub.bench.options.Options`).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The ``hubbub bench`` command line; returns the exit status."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
