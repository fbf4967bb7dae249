"""The Swoole-style API, driven over real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hubbub import Server
from hubbub.errors import StartupError

from .conftest import ROOT, free_port, recv_all, ws_url


def heavy_sum(n: int) -> tuple[int, int]:
    """CPU work for task(): runs in a worker process."""
    return sum(i * i for i in range(n)), os.getpid()


def fail_task() -> None:
    raise ValueError("boom")


async def test_push_text_and_binary_and_unknown_fd(make_server):
    opened: list[int] = []
    server: Server = await make_server(lambda s: s.on("open", lambda s, req: opened.append(req.fd)))
    async with connect(ws_url(server)) as ws:
        await asyncio.sleep(0.05)
        fd = opened[0]
        assert server.push(fd, "text") is True
        assert server.push(fd, b"\x00bin") is True
        assert await recv_all(ws, 2) == ["text", b"\x00bin"]
        assert server.push(fd + 1000, "nobody") is False


async def test_push_and_push_many_take_opcodes_as_constants_or_ints(make_server):
    from hubbub.server import WEBSOCKET_OPCODE_BINARY, WEBSOCKET_OPCODE_TEXT

    opened: list[int] = []
    server: Server = await make_server(lambda s: s.on("open", lambda s, req: opened.append(req.fd)))
    async with connect(ws_url(server)) as ws:
        await asyncio.sleep(0.05)
        fd = opened[0]
        assert server.push(fd, b"as text", WEBSOCKET_OPCODE_TEXT) is True
        assert server.push(fd, b"as binary", 2) is True
        assert server.push_many([fd], b"many as text", 1) == 1
        assert server.push_many([fd], b"many as binary", WEBSOCKET_OPCODE_BINARY) == 1
        assert await recv_all(ws, 4) == ["as text", b"as binary", "many as text", b"many as binary"]
        with pytest.raises(ValueError):
            server.push(fd, b"x", 3)  # not an opcode (RFC 6455 5.2: reserved)
        with pytest.raises(ValueError):
            server.push_many([fd], b"x", 11)


async def test_broadcast_reaches_everyone_and_respects_exclude(make_server):
    opened: list[int] = []
    server = await make_server(lambda s: s.on("open", lambda s, req: opened.append(req.fd)))
    async with (
        connect(ws_url(server)) as a,
        connect(ws_url(server), compression=None) as b,
        connect(ws_url(server)) as c,
    ):
        await asyncio.sleep(0.05)
        assert sorted(server.connections) == sorted(opened)
        assert server.broadcast("all") == 3
        assert server.broadcast("not a", exclude=[opened[0]]) == 2
        assert await recv_all(a, 1) == ["all"]
        assert await recv_all(b, 2) == ["all", "not a"]
        assert await recv_all(c, 2) == ["all", "not a"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.recv(), 0.2)


async def test_fds_are_small_unique_and_never_reused(make_server):
    opened: list[int] = []
    server = await make_server(lambda s: s.on("open", lambda s, req: opened.append(req.fd)))
    for _ in range(3):
        async with connect(ws_url(server)):
            await asyncio.sleep(0.02)
    assert opened == [1, 2, 3]
    assert not server.connections


async def test_exist_is_established_disconnect_and_close_event(make_server):
    opened: list[int] = []
    closed: list[int] = []

    def setup(s: Server) -> None:
        s.on("open", lambda s, req: opened.append(req.fd))
        s.on("close", lambda s, fd: closed.append(fd))

    server = await make_server(setup)
    async with connect(ws_url(server)) as ws:
        await asyncio.sleep(0.05)
        fd = opened[0]
        assert server.exist(fd) and server.is_established(fd)
        info = server.connection_info(fd)
        assert info is not None and info["remote_ip"] == "127.0.0.1" and info["established"]
        assert server.disconnect(fd, 4000, "bye") is True
        assert not server.is_established(fd)
        assert server.push(fd, "late") is False
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
        assert ws.close_code == 4000 and ws.close_reason == "bye"
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.02)
    assert closed == [fd]
    assert not server.exist(fd)
    assert server.disconnect(fd) is False
    assert server.connection_info(fd) is None


async def test_async_handlers_keep_per_connection_order(make_server):
    seen: list[str] = []

    async def on_message(s: Server, frame) -> None:
        await asyncio.sleep(random.random() / 100)
        seen.append(frame.data)
        s.push(frame.fd, frame.data)

    server = await make_server(lambda s: s.on("message", on_message), max_pending_messages=4)
    async with connect(ws_url(server)) as ws:
        sent = [str(i) for i in range(40)]
        for text in sent:
            await ws.send(text)
        assert await recv_all(ws, 40) == sent
    assert seen == sent


async def test_async_open_runs_before_messages_and_close_after(make_server):
    events: list[str] = []

    async def on_open(s, req):
        await asyncio.sleep(0.05)
        events.append("open")

    async def on_message(s, frame):
        events.append(f"msg {frame.data}")

    def setup(s: Server) -> None:
        s.on("open", on_open)
        s.on("message", on_message)
        s.on("close", lambda s, fd: events.append("close"))

    server = await make_server(setup)
    async with connect(ws_url(server)) as ws:
        await ws.send("a")
        await ws.send("b")
    for _ in range(100):
        if "close" in events:
            break
        await asyncio.sleep(0.02)
    assert events == ["open", "msg a", "msg b", "close"]
    assert not server.exist(1)


async def test_handler_exception_is_logged_and_connection_survives(make_server, caplog):
    def on_message(s, frame):
        if frame.data == "bad":
            raise RuntimeError("handler bug")
        s.push(frame.fd, "ok " + frame.data)

    server = await make_server(lambda s: s.on("message", on_message))
    async with connect(ws_url(server)) as ws:
        await ws.send("bad")
        await ws.send("good")
        assert await recv_all(ws, 1) == ["ok good"]
    assert any("handler bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_tick_after_and_clear_timer(make_server):
    server = await make_server()
    ticks: list[tuple[int, str]] = []
    once: list[str] = []
    tid = server.tick(20, lambda timer_id, tag: ticks.append((timer_id, tag)), "t")
    aid = server.after(50, once.append, "fired")
    cancelled = server.after(30, once.append, "never")
    assert server.clear_timer(cancelled) is True
    await asyncio.sleep(0.2)
    assert once == ["fired"]
    assert len(ticks) >= 3 and all(t == (tid, "t") for t in ticks)
    assert server.clear_timer(tid) is True
    n = len(ticks)
    await asyncio.sleep(0.1)
    assert len(ticks) == n
    assert server.clear_timer(aid) is False  # already fired
    with pytest.raises(ValueError):
        server.tick(0, print)


async def test_timers_registered_before_listen_start_with_the_server():
    server = Server("127.0.0.1", 0)
    fired: list[int] = []
    server.after(10, fired.append, 1)
    await asyncio.sleep(0.05)
    assert fired == []
    await server.listen()
    try:
        await asyncio.sleep(0.1)
        assert fired == [1]
    finally:
        await server.shutdown()


async def test_no_connection_is_accepted_before_the_start_handler_is_done():
    server = Server("127.0.0.1", 0)
    release = asyncio.Event()
    ready: list[bool] = []

    @server.on("start")
    async def on_start(server: Server) -> None:
        await release.wait()
        ready.append(True)

    @server.on("open")
    def on_open(server: Server, request: object) -> None:
        server.push(request.fd, f"ready={bool(ready)}")  # type: ignore[attr-defined]

    listening = asyncio.ensure_future(server.listen())
    try:
        await asyncio.sleep(0.1)
        assert not listening.done()
        assert server.port != 0  # bound, so the port is known, but not accepting yet
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)
        release.set()
        await asyncio.wait_for(listening, 5)
        async with connect(ws_url(server)) as ws:
            assert await recv_all(ws, 1) == ["ready=True"]
    finally:
        release.set()
        await server.shutdown()


async def test_task_runs_in_a_worker_process(make_server):
    server = await make_server(task_workers=1)
    results: list[tuple[int, int]] = []
    total, pid = await asyncio.wait_for(server.task(heavy_sum, 1000, callback=results.append), 60)
    assert total == sum(i * i for i in range(1000))
    assert pid != os.getpid()
    await asyncio.sleep(0.01)
    assert results == [(total, pid)]
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(server.task(fail_task), 60)


def test_on_rejects_unknown_events_and_works_as_decorator():
    server = Server("127.0.0.1", 0)
    with pytest.raises(ValueError, match="unknown event"):
        server.on("mesage", print)

    @server.on("Message")
    def handler(s, frame):
        return None

    assert server._endpoint.handlers["message"] is handler


def test_settings_are_validated():
    with pytest.raises(ValueError):
        Server("127.0.0.1", 0, max_message_size=0)
    with pytest.raises(TypeError):
        Server("127.0.0.1", 0, no_such_limit=1)


# -- start-up: what the operator sees --------------------------------------------


def _bound_socket() -> socket.socket:
    """A listening socket on a free 127.0.0.1 port (someone else's server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_listen_on_a_port_in_use_is_a_one_line_startup_error():
    with _bound_socket() as other:
        port = other.getsockname()[1]
        server = Server("127.0.0.1", port)
        with pytest.raises(StartupError) as info:
            await server.listen()
        await server.shutdown()
    assert str(info.value) == (
        f"port {port} on 127.0.0.1 is already in use; stop the other server or pick another --port"
    )
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("error", [StartupError("the store is locked"), RuntimeError("bug")])
async def test_a_failing_start_handler_closes_the_port(error):
    server = Server("127.0.0.1", 0)
    shut: list[bool] = []

    @server.on("start")
    async def on_start(server: Server) -> None:
        raise error

    server.on("shutdown", lambda s: shut.append(True))
    with pytest.raises(type(error)) as info:
        await server.listen()
    assert info.value is error
    # The port is closed at once: another server can have it.
    assert _port_is_free(server.port)
    await server.shutdown()
    assert shut == [True]


async def test_the_listening_line_is_a_link_with_the_real_port(caplog):
    caplog.set_level(logging.INFO, logger="hubbub")
    server = Server("127.0.0.1", 0)
    await server.listen()
    try:
        assert server.port != 0
        lines = [r.getMessage() for r in caplog.records if "listening" in r.getMessage()]
        assert lines == [f"hubbub listening on http://127.0.0.1:{server.port}/"]
    finally:
        await server.shutdown()


FAILING_START = """
import sys
from hubbub import Server
from hubbub.errors import StartupError
server = Server("127.0.0.1", int(sys.argv[1]))
@server.on("start")
def on_start(server):
    raise StartupError("cannot start: the store is locked")
@server.on("shutdown")
def on_shutdown(server):
    print("shut down", flush=True)
    raise RuntimeError("teardown of a half-started app fails too")
try:
    server.start()
except StartupError as exc:
    print("start failed:", exc, flush=True)
"""


def test_start_raises_the_start_handlers_error_after_tearing_down(tmp_path):
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_START, str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    # The shutdown handler ran; its own failure does not hide the real error.
    assert proc.stdout == "shut down\nstart failed: cannot start: the store is locked\n"
    assert "hubbub stopped" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _port_is_free(port)


# -- task workers at exit ---------------------------------------------------------

# A hubbub process with a task worker. The task says when it has started (a
# file) and then runs a little longer, so that it is still running when the
# server is told to stop. ``wakeup`` of CPython's ProcessPoolExecutor is
# slowed down between its "is the pipe closed?" check and its write, but only
# once the interpreter's exit hook runs (``_global_shutdown``): that widens a
# race which otherwise shows up about one exit in eight, so that a server
# that leaves the pool shutting down behind it (``shutdown(wait=False)``)
# gets "Exception ignored ... OSError: [Errno 9] Bad file descriptor" every
# time, and one that waits for the pool never does.
TASK_SERVER = """
import concurrent.futures.process as cfp
import pathlib
import sys
import time

from hubbub import Server


def slow_square(n, started):
    pathlib.Path(started).touch()
    time.sleep(0.5)
    return n * n


def slow_wakeup(self):
    if not self._closed:
        if cfp._global_shutdown:
            time.sleep(1.0)
        self._writer.send_bytes(b"")


if __name__ == "__main__":
    cfp._ThreadWakeup.wakeup = slow_wakeup
    server = Server("127.0.0.1", int(sys.argv[1]), task_workers=1)

    async def on_message(server, frame):
        n = await server.task(slow_square, int(frame.data), sys.argv[2])
        server.push(frame.fd, str(n))

    server.on("message", on_message)
    server.start()
"""


async def test_stopping_with_a_task_running_prints_nothing_from_the_worker_pool(tmp_path, spawn):
    script = tmp_path / "task_server.py"
    script.write_text(TASK_SERVER)
    for attempt in range(3):
        port = free_port()
        started = tmp_path / f"started-{attempt}"
        proc = spawn(str(script), str(port), str(started), port=port)
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send("7")
            for _ in range(200):  # the worker process starts first: up to 10 s
                if started.exists():
                    break
                await asyncio.sleep(0.05)
            assert started.exists(), "the task did not start"
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.to_thread(proc.communicate, timeout=20)
        assert proc.returncode == 0, out
        assert "hubbub stopped" in out, out
        assert "Exception ignored" not in out, out
        assert "Bad file descriptor" not in out, out
        assert "Traceback" not in out, out


async def _until(cond, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_buffered_counts_queued_bytes_until_the_kernel_takes_them():
    server = Server("127.0.0.1", 0)
    port = await server.listen()
    try:
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            await _until(lambda: len(server.connections) == 1)
            fd = next(iter(server.connections))
            assert server.buffered(fd) == 0
            server.push(fd, "x" * 1000)
            # Queued for this tick: counted before the transport sees it.
            assert server.buffered(fd) >= 1000
            assert await client.recv() == "x" * 1000
            await _until(lambda: server.buffered(fd) == 0)
        await _until(lambda: server.buffered(fd) is None)
    finally:
        await server.shutdown()
