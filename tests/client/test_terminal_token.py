"""``hubbub token`` and ``hubbub chat --token`` against a ``--auth token`` server
(subprocesses, the terminal client in a pseudo-terminal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pexpect
import pytest
from websockets.sync.client import connect

from hubbub.auth.tokens import thumbprint

from ..auth.keys import SECRET, ec_key, jwks, private_pem
from ..conftest import ROOT, free_port, serve_args
from .test_terminal import chat


def mint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubbub", "token", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def token_server(spawn, tmp_path):
    port = free_port()
    args = serve_args(
        port,
        "--db",
        str(tmp_path / "t.db"),
        "--auth",
        "token",
        "--jwt-secret",
        SECRET,
        "--auth-timeout",
        "1",
    )
    spawn(*args, port=port)
    return f"ws://127.0.0.1:{port}"


def test_a_minted_token_lets_the_terminal_client_in(token_server):
    out = mint("--secret", SECRET, "--sub", "ann", "--name", "ann", "--rooms", "lobby")
    assert out.returncode == 0, out.stderr
    tok = out.stdout.strip()
    term = chat(token_server, "--room", "lobby", "--token", tok)
    try:
        term.expect_exact("* connected as ann")
        term.expect_exact("joined #lobby as ann")
        term.sendline("/join dev")  # the token allows only lobby
        term.expect_exact("! forbidden")
        term.sendline("/quit")
        term.expect(pexpect.EOF)
        term.close()
        assert term.exitstatus == 0
        assert tok not in term.logfile_read.getvalue()  # never printed
    finally:
        term.close(force=True)


def test_hubbub_token_tells_a_bad_flag_in_one_line():
    out = mint("--secret", "short", "--sub", "ann")
    assert out.returncode == 2 and "at least 32 bytes" in out.stderr
    out = mint("--secret", SECRET, "--sub", "ann", "--name", "two words")
    assert out.returncode == 2 and "nickname" in out.stderr
    out = mint("--secret", SECRET, "--sub", "ann", "--ttl", "forever")
    assert out.returncode == 2 and "--ttl" in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_hubbub_token_with_a_private_key(tmp_path, spawn):

    key = ec_key()
    kid = thumbprint(key.public_key())
    keys = jwks(tmp_path / "keys.json", **{kid: key})
    port = free_port()
    spawn(
        *serve_args(
            port, "--db", str(tmp_path / "k.db"), "--auth", "token", "--jwt-public-key", keys
        ),
        port=port,
    )
    out = mint("--private-key", private_pem(key, tmp_path / "k.pem"), "--sub", "bob")
    assert out.returncode == 0, out.stderr
    headers = {"Authorization": f"Bearer {out.stdout.strip()}"}
    with connect(
        f"ws://127.0.0.1:{port}", subprotocols=["hubbub.v1"], additional_headers=headers
    ) as ws:
        welcome = json.loads(ws.recv(timeout=10))
    assert welcome["type"] == "welcome" and welcome["user"] == "bob"


def test_the_token_can_come_from_hubbub_token(token_server):
    out = mint("--secret", SECRET, "--sub", "cat")
    assert out.returncode == 0, out.stderr
    env_term = pexpect.spawn(
        sys.executable,
        ["-m", "hubbub", "chat", token_server, "--room", "lobby"],
        cwd=str(ROOT),
        encoding="utf-8",
        timeout=10,
        env={**os.environ, "HUBBUB_TOKEN": out.stdout.strip()},
    )
    try:
        env_term.expect_exact("* connected as cat")
        env_term.sendline("/quit")
        env_term.expect(pexpect.EOF)
    finally:
        env_term.close(force=True)


def test_without_a_token_the_client_says_so_and_exits_1(token_server):
    term = chat(token_server, "--room", "lobby")
    try:
        term.expect_exact("auth_required")
        term.expect_exact("authentication failed")
        term.expect_exact("--token or $HUBBUB_TOKEN")
        term.expect(pexpect.EOF)
        term.close()
        assert term.exitstatus == 1
    finally:
        term.close(force=True)


def test_a_refused_token_is_not_retried(token_server):
    term = chat(token_server, "--room", "lobby", "--token", "not-a-token")
    try:
        term.expect_exact("refused the connection (HTTP 401: malformed token")
        term.expect(pexpect.EOF)
        term.close()
        assert term.exitstatus == 1
        assert "retrying" not in term.logfile_read.getvalue()
    finally:
        term.close(force=True)


def test_an_expiring_token_ends_the_session_with_token_expired(token_server):
    out = mint("--secret", SECRET, "--sub", "dan", "--ttl", "1s")
    term = chat(token_server, "--room", "lobby", "--token", out.stdout.strip())
    try:
        term.expect_exact("joined #lobby as dan")
        # exp + the server's 5 s leeway
        term.expect_exact("! token expired: get a new token", timeout=20)
        term.expect(pexpect.EOF)
        term.close()
        assert term.exitstatus == 1
    finally:
        term.close(force=True)


def test_hubbub_token_reads_the_secret_from_the_environment():
    out = mint("--sub", "eve", env={"HUBBUB_JWT_SECRET": SECRET})
    assert out.returncode == 0, out.stderr
    from hubbub.auth.tokens import Verifier

    assert Verifier(SECRET).verify(out.stdout.strip()).user == "eve"
    out = mint("--sub", "eve", env={"HUBBUB_JWT_SECRET": ""})
    assert out.returncode == 2 and "--secret, --private-key, or $HUBBUB_JWT_SECRET" in out.stderr
