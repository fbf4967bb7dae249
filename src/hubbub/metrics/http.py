"""Serving the metrics: ``/metrics`` on the main port (token) or on ``metrics_port``,
and the event-loop lag monitor (see the package docstring)."""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import LAG_PERIOD, REGISTRY, handshakes, loop_lag, loop_lag_last
from .collector import COLLECTOR

log = logging.getLogger("hubbub.metrics")


def scrape() -> bytes:
    """The current metrics, in the Prometheus text format."""
    return generate_latest(REGISTRY)


def _answer(request: Any, response: Any) -> None:
    if request.method not in ("GET", "HEAD"):
        response.status(405)
        response.header("Allow", "GET, HEAD")
        response.end("method not allowed\n")
        return
    response.header("Content-Type", CONTENT_TYPE_LATEST)
    response.header("Cache-Control", "no-store")
    response.end(scrape())


def handle_request(request: Any, response: Any, token: str) -> bool:
    """``/metrics`` on the main port: True if this request was it (answered).

    Needs ``Authorization: Bearer <token>``; with no token set the path is
    404 (metrics are off there, or on ``metrics_port`` only)."""
    if request.path != "/metrics":
        return False
    if not token:
        response.status(404)
        response.end("metrics are not served here (see --metrics-token, --metrics-port)\n")
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        response.status(401)
        response.header("WWW-Authenticate", 'Bearer realm="metrics"')
        response.end("missing or wrong 'Authorization: Bearer <metrics token>'\n")
        return True
    _answer(request, response)
    return True


def _metrics_port_app(request: Any, response: Any) -> None:
    if request.path == "/metrics":
        _answer(request, response)
    else:
        response.status(404)
        response.end("only /metrics here\n")


async def _lag_monitor(period: float = LAG_PERIOD) -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        lag = max(0.0, loop.time() - before - period)
        loop_lag.observe(lag)
        loop_lag_last.set(lag)


class Ops:
    """The metrics of one server: the scrape collector, /metrics, the lag monitor."""

    def __init__(self, server: Any, worker: int | None = None) -> None:
        self.server = server
        #: With --workers: this worker's index; its metrics port is metrics_port + index.
        self.worker = worker
        self.port_server: Any = None
        self._lag: asyncio.Task[None] | None = None
        self._start = _handler(server, "start")
        self._shutdown = _handler(server, "shutdown")
        self._request = _handler(server, "request")
        self._open = _handler(server, "open")
        server.on("start", self.on_start)
        server.on("shutdown", self.on_shutdown)
        server.on("request", self.on_request)
        server.on("open", self.on_open)

    def on_open(self, server: Any, request: Any) -> Any:
        """Counts the connection (WebSocket or session) by protocol, then the app's."""
        handshakes.inc("hubbub.v1" if request.subprotocol == "hubbub.v1" else "seed")
        if self._open is not None:
            return self._open(server, request)
        return None

    def on_request(self, request: Any, response: Any) -> Any:
        if handle_request(request, response, self.server.settings.metrics_token):
            return None
        if self._request is None:
            response.status(404)
            response.end("Not Found\n")
            return None
        return self._request(request, response)

    async def on_start(self, server: Any) -> None:
        if self._start is not None:
            result = self._start(server)
            if inspect.isawaitable(result):
                await result
        COLLECTOR.attach(server)
        self._lag = asyncio.ensure_future(_lag_monitor())
        port = server.settings.metrics_port
        if port:
            await self._serve_port(server, port + (self.worker or 0))

    async def _serve_port(self, server: Any, port: int) -> None:
        from ..server import Server

        # No WebSocket here (max_connections 0: a handshake gets 503), no health path.
        # One process per metrics port (never SO_REUSEPORT: a scrape must always
        # reach the same worker, or its counters would jump between workers).
        settings = server.settings.with_overrides(
            max_connections=0, certfile="", keyfile="", workers=1
        )
        metrics_server = Server(server.host, port, settings, health_path=None)
        metrics_server.on("request", _metrics_port_app)
        await metrics_server.listen()
        self.port_server = metrics_server
        log.info("metrics on http://%s:%d/metrics", _url_host(server.host), metrics_server.port)

    async def on_shutdown(self, server: Any) -> None:
        COLLECTOR.detach(server)
        if self._lag is not None:
            self._lag.cancel()
            self._lag = None
        if self.port_server is not None:
            await self.port_server.shutdown()
            self.port_server = None
        if self._shutdown is not None:
            result = self._shutdown(server)
            if inspect.isawaitable(result):
                await result


def _handler(server: Any, event: str) -> Any:
    """The handler ``server`` has for ``event`` (None: none), to be wrapped."""
    getter = getattr(server, "handler", None)
    if callable(getter):
        return getter(event)
    return server._endpoint.handlers.get(event)  # until Server.handler(event) exists


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def install(server: Any, worker: int | None = None) -> Ops:
    """Serve metrics for ``server`` (a chat server from ``create_app``): wraps the
    start/shutdown/request/open handlers it has (call it after they are set); returns
    the :class:`Ops` (its ``port_server`` is the ``metrics_port`` server once started).

    With ``--workers N``, worker ``i`` passes ``worker=i`` and serves its metrics on
    ``metrics_port + i`` (scrape each); the token-protected ``/metrics`` of the main
    port reaches whichever worker the kernel picks, so use the ports there."""
    return Ops(server, worker)
