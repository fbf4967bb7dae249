"""The client's address behind reverse proxies (``--forwarded-allow-ips``).

Behind nginx or HAProxy every connection comes from the proxy; the proxy
names the client in a header: ``X-Forwarded-For: client, proxy1, proxy2``
(each proxy appends the address it got the request from) or RFC 7239's
``Forwarded: for=client, for=proxy1``. For a connection whose TCP peer is one
of ``forwarded_allow_ips`` (addresses or CIDR networks), the client is the
right-most address of ``forwarded_header`` that is not itself a trusted proxy:
everything left of it was written by someone hubbub does not trust (the
client may send a header of its own; the proxy appends to it). When every
address is trusted, the left-most one is the client (a proxy on a trusted
network asked for itself), as uvicorn and gunicorn do.

Bounds: at most :data:`MAX_HOPS` entries are looked at, from the right, and
an entry longer than :data:`MAX_ENTRY` is not an address; the header itself
is bounded by ``max_header_size``. A value that names no usable address
(``unknown``, an obfuscated node, garbage, more trusted hops than
:data:`MAX_HOPS`) leaves the proxy's own address in place and is logged at
most once per :data:`LOG_PERIOD` seconds, with a count. A header from a peer
that is not trusted is never read.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("hubbub.forwarded")

#: The values of ``forwarded_header``.
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")
#: Entries of the header looked at, from the right (a chain of proxies is short).
MAX_HOPS = 16
#: Longest entry (an element of ``Forwarded``) that is parsed: ``for="[IPv6]:port"``
#: with ``proto``, ``by`` and ``host`` fits.
MAX_ENTRY = 512
#: Seconds between two log lines about unusable values.
LOG_PERIOD = 60.0
#: Peers whose trust is remembered (a bounded cache; cleared when full).
TRUST_CACHE = 4096

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BadForwarded(ValueError):
    """A trusted proxy's header names no usable client address; ``str()`` says why."""


def ip_of(text: str) -> Address | None:
    """``text`` as an address, IPv4-mapped IPv6 (``::ffff:1.2.3.4``) as IPv4; None if
    it is not one."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def _port(text: str) -> int:
    """A node's port: digits (0 if obfuscated, ``_x``); BadForwarded otherwise."""
    if text.startswith("_"):
        return 0
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise BadForwarded(f"bad port {_shown(text)}")
    return int(text)


def parse_node(text: str) -> tuple[Address, int]:
    """One hop: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:5678``
    -> (address, port or 0). BadForwarded for anything else (``unknown``, ``_hidden``)."""
    node = text.strip()
    port = 0
    if node.startswith("["):
        host, closed, rest = node[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise BadForwarded(f"{_shown(node)} is not an address")
        if rest:
            port = _port(rest[1:])
    elif node.count(":") == 1:
        host, _, tail = node.partition(":")
        port = _port(tail)
    else:
        host = node
    ip = ip_of(host)
    if ip is None:
        if host.lower() == "unknown" or host.startswith("_"):
            raise BadForwarded(f"the proxy does not name the client ({_shown(node)})")
        raise BadForwarded(f"{_shown(node)} is not an address")
    return ip, port


def forwarded_for(element: str) -> str:
    """The ``for`` value of one RFC 7239 element (``for=...;proto=...``), unquoted."""
    for pair in element.split(";"):
        name, eq, value = pair.partition("=")
        if eq and name.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace("\\", "")
            return value
    raise BadForwarded(f"{_shown(element.strip())} has no for=")


class Proxies:
    """The trusted proxies (``forwarded_allow_ips``) and how they name the client."""

    def __init__(self, setting: str, header: str = "x-forwarded-for") -> None:
        networks: list[Network] = []
        for entry in setting.replace(",", " ").split():
            if entry == "*":
                raise ValueError(
                    "'*', which would let every client choose its address: list the "
                    "proxies' addresses or networks (10.0.0.0/8)"
                )
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r}, not an IP address or network (CIDR)") from None
            networks.append(net)
        self.networks = tuple(networks)
        self.header = header
        self._trust: dict[str, bool] = {}
        self.clock: Callable[[], float] = time.monotonic
        self._logged = -LOG_PERIOD
        self._suppressed = 0

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, ip: str) -> bool:
        """Is ``ip`` (a TCP peer's address, or an entry's) a trusted proxy?"""
        known = self._trust.get(ip)
        if known is None:
            addr = ip_of(ip)
            known = addr is not None and self._trusted(addr)
            if len(self._trust) >= TRUST_CACHE:
                self._trust.clear()
            self._trust[ip] = known
        return known

    def _trusted(self, addr: Address) -> bool:
        return any(addr in net for net in self.networks)

    def client(self, headers: Mapping[str, str]) -> tuple[str, int] | None:
        """The client named by a trusted proxy's request, or None when the header is
        absent or empty. Raises BadForwarded when it names no usable address."""
        value = headers.get(self.header)
        if value is None or not value.strip():
            return None
        entries = value.rsplit(",", MAX_HOPS)
        node: tuple[Address, int] | None = None
        for i in range(len(entries) - 1, -1, -1):
            entry = entries[i]
            if i == 0 and len(entries) > MAX_HOPS:  # the rest of the header
                raise BadForwarded(f"more than {MAX_HOPS} hops, all of them trusted proxies")
            if len(entry) > MAX_ENTRY:
                raise BadForwarded(f"an entry of {len(entry)} characters")
            if self.header == "forwarded":
                entry = forwarded_for(entry)
            node = parse_node(entry)
            if not self._trusted(node[0]):
                break
        assert node is not None
        return str(node[0]), node[1]

    def report(self, peer: str, problem: BadForwarded) -> bool:
        """Log an unusable value (at most once per LOG_PERIOD); True if a line was logged."""
        now = self.clock()
        if now - self._logged < LOG_PERIOD:
            self._suppressed += 1
            return False
        self._logged = now
        more, self._suppressed = self._suppressed, 0
        extra = f" ({more} more since the last report)" if more else ""
        log.warning(
            "unusable %s header from the proxy %s: %s; the proxy's address is used%s",
            self.header,
            peer,
            problem,
            extra,
        )
        return True


@functools.lru_cache(maxsize=8)
def proxies(setting: str, header: str = "x-forwarded-for") -> Proxies:
    """The parsed ``forwarded_allow_ips`` (ValueError naming a bad entry)."""
    return Proxies(setting, header)


def trusted_proxy(settings: Any, ip: str) -> bool:
    """Is ``ip`` one of ``settings.forwarded_allow_ips``? (Its connections carry many
    clients: the per-address limits apply to them once their requests name them.)"""
    allow = settings.forwarded_allow_ips
    return bool(allow) and proxies(allow, settings.forwarded_header).trusts(ip)


def forwarded_client(
    settings: Any, peer: Any, headers: Mapping[str, str]
) -> tuple[str, int] | None:
    """The client's (address, port or 0) named by the request's forwarding header when
    the TCP ``peer`` is a trusted proxy; None when the peer is the client (no trusted
    proxy, no header, or an unusable value: logged)."""
    allow = settings.forwarded_allow_ips
    if not allow or not peer:
        return None
    px = proxies(allow, settings.forwarded_header)
    ip = str(peer[0])
    if not px.trusts(ip):
        return None
    try:
        return px.client(headers)
    except BadForwarded as exc:
        px.report(ip, exc)
        return None


def forwarded_tls(settings: Any, headers: Mapping[str, str]) -> bool | None:
    """Whether the client reached the trusted proxy over TLS, as the proxy says it:
    ``X-Forwarded-Proto`` (with ``x-forwarded-for``) or the ``proto`` parameter of
    the right-most ``Forwarded`` element; the last value a proxy appended counts.
    None when the proxy says nothing usable (the connection's own scheme stays).
    Call only for a connection from a trusted proxy."""
    if settings.forwarded_header == "forwarded":
        value = headers.get("forwarded", "")[-MAX_ENTRY:].rpartition(",")[2]
        proto = ""
        for pair in value.split(";"):
            name, _, v = pair.strip().partition("=")
            if name.strip().lower() == "proto":
                proto = v.strip().strip('"')
    else:
        proto = headers.get("x-forwarded-proto", "")[-MAX_ENTRY:].rpartition(",")[2]
    proto = proto.strip().lower()
    if proto == "https":
        return True
    if proto == "http":
        return False
    return None
