"""What the transport refuses before any handler runs: foreign origins and
too many connections from one address.

* :func:`origin_refusal`: the browser's rule. A page from another site can
  open a WebSocket to any server and post forms to it (with the user's
  cookies); browsers say where the page came from in ``Origin``. A request
  with an ``Origin`` that is neither this server's own (the ``Host`` it was
  sent to, with the scheme of the connection: ``https`` over TLS) nor in
  ``--allowed-origins`` is refused. Requests without ``Origin`` come from
  programs, not from pages, and are allowed.
* :class:`AddressCounter`: connections (or pending handshakes) per client
  address, for ``--max-connections-per-ip`` and
  ``--max-pending-handshakes-per-ip``.
* :class:`RefusalLog`: one log line per cause and period, however many
  connections are refused (a flood must not become a log flood).
"""

from __future__ import annotations

import functools
import logging
import time
from urllib.parse import urlsplit

from .. import metrics

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int] | None:
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return (scheme, host.lower().rstrip("."), port or _DEFAULT_PORTS[scheme])


def parse_origin(text: str) -> tuple[str, str, int] | None:
    """``https://Example.com`` -> ``("https", "example.com", 443)``; None if it is not an
    http(s) origin (``null``, a path, user info, a bad port)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return _origin_key(parts.scheme.lower(), parts.hostname, port)


def host_origin(host: str, tls: bool) -> tuple[str, str, int] | None:
    """The origin a request's ``Host`` header names, on a TLS connection or not."""
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.path or parts.query or "@" in parts.netloc:
        return None
    return _origin_key("https" if tls else "http", parts.hostname, port)


@functools.lru_cache(maxsize=8)
def parse_allowed(setting: str) -> tuple[bool, frozenset[tuple[str, str, int]]]:
    """``--allowed-origins``: (any origin allowed, the listed origins).

    Raises ValueError naming the first entry that is not an origin.
    """
    allowed: set[tuple[str, str, int]] = set()
    anything = False
    for entry in setting.replace(",", " ").split():
        if entry == "*":
            anything = True
            continue
        key = parse_origin(entry)
        if key is None:
            raise ValueError(f"{entry!r} is not an origin (scheme://host[:port], or *)")
        allowed.add(key)
    return anything, frozenset(allowed)


def origin_refusal(headers: dict[str, str], tls: bool, allowed_setting: str) -> str | None:
    """None if the request's ``Origin`` is allowed, else the reason (for a 403)."""
    origin = headers.get("origin")
    if origin is None:
        return None  # not sent by a browser page
    anything, allowed = parse_allowed(allowed_setting)
    if anything:
        return None
    key = parse_origin(origin)
    if key is not None:
        own = host_origin(headers.get("host", ""), tls)
        if key == own or key in allowed:
            return None
    shown = origin if len(origin) <= 100 else origin[:100] + "..."
    return f"Origin {shown!r} is not allowed (see --allowed-origins)"


class AddressCounter:
    """How many of something each client address holds (addresses at 0 are forgotten)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0

    def get(self, address: str) -> int:
        return self.counts.get(address, 0)

    def add(self, address: str) -> None:
        self.counts[address] = self.counts.get(address, 0) + 1
        self.total += 1

    def remove(self, address: str) -> None:
        n = self.counts.get(address, 0)
        if n <= 0:
            return
        self.total -= 1
        if n == 1:
            del self.counts[address]
        else:
            self.counts[address] = n - 1


class RefusalLog:
    """Log refusals at most once per cause every ``period`` seconds, with a count.

    The first refusal of a cause is logged at once; the ones that follow
    within the period are counted and reported with the next line.
    """

    def __init__(
        self, logger: logging.Logger, period: float = 10.0, clock=time.monotonic
    ) -> None:
        self.logger = logger
        self.period = period
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, cause: str, detail: str) -> bool:
        """Record one refusal; True if a line was logged for it."""
        metrics.handshake_failures.inc(cause)
        now = self.clock()
        last = self._last.get(cause)
        if last is not None and now - last < self.period:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return False
        self._last[cause] = now
        more = self._suppressed.pop(cause, 0)
        extra = f" ({more} more refused for this since the last report)" if more else ""
        self.logger.warning("connection refused: %s: %s%s", cause, detail, extra)
        return True
