"""The benchmark runners' children die with the runner, even by ``kill -9``.

A runner (a child Python process here) starts what bench/run.py and bench/scaleout.py
start: ``hubbub serve`` and Node ws the way bench/run.py does (benchrun.servers), a
``hubbub serve --workers 2`` on PostgreSQL and Redis the way bench/scaleout.py does
(benchrun.cluster); or the generator's worker processes (Python and Node), each busy with
a command that would last two minutes (a handshake to a server, the test's, that never
answers). It prints their pids; the test kills it with SIGKILL (no cleanup of its own can
run) and waits, bounded, until every one of them is gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import PG_START, REDIS_START

from .helpers import BENCH_RUN, ROOT, benchrun

pytest.importorskip("picows", reason="the bench extra is not installed")

SERVERS = """
import json, sys, time
from pathlib import Path
from benchrun import cluster, servers
tmp = Path(sys.argv[1])
started = []
for name in ("hubbub", "node_ws"):
    s = servers.ServerProcess(servers.SERVERS[name], tmp)
    s.start()
    started.append(s.proc.pid)
c = cluster.Server(cluster.CONFIGS["pg-redis-2w"], tmp)
print(json.dumps({"schema": c.schema, "prefix": c.prefix}), flush=True)
c.start()
started += c.pids()
print(json.dumps({"pids": started}), flush=True)
time.sleep(300)
"""

GENERATORS = """
import asyncio, json, sys
from hubbub.bench.generator import Generator
from hubbub.bench.nodegen import NodeGenerator
from hubbub.bench.options import Options

url = sys.argv[2]

async def main():
    pids = []
    opts = Options(workers=1, generator_cpus=None, progress=False)
    node = Options(protocol="socket.io", workers=1, generator_cpus=None, progress=False)
    async with Generator(opts) as gen, NodeGenerator(node) as ngen:
        connect = {"url": url, "count": 1, "senders": {}, "nsenders": 0, "wait_s": 120}
        gen.send("connect", [connect])
        ngen.send("connect", [{**connect, "protocol": "socket.io"}])
        await asyncio.sleep(0.5)  # the commands are under way
        print(json.dumps({"pids": gen.pids + ngen.pids}), flush=True)
        await asyncio.sleep(300)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    """Running (a zombie is dead: its parent, the runner, is gone and cannot reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Runner:
    """A runner script in a child process; its output lines as JSON."""

    def __init__(self, code: str, tmp: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_RUN.parent), str(ROOT)])}
        with open(tmp / "runner.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(tmp), *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.tmp = tmp
        self.pids: list[int] = []

    def line(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        raw = self.proc.stdout.readline()
        assert raw, "the runner exited: " + (self.tmp / "runner.log").read_text()[-2000:]
        data: dict[str, object] = json.loads(raw)
        return data

    def kill9_and_wait(self, limit: float = 15.0) -> list[int]:
        """SIGKILL the runner; its children still alive after ``limit`` seconds (polling)."""
        self.proc.kill()
        self.proc.wait()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not any(_alive(pid) for pid in self.pids):
                return []
            time.sleep(0.05)
        return [pid for pid in self.pids if _alive(pid)]

    def close(self) -> None:
        """The runner and (should the test have failed) its children: SIGKILL."""
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        for pid in self.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_servers_die_with_a_killed_runner(tmp_path: Path) -> None:
    cluster = benchrun("cluster")
    config = cluster.CONFIGS["pg-redis-2w"]
    problems = cluster.check_services([config])
    if problems:
        pytest.fail("\n".join([*problems, PG_START, REDIS_START]), pytrace=False)
    runner = Runner(SERVERS, tmp_path)
    names: dict[str, object] = {}
    try:
        names = runner.line()
        runner.pids = runner.line()["pids"]  # type: ignore[assignment]
        # hubbub, node, then the supervisor and its two workers.
        assert len(runner.pids) == 5
        assert all(_alive(pid) for pid in runner.pids)
        assert runner.kill9_and_wait() == []
    finally:
        runner.close()
        if names:  # the runner could not drop its schema and keys
            cluster.cleanup(config, names["schema"], names["prefix"])


def test_generator_workers_die_with_a_killed_runner(tmp_path: Path) -> None:
    from hubbub.bench.nodegen import check_node
    from hubbub.bench.options import BenchError

    try:
        check_node()
    except BenchError as exc:
        pytest.fail(str(exc), pytrace=False)
    # A server that accepts connections (the kernel's backlog) and never answers; the
    # test's own, so that it outlives the runner (its connections are not reset).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/"
        runner = Runner(GENERATORS, tmp_path, url)
        try:
            runner.pids = runner.line()["pids"]  # type: ignore[assignment]
            assert len(runner.pids) == 2
            assert all(_alive(pid) for pid in runner.pids)
            assert runner.kill9_and_wait() == []
        finally:
            runner.close()
