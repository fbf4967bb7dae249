"""The command line and the example, as separate processes: what a user runs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hubbub import Server
from hubbub.apps import chat as chat_app
from hubbub.cli import main
from hubbub.config import setting_fields
from hubbub.errors import StartupError

from .conftest import ROOT, free_port, recv_all, serve_args
from .services import PG_DSN, pg_schema  # noqa: F401 (a fixture)


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
    assert proc.stderr == (
        "hubbub serve: error: argument --max-message-size: must be positive "
        "(see hubbub serve --help)\n"
    )


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


# -- start-up failures: one line, an exit status, no traceback ----------------------


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubbub", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def assert_one_line(proc: subprocess.CompletedProcess[str], status: int, expected: str) -> None:
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0], lines[0]


def test_port_in_use_is_one_line_and_status_1(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = run_serve(*serve_args(port, "--db", str(tmp_path / "h.db"))[3:])
    assert_one_line(
        proc,
        1,
        f"hubbub: error: port {port} on 127.0.0.1 is already in use; "
        "stop the other server or pick another --port",
    )
    assert proc.stdout == ""


def test_address_not_available_is_one_line(tmp_path):
    # 203.0.113.0/24 is reserved for documentation: no machine has it.
    proc = run_serve("--host", "203.0.113.77", "--port", "0", "--db", str(tmp_path / "h.db"))
    assert_one_line(proc, 1, "hubbub: error: address 203.0.113.77 is not available")


def test_a_bad_setting_names_the_flag_and_the_allowed_values(tmp_path):
    proc = run_serve("--sqlite-synchronous", "bogus", "--db", str(tmp_path / "h.db"))
    assert_one_line(
        proc,
        2,
        "hubbub serve: error: argument --sqlite-synchronous: must be one of "
        "OFF, NORMAL, FULL, EXTRA, got 'bogus'",
    )
    assert not (tmp_path / "h.db").exists()


def test_argparse_errors_are_one_line_too():
    assert_one_line(run_serve("--port", "99999"), 2, "argument --port: must be 0 to 65535")
    assert_one_line(run_serve("--no-such-flag"), 2, "unrecognized arguments: --no-such-flag")


def test_a_store_that_cannot_open_is_one_line(tmp_path):
    # A directory where the database file should be: SQLite cannot open it.
    port = free_port()
    proc = run_serve(*serve_args(port, "--db", str(tmp_path))[3:])
    assert_one_line(proc, 1, f"hubbub: error: cannot open the history store --db {tmp_path}")


def test_a_second_server_on_the_same_database_is_one_line(spawn, tmp_path):
    db = str(tmp_path / "h.db")
    first = free_port()
    proc = spawn(*serve_args(first, "--db", db), port=first)
    second = run_serve(*serve_args(free_port(), "--db", db)[3:])
    assert_one_line(
        second, 1, f"hubbub: error: {db} is in use by another hubbub process (pid {proc.pid})"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (StartupError("hubbub.db is used by another hubbub (pid 42); stop it"), "hubbub.db is"),
        (RuntimeError("boom\nsecond line"), "cannot start: RuntimeError: boom second line"),
    ],
)
def test_an_error_of_the_start_handler_reaches_the_cli_as_one_line(
    monkeypatch, capsys, error, expected
):
    class Locked(StartupError):
        pass

    if isinstance(error, StartupError):
        error = Locked(str(error))  # a subclass, as the store raises (StoreLocked)
    servers: list[Server] = []

    def create_app(host: str, port: int, settings: object) -> Server:
        server = Server("127.0.0.1", 0)

        @server.on("start")
        async def on_start(server: Server) -> None:
            raise error

        servers.append(server)
        return server

    monkeypatch.setattr(chat_app, "create_app", create_app)
    # serve sets up logging for the process (root level and handler): put it back,
    # or every later test in this process logs at ERROR into a closed stream.
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        status = main(["serve", "--host", "127.0.0.1", "--port", "0", "--log-level", "error"])
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert status == 1
    (line,) = err.splitlines()
    assert line.startswith("hubbub: error: ") and expected in line
    # The port it had bound is closed again.
    with socket.socket() as s:
        s.bind(("127.0.0.1", servers[0].port))


async def test_listening_line_links_and_access_log_lines(spawn):
    port = free_port()
    proc = spawn(*serve_args(port), port=port)
    status, _ = await asyncio.to_thread(_http_get, port, "/healthz?probe=1")
    assert status == 200
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    assert f"INFO hubbub: hubbub listening on http://127.0.0.1:{port}/\n" in out
    assert re.search(r'INFO hubbub\.access: 127\.0\.0\.1:\d+ "GET /healthz" 200 3 [\d.]+ms\n', out)


async def test_no_access_log_flag(spawn):
    port = free_port()
    proc = spawn(*serve_args(port, "--no-access-log"), port=port)
    status, _ = await asyncio.to_thread(_http_get, port, "/healthz")
    assert status == 200
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    assert "hubbub listening on" in out
    assert "hubbub.access" not in out


def _http_get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.read()


def _db_with_one_message(db) -> None:
    """A database file with one message in room 'ops', written by another process."""
    script = (
        "import asyncio\n"
        "from hubbub.store import PendingMessage\n"
        "from hubbub.store.sqlite import SQLiteStore\n"
        "async def main():\n"
        f"    s = SQLiteStore({str(db)!r}); await s.open()\n"
        "    await s.append([PendingMessage('ops', None, 'ann', 'hi', 1.0)])\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)


def test_rooms_commands_are_wired_into_the_cli(tmp_path):
    """`hubbub rooms list/delete` run from the real command line."""
    db = tmp_path / "h.db"
    _db_with_one_message(db)
    hubbub = [sys.executable, "-m", "hubbub"]
    listed = subprocess.run(
        [*hubbub, "rooms", "list", "--db", str(db)], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("ops\t1 message\t")
    deleted = subprocess.run(
        [*hubbub, "rooms", "delete", "ops", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert deleted.returncode == 0, deleted.stderr
    again = subprocess.run(
        [*hubbub, "rooms", "delete", "ops", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 1
    assert len(again.stderr.strip().splitlines()) == 1
    assert "Traceback" not in again.stderr


def test_backup_and_restore_commands_are_wired_into_the_cli(tmp_path):
    """`hubbub backup` and `hubbub restore` from the real command line."""
    db = tmp_path / "h.db"
    _db_with_one_message(db)
    hubbub = [sys.executable, "-m", "hubbub"]
    copy = tmp_path / "copy.db"
    backup = subprocess.run(
        [*hubbub, "backup", str(copy), "--db", str(db)], capture_output=True, text=True, timeout=30
    )
    assert backup.returncode == 0, backup.stderr
    assert copy.is_file()
    restored = tmp_path / "restored.db"
    restore = subprocess.run(
        [*hubbub, "restore", str(copy), "--db", str(restored)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert restore.returncode == 0, restore.stderr
    listed = subprocess.run(
        [*hubbub, "rooms", "list", "--db", str(restored)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.stdout.startswith("ops\t1 message\t"), listed.stdout + listed.stderr


# -- one settings schema: flags > environment > file > defaults -------------------


async def test_serve_takes_settings_from_file_env_and_flags_in_that_order(
    spawn, tmp_path, monkeypatch
):
    port = free_port()
    config = tmp_path / "hubbub.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndb = "{tmp_path / "h.db"}"\n'
        "rate = 5\nburst = 6\nmax_rooms_per_connection = 7\n"
    )
    monkeypatch.setenv("HUBBUB_BURST", "16")
    monkeypatch.setenv("HUBBUB_MAX_ROOMS_PER_CONNECTION", "17")
    args = ("-m", "hubbub", "serve", "--config", str(config), "--max-rooms-per-connection", "27")
    proc = spawn(*args, port=port)  # host and port come from the file
    async with connect(f"ws://127.0.0.1:{port}/", subprotocols=["hubbub.v1"]) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    limits = welcome["limits"]
    # rate from the file, burst from the environment, max rooms from the flag.
    assert (limits["rate"], limits["burst"], limits["max_rooms"]) == (5.0, 16.0, 27)
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    assert f"hubbub listening on http://127.0.0.1:{port}/" in out


def test_serve_refuses_a_bad_config_file_in_one_line(tmp_path):
    config = tmp_path / "hubbub.toml"
    config.write_text("max_mesage_size = 10\n")
    proc = run_serve("--config", str(config))
    assert_one_line(
        proc,
        2,
        f"hubbub: error: {config}:max_mesage_size: unknown setting "
        "(did you mean 'max_message_size'?)",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hubbub", "serve", "--db", str(tmp_path / "h.db")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "HUBBUB_PORT": "http"},
    )
    assert_one_line(proc, 2, "hubbub: error: HUBBUB_PORT: must be a whole number, got 'http'")


def test_config_check_prints_the_effective_settings_with_sources(tmp_path):
    config = tmp_path / "hubbub.toml"
    config.write_text('rate = 3\nstore = "postgresql://u:pw-in-url@db/x"\n')
    env = {**os.environ, "HUBBUB_JWT_SECRET": "j" * 40, "HUBBUB_MAX_MESAGE_SIZE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "hubbub", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pw-in-url" not in proc.stdout and "j" * 40 not in proc.stdout
    assert re.search(r"^rate += 3\.0  # file$", proc.stdout, re.M)
    assert re.search(
        r'^jwt_secret +="<set>"  # HUBBUB_JWT_SECRET$'.replace('="', '= "'), proc.stdout, re.M
    )
    assert re.search(r"^port +=  ?9502  # default$".replace("=  ?", "= "), proc.stdout, re.M)
    assert "HUBBUB_MAX_MESAGE_SIZE is not a hubbub setting" in proc.stderr
    config.write_text("rate = true\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hubbub", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert_one_line(proc, 2, f"hubbub: error: {config}:rate: must be a number, got True")
    example = subprocess.run(
        [sys.executable, "-m", "hubbub", "config", "example"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert example.stdout == (ROOT / "deploy" / "hubbub.toml").read_text()


async def test_log_format_json_is_one_object_per_line(spawn):
    port = free_port()
    proc = spawn(*serve_args(port, "--log-format", "json"), port=port)
    status, _ = await asyncio.to_thread(_http_get, port, "/healthz?probe=1")
    assert status == 200
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    records = [json.loads(line) for line in out.splitlines()]
    listening = [r for r in records if r["message"].startswith("hubbub listening")]
    assert listening and listening[0]["level"] == "INFO" and listening[0]["logger"] == "hubbub"
    access = [r for r in records if r["logger"] == "hubbub.access"]
    assert access and '"GET /healthz" 200' in access[0]["message"]
    assert all("timestamp" in r for r in records)


async def test_metrics_token_from_the_environment_protects_metrics(spawn, tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("HUBBUB_METRICS_TOKEN", "tok-123")
    proc = spawn(*serve_args(port, "--db", str(tmp_path / "h.db")), port=port)
    with pytest.raises(urllib.error.HTTPError) as info:
        await asyncio.to_thread(_http_get, port, "/metrics")
    assert info.value.code == 401
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer tok-123"}
    )
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).read())
    assert b"hubbub_connections{" in body and b"hubbub_journal_queue_depth" in body
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.communicate, timeout=10)


def test_migrate_command_is_wired_into_the_cli(tmp_path, pg_schema):  # noqa: F811
    """`hubbub migrate` from the real command line: a SQLite history into PostgreSQL."""
    db = tmp_path / "h.db"
    _db_with_one_message(db)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hubbub",
            "migrate",
            "--from",
            f"sqlite:///{db}",
            "--to",
            f"{PG_DSN}?schema={pg_schema}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "migrated 1 rooms, 1 messages" in proc.stdout + proc.stderr
