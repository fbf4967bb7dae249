"""The built wheel, installed into a clean virtualenv, is a working ``hubbub``.

The project is copied out of the checkout (what ``pip install .`` sees: the
working tree), built into a wheel with ``pip wheel`` (build isolation: the
setuptools that pyproject.toml asks for), and the wheel installed into a new
virtualenv WITHOUT extras, on this Python and on the newest other supported
Python found on the machine (pyenv's). Then: ``hubbub --version`` is
pyproject's version, only the runtime dependencies came along, and a ``hubbub
serve`` from that virtualenv serves the browser client from the files inside
the wheel. Downloads come from pip's cache after the first run (about 20 s).
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, wait_for_port

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PYPROJECT["version"]
STATIC = ROOT / "src" / "hubbub" / "static"
#: Packages of the dev and bench extras that must not come with a plain install.
EXTRAS_ONLY = ["playwright", "matplotlib", "picows", "aiohttp", "python-socketio", "pytest"]
#: Newer Pythons tried besides the running one, newest first (pyenv's on this image).
NEWER = ["3.14", "3.13", "3.12"]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]


def _newest_other_python() -> str | None:
    """The newest Python 3.12+ on this machine other than the running one."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    for minor in NEWER:
        if minor == mine:
            continue
        found = shutil.which(f"python{minor}")
        if found and "/shims/" not in found:
            return found
        for version in sorted(pyenv.glob(f"{minor}.*"), reverse=True):
            if (version / "bin" / "python3").exists():
                return str(version / "bin" / "python3")
    return None


def _run(*args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the working tree (nothing written into the checkout)."""
    tree = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src",
        tree / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    dist = tree / "dist"
    _run(*PIP, "wheel", "--no-deps", "--wheel-dir", str(dist), str(tree), cwd=tree, timeout=180)
    (built,) = dist.glob("hubbub-*.whl")
    return built


@dataclass
class Venv:
    path: Path
    python: str  # the interpreter it was made from

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)


def _make_venv(where: Path, python: str, wheel: Path) -> Venv:
    venv = Venv(where, python)
    _run(python, "-m", "venv", "--without-pip", str(where))
    # This virtualenv's pip installs into the new one (--python): no pip inside it.
    _run(*PIP, "--python", venv.bin("python"), "install", str(wheel), timeout=300)
    return venv


@pytest.fixture(
    scope="module",
    params=["this", "newer"],
    ids=lambda p: f"python-{p}",
)
def venv(request: pytest.FixtureRequest, wheel: Path, tmp_path_factory: pytest.TempPathFactory):
    if request.param == "this":
        python = sys.executable
    else:
        found = _newest_other_python()
        if found is None:
            pytest.skip(f"no Python {' / '.join(NEWER)} on this machine (pyenv or PATH)")
        python = found
    yield _make_venv(tmp_path_factory.mktemp(f"venv-{request.param}"), python, wheel)


def _distributions(venv: Venv) -> set[str]:
    out = _run(
        venv.bin("python"),
        "-c",
        "import importlib.metadata as m\n"
        "for d in m.distributions(): print(d.metadata['Name'])",
    )
    return {_norm(name) for name in out.split()}


def _norm(requirement: str) -> str:
    """The PEP 503 normalized name of a requirement or distribution."""
    name = re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


# -- the wheel itself ----------------------------------------------------------------------


def test_the_wheel_holds_every_static_file_and_states_its_pythons(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    static = {f"hubbub/{p.relative_to(STATIC.parent)}" for p in STATIC.rglob("*") if p.is_file()}
    assert static and static <= names, sorted(static - names)
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "bench/"))]
    assert meta["Version"] == VERSION
    # The compiled fan-out, built for the stable ABI: one wheel for 3.11 and newer.
    assert any(n.startswith("hubbub/transport/_speedups") and n.endswith(".so") for n in names)
    assert "-cp311-abi3-" in wheel.name, wheel.name
    assert meta["Requires-Python"] == PYPROJECT["requires-python"]
    # Every extra's requirement is conditional on that extra.
    for requirement in meta.get_all("Requires-Dist") or []:
        if _norm(requirement) in EXTRAS_ONLY:
            assert "extra ==" in requirement, requirement


# -- installed into a clean virtualenv --------------------------------------------------------


def test_an_install_without_extras_has_only_the_runtime_dependencies(venv: Venv) -> None:
    installed = _distributions(venv)
    assert "hubbub" in installed
    runtime = {_norm(r) for r in PYPROJECT["dependencies"]}
    assert runtime <= installed, runtime - installed
    assert not installed & {_norm(n) for n in [*EXTRAS_ONLY, "python-engineio", "kosoku"]}
    _run(*PIP, "--python", venv.bin("python"), "check")  # every requirement satisfied


def test_hubbub_version_is_pyprojects(venv: Venv) -> None:
    assert _run(venv.bin("hubbub"), "--version").strip() == f"hubbub {VERSION}"
    where = _run(venv.bin("python"), "-c", "import hubbub; print(hubbub.__file__)").strip()
    assert where.startswith(str(venv.path)), where  # the installed copy, not the checkout's


def test_the_compiled_fan_out_reads_connections_in_place_on_every_python(venv: Venv) -> None:
    """The abi3 build loads on this Python and the newer one, and its fast path
    (WebSocketConnection's slots read at their offsets) accepts the class there."""
    out = _run(
        venv.bin("python"),
        "-c",
        "from hubbub.transport import _speedups, fanout\n"
        "from hubbub.transport.websocket import WebSocketConnection as W\n"
        "print(fanout.AVAILABLE, _speedups.set_connection_type(W) is W)",
    )
    assert out.split() == ["True", "True"], out


@pytest.fixture
def served(venv: Venv, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen(
        [venv.bin("hubbub"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,  # hubbub.db lands here, and the checkout is not on sys.path
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            wait_for_port(port, timeout=0.5)
            break
        except TimeoutError:
            continue
    else:
        proc.kill()
        raise AssertionError(f"hubbub serve did not start:\n{proc.communicate()[0]}")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
        assert proc.returncode == 0, out


def _get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.read()


def test_hubbub_serve_from_the_wheel_serves_the_browser_client(served: int) -> None:
    status, body = _get(served, "/")
    assert status == 200 and body == (STATIC / "index.html").read_bytes()
    # Every asset the page links to comes out of the wheel too.
    assets = set(re.findall(r'(?:href|src)="/static/([\w./-]+)"', body.decode()))
    assert {"app.js", "app.css"} <= assets, assets
    for asset in assets:
        status, data = _get(served, f"/static/{asset}")
        assert status == 200 and data == (STATIC / asset).read_bytes(), asset
    assert _get(served, "/healthz") == (200, b"ok\n")
