"""The static files of ``hubbub serve``: the browser client, the demo and the seed's page.

Every file of the package's ``static`` folder (and of its subfolders, e.g.
``static/demo``) is read once, at start, and served from memory: ``/`` is the
hubbub.v1 browser client, ``/seed.html`` the seed's page (plain text
protocol), ``/demo/push-vs-polling`` the live push-vs-polling page, the other
files are under ``/static/`` (``/static/demo/demo.js``, ...).
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

from ..transport.http import Request, Response

# "/" is the hubbub.v1 browser client; the seed's page (plain text protocol)
# stays at /seed.html. Other files of the static folder are under /static/.
_PAGES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/seed.html": "seed.html",
    "/demo/push-vs-polling": "demo/push-vs-polling.html",
}
#: How deep subfolders of ``static`` are served (``static/demo/x.js`` is depth 1).
_MAX_DEPTH = 1
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}


def _read_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the static folder: URL path -> (body, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    _read_folder(resources.files("hubbub").joinpath("static"), "/static", 0, files)
    for path, name in _PAGES.items():
        if f"/static/{name}" in files:
            files[path] = files[f"/static/{name}"]
    return files


def _read_folder(
    folder: Traversable, prefix: str, depth: int, files: dict[str, tuple[bytes, str]]
) -> None:
    for entry in folder.iterdir():
        name = entry.name
        if entry.is_dir():
            if depth < _MAX_DEPTH and not name.startswith((".", "_")):
                _read_folder(entry, f"{prefix}/{name}", depth + 1, files)
            continue
        ctype = _TYPES.get(name[name.rfind(".") :]) if "." in name else None
        if ctype is None or not entry.is_file():
            continue
        files[f"{prefix}/{name}"] = (entry.read_bytes(), ctype)


class StaticFiles:
    def __init__(self) -> None:
        self.files = _read_files()

    def serve(self, request: Request, response: Response) -> None:
        """Answer a request for a file: the file, 404 or 405."""
        page = self.files.get(request.path)
        if page is None:
            return plain(response, 404, "Not Found")
        if request.method not in ("GET", "HEAD"):
            response.header("Allow", "GET, HEAD")
            return plain(response, 405, "Method Not Allowed")
        body, ctype = page
        response.header("Content-Type", ctype)
        response.header("Cache-Control", "no-cache")
        response.header("X-Content-Type-Options", "nosniff")
        response.end(body)
        return None


def plain(response: Response, status: int, text: str) -> None:
    response.status(status)
    response.header("Content-Type", "text/plain; charset=utf-8")
    response.end(text + "\n")
