"""The processes the benchmark runners start: the ``hubbub serve`` command line (one builder
for bench/run.py and bench/scaleout.py), and children that die with the runner.

Every child is started by :func:`spawn`: in a session of its own (a Ctrl-C in the terminal
goes to the runner only), and with ``PR_SET_PDEATHSIG`` so that the kernel kills it when
the runner ends, even by ``kill -9`` (a ``hubbub serve --workers N``'s workers get SIGTERM
when their supervisor dies, their own PDEATHSIG). :func:`stop` ends one (SIGTERM, then its
whole process group by SIGKILL) whatever interrupts it; on a normal exit, whatever is still
running is killed too (``atexit``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

from hubbub.bench import proc

#: The repository (bench/benchrun/children.py -> ..).
ROOT = Path(__file__).resolve().parents[2]

_LIVE: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()


def hubbub_argv(
    port: int,
    *,
    max_connections: int,
    db: Path | None = None,
    store: str | None = None,
    broker: str | None = None,
    workers: int = 1,
    metrics_port: int = 0,
) -> list[str]:
    """``hubbub serve`` as the benchmarks run it: on 127.0.0.1:``port``, warnings only, no
    access log, no per-connection rate limit (the chat senders send far more than the
    default 20 messages/s); the SQLite file ``db`` or the PostgreSQL ``store``, the Redis
    ``broker`` if any, and ``workers`` processes (worker i's metrics on
    ``metrics_port + i``)."""
    if (db is None) == (store is None):
        raise ValueError("one of db (SQLite) and store (PostgreSQL)")
    argv = [sys.executable, "-m", "hubbub", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    argv += ["--max-connections", str(max_connections), "--rate", "0"]
    argv += ["--db", str(db)] if db is not None else ["--store", str(store)]
    if broker:
        argv += ["--broker", broker]
    if workers > 1:
        argv += ["--workers", str(workers), "--metrics-port", str(metrics_port)]
    return argv


def spawn(
    argv: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    setup: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the repository, its output appended to ``log``, in a new session,
    killed (SIGKILL) when this process ends; ``setup`` runs in the child before ``exec``
    (pinning, limits). Call it from the thread that lives as long as the child should:
    the kernel's "parent" is the thread that started it."""
    with open(log, "ab") as out:
        p = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=proc.dies_with_us(signal.SIGKILL, setup),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    _LIVE.add(p)
    return p


def stop(p: subprocess.Popen[bytes], timeout: float, *, term: bool = True) -> None:
    """SIGTERM (unless ``term`` is false: sent already; a second SIGTERM would stop a
    ``hubbub serve --workers`` supervisor's workers at once), up to ``timeout`` seconds
    to exit, then :func:`kill`; killed too if anything (a Ctrl-C) interrupts the wait."""
    try:
        if term and p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(p)
    except BaseException:
        kill(p)
        raise
    finally:
        _LIVE.discard(p)


def kill(p: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the child's process group (what it started too), if it is not reaped."""
    # Its own session: the group's id is the child's pid (until the child is reaped).
    if p.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(5)
    _LIVE.discard(p)


@atexit.register
def _kill_the_rest() -> None:
    for p in list(_LIVE):
        kill(p)
