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

Presence has its own check, :func:`check_presence`: each client keeps its member
list as the browser does (:class:`MemberView`: the ``room`` frame's list, then
every ``joined``/``left``/``renamed``/``presence`` frame applied as
docs/protocol.md says, and the last ``who`` answer); at the end every connected
client's list must be exactly the clients connected then (no ghost, none
missing), and no nickname may be held by two of them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
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


# -- presence ---------------------------------------------------------------------------


def fold(nick: str) -> str:
    """A nickname as the server compares it (NFKC, casefold: ``Ann`` is ``ANN``)."""
    return unicodedata.normalize("NFKC", nick).casefold()


@dataclass
class MemberView:
    """One client's member list of ``room``, kept from the frames it receives.

    The ``room`` frame sets the list (and ``count``); ``joined``/``left``/
    ``renamed`` change it by one (``count`` follows); a ``presence`` frame is
    applied as one step: every ``left`` and every ``renamed`` ``old`` out, then
    every ``renamed`` ``nick`` and every ``joined`` in, ``count`` from the frame.
    A ``members`` answer (``who``) is kept apart in ``who``: it is the node's list
    at the time it answered. ``left_room`` or a lost connection: out of the room.
    """

    room: str
    #: This client's nickname in the room (``room`` frame, then ``nick`` answers).
    nick: str | None = None
    #: Whether the client is in the room (a ``room`` frame, not left since).
    joined: bool = False
    #: nickname key -> nickname.
    members: dict[str, str] = field(default_factory=dict)
    count: int | None = None
    #: The last whole ``who`` answer (None: none since :meth:`ask`).
    who: list[str] | None = None
    who_count: int | None = None

    def on_frame(self, f: dict[str, Any]) -> None:
        kind = f.get("type")
        if kind == "nick":
            self.nick = f["nick"]
        if f.get("room") != self.room:
            return
        if kind == "room":
            self.joined, self.nick = True, f["nick"]
            self.members = {fold(n): n for n in f["members"]}
            self.count = f.get("count", len(self.members))
        elif kind == "left_room":
            self.lost()
        elif kind == "members" and not f.get("has_more") and "after" not in f:
            self.who, self.who_count = list(f["members"]), f.get("count")
        elif kind in ("joined", "left", "renamed", "presence"):
            self._change(f)

    def _change(self, f: dict[str, Any]) -> None:
        kind = f["type"]
        if kind == "presence":
            gone = [x["nick"] for x in f["left"]]
            came = [x["nick"] for x in f["joined"]]
            renames = [(r["old"], r["nick"]) for r in f["renamed"]]
        else:
            gone = [f["nick"]] if kind == "left" else []
            came = [f["nick"]] if kind == "joined" else []
            renames = [(f["old"], f["nick"])] if kind == "renamed" else []
        before = len(self.members)
        for nick in [*gone, *(old for old, _ in renames)]:
            self.members.pop(fold(nick), None)
        for nick in [*(new for _, new in renames), *came]:
            self.members[fold(nick)] = nick
        if kind == "presence":
            self.count = f["count"]
        elif self.count is not None:
            self.count += len(self.members) - before

    def lost(self) -> None:
        """The connection ended (or the client was taken out of the room)."""
        self.joined = False
        self.members, self.count, self.who, self.who_count = {}, None, None, None

    def ask(self) -> None:
        """Forget the last ``who`` answer (before asking again)."""
        self.who, self.who_count = None, None


def check_presence(views: Mapping[str, MemberView], connected: Mapping[str, str]) -> list[str]:
    """Every broken presence promise, in words (empty: none).

    ``connected``: client name -> its nickname, for the clients really in the room
    at the end; ``views``: the member lists of (some of) those clients. Each
    view's list, count and ``who`` answer (when it has one) must be exactly the
    connected clients' nicknames: one listed but not connected is a *ghost*, one
    connected but not listed is *missing*. Two connected clients with one
    nickname (a claim that did not hold) are a problem too."""
    problems: list[str] = []
    holders: dict[str, list[str]] = {}
    for name, nick in sorted(connected.items()):
        holders.setdefault(fold(nick), []).append(name)
    for key, names in holders.items():
        if len(names) > 1:
            problems.append(f"nickname {key!r} is held by {len(names)} clients: {names}")
    truth = {fold(n): n for n in connected.values()}
    for name, view in sorted(views.items()):
        if not view.joined:
            problems.append(f"{name}: not in the room")
            continue
        problems += _compare(f"{name}", view.members, truth)
        if view.count is not None and view.count != len(truth):
            problems.append(f"{name}: count {view.count}, but {len(truth)} are connected")
        if view.who is not None:
            listed = {fold(n): n for n in view.who}
            if len(listed) != len(view.who):
                problems.append(f"{name}: who answer lists a nickname twice: {view.who}")
            problems += _compare(f"{name}'s who answer", listed, truth)
            if view.who_count is not None and view.who_count != len(truth):
                problems.append(
                    f"{name}'s who answer: count {view.who_count}, but {len(truth)} are connected"
                )
    return problems


def _compare(whose: str, listed: Mapping[str, str], truth: Mapping[str, str]) -> list[str]:
    problems = []
    ghosts = sorted(listed[k] for k in listed.keys() - truth.keys())
    missing = sorted(truth[k] for k in truth.keys() - listed.keys())
    if ghosts:
        problems.append(f"{whose}: ghost(s) {ghosts} listed but not connected")
    if missing:
        problems.append(f"{whose}: {missing} connected but not listed (missing)")
    return problems
