"""``hubbub serve --workers N``: N server processes on one port, under one parent.

The parent binds nothing and serves nothing. It starts N workers, each a fresh
interpreter (``python -m hubbub.supervisor worker I``, its settings pickled on
its stdin) running the normal serve path: :func:`hubbub.apps.chat.create_app`,
the metrics, :meth:`hubbub.server.Server.start`. Each worker binds the port
with ``SO_REUSEPORT`` (the server does when ``workers > 1``), so the kernel
spreads new connections over the workers; an established connection stays on
its worker.
Worker i (from 1) of N numbers its connections i, i+N, i+2N, ...: an fd names
one client across the workers (the plain room's ``from <fd>``, which spans them
over the shared broker: :mod:`hubbub.apps.seed`).

Why a fresh interpreter rather than ``fork``: a worker starts from nothing
(no inherited event loop, threads, sockets or half-open pools of the parent),
exactly as ``hubbub serve`` starts, and a worker's command line says what it is
(``ps`` shows ``hubbub.supervisor worker 2``).

What the parent does:

- A worker that dies (a crash, ``kill -9``, the OOM killer) is started again
  after a back-off (0.5 s, doubling per recent restart, at most 10 s). Its
  clients reconnect (to any worker: the kernel picks) and resume from the
  shared store with no gap. More than :data:`MAX_RESTARTS` restarts of one
  worker within :data:`RESTART_WINDOW` seconds is a crash loop: the parent stops
  every worker and exits 1, saying why.
- A worker that cannot start (the port is taken by another program, the store
  refuses...) prints its one-line reason; at start-up the parent then stops the
  others and exits 1 (as ``hubbub serve`` would), later it is a restart.
- SIGTERM or SIGINT: forwarded (as SIGTERM) to every worker, which shuts down
  gracefully (close code 1001 to its clients); the parent exits 0 once all have
  exited 0, 1 if one failed or had to be killed after ``shutdown_timeout`` + 10 s.
  A second SIGTERM/SIGINT kills the workers at once (SIGKILL).
- A worker asks the kernel for SIGTERM when the parent dies (``PR_SET_PDEATHSIG``),
  so a ``kill -9`` of the parent does not leave orphans serving on.

Workers need a shared store and broker: with SQLite each worker would need the
database file (one writer only: the second worker's open is refused), and with
the local broker each worker would fan out only to its own clients (a message
sent on one worker would never reach the members on another). Both are refused
before anything starts.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .config import Settings
from .errors import StartupError

log = logging.getLogger("hubbub.supervisor")

#: Restarts of one worker allowed within RESTART_WINDOW seconds; one more is a crash loop.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
#: Back-off before a restart: FIRST_BACKOFF * 2**(restarts in the window), at most MAX_BACKOFF.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
#: A worker's exit status when it could not start (its reason is on stderr).
STARTUP_FAILED = 3
#: Beyond the server's own shutdown_timeout, how long the parent waits for workers to exit.
EXTRA_GRACE = 10.0


def check_shared(port: int, settings: Settings) -> None:
    """Refuse what cannot work with several workers (one line each)."""
    n = settings.workers
    store = settings.store or ""
    if not store or store.startswith("sqlite:"):
        raise StartupError(
            f"--workers {n} needs a shared store: SQLite has one writer (each worker "
            "would need the database file); use --store postgresql://... or --workers 1"
        )
    broker = settings.broker or "local"
    if broker == "local":
        raise StartupError(
            f"--workers {n} needs a shared broker: with --broker local each worker would "
            "fan out to its own clients only; use --broker redis://... or --workers 1"
        )
    if port == 0:
        raise StartupError(
            f"--workers {n} needs a fixed --port (0 would give each worker a port of its own)"
        )


@dataclass
class RestartPolicy:
    """When a dead worker may start again; pure (the clock is passed in)."""

    max_restarts: int = MAX_RESTARTS
    window: float = RESTART_WINDOW
    first: float = FIRST_BACKOFF
    ceiling: float = MAX_BACKOFF
    recent: collections.deque[float] = field(default_factory=collections.deque)

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the restart, or None: a crash loop, give up.
        Counts this restart."""
        while self.recent and self.recent[0] <= now - self.window:
            self.recent.popleft()
        if len(self.recent) >= self.max_restarts:
            return None
        delay = min(self.first * 2 ** len(self.recent), self.ceiling)
        self.recent.append(now)
        return delay


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    #: When a restart is due (monotonic), while the worker is down.
    due: float | None = None
    #: Whether this is a restart. The first process of every worker failing to start
    #: (exit STARTUP_FAILED: server.start() raised, so it never served) stops them
    #: all, as ``hubbub serve`` would; a restart failing to start is retried.
    restarted: bool = False


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == STARTUP_FAILED:
        return "could not start (its reason is above)"
    return f"exited with status {code}"


class Supervisor:
    def __init__(self, host: str, port: int, settings: Settings) -> None:
        self.host, self.port, self.settings = host, port, settings
        self.workers = [Worker(i + 1) for i in range(settings.workers)]
        self.level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        self.signals: collections.deque[int] = collections.deque()
        self.stopping: float | None = None  # when the stop began (monotonic)
        self.failed = False

    # -- processes ------------------------------------------------------------------

    def spawn(self, worker: Worker) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hubbub.supervisor", "worker", str(worker.index)],
            stdin=subprocess.PIPE,
        )
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(pickle.dumps((self.host, self.port, self.settings, self.level)))
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        worker.proc, worker.due = proc, None
        log.info("worker %d started (pid %d)", worker.index, proc.pid)

    def signal_all(self, sig: signal.Signals) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def stop(self, why: str) -> None:
        if self.stopping is None:
            log.info("stopping %d workers (%s)", len(self.workers), why)
            self.stopping = time.monotonic()
            for w in self.workers:
                w.due = None
            self.signal_all(signal.SIGTERM)
        else:
            log.warning("second %s: killing the workers now", why)
            self.failed = True
            self.signal_all(signal.SIGKILL)

    # -- what happened ----------------------------------------------------------------

    def on_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stop(signal.Signals(sig).name)

    def reap(self, now: float) -> None:
        for w in self.workers:
            if w.proc is None:
                continue
            code = w.proc.poll()
            if code is None:
                continue
            w.proc = None
            self.on_exit(w, code, now)

    def on_exit(self, w: Worker, code: int, now: float) -> None:
        what = describe_exit(code)
        if self.stopping is not None:
            # -SIGTERM: stopped before its server took over the signal (still starting).
            if code not in (0, -signal.SIGTERM):
                self.failed = True
                log.warning("worker %d %s while stopping", w.index, what)
            return
        if code == STARTUP_FAILED and not w.restarted:
            self.failed = True
            self.stop(f"worker {w.index} could not start")
            return
        delay = w.policy.next_delay(now)
        if delay is None:
            log.error(
                "worker %d %s: more than %d restarts in %.0f s, a crash loop; giving up",
                w.index, what, w.policy.max_restarts, w.policy.window,
            )  # fmt: skip
            self.failed = True
            self.stop("a worker keeps dying")
            return
        log.warning(
            "worker %d %s; restarting it in %.1f s (restart %d in the last %.0f s)",
            w.index, what, delay, len(w.policy.recent), w.policy.window,
        )  # fmt: skip
        w.due = now + delay

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        old_fd = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        old = {s: signal.signal(s, lambda n, _f: self.signals.append(n)) for s in handled}
        try:
            for w in self.workers:
                self.spawn(w)
            return self._loop(rsock)
        finally:
            self.signal_all(signal.SIGKILL)  # only if the loop itself failed
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_fd)
            rsock.close()
            wsock.close()

    def _loop(self, rsock: socket.socket) -> int:
        grace = float(getattr(self.settings, "shutdown_timeout", 10.0)) + EXTRA_GRACE
        while True:
            now = time.monotonic()
            dues = [w.due for w in self.workers if w.due is not None]
            timeout = max(0.0, min(dues) - now) if dues else 1.0
            select.select([rsock], [], [], min(timeout, 1.0))
            with contextlib.suppress(BlockingIOError):
                rsock.recv(4096)
            while self.signals:
                self.on_signal(self.signals.popleft())
            now = time.monotonic()
            self.reap(now)
            if self.stopping is not None:
                if all(w.proc is None for w in self.workers):
                    log.info("all workers stopped")
                    return 1 if self.failed else 0
                if now - self.stopping > grace:
                    log.error("workers still running %.0f s after SIGTERM: killed", grace)
                    self.failed = True
                    self.signal_all(signal.SIGKILL)
                continue
            for w in self.workers:
                if w.due is not None and w.due <= now:
                    w.restarted = True
                    self.spawn(w)


def serve_workers(host: str, port: int, settings: Settings) -> int:
    """Run ``settings.workers`` server processes on ``host:port``; the exit status
    (0: stopped by SIGTERM/SIGINT, all exited cleanly; 1: a worker could not start,
    kept dying, or did not stop cleanly). StartupError for what cannot work."""
    check_shared(port, settings)
    log.info(
        "supervising %d workers on %s:%d (SO_REUSEPORT)", settings.workers, host or "*", port
    )
    return Supervisor(host, port, settings).run()


# -- the worker side ------------------------------------------------------------------


def _die_with_parent() -> None:
    """SIGTERM this process when the parent dies (Linux); checked once for the race."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def worker_main(index: int) -> int:
    """One worker: the settings from stdin, then what ``hubbub serve`` does."""
    host, port, settings, level = pickle.load(sys.stdin.buffer)
    from . import logs

    logs.setup(level, settings.log_format)
    from .apps.chat import create_app
    from .metrics import install
    from .store.base import StoreError

    try:
        server = create_app(host, port, settings)
        # Worker i (from 1) serves its metrics on metrics_port + i - 1: never shared.
        install(server, worker=index - 1)
        # Worker i of N numbers its connections i, i+N, ...: an fd names one client
        # across the workers (the plain room's ``from <fd>``).
        server._endpoint.number_fds(index - 1, settings.workers)
        _die_with_parent()
        server.start()
    except (StartupError, StoreError) as exc:
        print(f"hubbub: error: worker {index}: {_one_line(str(exc))}", file=sys.stderr, flush=True)
        return STARTUP_FAILED
    except Exception as exc:
        log.debug("worker %d failed", index, exc_info=True)
        print(
            f"hubbub: error: worker {index}: {type(exc).__name__}: {_one_line(str(exc))}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker" and sys.argv[2].isdigit():
        sys.exit(worker_main(int(sys.argv[2])))
    sys.exit("usage: python -m hubbub.supervisor worker INDEX (started by hubbub serve --workers)")
