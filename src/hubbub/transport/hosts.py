"""Which ``Host`` names this server answers (``--allowed-hosts``): DNS rebinding.

The Origin check (:mod:`hubbub.transport.guard`) takes the server's own origin
from the request's ``Host``. A page on ``evil.example`` whose name the
attacker re-points at this server's address (DNS rebinding: a short TTL, then
``127.0.0.1`` or a LAN address) makes the browser send ``Host: evil.example``
and ``Origin: http://evil.example``: same origin, so it passes, and the page
can read what the server answers to the browser's network position. The
defence is to answer only the names the server is known by:

* ``allowed_hosts`` lists them (``chat.example.com``, ``.example.com`` for a
  domain and its subdomains, ``*`` for any); a request for another name gets
  ``421 Misdirected Request`` before any handler.
* ``localhost``, ``*.localhost`` (RFC 6761) and IP addresses are always
  answered: a browser sends the host of the page's URL, and no page of another
  site has one of these (an address involves no DNS, so nothing to rebind).
  Health checks (HAProxy's ``Host: localhost``, Kubernetes' pod address) pass.
* With no list (the default), every name is answered, except on a connection
  that reached the server on a loopback address (a browser on this machine;
  not a proxy of ``forwarded_allow_ips``): there a DNS name (one with a dot)
  is refused. Rebinding needs a name in a DNS zone the attacker runs, so it
  has a dot; names without one (``Host: myhost``) resolve from local
  configuration (hosts file, search domains) and are answered.

A ``Host`` that is not a host (user info, a path, two values, bad
characters) gets ``400``. A request without ``Host`` (HTTP/1.0) is answered:
it names nothing to rebind.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .forwarded import ip_of

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
#: Longest host name (RFC 1035: 253 characters) plus a port.
MAX_HOST = 260
#: What the 421 answers say to look at.
SEE = "see --allowed-hosts"
#: The kinds of Host names (:func:`classify`): always answered (localhost, an
#: address), a DNS name (with a dot), another name (without a dot).
ALWAYS, DNS_NAME, OTHER = 0, 1, 2


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    """``allowed_hosts`` parsed: any name, the names, the domains (``.example.com``)."""

    anything: bool
    names: frozenset[str]
    domains: tuple[str, ...]

    def __bool__(self) -> bool:
        return self.anything or bool(self.names) or bool(self.domains)

    def allows(self, name: str) -> bool:
        if self.anything or name in self.names:
            return True
        return any(name.endswith(d) or name == d[1:] for d in self.domains)


def _port_ok(text: str) -> bool:
    """The port of a Host value: empty (``host:``, RFC 3986) or up to 5 digits."""
    return text == "" or (len(text) <= 5 and text.isdigit())


def host_name(value: str) -> str | None:
    """The name of a ``Host`` value, lower-cased, without port or final dot (an IPv6
    address without brackets, in its short form); None if it is not a host."""
    h = value.strip().lower()
    if not h or len(h) > MAX_HOST:
        return None
    if h[0] == "[":
        inner, closed, rest = h[1:].partition("]")
        ip = ip_of(inner) if closed else None
        if ip is None or ip.version != 6 or (rest and not (rest[0] == ":" and _port_ok(rest[1:]))):
            return None
        return str(ip)
    name, colon, port = h.partition(":")
    if colon and not _port_ok(port):
        return None
    if name.endswith("."):
        name = name[:-1]
    return name if _NAME.match(name) else None


def is_loopback_name(name: str) -> bool:
    """``localhost``, ``x.localhost`` (RFC 6761) or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = ip_of(name)
    return ip is not None and ip.is_loopback


@functools.lru_cache(maxsize=256)
def is_loopback_address(address: str) -> bool:
    """Is ``address`` (a connection's local address: the server's own, so few) loopback?"""
    return is_loopback_name(address)


@functools.lru_cache(maxsize=8)
def parse_allowed_hosts(setting: str) -> AllowedHosts:
    """``--allowed-hosts``; ValueError naming the first entry that is not a host."""
    anything = False
    names: set[str] = set()
    domains: list[str] = []
    for entry in setting.replace(",", " ").split():
        if entry == "*":
            anything = True
            continue
        text = entry.lower()
        if text.startswith("."):
            name = host_name(text[1:])
            if name is None or ip_of(name) is not None or ":" in text:
                raise ValueError(f"{entry!r}, not a domain ('.example.com')")
            domains.append("." + name)
            continue
        ip = ip_of(text.strip("[]"))
        if ip is not None:
            names.add(str(ip))
            continue
        if ":" in text:
            raise ValueError(f"{entry!r}: list host names without a port")
        name = host_name(text)
        if name is None:
            raise ValueError(f"{entry!r}, not a host name")
        names.add(name)
    return AllowedHosts(anything, frozenset(names), tuple(domains))


def host_refusal(
    headers: Mapping[str, str],
    setting: str,
    local_loopback: Callable[[], bool],
    via_proxy: bool = False,
) -> tuple[int, str] | None:
    """None if the request's ``Host`` is answered here, else (status, reason): 400
    for a value that is not a host, 421 for a name not served.

    ``local_loopback()`` says whether the connection reached a loopback address
    (called only when needed: with no list, for a DNS name); ``via_proxy``: the
    connection is from a proxy of ``forwarded_allow_ips``."""
    value = headers.get("host")
    if value is None:
        return None
    name, kind = classify(value)
    if kind == ALWAYS:
        return None
    shown = repr(value if len(value) <= 100 else value[:100] + "...")
    if name is None:
        return 400, f"Bad Request: Host {shown} is not a host name"
    allowed = parse_allowed_hosts(setting)
    if allowed:
        return None if allowed.allows(name) else (421, f"Host {shown} is not served here ({SEE})")
    if via_proxy or kind != DNS_NAME or not local_loopback():
        return None
    return 421, (
        f"Host {shown} is not served on a loopback address unless listed (DNS rebinding; {SEE})"
    )


@functools.lru_cache(maxsize=1024)
def classify(value: str) -> tuple[str | None, int]:
    """A ``Host`` value's name (None: not a host) and kind: ALWAYS (localhost,
    ``*.localhost``, an IP address), DNS_NAME, or OTHER (a name without a dot).
    Cached (LRU): a server sees few values."""
    name = host_name(value)
    if name is None:
        return None, OTHER
    if name == "localhost" or name.endswith(".localhost") or ip_of(name) is not None:
        return name, ALWAYS
    return name, DNS_NAME if "." in name else OTHER
