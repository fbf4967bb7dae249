"""The storm scenarios: their checker (with fakes) and tiny real storms against `hubbub serve`.

The checker tests feed :class:`RoomSeqCheck` and :class:`StormClient` made-up
frames: a replay that skips a message, repeats one or ends with a
``resumed`` that does not match must be counted. The real storms run a
`hubbub serve` subprocess on a free port (the reconnect storm restarts it),
with 20 to 40 clients: every client joins, presence converges, the resume is
clean; a restart that loses the history (a fresh database) is reported as a
failure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from hubbub.bench.checker import RoomSeqCheck
from hubbub.bench.options import Options
from hubbub.bench.storm_clients import StormClient, StormCommands, StormShared, _decode
from hubbub.bench.storms import join_storm, reconnect_storm

from .helpers import benchrun, generator_options

# -- the checker ---------------------------------------------------------------


def test_clean_join_and_resume_count_nothing() -> None:
    chk = RoomSeqCheck()
    chk.room(40)
    for seq in (41, 42, 43):
        chk.message(seq)
    chk.resume_from(chk.last)
    chk.room(45)  # the room frame of a resume says nothing about the replay
    for seq in (44, 45):
        chk.message(seq)
    chk.resumed(43, 45, 2)
    chk.message(46)
    assert (chk.gaps, chk.duplicated, chk.bad_resume, chk.lost(46)) == (0, 0, 0, 0)


def test_a_replay_that_skips_a_message_is_a_gap() -> None:
    chk = RoomSeqCheck()
    chk.room(10)
    chk.resume_from(10)
    chk.message(11)
    chk.message(13)  # 12 never came
    chk.resumed(10, 13, 2)
    assert chk.gaps == 1
    assert chk.bad_resume == 0


def test_a_repeated_message_is_a_duplicate() -> None:
    chk = RoomSeqCheck()
    chk.room(10)
    chk.resume_from(10)
    for seq in (11, 12, 12):
        chk.message(seq)
    chk.resumed(10, 12, 2)
    assert chk.duplicated == 1
    assert chk.gaps == 0


def test_a_resumed_that_does_not_match_the_replay_is_counted() -> None:
    chk = RoomSeqCheck()
    chk.room(10)
    chk.resume_from(10)
    chk.message(11)
    chk.resumed(10, 14, 1)  # says 14, only 11 was replayed: 12-14 are missing
    assert chk.bad_resume == 1
    assert chk.gaps == 3


def test_a_client_behind_the_room_has_lost_messages() -> None:
    chk = RoomSeqCheck()
    chk.room(5)
    chk.message(6)
    assert chk.lost(9) == 3
    assert chk.lost(6) == 0


def _frame(**fields: object) -> bytes:
    return msgspec.json.encode(fields)


class _Fake(StormCommands):
    """The worker's storm commands over clients fed by hand (no network)."""

    def __init__(self) -> None:
        self._storm_init()


async def test_storm_check_reports_a_lost_message_in_a_replay() -> None:
    """The worker's storm_check over a client whose replay lost a message."""
    worker = _Fake()
    sh = worker.storm_shared = StormShared()
    good = StormClient(sh, True, "r", "s0")
    bad = StormClient(sh, True, "r", "s1")
    worker.storm = [good, bad]
    for c in (good, bad):
        c._chat_frame(_decode(_frame(type="room", room="r", seq=3, epoch="e", count=2)))
        c.chk.resume_from(c.chk.last)
    for seq in (4, 5, 6):
        good._chat_frame(_decode(_frame(type="message", room="r", seq=seq)))
    for seq in (4, 6):  # the server's replay skipped 5
        bad._chat_frame(_decode(_frame(type="message", room="r", seq=seq)))
    for c, count in ((good, 3), (bad, 2)):
        c._chat_frame(_decode(_frame(type="resumed", room="r", since=3, seq=6, count=count)))
    result = await worker.cmd_storm_check({"r": 7})
    assert result["gaps"] == 1
    assert result["duplicated"] == 0
    assert result["bad_resume"] == 0
    assert result["lost"] == 2  # neither got 7
    assert good.ready and bad.ready


# -- tiny real storms ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubbubProcess:
    """`hubbub serve` on a free port with a database in ``tmp``; restartable."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.tmp = tmp
        self.db = tmp / "hubbub.db"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> int:
        argv = benchrun("children").hubbub_argv(self.port, max_connections=1000, db=self.db)
        log = open(self.tmp / "server.log", "ab")  # the child keeps its own copy
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self.proc.pid
            except OSError:
                time.sleep(0.05)
        raise AssertionError("hubbub serve did not listen within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def hubbub(tmp_path: Path) -> Iterator[HubbubProcess]:
    server = HubbubProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def _opts(server: HubbubProcess, protocol: str = "hubbub.v1") -> Options:
    assert server.proc is not None
    return generator_options(url=server.url, protocol=protocol, server_pid=server.proc.pid)


async def test_join_storm_joins_everyone_and_presence_converges(hubbub: HubbubProcess) -> None:
    result = await join_storm(_opts(hubbub), 40)
    assert result["errors"] == []
    assert result["ok"]
    assert result["scenario"] == "join_storm"
    assert result["ready"] == 40
    assert result["who_members"] == 40
    assert result["who_missing"] == result["who_ghosts"] == result["count_off"] == 0
    assert 0 < result["joined_s"] <= result["converged_s"] < 30
    assert result["server_cpu_s"] is not None and result["server_cpu_s"] >= 0


async def test_join_storm_against_a_seed_server_waits_for_greetings(
    hubbub: HubbubProcess,
) -> None:
    """The Node ws baseline's path: plain clients, no join, no presence check."""
    result = await join_storm(_opts(hubbub, "seed"), 30)
    assert result["ok"], result["errors"]
    assert result["ready"] == 30
    assert "who_members" not in result


async def test_reconnect_storm_resumes_without_gap_or_duplicate(hubbub: HubbubProcess) -> None:
    async def restart() -> int | None:
        await asyncio.to_thread(hubbub.stop)
        return await asyncio.to_thread(hubbub.start)

    old_pid = hubbub.proc.pid if hubbub.proc else None
    result = await reconnect_storm(_opts(hubbub), 20, 2, 5, 3, restart)
    assert result["errors"] == []
    assert result["ok"]
    assert result["ready"] == 20
    assert result["check"] == dict.fromkeys(
        ("gaps", "duplicated", "bad_resume", "lost", "resets", "dropped"), 0
    )
    assert result["resumed_s"] is not None and result["resumed_s"] > 0
    assert hubbub.proc is not None and hubbub.proc.pid != old_pid


async def test_reconnect_storm_reports_a_restart_that_lost_the_history(
    hubbub: HubbubProcess,
) -> None:
    """A server that comes back without its history (a fresh database) cannot resume
    anyone: every client gets ``reset`` instead of its replay, and the run fails."""

    def forget() -> None:
        hubbub.stop()
        os.replace(hubbub.db, hubbub.tmp / "old.db")
        for suffix in ("-wal", "-shm"):
            Path(str(hubbub.db) + suffix).unlink(missing_ok=True)

    async def restart_empty() -> int | None:
        await asyncio.to_thread(forget)
        return await asyncio.to_thread(hubbub.start)

    result = await reconnect_storm(_opts(hubbub), 10, 2, 5, 3, restart_empty)
    assert not result["ok"]
    assert result["check"]["resets"] == 10
    assert any("resets" in e for e in result["errors"])
