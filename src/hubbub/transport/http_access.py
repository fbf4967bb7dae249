"""The access log: one ``hubbub.access`` line per answered HTTP request.

``127.0.0.1:49188 "GET /" 200 9882 0.1ms``: client, method, path, status, body
bytes, time (a WebSocket handshake is a ``101`` line). :func:`write` is the only
writer of the log, so every line, answered or refused, goes through the same
two rules:

* nothing secret: no query string (it carries tokens, ``?token=``,
  ``?access_token=``), and a fallback-transport session id, a bearer
  credential (docs/transports.md), shown as ``/v1/sessions/<redacted>/...``
  (:func:`redact_path`);
* nothing the client can use to forge a line (:func:`~.messages.log_safe`).

This module imports nothing of the transport but :mod:`.messages`: the HTTP
connection and the session routes (which sit above the HTTP layer and type
against it) both use it, without importing each other.
"""

from __future__ import annotations

import logging
from typing import Any

import httptools

from .messages import log_safe, peer_text

#: One INFO line per answered request (Settings.access_log).
access_log = logging.getLogger("hubbub.access")

#: Where the fallback transports' sessions live (:mod:`.session_routes`).
SESSIONS_PREFIX = "/v1/sessions"


def is_session_path(path: str) -> bool:
    """True for ``/v1/sessions`` and the paths under it."""
    prefix = SESSIONS_PREFIX
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


def redact_path(path: str) -> str:
    """``path`` with a session id replaced by ``<redacted>`` (for logs)."""
    if not is_session_path(path):
        return path
    # As the router reads it (session_routes.handle strips extra slashes).
    sid, slash, tail = path[len(SESSIONS_PREFIX) :].lstrip("/").partition("/")
    return f"{SESSIONS_PREFIX}/<redacted>{slash}{tail}" if sid else path


def target_path(url: bytes) -> str:
    """The path of a request target the parser may not have finished (a request
    refused before it was complete): no query or fragment, and no scheme and host
    for the absolute form (``http://host/path``, RFC 9112 3.2.2)."""
    try:
        path = httptools.parse_url(url).path
    except httptools.HttpParserInvalidURLError:
        path = None
    if path is None:  # cut short, or not a URL: take what looks like its path
        path = url.partition(b"?")[0].partition(b"#")[0]
        scheme, sep, rest = path.partition(b"://")
        if sep and b"/" not in scheme:
            path = b"/" + rest.partition(b"/")[2]
    return path.decode("latin-1")


def write(peer: Any, method: str, path: str, status: int, nbytes: int, ms: float) -> None:
    """Log one answer (``path`` without its query string)."""
    access_log.info(
        '%s "%s %s" %d %d %.1fms',
        peer_text(peer),
        log_safe(method, 20),
        log_safe(redact_path(path)),
        status,
        nbytes,
        ms,
    )
