"""The seed's chat room, as ``hubbub serve`` runs it.

For any plain WebSocket client this is the Swoole tutorial's ``socket.php``,
byte for byte: a greeting on open, every text message pushed to everyone as
``from <fd>: <text>``, the sender answered ``server: <text>`` once, and
``client-<fd> closed`` logged when a connection goes.
"""

from __future__ import annotations

import logging
from importlib import resources

from ..config import Settings
from ..server import Frame, Server
from ..transport.http import Request, Response

log = logging.getLogger("hubbub.chat")

GREETING = "Hello, welcome\n"

_PAGES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/seed.html": "index.html",
}


def _page(name: str) -> bytes:
    return resources.files("hubbub").joinpath("static", name).read_bytes()


def create_app(host: str = "0.0.0.0", port: int = 9502, settings: Settings | None = None) -> Server:
    ws = Server(host, port, settings)
    pages = {path: _page(name) for path, name in _PAGES.items()}

    @ws.on("open")
    def on_open(ws: Server, request: Request) -> None:
        ws.push(request.fd, GREETING)

    @ws.on("message")
    def on_message(ws: Server, frame: Frame) -> None:
        if isinstance(frame.data, str):
            ws.broadcast(f"from {frame.fd}: {frame.data}")
            ws.push(frame.fd, f"server: {frame.data}")
        else:
            ws.broadcast(b"from %d: " % frame.fd + frame.data)
            ws.push(frame.fd, b"server: " + frame.data)

    @ws.on("close")
    def on_close(ws: Server, fd: int) -> None:
        log.info("client-%d closed", fd)

    @ws.on("request")
    def on_request(request: Request, response: Response) -> None:
        body = pages.get(request.path)
        if body is None:
            response.status(404)
            response.end("Not Found\n")
        elif request.method not in ("GET", "HEAD"):
            response.status(405)
            response.header("Allow", "GET, HEAD")
            response.end("Method Not Allowed\n")
        else:
            response.header("Content-Type", "text/html; charset=utf-8")
            response.header("Cache-Control", "no-cache")
            response.end(body)

    return ws
