"""Generator processes for ``--protocol socket.io``: Node workers on socket.io-client.

Python has no socket.io client fast enough to load a socket.io server
without becoming the bottleneck, so the socket.io scenarios use Node
processes running ``bench/peers/socketio_node/worker.js`` (the port of
:mod:`hubbub.bench.worker`'s fan-out and latency commands). They are driven
the same way as the Python workers, one command at a time, with the same
arguments and replies, as JSON lines over stdin and stdout:

- the parent writes ``{"cmd": "run", "args": {...}}``; the worker answers
  with one JSON object (the reply of worker.py's ``cmd_run``);
- between replies a worker writes ``{"progress": N}`` (at most every
  100 ms): what worker.py puts in its shared progress slot;
- ``finish`` carries its latencies as base64 of little-endian int64
  nanoseconds; :class:`NodeGenerator` turns them back into the raw bytes of
  ``array.array("q")`` that :func:`hubbub.bench.scenarios.room` expects.

Cost: receiving one message through socket.io-client takes a Node worker
about 35 to 45 µs of CPU when messages arrive one by one (latency scenario),
about 16 µs in a busy fan-out, about twice what the Node socket.io server
spends per delivery. Against that server, one worker saturates its core
first, and its time to drain a message's 1,000 deliveries is part of the
latency measured.

The workers need ``npm install --prefix bench/peers/socketio_node``. The
location of worker.js can be overridden with ``HUBBUB_BENCH_SOCKETIO_WORKER``
(its node_modules must sit next to it or above it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from . import proc
from .generator import Generator
from .options import BenchError, Options

#: The repository's worker (src/hubbub/bench/nodegen.py -> repository root).
WORKER_JS = Path(__file__).resolve().parents[3] / "bench" / "peers" / "socketio_node" / "worker.js"
WORKER_ENV = "HUBBUB_BENCH_SOCKETIO_WORKER"
NPM_HINT = "run `npm install --prefix bench/peers/socketio_node`"
#: How much of a worker's stderr is kept for the error message if it dies.
_STDERR_KEEP = 4096


def worker_path() -> Path:
    """worker.js: ``$HUBBUB_BENCH_SOCKETIO_WORKER`` or the repository's copy."""
    override = os.environ.get(WORKER_ENV)
    return Path(override) if override else WORKER_JS


def check_node(script: Path | None = None) -> str:
    """The ``node`` executable; raises :class:`BenchError` if it or the modules are missing."""
    script = script or worker_path()
    node = shutil.which("node")
    if node is None:
        raise BenchError(
            "--protocol socket.io needs Node.js (`node` is not on PATH; "
            "apt-get install nodejs npm), then " + NPM_HINT
        )
    if not script.is_file():
        raise BenchError(f"the socket.io generator worker {script} does not exist")
    if not any(
        (d / "node_modules" / "socket.io-client" / "package.json").is_file()
        for d in script.resolve().parents
    ):
        raise BenchError(f"socket.io-client is not installed next to {script}: {NPM_HINT}")
    return node


class _Lines(asyncio.Protocol):
    """Reads one worker's stdout: progress lines into a slot, replies into a queue."""

    def __init__(self, gen: NodeGenerator, index: int) -> None:
        self.gen = gen
        self.index = index
        self.buf = bytearray()
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.eof = False

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if b"\n" not in data:
            return
        cut = buf.rfind(b"\n")
        lines = bytes(buf[:cut]).split(b"\n")
        del buf[: cut + 1]
        for line in lines:
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.gen._note_stderr(self.index, b"(stdout) " + bytes(line[:200]) + b"\n")
                continue
            if isinstance(msg, dict) and len(msg) == 1 and "progress" in msg:
                self.gen.progress[self.index] = int(msg["progress"])
            else:
                self.replies.put_nowait(msg)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True


class _Stderr(asyncio.Protocol):
    """Keeps the tail of one worker's stderr, for the error message if it dies."""

    def __init__(self, gen: NodeGenerator, index: int) -> None:
        self.gen = gen
        self.index = index

    def data_received(self, data: bytes) -> None:
        self.gen._note_stderr(self.index, data)


class NodeGenerator(Generator):
    """``opts.workers`` Node worker processes (an async context manager).

    The interface of :class:`hubbub.bench.generator.Generator`: ``n``,
    ``pids``, ``total()``, ``snap()``, ``send()``, ``wait()``, ``call()``.
    The workers are pinned to ``opts.generator_cpus``, every thread of
    them (Node's GC and I/O threads included), and get the hard open-file
    limit as their soft one.
    """

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        self.progress: list[int] = [0] * self.n
        self.procs: list[subprocess.Popen[bytes]] = []
        self._lines: list[_Lines] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._stderr: list[bytearray] = [bytearray() for _ in range(self.n)]

    async def __aenter__(self) -> NodeGenerator:
        script = worker_path()
        node = check_node(script)
        loop = asyncio.get_running_loop()
        try:
            for i in range(self.n):
                p = self._spawn([node, str(script)], script.parent)
                self.procs.append(p)
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                try:
                    resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (hard, hard))
                except (OSError, ValueError):
                    pass
                lines = _Lines(self, i)
                assert p.stdout is not None and p.stderr is not None
                t_out, _ = await loop.connect_read_pipe(lambda lines=lines: lines, p.stdout)
                t_err, _ = await loop.connect_read_pipe(lambda i=i: _Stderr(self, i), p.stderr)
                self._lines.append(lines)
                self._transports += [t_out, t_err]
        except BaseException:
            await self.__aexit__()
            raise
        return self

    def _spawn(self, argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        """Start one worker; with generator CPUs, every thread of it starts pinned.

        A new process (and each thread it starts) inherits the CPU affinity of
        the thread that forked it: this thread takes the generator's CPUs for
        the duration of the fork, which pins Node's own threads too, with no
        race. The worker is killed when this process ends, even by ``kill -9``
        (``PR_SET_PDEATHSIG``): it would otherwise finish its command first.
        """
        cpus = self.opts.generator_cpus
        saved = os.sched_getaffinity(0) if cpus else None
        try:
            if cpus:
                os.sched_setaffinity(0, cpus)
            return subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C in the terminal goes to the parent only
                preexec_fn=proc.dies_with_us(),
            )
        finally:
            if saved is not None:
                os.sched_setaffinity(0, saved)

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs:
            try:
                self._write(p, "exit", {})
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(p.poll() is not None for p in self.procs):
                break
            await asyncio.sleep(0.02)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(1)
            except subprocess.TimeoutExpired:
                pass
            if p.stdin is not None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        for t in self._transports:
            t.close()
        self._transports = []

    def _note_stderr(self, index: int, data: bytes) -> None:
        buf = self._stderr[index]
        buf += data
        if len(buf) > _STDERR_KEEP:
            del buf[: len(buf) - _STDERR_KEEP]

    def _died(self, index: int, cmd: str) -> BenchError:
        p = self.procs[index]
        code = p.poll()
        tail = self._stderr[index].decode("utf-8", "replace").strip()
        status = f"exit status {code}" if code is not None else "its output closed"
        return BenchError(
            f"generator process {index} (node worker.js) died during {cmd!r} ({status})"
            + (f":\n{tail}" if tail else "")
        )

    @staticmethod
    def _write(p: subprocess.Popen[bytes], cmd: str, args: dict[str, Any]) -> None:
        assert p.stdin is not None
        p.stdin.write(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        p.stdin.flush()

    def send(self, cmd: str, args: list[dict[str, Any]]) -> None:
        if len(args) != self.n:
            raise ValueError(f"{len(args)} argument dicts for {self.n} workers")
        for i, (p, a) in enumerate(zip(self.procs, args, strict=True)):
            try:
                self._write(p, cmd, a)
            except OSError as exc:
                raise self._died(i, cmd) from exc

    async def wait(self, cmd: str, on_tick: Any = None) -> list[dict[str, Any]]:
        """The answers to ``cmd`` from every worker."""
        results: list[dict[str, Any] | None] = [None] * self.n
        while any(r is None for r in results):
            for i, lines in enumerate(self._lines):
                if results[i] is not None:
                    continue
                if not lines.replies.empty():
                    results[i] = lines.replies.get_nowait()
                elif lines.eof:  # after every reply it wrote has been read
                    raise self._died(i, cmd)
            if on_tick is not None:
                on_tick()
            await asyncio.sleep(0.005)
        out: list[dict[str, Any]] = []
        for r in results:
            assert r is not None
            if "error" in r:
                raise BenchError(f"generator: {r['error']}")
            if cmd == "finish":
                r["latencies"] = base64.b64decode(r.get("latencies") or "")
            out.append(r)
        return out
