"""A checker in the style of Jepsen's set checker, for hubbub's promises.

Every client of a fault test keeps a log (:class:`ClientLog`): what it sent
(client ids), what the server acknowledged (the ack's seq and epoch), and every
room message it received. :func:`check` reads the logs and the room's final
history (read back from the store after the test) and lists every broken
promise:

* no acknowledged message is missing from the history;
* no client id is stored twice;
* each ack's (epoch, seq) is the stored message's;
* each receiver saw, per epoch, consecutive seqs from the first it saw to the
  last (no gap, no duplicate, no reorder), every one of them as stored;
* all receivers agree on (epoch, seq) -> message (they do if each agrees with
  the history).

The list is empty when every promise held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Stored:
    """One message as the store has it (or as a client received it)."""

    epoch: str
    seq: int
    client_id: str | None
    text: str


@dataclass
class ClientLog:
    name: str
    #: Client ids this client sent (maybe several times, through several nodes).
    sent: list[str] = field(default_factory=list)
    #: client id -> (epoch, seq) of its ack (the last ack, if acked more than once).
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Room messages in the order they arrived.
    received: list[Stored] = field(default_factory=list)

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message":
            self.received.append(
                Stored(frame["epoch"], frame["seq"], frame.get("client_id"), frame["text"])
            )
        elif kind == "ack":
            self.acked[frame["id"]] = (frame["epoch"], frame["seq"])


def check(logs: list[ClientLog], history: list[Stored]) -> list[str]:
    """Every broken promise, in words (empty: none)."""
    problems: list[str] = []
    by_position: dict[tuple[str, int], Stored] = {}
    by_client_id: dict[str, Stored] = {}
    for m in history:
        if (m.epoch, m.seq) in by_position:
            problems.append(f"the history holds ({m.epoch}, {m.seq}) twice")
        by_position[(m.epoch, m.seq)] = m
        if m.client_id is not None:
            if m.client_id in by_client_id:
                problems.append(f"client id {m.client_id!r} is stored twice")
            by_client_id[m.client_id] = m
    for log in logs:
        problems.extend(_check_acks(log, by_client_id))
        problems.extend(_check_received(log, by_position))
    return problems


def _check_acks(log: ClientLog, by_client_id: dict[str, Stored]) -> list[str]:
    problems = []
    for cid, (epoch, seq) in log.acked.items():
        stored = by_client_id.get(cid)
        if stored is None:
            problems.append(f"{log.name}: acked {cid!r} ({epoch}, {seq}) is not in the history")
        elif (stored.epoch, stored.seq) != (epoch, seq):
            problems.append(
                f"{log.name}: {cid!r} was acked as ({epoch}, {seq}) "
                f"but stored as ({stored.epoch}, {stored.seq})"
            )
    return problems


def _check_received(log: ClientLog, by_position: dict[tuple[str, int], Stored]) -> list[str]:
    problems = []
    last: dict[str, int] = {}
    for m in log.received:
        previous = last.get(m.epoch)
        if previous is not None and m.seq != previous + 1:
            what = "a duplicate or reorder" if m.seq <= previous else "a gap"
            problems.append(f"{log.name}: seq {m.seq} after {previous} in {m.epoch}: {what}")
        last[m.epoch] = m.seq
        stored = by_position.get((m.epoch, m.seq))
        if stored is None:
            problems.append(f"{log.name}: received ({m.epoch}, {m.seq}), which is not stored")
        elif stored != m:
            problems.append(f"{log.name}: received {m} but the history has {stored}")
    return problems
