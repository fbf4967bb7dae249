"""The socket.io generator (Node socket.io-client workers) against the python-socketio peer.

Needs Node.js and ``npm install --prefix bench/peers/socketio_node``: without
them the tests fail (they do not skip), saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbub.bench.nodegen import NPM_HINT, WORKER_ENV, WORKER_JS, NodeGenerator, check_node
from hubbub.bench.scenarios import BenchError, Options, fanout, latency

from ..conftest import free_port

pytest.importorskip("socketio", reason="the bench extra is not installed")

pytestmark = pytest.mark.bench_node

PEER = "bench/peers/python_socketio_peer.py"


@pytest.fixture
def socketio_peer(spawn) -> tuple[str, int]:
    """bench/peers/python_socketio_peer.py on a free port: (url, pid)."""
    try:
        check_node()
    except BenchError as exc:
        pytest.fail(f"{exc} (the socket.io generator tests need it)", pytrace=False)
    port = free_port()
    proc = spawn(PEER, str(port), port=port)
    return f"ws://127.0.0.1:{port}/", proc.pid


def tiny_room(url: str, pid: int, **overrides: object) -> Options:
    opts = Options(
        protocol="socket.io",
        url=url,
        clients=20,
        senders=2,
        window=4,
        size=100,
        duration=0.5,
        warmup=0.2,
        rate=40.0,
        server_pid=pid,
        workers=1,
        generator_cpus=None,
        progress=False,
    )
    for key, value in overrides.items():
        setattr(opts, key, value)
    opts.validate()
    return opts


async def test_socketio_fanout_and_latency_lose_nothing(socketio_peer: tuple[str, int]) -> None:
    url, pid = socketio_peer
    result = await fanout(tiny_room(url, pid))
    assert result["errors"] == []
    assert result["ok"]
    assert result["protocol"] == "socket.io"
    assert result["connected"] == 20
    chk = result["check"]
    assert chk["lost"] == chk["duplicated"] == chk["reordered"] == 0
    assert chk["malformed"] == chk["disconnected"] == chk["echo_errors"] == 0
    assert result["messages_sent"] > 0
    # Every client received every message, the senders included.
    assert chk["deliveries"] == chk["expected"] == 20 * result["messages_sent"]
    assert result["deliveries_per_server_cpu_s"] > 0
    assert result["generator_cpu_s"] > 0

    # Same server, same room, same nicknames: a second run is clean too.
    result = await latency(tiny_room(url, pid))
    assert result["ok"], result["errors"]
    assert result["check"]["lost"] == 0
    lat = result["latency_ms"]
    # Only deliveries of messages sent in the window are timed, none of the warm-up.
    assert 0 < lat["count"] < result["check"]["deliveries"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 5_000


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
