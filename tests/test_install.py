"""What `make run`, `make test` and `make bench` install: the server alone needs
no test or benchmark packages (a chat server, not a 466 MB virtualenv)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT

EXTRAS_ONLY = ["playwright", "matplotlib", "picows", "aiohttp", "python-socketio", "pytest"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_runtime_dependencies_hold_no_test_or_benchmark_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    extras = _names(project["optional-dependencies"]["dev"]) | _names(
        project["optional-dependencies"]["bench"]
    )
    for name in EXTRAS_ONLY:
        assert name not in runtime, name
        assert name in extras, name
    assert {"websockets", "httptools", "uvloop", "msgspec", "asyncpg", "redis"} <= runtime


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The Makefile and pyproject.toml in a directory whose .venv has a fake pip
    that records what it is asked to install (nothing is downloaded)."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    old = 1_000_000_000  # pyproject.toml older than anything make creates
    os.utime(tmp_path / "pyproject.toml", (old, old))
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, script in [
        ("python", "#!/bin/sh\nexit 0\n"),
        ("pip", '#!/bin/sh\necho "$*" >> "$(dirname "$0")/../pip.log"\n'),
    ]:
        path = bin_dir / name
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def make(checkout: Path, *targets: str) -> list[str]:
    """Run make; return the pip installs it did, as "-e ." or "-e .[dev,bench]"."""
    log = checkout / ".venv" / "pip.log"
    before = log.read_text().splitlines() if log.exists() else []
    subprocess.run(
        ["make", "--no-print-directory", *targets],
        cwd=checkout,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    after = log.read_text().splitlines() if log.exists() else []
    return [line.split(" -e ", 1)[1] for line in after[len(before) :]]


def test_make_run_installs_the_server_without_extras(checkout):
    dry = subprocess.run(
        ["make", "-n", "run"], cwd=checkout, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    installs = [line for line in dry.splitlines() if " -e " in line]
    assert len(installs) == 1 and installs[0].endswith(" -e ."), dry
    assert "hubbub serve --host 0.0.0.0 --port 9502" in dry
    assert make(checkout, "install") == ["."]
    assert make(checkout, "install") == []  # installed: nothing again


def test_make_test_adds_the_extras_and_run_then_installs_nothing(checkout):
    assert make(checkout, "install") == ["."]
    assert make(checkout, "install-dev") == [".[dev,bench]"]
    assert make(checkout, "install") == []
    assert make(checkout, "install-bench") == []  # dev includes bench
    # A changed pyproject.toml is installed again.
    (checkout / "pyproject.toml").touch()
    assert make(checkout, "install") == ["."]


def test_make_bench_adds_only_the_bench_extras(checkout):
    assert make(checkout, "install-bench") == [".[bench]"]
    assert make(checkout, "install") == []
    assert make(checkout, "install-dev") == [".[dev,bench]"]


def test_make_test_and_bench_use_the_extras_and_node_packages(checkout):
    def dry(target: str) -> str:
        return subprocess.run(
            ["make", "-n", target], cwd=checkout, capture_output=True, text=True, timeout=60
        ).stdout

    test = dry("test")
    assert "-e '.[dev,bench]'" in test
    assert "npm install --prefix tests/browser" in test
    assert "if [ -f tests/browser/package.json ]" in test
    assert "-e '.[bench]'" in dry("bench")
