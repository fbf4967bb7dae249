"""Several nodes acting as one server: direct messages to members connected to
other nodes, and a room's delete or reset carried out on every node.

**Direct messages across nodes.** The core names the recipient's connections on
other nodes in :class:`~hubbub.core.effects.RemoteDirect` effects (one per node).
Each is sent over the broker to that node alone (:meth:`Broker.send_node
<hubbub.broker.base.Broker.send_node>`: Redis channel ``<prefix>node:{<node>}``,
which every node follows from its start), as a :class:`NodeDirect` payload
(at most :data:`~hubbub.broker.NODE_PAYLOAD_MAX` bytes). The receiving node
checks that the named members are still in the room here and delivers the
``dm`` to each of their connections (:meth:`ChatCore.direct_in
<hubbub.core.remote.RemoteMembers.direct_in>`); if none is, the message is
dropped (logged at debug). Delivery is at most once. The sender's echo (sent
by its own node at once) says the message went out; when it is known not to
have reached a node (no node listens on that node's channel: it died or is cut
off from Redis; the outgoing queue dropped it), the sender also gets ``error``
``unavailable`` with ``ref: "dm"`` and the dm's ``id``.

**Delete and reset across nodes.** The node that deletes or resets a room holds
the store transaction; once it committed and this node's members were told, it
publishes a :class:`RoomControl` frame on the **room's channel** (only nodes
with members in the room follow it, and they are the ones with something to
do; one publisher's frames keep their order on a channel). Frames starting
with :data:`NODES_ONLY` are for the nodes, never delivered to clients. Every
other node then does what a local delete or reset does to its own members:

* ``deleted``: its members are out of the room, told ``left_room`` with
  ``reason: "deleted"``; catch-ups of the room stop; the sequencer and presence
  forget the room (:meth:`ClusterControl.deleted_here`).
* ``reset``: members still catching up are taken out (``error`` ``unavailable``:
  join again; their replay was of the old epoch), the sequencer follows the new
  epoch from its seq (:meth:`Sequencer.restart
  <hubbub.apps.sequencer.Sequencer.restart>`: frames of the old epoch are never
  delivered again), then every member gets ``reset`` (reason ``epoch``), with no
  ``await`` in between (:meth:`ClusterControl.reset_here`).

Each frame names the epochs it is about (a reset: the new one and the one
before; a delete: the one deleted), so a node that already moved on ignores it
or, when it cannot tell, asks the store (:meth:`ClusterControl.check`).

**Convergence without the control frame** (Redis lost it, or the node was cut
off): a node finds out from the store, in three ways. The sequencer refuses a
frame of another epoch than its cursor's and says so (``on_epoch``); the backfill
stops at a stored message of another epoch the same way; and the position check
(every 2 s, and after every broker reconnect) reads each followed room's meta.
Each of these compares the store with the cursor (:meth:`ClusterControl.apply`):
the room gone is the delete above, another epoch is the reset above (followed
from seq 0: every epoch is numbered from 1, and the messages it already has are
read from the store and delivered after the ``reset``, as any hole is), the same
epoch is a position as before (frames of the epoch that was asked about are
dropped quietly from then on). One store read per room at a time.

**A delete racing a send on another node.** Node A deletes a room; a member on
node B sends to it before B heard of the delete. B's message reaches the store
after the delete: the store makes a new room of that name (a new epoch) with
the message as its first (the sender's ``ack`` names the new epoch). B then
sees a message of another epoch, reads the store and finds the new epoch: from
the store alone a delete and a new room look like a reset, so B's members get
``reset``. When A's control frame (``deleted``, the old epoch) comes next, the
members B had when it moved on (:data:`MOVED_TTL`: it remembers them that long)
are taken out as A's were: ``left_room`` with ``reason: "deleted"``. Members who
joined the new room meanwhile stay in it. If the control frame came first (a
near Redis), B deletes the room outright. Either way: every member of the
deleted room is out, on every node; the message is not lost (it is the new
room's first, read by whoever joins it); the new room has no member until
someone joins. (A control frame lost altogether leaves B's members in the new
room, told ``reset``: the store cannot tell the two apart.) A join on B in
that moment is answered from the store (the new room), and B moves the room to
the new epoch at once (:meth:`ClusterControl.store_ahead`: its other members get
``reset``). A's ``deleted`` frame then takes out the members B had then, the
joiner included (``left_room`` ``deleted``; it joins again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Annotated, Any, Literal, Protocol

import msgspec

from .. import protocol as p
from ..broker import Broker
from ..core import ChatCore, Effect
from ..core.effects import RemoteDirect
from ..core.remote import MAX_RELAY_IDS
from ..presence.base import MARKER
from ..server import WEBSOCKET_OPCODE_TEXT, Server
from ..store import RoomMeta, Store, StoreError
from .catchup import Catchups
from .journal import Journal
from .sequencer import Sequencer

log = logging.getLogger("hubbub.chat.cluster")

#: Every broker payload for the nodes (presence events, room control) starts with
#: this; no frame for clients does (their types are plain words).
NODES_ONLY = b'{"type":"~'
#: A room control frame starts with this.
CONTROL = b'{"type":"~room"'
#: Store reads of one room in a row while frames of new epochs keep coming.
MAX_CHECKS = 5
#: Rooms read one by one in a position check; more are read with one room list.
FEW_ROOMS = 20
#: Seconds a node remembers the members a room had when the store showed it a new
#: epoch (a reset, or a delete and a new room: a ``deleted`` frame of the old epoch
#: coming later says which, and takes them out).
MOVED_TTL = 30.0

TEXT = WEBSOCKET_OPCODE_TEXT


class RoomControl(msgspec.Struct, tag="~room", tag_field="type", omit_defaults=True):
    """A delete or reset done on another node (on the room's channel)."""

    op: Literal["reset", "deleted"]
    #: reset: the new epoch; deleted: the epoch deleted.
    epoch: Annotated[str, msgspec.Meta(max_length=64)]
    #: reset: the epoch before (None: not known).
    was: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    #: reset: the new epoch's seq and oldest (a fresh reset: 0 and 1).
    seq: Annotated[int, msgspec.Meta(ge=0, le=p.MAX_SEQ)] = 0
    oldest: Annotated[int, msgspec.Meta(ge=0, le=p.MAX_SEQ + 1)] = 1


_MemberId = Annotated[str, msgspec.Meta(max_length=200)]


class NodeDirect(msgspec.Struct, tag="~dm", tag_field="type"):
    """A direct message for members connected to the receiving node."""

    room: Annotated[str, msgspec.Meta(max_length=64)]
    #: Cluster member ids (``<node>/u:<user>``, ``<node>/c:<fd>``).
    to: Annotated[list[_MemberId], msgspec.Meta(max_length=MAX_RELAY_IDS)]
    dm: p.DirectMessage


_control_decoder = msgspec.json.Decoder(RoomControl)
_direct_decoder = msgspec.json.Decoder(NodeDirect)


class AppLike(Protocol):
    """What this module uses of :class:`hubbub.apps.chat.ChatApp` (which imports this
    module, so it is described here rather than imported)."""

    server: Server
    core: ChatCore
    store: Store
    broker: Broker
    journal: Journal
    sequencer: Sequencer
    catchups: Catchups
    cluster: Any  # NodePresence | None
    _subs: dict[str, set[int]]
    #: One delete (or reset) of a room at a time.
    _delete_lock: asyncio.Lock

    def reply(self, fd: int, frame: p.ServerFrame) -> None: ...
    def run(self, effects: list[Effect]) -> None: ...
    def _spawn(self, coro: Any) -> Any: ...
    def _left(self, fd: int, room: str) -> None: ...
    def _drop(self, fd: int, room: str) -> None: ...
    def _fill_holes(self) -> None: ...


class _Moved(msgspec.Struct):
    """A room this node moved to a new epoch on the store's word."""

    epoch: str  # the epoch it left
    at: float  # time.monotonic() then
    members: dict[int, Any]  # fd -> its core Member then (a later join is another)


class ClusterControl:
    """Direct messages to other nodes, and deletes and resets told to every node."""

    def __init__(self, app: AppLike) -> None:
        self.app = app
        self._checking: set[str] = set()
        self._again: set[str] = set()
        #: Rooms moved to a new epoch on the store's word, in the last MOVED_TTL seconds.
        self._moved: dict[str, _Moved] = {}
        #: Counters, for metrics and tests.
        self.relayed = 0  # direct messages sent to other nodes (one per node)
        self.lost = 0  # ... known not to have reached their node
        self.received = 0  # direct messages other nodes sent here
        self.undelivered = 0  # ... whose members were no longer here
        self.bad_payloads = 0
        self.remote_deletes = 0
        self.remote_resets = 0

    @property
    def node(self) -> str:
        """This node's id, as its members' ids start (``<node>/...``)."""
        cluster = self.app.cluster
        return str(cluster.node) if cluster is not None else self.app.broker.node_id

    def _bad(self, what: str, exc: Exception) -> None:
        self.bad_payloads += 1
        if self.bad_payloads == 1 or self.bad_payloads % 1000 == 0:
            log.warning("%d malformed payload(s) from other nodes dropped", self.bad_payloads)
            log.warning("the last one, %s: %s", what, exc)

    # -- direct messages ---------------------------------------------------------------

    def send_direct(self, e: RemoteDirect) -> None:
        """Carry out a :class:`RemoteDirect`: the dm to its members' node."""
        self.relayed += 1
        payload = msgspec.json.encode(NodeDirect(e.room, list(e.to), e.frame))
        self.app.broker.send_node(e.node, payload, lambda: self._not_delivered(e))

    def _not_delivered(self, e: RemoteDirect) -> None:
        self.lost += 1
        dm = e.frame
        why = f"{dm.to!r} is connected to a node that cannot be reached now; the direct message"
        self.app.reply(
            e.fd,
            p.Error(p.E_UNAVAILABLE, why + " did not reach them there", "dm", e.room, dm.client_id),
        )

    def on_node(self, origin: str, payload: bytes) -> None:
        """Broker callback: a payload another node sent to this one."""
        try:
            msg = _direct_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._bad(f"from node {origin!r}", exc)
            return
        if msg.dm.room != msg.room:
            self._bad(f"from node {origin!r}", ValueError("dm of another room"))
            return
        self.received += 1
        mine = f"{self.node}/"
        keys = [mid[len(mine) :] for mid in msg.to if mid.startswith(mine)]
        effects = self.app.core.direct_in(msg.room, keys, msg.dm)
        if not effects:
            self.undelivered += 1
            log.debug("dm from node %s for %s in %s: no longer here", origin, keys, msg.room)
            return
        self.app.run(effects)

    # -- a delete or reset, on this node ------------------------------------------------

    def deleted_here(self, room: str) -> int:
        """The room is deleted: this node's members are out of it and told
        (``left_room``, reason ``deleted``); it is forgotten here. Returns how many
        connections were told."""
        app = self.app
        self._moved.pop(room, None)
        state = app.core.rooms.get(room)
        fds = set(state.members) if state is not None else set()
        fds.update(app._subs.get(room, ()))
        removed = app.core.remove_room(room)
        for fd in sorted(fds):
            app._left(fd, room)  # stops its catch-up, its following of the room
        app.run(removed)
        return len(removed)

    def reset_here(
        self, room: str, epoch: str, seq: int, oldest: int, keep: Collection[int] = ()
    ) -> int:
        """The room's history was reset to ``epoch`` (numbered on from ``seq``): members
        still catching up are taken out (their replay is of the old epoch: they join
        again), the sequencer follows the new epoch, every member gets ``reset``.
        Nothing is delivered in between (no await). Returns how many were told.
        ``keep``: joiners left alone (their ``room`` frame, still to come, is of the
        new epoch)."""
        app = self.app
        state = app.core.rooms.get(room)
        members = state.members.items() if state else ()
        joining = [fd for fd, m in members if not m.live and fd not in keep]
        for fd in sorted(joining):
            app._drop(fd, room)
            why = f"room {room!r} was reset while you joined; join again"
            app.reply(fd, p.Error(p.E_UNAVAILABLE, why, "join", room))
        app.sequencer.restart(room, epoch, seq)
        state = app.core.rooms.get(room)
        fds = sorted(fd for fd in state.members if fd not in keep) if state is not None else []
        frame = p.Reset(room, epoch, "epoch", seq, oldest)
        app.server.push_many(fds, p.encode(frame), TEXT)
        return len(fds)

    async def delete_room(self, room: str) -> tuple[bool, int]:
        """Delete a room, its history and its members' membership, on every node.

        Returns whether the room existed and how many members here were told. A
        :class:`StoreError` leaves the room as it was (open again, members in)."""
        app = self.app
        async with app._delete_lock:
            app.core.close_room(room)  # from here, no join and no send for it here
            try:
                # Joins accepted before the close finish first (their create_room
                # must not run after the delete), then messages accepted before it.
                await app.catchups.wait_room(room)
                await app.journal.barrier()
                meta = await app.store.room(room)
                existed = await app.store.delete_room(room)
            finally:
                app.core.reopen_room(room)
            told = self.deleted_here(room)
        if existed:
            self.announce(room, RoomControl("deleted", meta.epoch if meta else ""))
        if existed or told:
            log.info("room %s deleted (%d members removed here)", room, told)
        return existed or bool(told), told

    # -- telling the other nodes ----------------------------------------------------------

    def announce(self, room: str, control: RoomControl) -> None:
        """Tell every node following ``room`` (after the store committed)."""
        self.app.broker.publish(room, msgspec.json.encode(control), None)

    def on_room_frame(self, room: str, payload: bytes) -> None:
        """A frame for the nodes on a room's channel (:data:`NODES_ONLY`)."""
        if payload.startswith(MARKER):
            if self.app.cluster is not None:
                self.app.cluster.on_payload(room, payload)
            return
        try:
            control = _control_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._bad(f"on {room!r}", exc)
            return
        self.on_control(room, control)

    def on_control(self, room: str, c: RoomControl) -> None:
        app = self.app
        if room not in app.core.rooms:
            return  # no member here (or this node did it itself)
        current = app.sequencer.epoch(room)
        if c.op == "deleted":
            if current is None or current == c.epoch:
                self.remote_deletes += 1
                told = self.deleted_here(room)
                log.info("room %s deleted on another node (%d members here told)", room, told)
            elif not self._deleted_after_move(room, c.epoch):
                self.check(room)  # a newer room of that name is followed here: ask
        elif current is not None and current != c.epoch:
            if current == c.was:
                self.remote_resets += 1
                told = self.reset_here(room, c.epoch, c.seq, c.oldest)
                log.info("room %s reset on another node (%d members here told)", room, told)
            else:
                self.check(room)
        # (current None: the room's first member here is still reading its position,
        # which the store gives in whichever epoch is current then.)

    def _deleted_after_move(self, room: str, epoch: str) -> bool:
        """``epoch`` was deleted, and this node had moved the room from it to a newer
        epoch on the store's word: the members it had then are taken out (told
        ``left_room`` ``deleted``), those who joined since stay. False if the room did
        not move from ``epoch`` here (lately)."""
        moved = self._moved.get(room)
        if moved is None or moved.epoch != epoch:
            return False
        del self._moved[room]
        if time.monotonic() - moved.at > MOVED_TTL:
            return False
        app = self.app
        self.remote_deletes += 1
        state = app.core.rooms.get(room)
        members = state.members if state is not None else {}
        out = sorted(fd for fd, m in members.items() if moved.members.get(fd) is m)
        if len(out) == len(members):
            told = self.deleted_here(room)
        else:
            for fd in out:
                app._drop(fd, room)
                app.reply(fd, p.Left_(room, reason="deleted"))
            told = len(out)
        log.info(
            "room %s was deleted on another node, then made again (%d members here told)",
            room,
            told,
        )
        return True

    def _note_move(self, room: str, epoch: str) -> None:
        """The store shows ``room`` in a newer epoch than ``epoch``: remember who was in it."""
        now = time.monotonic()
        self._prune(now)
        state = self.app.core.rooms.get(room)
        members = dict(state.members) if state is not None else {}
        self._moved[room] = _Moved(epoch, now, members)

    def _prune(self, now: float) -> None:
        for name in [r for r, m in self._moved.items() if now - m.at > MOVED_TTL]:
            del self._moved[name]

    # -- asking the store ------------------------------------------------------------------

    def on_epoch(self, room: str, epoch: str) -> None:
        """Sequencer callback: a frame of ``epoch``, not the cursor's, came for ``room``."""
        self.check(room, epoch)

    def check(self, room: str, seen: str | None = None) -> None:
        """Read the room's meta from the store and act on it (one read at a time per
        room; frames that come meanwhile ask for one more)."""
        if room in self._checking:
            self._again.add(room)
            return
        self._checking.add(room)
        self.app._spawn(self._check(room, seen))

    async def _check(self, room: str, seen: str | None) -> None:
        try:
            for _ in range(MAX_CHECKS):
                self._again.discard(room)
                try:
                    meta = await self.app.store.room(room)
                except StoreError as exc:
                    log.warning("%s: epoch check failed (retried by the next check): %s", room, exc)
                    return
                self.apply(room, meta, urgent=True, seen=seen)
                if room not in self._again:
                    return
        finally:
            self._checking.discard(room)
            self._again.discard(room)

    def apply(
        self, room: str, meta: RoomMeta | None, urgent: bool = False, seen: str | None = None
    ) -> None:
        """What the store says of a room followed here: gone (a delete), another epoch
        (a reset), or its newest seq (a hole to read if the cursor is behind).
        ``seen``: the epoch of a frame that was refused (retired if not current)."""
        sequencer = self.app.sequencer
        if sequencer.cursor(room) is None or room in self.app.core.closing:
            # Not followed (any more), its position is being read, or this node is
            # deleting or resetting it right now (and does what follows itself).
            return
        if meta is None:
            self.remote_deletes += 1
            told = self.deleted_here(room)
            log.info("room %s is gone from the store (%d members here told)", room, told)
            return
        current = sequencer.epoch(room)
        if current is not None and meta.epoch != current:
            # Every epoch is numbered from 1: follow it from 0, and what it already
            # has is read from the store and delivered after the ``reset``. (A reset,
            # or a delete and a new room: a ``deleted`` frame may follow.)
            self._note_move(room, current)
            self.remote_resets += 1
            told = self.reset_here(room, meta.epoch, 0, 1)
            sequencer.position(room, meta.seq, urgent=True)
            log.info("room %s has a new epoch in the store (%d members here told)", room, told)
            return
        if seen is not None and seen != meta.epoch:
            sequencer.retire(room, seen)
        sequencer.position(room, meta.seq, urgent=urgent)
        self.app.core.set_private(room, meta.private)  # (set on another node)

    def store_ahead(self, room: str, meta: RoomMeta, joining: Collection[int]) -> bool:
        """A join here read ``meta`` from the store (for its ``room`` frame): if this
        node still follows ``room`` in another epoch (a reset, or a delete and a new
        room, on another node, not heard here yet), move it to the store's epoch now,
        as :meth:`apply` does, so that the joiner and the members here agree. The
        members in ``joining`` (catch-ups whose ``room`` frame is still to come) stay
        and are not told ``reset``. True if the room moved."""
        sequencer = self.app.sequencer
        current = sequencer.epoch(room)
        if current is None or current == meta.epoch or room in self.app.core.closing:
            return False
        self._note_move(room, current)
        self.remote_resets += 1
        told = self.reset_here(room, meta.epoch, 0, 1, keep=joining)
        sequencer.position(room, meta.seq, urgent=True)
        log.info("room %s has a new epoch in the store, seen by a join (%d told)", room, told)
        return True

    async def check_positions(self, urgent: bool = False) -> None:
        """Compare every followed room with the store: a lost last message shows as a
        hole (read from the store), a lost delete or reset as above."""
        app = self.app
        self._prune(time.monotonic())
        rooms = [r for r in app.sequencer.rooms if app.sequencer.cursor(r) is not None]
        if not rooms:
            return
        found: dict[str, RoomMeta | None] = dict.fromkeys(rooms)
        try:
            if len(rooms) <= FEW_ROOMS:
                for r in rooms:
                    found[r] = await app.store.room(r)
            else:
                for meta in await app.store.rooms():
                    if meta.name in found:
                        found[meta.name] = meta
        except StoreError as exc:
            log.warning("position check failed: %s", exc)
            return
        for room, meta in found.items():
            self.apply(room, meta, urgent=urgent)
        if urgent:
            app._fill_holes()
