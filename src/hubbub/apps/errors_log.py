"""Recent errors for the admin page: a bounded ring of the process's WARNING+ log records.

:class:`ErrorLog` is a :class:`logging.Handler` on the ``hubbub`` logger (every
``hubbub.*`` logger propagates to it). It keeps the newest
:data:`MAX_RECORDS` records, each cut to :data:`MAX_MESSAGE` characters of
message and :data:`MAX_EXCEPTION` characters of exception text (the last
ones: where it was raised), so its memory is bounded whatever is logged:
at most about ``MAX_RECORDS * (MAX_MESSAGE + MAX_EXCEPTION)`` characters
(256 * 3 KiB = 768 KiB of text in the worst case; a few dozen KiB usually).
Counts per (logger, level) are kept since start (a flood that pushed the
first errors out of the ring still shows in the counts; loggers are the
code's names, a fixed set).

Control characters are escaped as ``\\xNN`` (a traceback keeps its line
breaks), so client-controlled text quoted in a log message cannot fake a
record on the page. One handler per process (:func:`install`): the records
are the process's, like its log; a record below the ``hubbub`` logger's
level (``--log-level``) never reaches it.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

#: Records kept (the oldest is dropped first).
MAX_RECORDS = 256
#: Characters of a record's message kept (then "...").
MAX_MESSAGE = 1024
#: Characters of a record's exception text kept (the last ones).
MAX_EXCEPTION = 2048


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One WARNING+ log record, as the admin API shows it."""

    #: Position since start (1, 2, ...): a client asks for records ``after`` one it has.
    id: int
    ts: float
    level: str
    logger: str
    message: str
    exception: str | None


class ErrorLog(logging.Handler):
    """A ring buffer of the newest WARNING+ records (see the module's doc for bounds)."""

    def __init__(self, capacity: int = MAX_RECORDS, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.records: deque[ErrorRecord] = deque(maxlen=capacity)
        self.total = 0
        #: Records since start per (logger, level): every one counted, kept in the ring or not.
        self.counts: Counter[tuple[str, str]] = Counter()
        self._guard = threading.Lock()  # records may come from worker threads

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = _safe(record.getMessage(), MAX_MESSAGE)
            exception = _exception_text(record)
        except Exception:  # a bad %-format in someone's log call must not stop the server
            self.handleError(record)
            return
        with self._guard:
            self.total += 1
            self.counts[(record.name, record.levelname)] += 1
            self.records.append(
                ErrorRecord(
                    self.total, record.created, record.levelname, record.name, message, exception
                )
            )

    def recent(self, after: int = 0, limit: int = MAX_RECORDS) -> list[ErrorRecord]:
        """Up to ``limit`` records with an ``id`` above ``after``, newest first."""
        with self._guard:
            out = [r for r in reversed(self.records) if r.id > after]
        return out[:limit]

    def count(self, logger: str, level: str = "ERROR") -> int:
        """How many ``level`` records ``logger`` wrote since start."""
        with self._guard:
            return self.counts[(logger, level)]

    def summary(self) -> dict[str, Any]:
        with self._guard:
            by_level: Counter[str] = Counter()
            for (_, level), n in self.counts.items():
                by_level[level] += n
            return {
                "total": self.total,
                "by_level": dict(by_level),
                "kept": len(self.records),
                "capacity": self.records.maxlen,
            }


def as_json(record: ErrorRecord) -> dict[str, Any]:
    return asdict(record)


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info))
    elif record.exc_text:
        text = record.exc_text
    else:
        return None
    # Newlines of a traceback are kept (shown as lines); other control characters are
    # escaped; then the last MAX_EXCEPTION characters are kept (where it was raised).
    text = "\n".join(_CONTROL.sub(_escape, line) for line in text.rstrip().split("\n"))
    return "..." + text[-MAX_EXCEPTION:] if len(text) > MAX_EXCEPTION else text


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _safe(text: str, limit: int) -> str:
    """At most ``limit`` characters (then "..."), control characters as ``\\xNN``."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


_installed: ErrorLog | None = None
_install_lock = threading.Lock()


def install(logger_name: str = "hubbub") -> ErrorLog:
    """The process's :class:`ErrorLog`, attached to ``logger_name`` on first use."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = ErrorLog()
            logging.getLogger(logger_name).addHandler(_installed)
        return _installed
