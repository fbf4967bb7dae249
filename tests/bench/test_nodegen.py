"""The socket.io generator (Node socket.io-client workers) against the python-socketio peer.

Needs Node.js and ``npm install --prefix bench/peers/socketio_node``: without
them the tests fail (they do not skip), saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbub.bench.nodegen import NPM_HINT, WORKER_ENV, WORKER_JS, NodeGenerator, check_node
from hubbub.bench.options import BenchError, Options

from ..conftest import free_port
from .helpers import SOCKETIO_PEER, check_socketio_runs

pytest.importorskip("socketio", reason="the bench extra is not installed")

pytestmark = pytest.mark.bench_node


@pytest.fixture
def socketio_peer(spawn) -> tuple[str, int]:
    """bench/peers/python_socketio_peer.py on a free port: (url, pid)."""
    try:
        check_node()
    except BenchError as exc:
        pytest.fail(f"{exc} (the socket.io generator tests need it)", pytrace=False)
    port = free_port()
    proc = spawn(SOCKETIO_PEER, str(port), port=port)
    return f"ws://127.0.0.1:{port}/", proc.pid


async def test_socketio_fanout_and_latency_lose_nothing(socketio_peer: tuple[str, int]) -> None:
    await check_socketio_runs(*socketio_peer, "node")


async def test_missing_node_modules_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = tmp_path / "worker.js"
    worker.write_text("process.exit(0);\n")
    monkeypatch.setenv(WORKER_ENV, str(worker))
    with pytest.raises(BenchError, match="npm install --prefix bench/peers/socketio_node"):
        async with NodeGenerator(Options(protocol="socket.io", progress=False)):
            pass
    assert "npm install" in NPM_HINT


async def test_a_worker_that_dies_is_reported_with_its_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        check_node()
    except BenchError as exc:
        pytest.fail(str(exc), pytrace=False)
    # A worker that crashes on its first command, next to (a link to) the real node_modules.
    (tmp_path / "node_modules").symlink_to(WORKER_JS.parent / "node_modules")
    worker = tmp_path / "worker.js"
    worker.write_text(
        "process.stdin.once('data', () => { console.error('boom: no such thing'); "
        "process.exit(3); });\n"
    )
    monkeypatch.setenv(WORKER_ENV, str(worker))
    gen = NodeGenerator(Options(protocol="socket.io", progress=False))
    with pytest.raises(BenchError, match=r"(?s)died during 'connect'.*exit status 3.*boom"):
        async with gen:
            await gen.call("connect", [{"url": "ws://127.0.0.1:9/", "count": 1}])
