"""The chat app's side of cluster presence: joins, renames and members lost.

:class:`NodePresence` is the :class:`~hubbub.presence.ClusterPresence` the chat app
(:mod:`hubbub.apps.chat`) runs, with what it does to a connection when the
cluster says no: a join whose nickname another node's member holds is taken
back (``nick_taken``), a rename is undone, a member whose nickname was taken
while this node was away is taken out of the room.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from .. import protocol as p
from ..broker import Broker, BrokerError
from ..core import ChatCore, Effect
from .base import PresenceError, PresenceManager
from .cluster import ClusterPresence

log = logging.getLogger("hubbub.presence")


class NodePresence(ClusterPresence):
    """``reply(fd, frame)`` sends a frame; ``drop(fd, room)`` takes a member out of
    a room (the core's membership and the app's following of the room)."""

    def __init__(
        self,
        core: ChatCore,
        manager: PresenceManager,
        *,
        run: Callable[[list[Effect]], None],
        spawn: Callable[[Coroutine[Any, Any, None]], Any],
        reply: Callable[[int, p.ServerFrame], None],
        drop: Callable[[int, str], None],
    ) -> None:
        super().__init__(core, manager, run, spawn, self._lost_name)
        self._reply = reply
        self._drop = drop
        # fds repeat from node to node: ``user-<fd>`` gets the node's tag.
        core.nick_suffix = "." + node_tag(manager.node)

    @classmethod
    def for_broker(
        cls, broker: Broker, manager: PresenceManager | None, **hooks: Any
    ) -> NodePresence | None:
        """Presence for the node's broker: None for the local broker (one node: the
        core's own presence is the whole truth), Redis's beside a Redis broker."""
        if manager is None:
            if not hasattr(broker, "channel") or not hasattr(broker, "node_id"):
                return None
            from .redis import RedisPresence

            b: Any = broker
            manager = RedisPresence(b.url, prefix=b.prefix, node_id=b.node_id, channel=b.channel)
        return cls(hooks.pop("core"), manager, **hooks)

    async def joining(self, fd: int, room: str) -> None:
        """A member joined ``room`` here: read the room's other members (first time),
        then claim its nickname, before its ``room`` frame.

        Optimistic: the core took the join (its nickname checked against the
        mirrored members of other nodes); the atomic claim decides a race with
        another node's join. The alternative, claiming before the core sees the
        join, would have to hold the connection's later frames (a send right
        after the join) for a round trip. The price: when two nodes take one
        nickname in the same instant, the loser's room-mates on its node may see
        it join and leave. Raises BrokerError when the member cannot stay (the
        catch-up then ends: quietly if the member is already out)."""
        try:
            await self.follow(room)
            claimed = await self.claim(fd, room)
        except PresenceError as exc:
            raise BrokerError(f"presence unavailable: {exc}") from exc
        if not claimed:
            nick = self.core.nick_of(fd)
            why = f"nickname {nick!r} is taken in {room!r}"
            self._out(fd, room, p.Error(p.E_NICK_TAKEN, why, "join", room))
            raise BrokerError(why)

    def _out(self, fd: int, room: str, why: p.Error, left: bool = False) -> None:
        self._drop(fd, room)
        self._reply(fd, why)
        if left:
            self._reply(fd, p.Left_(room))

    def _lost_name(self, fd: int, room: str) -> None:
        why = f"nickname {self.core.nick_of(fd)!r} was taken in {room!r} while this node was away"
        self._out(fd, room, p.Error(p.E_NICK_TAKEN, why, "join", room), left=True)

    async def renamed(self, fd: int, old: str) -> None:
        """Claim the new nickname on every node; where another node's member holds
        it, the rename is undone (the client gets ``nick_taken``, then ``nick`` back)."""
        try:
            taken = await self.rename(fd)
        except PresenceError as exc:
            log.warning("rename of client-%d not registered: %s", fd, exc)
            return
        new = self.core.nick_of(fd)
        if not taken or new is None or not old:
            return
        why = f"nickname {new!r} is taken in {taken[0]!r}"
        self._reply(fd, p.Error(p.E_NICK_TAKEN, why, "nick", taken[0]))
        self._run(self.core.handle(fd, p.SetNick(old)))
        await self.rename(fd)


def node_tag(node: str) -> str:
    """A short tag of a node id for default nicknames: the id itself when it is a
    short word (``node0``), else 6 hex digits of its hash (``user-7.3fa2c1``)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,7}", node):
        return node
    return hashlib.blake2s(node.encode(), digest_size=3).hexdigest()
