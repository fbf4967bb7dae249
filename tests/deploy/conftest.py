"""Run the shipped proxy configurations (deploy/) for real, on free loopback ports.

A config is *rendered* from the shipped file by replacing its placeholders
(addresses, ports, certificate paths) with exact string replacements, each of
which must match: a changed shipped file fails here rather than going untested.
The proxies run as private processes (never system services), in the test's
temporary directory, and are stopped at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import ROOT, wait_for_port

DEPLOY = ROOT / "deploy"


def render(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced by its value; every key must occur in it."""
    for old, new in replacements.items():
        assert old in text, f"the shipped config no longer holds {old!r}: update the test"
        text = text.replace(old, new)
    return text


def need(command: str) -> str:
    """The path of ``command``; fails the test (with the install command) if missing."""
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(
            f"{command} is not installed: apt-get install {command} (make system-deps)",
            pytrace=False,
        )
    return found


@dataclass
class Cert:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts this certificate (and only it)."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for 127.0.0.1 (and localhost), valid for a day."""
    where = tmp_path_factory.mktemp("tls")
    out = Cert(where / "cert.pem", where / "key.pem")
    subprocess.run(
        [need("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(out.key), "-out", str(out.cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out


class Proxy:
    """A proxy process started by the test; its output goes to ``log`` (for failures)."""

    def __init__(self, args: list[str], log: Path, ports: list[int]) -> None:
        self.log = log
        with log.open("a") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        for port in ports:
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"{args[0]} did not start:\n{self.output()}")
                try:
                    wait_for_port(port, timeout=0.3)
                    break
                except TimeoutError:
                    continue

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- nginx ------------------------------------------------------------------------------------

NGINX_MAIN = """\
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/hubbub.conf;
}}
"""


@dataclass
class NginxPorts:
    upstream: int  # where hubbub listens
    http: int  # the site's plain-HTTP server (redirects)
    https: int  # the TLS server in front of hubbub


def render_nginx(ports: NginxPorts, cert: Cert) -> str:
    """deploy/nginx.conf with loopback ports and the test's certificate."""
    return render(
        (DEPLOY / "nginx.conf").read_text(),
        {
            "server 127.0.0.1:9502;": f"server 127.0.0.1:{ports.upstream};",
            "listen 80;": f"listen 127.0.0.1:{ports.http};",
            "listen [::]:80;": "",
            "listen 443 ssl;": f"listen 127.0.0.1:{ports.https} ssl;",
            "listen [::]:443 ssl;": "",
            "/etc/letsencrypt/live/chat.example.com/fullchain.pem": str(cert.cert),
            "/etc/letsencrypt/live/chat.example.com/privkey.pem": str(cert.key),
        },
    )


@pytest.fixture
def run_nginx(tmp_path: Path, cert: Cert) -> Iterator[object]:
    """``run_nginx(ports)``: Debian's nginx with the rendered site config, in tmp_path."""
    nginx = need("nginx")
    started: list[Proxy] = []

    def start(ports: NginxPorts) -> Proxy:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        (prefix / "hubbub.conf").write_text(render_nginx(ports, cert))
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach tmp_path
        (prefix / "nginx.conf").write_text(NGINX_MAIN.format(user=user, prefix=prefix))
        base = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                "-e", str(prefix / "error.log")]  # fmt: skip
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"nginx -t refused the shipped config:\n{check.stderr}"
        proxy = Proxy([*base, "-g", "daemon off;"], prefix / "error.log", [ports.https, ports.http])
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


# -- HAProxy ----------------------------------------------------------------------------------


@dataclass
class HaproxyPorts:
    nodes: tuple[int, int]  # the two hubbub nodes
    http: int
    https: int


def render_haproxy(ports: HaproxyPorts, pem: Path) -> str:
    """deploy/haproxy.cfg with loopback ports, the test's certificate, logs on stdout."""
    return render(
        (DEPLOY / "haproxy.cfg").read_text(),
        {
            "log /dev/log local0": "log stdout format raw local0",
            # (this machine's hard limit of open files is below what 20000 needs)
            "maxconn 20000": "maxconn 2000",
            "bind :80": f"bind 127.0.0.1:{ports.http}",
            "bind :443 ssl": f"bind 127.0.0.1:{ports.https} ssl",
            "/etc/haproxy/certs/chat.example.com.pem": str(pem),
            "server node1 127.0.0.1:9502": f"server node1 127.0.0.1:{ports.nodes[0]}",
            "server node2 127.0.0.1:9503": f"server node2 127.0.0.1:{ports.nodes[1]}",
        },
    )


@pytest.fixture
def run_haproxy(tmp_path: Path, cert: Cert) -> Iterator[object]:
    """``run_haproxy(ports)``: Debian's haproxy with the rendered config, in the foreground."""
    haproxy = need("haproxy")
    started: list[Proxy] = []

    def start(ports: HaproxyPorts) -> Proxy:
        where = tmp_path / "haproxy"
        where.mkdir()
        pem = where / "site.pem"
        pem.write_text(cert.cert.read_text() + cert.key.read_text())
        config = where / "haproxy.cfg"
        config.write_text(render_haproxy(ports, pem))
        check = subprocess.run(
            [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, f"haproxy -c refused the shipped config:\n{check.stdout}"
        proxy = Proxy([haproxy, "-db", "-f", str(config)], where / "haproxy.log", [ports.https])
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
