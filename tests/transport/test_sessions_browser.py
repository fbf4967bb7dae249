"""A real browser's EventSource and fetch against the session endpoints (Chromium).

The wire format is checked by the Python clients of test_sessions.py; this
checks what only a browser can: that EventSource parses hubbub's event stream
(chunked, ``id:``/``data:`` lines, named events), and that when the server
ends a stream the browser reconnects by itself with ``Last-Event-ID`` and gets
the rest exactly once. (The chat page's use of the fallbacks is tested in
tests/browser.)
"""

from __future__ import annotations

from typing import Any

from playwright.async_api import async_playwright

from hubbub import Server

from .test_sessions import until

CHROMIUM = "/usr/bin/chromium"
PAGE = "<!doctype html><title>sse</title>"
# The test drives the page with evaluate(); nothing else may run there.
CSP = "default-src 'self'; script-src 'self' 'unsafe-eval'"

OPEN = """async () => {
  const r = await fetch('/v1/sessions?transport=sse&protocol=', {method: 'POST'});
  const info = await r.json();
  window.got = []; window.ids = []; window.end = null;
  const es = new EventSource('/v1/sessions/' + info.session + '/events');
  es.onmessage = (e) => { window.got.push(e.data); window.ids.push(e.lastEventId); };
  es.addEventListener('close', (e) => { window.end = JSON.parse(e.data); es.close(); });
  return info.session;
}"""


def setup(server: Server) -> None:
    server.on("open", lambda s, request: s.push(request.fd, "two\nlines"))
    server.on("message", lambda s, frame: s.broadcast(frame.data))

    def page(request: Any, response: Any) -> None:
        response.header("Content-Type", "text/html; charset=utf-8")
        response.header("Content-Security-Policy", CSP)
        response.end(PAGE)

    server.on("request", page)


async def test_eventsource_reads_the_stream_and_resumes_by_itself(make_server):
    server = await make_server(setup)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{server.port}/")
            sid = await page.evaluate(OPEN)
            fd = max(server.connections)
            await page.wait_for_function("window.got.length === 1")
            post = "([sid, body]) => fetch(`/v1/sessions/${sid}/frames`, {method: 'POST', body})"
            await page.evaluate(post, [sid, "one\ntwo\n"])
            await page.wait_for_function("window.got.length === 3")
            # The server ends the stream (as a proxy or a replacement would): the
            # browser reconnects with Last-Event-ID: 3 and gets frame 4 once.
            session = server._endpoint.sessions[sid]
            session.stream.finish(None, None)
            await until(lambda: session.stream is None)
            server.push(fd, "after the break")
            await page.wait_for_function("window.got.length === 4", timeout=10_000)
            server.disconnect(fd, 4000, "bye")
            await page.wait_for_function("window.end !== null", timeout=10_000)
            got, ids, end = await page.evaluate("[window.got, window.ids, window.end]")
        finally:
            await browser.close()
    assert got == ["two\nlines", "one", "two", "after the break"]
    assert ids == ["1", "2", "3", "4"]
    assert end == {"code": 4000, "reason": "bye"}
