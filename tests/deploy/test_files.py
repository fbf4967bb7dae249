"""The shipped deploy/ files agree with hubbub: real flags, timeouts above its
heartbeat and graceful shutdown, units that systemd accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubbub.apps.backup import add_backup_commands
from hubbub.cli import build_parser
from hubbub.config import Settings

from .conftest import DEPLOY

UNITS = ["hubbub.service", "hubbub-backup.service", "hubbub-backup.timer"]


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", text)
    assert match, text
    return int(match[1]) * {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def _unit(name: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


def _exec_args(unit: str) -> list[str]:
    (line,) = _unit(unit)["ExecStart"]
    argv = shlex.split(line)
    assert argv[0] == "/opt/hubbub/bin/hubbub", argv
    return argv[1:]


def test_the_service_runs_hubbub_serve_with_real_flags_and_waits_for_its_shutdown() -> None:
    args = build_parser().parse_args(_exec_args("hubbub.service"))  # exits 2 on a bad flag
    assert args.command == "serve" and args.host == "127.0.0.1"
    assert args.db == "/var/lib/hubbub/hubbub.db"
    unit = _unit("hubbub.service")
    assert unit["StateDirectory"] == ["hubbub"] and unit["KillSignal"] == ["SIGTERM"]
    stop = _seconds(unit["TimeoutStopSec"][0])
    # A flag left out is not in the namespace (the CLI tells given flags from
    # defaults): the unit then runs with the setting's default.
    default = Settings()

    def setting(name: str) -> float:
        return float(getattr(args, name, getattr(default, name)))

    assert stop > setting("shutdown_timeout") + setting("close_timeout"), stop
    assert int(unit["LimitNOFILE"][0]) > setting("max_connections")
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[hardening] == ["yes"], hardening
    assert unit["ProtectSystem"] == ["strict"] and unit["CapabilityBoundingSet"] == [""]
    assert unit["Restart"] == ["on-failure"]


def test_the_backup_service_runs_a_real_backup_command() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="hubbub")
    add_backup_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(_exec_args("hubbub-backup.service"))
    assert args.command == "backup" and args.db == "/var/lib/hubbub/hubbub.db"
    assert args.dest == "/var/lib/hubbub/backups"  # a directory: a dated file each day
    assert _unit("hubbub-backup.service")["StateDirectory"] == ["hubbub hubbub/backups"]


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    for name in UNITS:  # the real hubbub executable, so that verify can check it
        text = (DEPLOY / name).read_text().replace("/opt/hubbub/bin/hubbub", str(
            Path(sys.executable).parent / "hubbub"))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        [analyze, "verify", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_proxy_timeouts_outlast_hubbubs_heartbeat_and_limits_match() -> None:
    settings = Settings()
    heartbeat = settings.ping_interval + settings.ping_timeout
    nginx = (DEPLOY / "nginx.conf").read_text()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        values = re.findall(rf"^\s*{directive} (\w+);", nginx, re.M)
        assert values and all(_seconds(v) > heartbeat for v in values), (directive, values)
    # nginx must drop idle upstream connections before hubbub's keep-alive timeout does.
    (keepalive,) = re.findall(r"^\s*keepalive_timeout (\w+);", nginx, re.M)
    assert _seconds(keepalive) < settings.handshake_timeout
    (body,) = re.findall(r"^\s*client_max_body_size (\d+)m;", nginx, re.M)
    assert int(body) * 1024 * 1024 == settings.max_body_size
    haproxy = (DEPLOY / "haproxy.cfg").read_text()
    (tunnel,) = re.findall(r"^\s*timeout tunnel (\w+)", haproxy, re.M)
    assert _seconds(tunnel) > heartbeat
    (request,) = re.findall(r"^\s*timeout http-request (\w+)", haproxy, re.M)
    assert _seconds(request) <= settings.handshake_timeout
