"""The HTTP side of the fallback transports: the ``/v1/sessions`` paths.

docs/transports.md is the contract for client authors; in short::

    POST   /v1/sessions?transport=sse|poll[&protocol=hubbub.v1]  -> 201 {"session": id, ...}
    GET    /v1/sessions/<id>/events        (sse)   -> text/event-stream
    GET    /v1/sessions/<id>/poll?after=n  (poll)  -> {"frames": [...], "last": m}
    POST   /v1/sessions/<id>/frames        NDJSON  -> 202 {"accepted": k}
    DELETE /v1/sessions/<id>                       -> 204

The endpoint (:class:`~hubbub.transport.contract.SessionEndpoint`) routes
these paths here before the app's ``request`` handler. Session creation
passes the WebSocket admission rules: Origin allow-list (403), connection
limits and per-address limits (503), the ``upgrade`` event (its status, and its
headers: a 401 carries ``WWW-Authenticate: Bearer``). A
session id is a credential: the access log shows ``/v1/sessions/<redacted>/...``
(:func:`redact_path`, in :mod:`.http_access` with the log it protects, so that the
HTTP layer redacts a request it refused before it was complete without importing
this module).
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from .contract import SessionEndpoint, refusal_parts
from .guard import host_origin, origin_refusal, parse_origin
from .http_access import SESSIONS_PREFIX, redact_path
from .http_access import is_session_path as is_session_path  # the endpoint's router uses it
from .messages import Request, Response
from .session import KINDS, Session
from .sse import PING_PERIOD, EventStream, Hold

log = logging.getLogger("hubbub.session")

PREFIX = SESSIONS_PREFIX
#: The subprotocol a session speaks unless ``protocol=`` says otherwise.
DEFAULT_PROTOCOL = "hubbub.v1"
#: Frames (lines) one POST .../frames may carry.
MAX_FRAMES_PER_POST = 64
#: Close codes as over a WebSocket (RFC 6455 7.4.1).
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009


def max_body(endpoint: SessionEndpoint) -> int:
    """Bytes one POST .../frames may carry: 64 frames of max_message_size, at most
    max_body_size (the HTTP layer's own limit)."""
    s = endpoint.settings
    return min(s.max_body_size, MAX_FRAMES_PER_POST * (s.max_message_size + 1))


def handle(endpoint: SessionEndpoint, request: Request, response: Response) -> Any:
    """Answer one request under ``/v1/sessions`` (a value for ``http_request``)."""
    rest = request.path[len(PREFIX) :].strip("/")
    sid, _, tail = rest.partition("/")
    # Before anything can be logged: the id is the session's credential.
    request.path = redact_path(request.path)
    refused = origin_refusal(request.headers, request.tls, endpoint.settings.allowed_origins)
    if refused is not None:
        return _error(response, 403, "forbidden_origin", refused)
    cors = cors_headers(request)
    for name, value in cors:
        response.header(name, value)
    if cors and request.method == "OPTIONS":
        return _preflight(response)
    if not sid:
        if request.method != "POST":
            return _not_allowed(response, "POST")
        return _create(endpoint, request, response)
    session = endpoint.session_lookup(sid)
    if session is None:
        return _error(
            response,
            404,
            "no_such_session",
            "unknown, expired or closed session: open a new one and resume (join with since)",
        )
    route = _ROUTES.get(tail)
    if route is None:
        return _error(response, 404, "not_found", "no such session path")
    method, fn = route
    if request.method != method:
        return _not_allowed(response, method)
    return fn(endpoint, session, request, response)


# -- answers -------------------------------------------------------------------


def cors_headers(request: Request) -> tuple[tuple[str, str], ...]:
    """CORS for a page of another allowed origin (``--allowed-origins``; the Origin
    check has passed): it may read the answers. Nothing for the server's own pages."""
    origin = request.headers.get("origin")
    if origin is None or parse_origin(origin) == host_origin(
        request.headers.get("host", ""), request.tls
    ):
        return ()
    return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))


def _preflight(response: Response) -> None:
    response.status(204)
    response.header("Access-Control-Allow-Methods", "GET, POST, DELETE")
    response.header("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID")
    response.header("Access-Control-Max-Age", "600")
    response.end(b"")


def _json(
    response: Response, status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()
) -> None:
    response.status(status)
    response.header("Content-Type", "application/json")
    response.header("Cache-Control", "no-store")
    for name, value in headers:
        response.header(name, value)
    response.end(body if isinstance(body, bytes) else json.dumps(body).encode())


def _error(
    response: Response,
    status: int,
    code: str,
    message: str,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    _json(response, status, {"error": code, "message": message}, headers)


def _not_allowed(response: Response, allow: str) -> None:
    _error(response, 405, "method_not_allowed", f"use {allow}", (("Allow", allow),))


def _query(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.query_string, keep_blank_values=True).items()}


def _number(text: str | None) -> int | None:
    """A frame number from the client: a decimal >= 0 (None if absent or not one)."""
    if text is None or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


# -- POST /v1/sessions -------------------------------------------------------------


def _create(endpoint: SessionEndpoint, request: Request, response: Response) -> None:
    q = _query(request)
    kind = q.get("transport", "")
    if kind not in KINDS:
        return _error(response, 400, "bad_request", "transport must be 'sse' or 'poll'")
    protocol = q.get("protocol", DEFAULT_PROTOCOL)
    if protocol not in endpoint.subprotocols:
        # As a WebSocket handshake: a protocol the server does not speak gives a
        # plain session (the answer's "protocol" says which one it got).
        protocol = ""
    refused = endpoint.ws_admit()
    if refused is None and endpoint.settings.workers > 1:
        # Every request may reach another process of the port (SO_REUSEPORT),
        # which does not know the session: say so, rather than 404 forever.
        refused = "sessions need --workers 1 (a session lives in one process); use WebSocket"
    if refused is None:
        ip = str(request.remote[0]) if request.remote else ""
        refused = endpoint.session_admit_ip(ip)
    if refused is not None:
        return _error(response, 503, "unavailable", refused, (("Retry-After", "5"),))
    request.subprotocol = protocol or None
    try:
        denied = endpoint.ws_authorize(request)
        refusal = None if denied is None else refusal_parts(denied)
    except Exception:
        log.error("upgrade handler failed", exc_info=True)
        refusal = (500, "Internal Server Error", [])
    if refusal is not None:
        status, reason, headers = refusal
        try:
            code = HTTPStatus(status).phrase.lower().replace(" ", "_")
        except ValueError:
            code = "refused"
        return _error(response, status, code, reason, tuple(headers))
    session = endpoint.session_opened(request, kind)
    body = {
        "session": session.id,
        "transport": kind,
        "protocol": protocol,
        "poll_timeout": endpoint.settings.poll_timeout,
        "max_body": max_body(endpoint),
    }
    return _json(response, 201, body)


# -- GET .../events -------------------------------------------------------------------


def _events(
    endpoint: SessionEndpoint, session: Session, request: Request, response: Response
) -> Any:
    if session.kind != "sse":
        return _error(response, 400, "wrong_transport", "this is a poll session: GET .../poll")
    header = request.headers.get("last-event-id")
    text = header.strip() if header is not None else _query(request).get("after")
    after = session.buffer.acked if text is None or text == "" else _number(text)
    if after is None:
        return _error(response, 400, "bad_request", "Last-Event-ID must be a frame number")
    stream = EventStream(response, min(PING_PERIOD, endpoint.settings.poll_timeout))
    stream.start((*endpoint.security_headers, *cors_headers(request)))
    if session.open and not session.buffer.valid(after):
        # The frames after `after` are gone: the client must start again.
        stream.finish("gone", _gone(session, after))
        session.abort()
        return None
    session.attach_stream(stream, after)
    return _hold_stream(session, stream)


async def _hold_stream(session: Session, stream: EventStream) -> None:
    def lost() -> None:
        stream.lost()
        session.detach_stream(stream)

    hold = Hold(stream.conn, lost)  # the HTTP layer has paused reading by now
    try:
        await stream.run()
    finally:
        hold.release()
        session.detach_stream(stream)


def _gone(session: Session, after: int) -> dict[str, Any]:
    return {
        "after": after,
        "first": session.buffer.first,
        "message": "frames after that number are no longer here: open a new session "
        "and resume (join with since)",
    }


# -- GET .../poll -------------------------------------------------------------------


def _poll(endpoint: SessionEndpoint, session: Session, request: Request, response: Response) -> Any:
    if session.kind != "poll":
        return _error(response, 400, "wrong_transport", "this is an SSE session: GET .../events")
    text = _query(request).get("after")
    after = session.buffer.acked if text is None else _number(text)
    if after is None:
        return _error(response, 400, "bad_request", "after must be a frame number")
    if session.open and not session.buffer.valid(after):
        gone = _gone(session, after)
        session.abort()
        return _error(response, 404, "no_such_session", gone["message"])
    return _hold_poll(endpoint, session, after, response)


async def _hold_poll(
    endpoint: SessionEndpoint, session: Session, after: int, response: Response
) -> None:
    fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    hold = Hold(response._conn, lambda: session.end_poll(fut))
    try:
        result = await session.wait_poll(after, endpoint.settings.poll_timeout, fut)
    finally:
        hold.release()
    if result is None:
        return _error(response, 404, "no_such_session", "the session ended")
    frames, last, closed = result
    if session.json_frames:
        items = [d for _, d in frames]
    else:
        items = [json.dumps(d.decode(errors="replace")).encode() for _, d in frames]
    body = b'{"frames":[' + b",".join(items) + b'],"last":%d' % last
    if closed is not None:
        body += b',"closed":' + json.dumps({"code": closed[0], "reason": closed[1]}).encode()
    _json(response, 200, body + b"}")


# -- POST .../frames -----------------------------------------------------------------


def _frames(
    endpoint: SessionEndpoint, session: Session, request: Request, response: Response
) -> Any:
    limit = max_body(endpoint)
    if len(request.body) > limit:
        return _error(response, 413, "too_large", f"at most {limit} bytes per POST")
    lines = [line.rstrip(b"\r") for line in request.body.split(b"\n")]
    lines = [line for line in lines if line]
    if len(lines) > MAX_FRAMES_PER_POST:
        return _error(
            response, 413, "too_many_frames", f"at most {MAX_FRAMES_PER_POST} frames per POST"
        )
    size = endpoint.settings.max_message_size
    if any(len(line) > size for line in lines):
        session.close(MESSAGE_TOO_BIG, f"frame over {size} bytes")
        return _error(response, 413, "too_large", f"a frame is at most {size} bytes")
    try:
        texts = [line.decode() for line in lines]
    except UnicodeDecodeError as exc:
        session.close(INVALID_DATA, "invalid UTF-8")
        return _error(response, 400, "bad_request", f"frames must be UTF-8 text ({exc.reason})")
    if not session.open:
        return _error(response, 404, "no_such_session", "the session is closing")
    return _deliver(endpoint, session, texts, response)


async def _deliver(
    endpoint: SessionEndpoint, session: Session, texts: list[str], response: Response
) -> None:
    accepted = 0
    for text in texts:
        if session.holds:
            # The app's handler has max_pending_messages of this session's frames
            # waiting: the POST waits too (its client's backpressure).
            await session.wait_released()
        if not session.open:
            break
        endpoint.session_message(session, text)
        accepted += 1
    _json(response, 202, {"accepted": accepted})


# -- DELETE /v1/sessions/<id> ------------------------------------------------------------


def _delete(
    endpoint: SessionEndpoint, session: Session, request: Request, response: Response
) -> None:
    session.close(1000, "closed by the client")
    session.abort()
    response.status(204)
    response.header("Cache-Control", "no-store")
    response.end(b"")


_ROUTES: dict[str, tuple[str, Any]] = {
    "events": ("GET", _events),
    "poll": ("GET", _poll),
    "frames": ("POST", _frames),
    "": ("DELETE", _delete),
}
