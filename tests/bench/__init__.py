"""The load generator (``hubbub bench``): its ordering check and its scenarios."""

from __future__ import annotations

from hubbub.bench.scenarios import Options

#: The python-socketio peer, started by the socket.io generator tests.
SOCKETIO_PEER = "bench/peers/python_socketio_peer.py"


def room_options(**fields: object) -> Options:
    """Validated Options for a short room run in a test: one generator process,
    no pinning, no progress line, 100-byte messages, a window of 4; ``fields``
    set the rest (url, clients, senders, duration, ...)."""
    opts = Options(size=100, window=4, workers=1, generator_cpus=None, progress=False)
    for key, value in fields.items():
        setattr(opts, key, value)
    opts.validate()
    return opts


def socketio_room(url: str, pid: int, **overrides: object) -> Options:
    """A 20-client socket.io room (2 senders, 0.5 s) against the server at ``url``."""
    fields: dict[str, object] = {
        "protocol": "socket.io",
        "url": url,
        "clients": 20,
        "senders": 2,
        "duration": 0.5,
        "warmup": 0.2,
        "rate": 40.0,
        "server_pid": pid,
    }
    return room_options(**{**fields, **overrides})
