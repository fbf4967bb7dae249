"""Log lines: text with client text escaped, JSON one object per line (hubbub.logs)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from hubbub import logs


@pytest.fixture
def capture():
    """``(logger, stream, use(fmt))``: a logger writing to a string in a format."""
    stream = io.StringIO()
    logger = logging.getLogger("hubbub.test-logs")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)

    def use(fmt: str) -> None:
        handler.setFormatter(logs.formatter(fmt))
        stream.seek(0)
        stream.truncate()

    yield logger, stream, use
    logger.removeHandler(handler)


FORGED = "bob\n2026-01-01 00:00:00,000 INFO hubbub: admin logged in\r\x1b[2J\u2028\u202eevil"


def test_escape_leaves_printable_text_and_escapes_the_rest():
    assert logs.escape("hello, world: 'x' \"y\" \\") == "hello, world: 'x' \"y\" \\"
    assert logs.escape("a\nb\rc\x00d\x1b\x7f") == "a\\x0ab\\x0dc\\x00d\\x1b\\x7f"
    assert logs.escape("\u2028\u202e\x85") == "\\u2028\\u202e\\x85"
    assert logs.escape("a b", also=" ") == "a\\x20b"
    assert logs.escape("héllo 世界") == "héllo 世界"  # printable, not ASCII: kept


def test_a_client_cannot_forge_a_text_line(capture):
    logger, stream, use = capture
    use("text")
    logger.warning("nick %s refused", FORGED, extra=logs.context(fd=7, room="ops\nx"))
    out = stream.getvalue()
    assert out.count("\n") == 1, out
    line = out.rstrip("\n")
    assert " WARNING hubbub.test-logs: nick bob\\x0a2026-01-01" in line
    assert "\\x1b[2J\\u2028\\u202eevil refused" in line
    assert line.endswith("evil refused")  # the context is for JSON: the text line is as written


def test_a_traceback_still_spans_lines_in_text(capture):
    logger, stream, use = capture
    use("text")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("handler failed")
    out = stream.getvalue()
    assert "handler failed\nTraceback (most recent call last):" in out
    assert "ValueError: boom" in out


def test_json_is_one_object_per_line_with_the_context(capture):
    logger, stream, use = capture
    use("json")
    logger.info("client-%d dropped: %s", 7, FORGED, extra=logs.context(fd=7, user="ann", room=None))
    try:
        raise RuntimeError("x\ny")
    except RuntimeError:
        logger.error("failed", exc_info=True, extra={"room": "ops"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "hubbub.test-logs"
    assert first["message"] == f"client-7 dropped: {FORGED}"  # exact, once decoded
    assert first["fd"] == 7 and first["user"] == "ann" and "room" not in first
    assert first["timestamp"].endswith("+00:00") and first["timestamp"][:2] == "20"
    assert all(ord(c) < 128 for c in lines[0])
    assert second["level"] == "ERROR" and second["room"] == "ops"
    assert "RuntimeError: x\ny" in second["exc_info"]


def test_setup_replaces_the_root_handlers(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        stream = io.StringIO()
        logs.setup("warning", "json", stream)
        logging.getLogger("hubbub.x").info("hidden")
        logging.getLogger("hubbub.x").warning("shown")
        (line,) = stream.getvalue().splitlines()
        assert json.loads(line)["message"] == "shown"
        with pytest.raises(ValueError, match="text or json"):
            logs.formatter("xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
