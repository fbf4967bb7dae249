"""What the core asks the service layer to do."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import ROOMS_PAGE_DEFAULT, DirectMessage, ServerFrame


@dataclass(slots=True)
class Reply:
    """Send ``frame`` to connection ``fd``."""

    fd: int
    frame: ServerFrame


@dataclass(slots=True)
class Publish:
    """Send an ephemeral ``frame`` (presence, typing) to the room's live members."""

    room: str
    frame: ServerFrame


@dataclass(slots=True)
class Persist:
    """Store a room message, then publish it to the room and ack it to ``fd``."""

    fd: int
    room: str
    client_id: str
    nick: str
    text: str
    #: The sender's user id (its token's ``sub``), None for an anonymous connection:
    #: the stored message carries it (``Message.user``).
    user: str | None = None


@dataclass(slots=True)
class Catchup:
    """Replay the room's messages after ``since`` to ``fd``, then make it live.

    ``since`` None means "no replay": the member goes live at once.
    """

    fd: int
    room: str
    since: int | None
    epoch: str | None


@dataclass(slots=True)
class LoadHistory:
    fd: int
    room: str
    before: int | None
    limit: int


@dataclass(slots=True)
class RoomsQuery:
    """Answer ``fd`` with a page of the room list: names after ``after``, at most ``limit``."""

    fd: int
    after: str | None = None
    limit: int = ROOMS_PAGE_DEFAULT


@dataclass(slots=True)
class Close:
    """Close connection ``fd`` with a WebSocket close code and reason (e.g. 1008)."""

    fd: int
    code: int
    reason: str


@dataclass(slots=True)
class RemoteDirect:
    """Send direct message ``frame`` to members of ``room`` connected to another node.

    ``node`` is that node's id, ``to`` the cluster member ids there
    (``<node>/u:<user id>`` or ``<node>/c:<fd>``), ``fd`` the sender's connection
    (told when the message cannot reach that node). The receiving node checks the
    members are still in the room (:meth:`ChatCore.direct_in
    <hubbub.core.remote.RemoteMembers.direct_in>`)."""

    node: str
    room: str
    to: tuple[str, ...]
    frame: DirectMessage
    fd: int


Effect = Reply | Publish | Persist | Catchup | LoadHistory | RoomsQuery | Close | RemoteDirect
