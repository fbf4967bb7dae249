"""Log lines for people (``--log-format text``) or for pipelines (``json``).

Text, the default, is ``2026-01-02 03:04:05,678 INFO hubbub.chat: message``.
JSON is one object per line: ``timestamp`` (ISO 8601, UTC), ``level``,
``logger``, ``message``, plus the context a call passes with ``extra=``
(``fd``, ``user``, ``room``, ``reason``, ``code``...; see :func:`context`),
and ``exc_info`` with the traceback when there is one.

No client can forge a line: in text, the message's control characters (and
other non-printable ones: line and paragraph separators, bidi overrides) are
escaped as ``\\xNN`` / ``\\uNNNN`` by the formatter (:func:`escape`), whatever
the call site did; in JSON the encoder escapes them (``ensure_ascii``: every
object is one ASCII line). The access log's ``log_safe`` (quotes and
backslashes too, so that a field cannot end early) is meant to be
``escape(text, also='"\\\\')`` after its truncation: one rule.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

try:  # python-json-logger >= 3.1
    from pythonjsonlogger.json import JsonFormatter as _JsonFormatter
except ImportError:  # pragma: no cover - 3.0
    from pythonjsonlogger.jsonlogger import JsonFormatter as _JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Context fields a log call passes with ``extra=`` (JSON has them as fields;
#: any other ``extra`` key is a field too).
CONTEXT_FIELDS = ("fd", "user", "room", "reason", "code", "peer")


def escape(text: str, also: str = "") -> str:
    """``text`` with non-printable characters (and those in ``also``) as escapes.

    ``\\n`` becomes ``\\x0a``, U+2028 ``\\u2028``: what a client sends can never
    start a new log line or hide text. Printable text is returned as it is (one
    C-level check)."""
    if text.isprintable() and not (also and any(c in text for c in also)):
        return text
    return "".join(c if c.isprintable() and c not in also else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def context(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("...", extra=context(fd=3, room="ops"))``.

    None values are left out (a field is there only when it is known)."""
    return {k: v for k, v in fields.items() if v is not None}


class TextFormatter(logging.Formatter):
    """The human format, the message escaped. The ``extra=`` context is not
    repeated (the message says it for people; JSON carries it as fields), so
    adding context to a log call never changes its text line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(_JsonFormatter):  # type: ignore[misc, valid-type]
    """One JSON object per line: timestamp, level, logger, message, context."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=True,
        )

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # The timestamp first (ISO 8601, UTC, microseconds): what a reader scans for.
        log_record["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat()
        super().add_fields(log_record, record, message_dict)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``--log-format`` (``text`` or ``json``)."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format must be text or json, got {fmt!r}")


def setup(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send every log line to ``stream`` (stderr) in ``fmt``, from ``level`` up.

    Replaces the root logger's handlers (what ``hubbub serve`` does once)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
