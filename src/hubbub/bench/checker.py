"""Message bodies and the per-receiver ordering check.

Every message the generator sends is ``size`` bytes of printable ASCII that
ends in a fixed-width tail::

    <filler> <send time, 20 digits>|<sender id, 4 digits>|<sequence, 10 digits>

The tail sits at the *end* of the body, so a receiver finds it at a fixed
offset from the end of whatever the server put in front of it
(``from <fd>: `` or ``server: ``) without searching for it.

Each receiver keeps one :class:`SeqChecker`: per sender, sequence numbers
must arrive 1, 2, 3, ... with no gap, no duplicate and nothing out of order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

GREETING = b"Hello, welcome\n"
FROM_PREFIX = b"from "
ECHO_PREFIX = b"server: "

#: Length of the tail: 20 + 1 + 4 + 1 + 10.
TAIL = 36
MIN_SIZE = TAIL + 4
MAX_SENDERS = 10_000

# Offsets from the end of a received payload.
TS = slice(-36, -16)
SENDER = slice(-15, -11)
SEQ = slice(-10, None)

_FILLER = b"hubbub bench payload "


def filler(size: int) -> bytes:
    """The constant head of every body of ``size`` bytes."""
    if size < MIN_SIZE:
        raise ValueError(f"message size must be at least {MIN_SIZE} bytes, got {size}")
    n = size - TAIL
    return (_FILLER * (n // len(_FILLER) + 1))[:n]


def make_body(head: bytes, ts_ns: int, sender: int, seq: int) -> bytes:
    """One message body: ``head`` (from :func:`filler`) then the tail."""
    return head + b"%020d|%04d|%010d" % (ts_ns, sender, seq)


def parse_tail(payload: bytes) -> tuple[int, int, int]:
    """(send time ns, sender id, sequence number) of a received payload."""
    if len(payload) < TAIL or payload[-16:-15] != b"|" or payload[-11:-10] != b"|":
        raise ValueError(f"not a bench message: {payload[:60]!r}")
    return int(payload[TS]), int(payload[SENDER]), int(payload[SEQ])


class SeqChecker:
    """Checks that one receiver gets every sender's messages exactly once, in order.

    ``feed(sender, seq)`` for each message received. Sequence numbers start
    at 1. The fast path (the expected next number) is a list lookup; the
    generator inlines it and calls :meth:`irregular` for anything else.

    - a *gap* (``seq`` beyond the next expected) records the skipped numbers
      as missing;
    - a missing number that shows up later counts as *reordered* (and is no
      longer missing);
    - any other number at or below the highest seen is a *duplicate*.

    After the run, :meth:`lost` compares with what each sender sent: the
    numbers still missing plus those never reached at the end.
    """

    __slots__ = ("duplicated", "last", "missing", "reordered")

    def __init__(self, senders: int) -> None:
        #: Highest sequence number seen per sender (0: none yet).
        self.last: list[int] = [0] * senders
        #: Per sender, numbers skipped by a gap and not seen since.
        self.missing: dict[int, set[int]] = {}
        self.duplicated = 0
        self.reordered = 0

    def feed(self, sender: int, seq: int) -> None:
        last = self.last
        if seq == last[sender] + 1:
            last[sender] = seq
        else:
            self.irregular(sender, seq)

    def feed_all(self, pairs: Iterable[tuple[int, int]]) -> None:
        for sender, seq in pairs:
            self.feed(sender, seq)

    def irregular(self, sender: int, seq: int) -> None:
        """Anything but the next expected number (the slow path)."""
        top = self.last[sender]
        if seq > top + 1:
            self.missing.setdefault(sender, set()).update(range(top + 1, seq))
            self.last[sender] = seq
            return
        waiting = self.missing.get(sender)
        if waiting is not None and seq in waiting:
            waiting.discard(seq)
            self.reordered += 1
        else:
            self.duplicated += 1

    def complete(self, sent: Sequence[int]) -> bool:
        """True once every sender's last message (``sent[s]``) has arrived."""
        last = self.last
        return all(last[s] >= n for s, n in enumerate(sent))

    def gaps(self) -> int:
        return sum(len(m) for m in self.missing.values())

    def lost(self, sent: Sequence[int]) -> int:
        """Messages never received, given how many each sender sent."""
        tail = sum(max(0, n - self.last[s]) for s, n in enumerate(sent))
        return self.gaps() + tail

    def received(self) -> int:
        """Distinct messages received (duplicates not counted)."""
        return sum(self.last) - self.gaps()


class RoomSeqCheck:
    """One storm client's view of one room's sequence numbers (join, resume, live).

    The join storm and the reconnect storm check what each client gets of
    its room: after the ``room`` frame (the room's newest ``seq`` when it
    joined), every ``message`` must carry the next number; after a ``join``
    with ``since``, the replay must be exactly ``since + 1 .. seq`` of the
    ``resumed`` frame that ends it, and nothing may come twice.

    - ``gaps``: numbers skipped (a message that should have come did not);
    - ``duplicated``: a number at or below the last one seen;
    - ``bad_resume``: a ``resumed`` frame that does not match what was replayed
      (its ``since`` is not the one asked, its ``seq`` is not the last replayed
      message, or its ``count`` is not how many were replayed);
    - :meth:`lost` after the run: how far the client is behind the room's top.
    """

    __slots__ = ("bad_resume", "duplicated", "gaps", "last", "replayed", "resuming", "since")

    def __init__(self) -> None:
        #: Newest seq seen (from the room frame or a message); -1 before the room frame.
        self.last = -1
        self.gaps = 0
        self.duplicated = 0
        self.bad_resume = 0
        #: The ``since`` of a resume in progress (None: not resuming).
        self.since: int | None = None
        self.resuming = False
        self.replayed = 0

    def resume_from(self, since: int) -> None:
        """A ``join`` with ``since`` is about to be sent."""
        self.since = since
        self.last = since
        self.resuming = True
        self.replayed = 0

    def room(self, seq: int) -> None:
        """The ``room`` frame: the room's newest seq when this client joined."""
        if self.resuming:
            return  # the replay that follows says what was missed
        if self.last < 0 or seq > self.last:
            self.last = seq

    def message(self, seq: int) -> None:
        last = self.last
        if seq == last + 1:
            self.last = seq
        elif seq <= last:
            self.duplicated += 1
            return
        else:
            self.gaps += seq - last - 1
            self.last = seq
        if self.resuming:
            self.replayed += 1

    def resumed(self, since: int, seq: int, count: int) -> None:
        """The ``resumed`` frame that ends a replay."""
        if since != self.since or seq != self.last or count != self.replayed:
            self.bad_resume += 1
        if seq > self.last:  # the server says more existed than it replayed
            self.gaps += seq - self.last
            self.last = seq
        self.resuming = False

    def lost(self, top: int) -> int:
        """Messages of the room (newest ``top``) this client never got."""
        return max(0, top - self.last)
