"""The listening socket as the operator sees it: failure lines and links."""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest

from hubbub.transport import listen
from hubbub.transport.listen import bind_error, lan_addresses, listen_urls, listening_line


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            OSError(errno.EADDRINUSE, "Address already in use"),
            "port 9502 on 0.0.0.0 is already in use; stop the other server or pick another --port",
        ),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign"), "address 0.0.0.0 is not available"),
        (OSError(errno.EACCES, "Permission denied"), "permission denied to listen on port 9502"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve --host '0.0.0.0'"),
        (OSError(errno.EMFILE, "Too many open files"), "cannot listen on port 9502 on 0.0.0.0"),
    ],
)
def test_bind_errors_are_one_line_with_what_to_do(exc, expected):
    line = bind_error("0.0.0.0", 9502, exc)
    assert expected in line
    assert "\n" not in line


def test_listening_line_on_a_given_address():
    assert listening_line("127.0.0.1", 9502) == "hubbub listening on http://127.0.0.1:9502/"
    assert listening_line("::1", 80) == "hubbub listening on http://[::1]:80/"
    assert listening_line("localhost", 1) == "hubbub listening on http://localhost:1/"


def test_listening_line_on_every_interface_adds_the_lan_addresses(monkeypatch):
    monkeypatch.setattr(listen, "lan_addresses", lambda family: ["192.168.1.20"])
    assert listening_line("0.0.0.0", 9502) == (
        "hubbub listening on http://127.0.0.1:9502/ (and http://192.168.1.20:9502/ on the LAN)"
    )
    monkeypatch.setattr(listen, "lan_addresses", lambda family: ["fd00::2"])
    assert listen_urls("::", 9502) == ("http://[::1]:9502/", ["http://[fd00::2]:9502/"])
    monkeypatch.setattr(listen, "lan_addresses", lambda family: [])
    assert listening_line("0.0.0.0", 9502) == "hubbub listening on http://127.0.0.1:9502/"


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_lan_addresses_are_real_non_loopback_addresses_of_the_family(family):
    # Whatever the machine's network, never loopback, and of the asked family.
    for addr in lan_addresses(family):
        ip = ipaddress.ip_address(addr)
        assert not ip.is_loopback and not ip.is_unspecified
        assert ip.version == (4 if family == socket.AF_INET else 6)
