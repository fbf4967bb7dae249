"""The command line and the example, as separate processes: what a user runs."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hubbub.config import setting_fields

from .conftest import ROOT, free_port, recv_all, serve_args


def test_help_documents_every_flag():
    top = subprocess.run([sys.executable, "-m", "hubbub", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "serve" in top.stdout
    out = subprocess.run(
        [sys.executable, "-m", "hubbub", "serve", "--help"], capture_output=True, text=True
    ).stdout
    for flag in ["--host", "--port", "--log-level"]:
        assert flag in out
    for name, *_ in setting_fields():
        assert "--" + name.replace("_", "-") in out, name


def test_bad_flag_values_are_refused_with_a_message():
    proc = subprocess.run(
        [sys.executable, "-m", "hubbub", "serve", "--max-message-size", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "max_message_size must be positive" in proc.stderr
    assert "Traceback" not in proc.stderr


async def _closed_code(ws) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return ws.close_code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_shuts_down_gracefully(spawn, sig):
    port = free_port()
    proc = spawn(*serve_args(port), port=port)
    url = f"ws://127.0.0.1:{port}/"
    async with connect(url) as a, connect(url) as b:
        assert await recv_all(a, 1) == ["Hello, welcome\n"]
        assert await recv_all(b, 1) == ["Hello, welcome\n"]
        await a.send("bye")
        assert await recv_all(a, 2) == ["from 1: bye", "server: bye"]
        started = time.monotonic()
        proc.send_signal(sig)
        assert await _closed_code(a) == 1001
        assert await _closed_code(b) == 1001
    out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 5
    assert "client-1 closed" in out and "client-2 closed" in out
    assert "Traceback" not in out


SLOW_START = """
import asyncio
from hubbub import Server
server = Server("127.0.0.1", 0)
@server.on("start")
async def on_start(server):
    print("starting", flush=True)
    await asyncio.sleep(1)
    print("started", flush=True)
@server.on("shutdown")
def on_shutdown(server):
    print("shut down", flush=True)
server.start()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_is_a_graceful_shutdown(sig):
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_START], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "starting\n"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Not killed by the signal: start-up finished, then a graceful shutdown.
    assert proc.returncode == 0
    assert out == "started\nshut down\n"


async def test_seed_chat_example_ports_socket_php(spawn):
    port = free_port()
    proc = spawn(str(ROOT / "examples" / "seed_chat.py"), str(port), port=port)
    url = f"ws://127.0.0.1:{port}/"
    async with connect(url) as a, connect(url) as b:
        assert await recv_all(a, 1) == ["Hello, welcome\n"]
        assert await recv_all(b, 1) == ["Hello, welcome\n"]
        await b.send("hi")
        assert await recv_all(b, 2) == ["from 2: hi", "server: hi"]
        assert await recv_all(a, 1) == ["from 2: hi"]
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    assert proc.returncode == 0
    assert "client-1 closed\n" in out and "client-2 closed\n" in out


def test_seed_chat_example_is_about_twenty_lines():
    code = [
        line
        for line in (ROOT / "examples" / "seed_chat.py").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert len(code) <= 25
