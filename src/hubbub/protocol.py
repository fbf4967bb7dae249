"""The ``hubbub.v1`` wire protocol: every frame is a JSON object with a ``type``.

This module is the schema and nothing else: typed frames (msgspec structs,
validated while they are decoded), the error codes, and the encoder/decoder.
``docs/protocol.md`` describes the same frames for client authors.

A client opts in by asking for the WebSocket subprotocol ``hubbub.v1``
(RFC 6455 1.9); a client that does not ask keeps the seed's plain text chat.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

SUBPROTOCOL = "hubbub.v1"
VERSION = 1

RoomName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
]
Nick = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[^\W_][\w.\-]*\Z")]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
MAX_TEXT = 8000
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=200)]


# ---------------------------------------------------------------------------
# Client -> server


class Join(msgspec.Struct, tag="join", forbid_unknown_fields=True):
    """Join a room; with ``since``, resume from the last sequence number seen."""

    room: RoomName
    nick: Nick | None = None
    since: Seq | None = None
    epoch: str | None = None


class Leave(msgspec.Struct, tag="leave", forbid_unknown_fields=True):
    room: RoomName


class Send(msgspec.Struct, tag="send", forbid_unknown_fields=True):
    """A room message; ``id`` is the client's own id, used to ack and de-duplicate retries."""

    room: RoomName
    id: ClientId
    text: Text


class SetNick(msgspec.Struct, tag="nick", forbid_unknown_fields=True):
    nick: Nick


class Direct(msgspec.Struct, tag="dm", forbid_unknown_fields=True):
    """A direct message to the member called ``to`` in ``room``."""

    room: RoomName
    to: Nick
    text: Text
    id: ClientId | None = None


class Typing(msgspec.Struct, tag="typing", forbid_unknown_fields=True):
    room: RoomName
    active: bool = True


class History(msgspec.Struct, tag="history", forbid_unknown_fields=True):
    """A page of a room's history, newest first from ``before`` (exclusive)."""

    room: RoomName
    before: Seq | None = None
    limit: PageLimit = 50


class ListRooms(msgspec.Struct, tag="rooms", forbid_unknown_fields=True):
    pass


class Who(msgspec.Struct, tag="who", forbid_unknown_fields=True):
    room: RoomName


class Ping(msgspec.Struct, tag="ping", forbid_unknown_fields=True):
    id: ClientId | None = None


ClientFrame = Join | Leave | Send | SetNick | Direct | Typing | History | ListRooms | Who | Ping
CLIENT_TYPES = ("join", "leave", "send", "nick", "dm", "typing", "history", "rooms", "who", "ping")


# ---------------------------------------------------------------------------
# Server -> client


class Welcome(msgspec.Struct, tag="welcome"):
    protocol: str
    fd: int
    nick: str
    limits: dict[str, float]


class Message(msgspec.Struct, tag="message"):
    """A stored room message, exactly as every member (and history) sees it."""

    room: str
    seq: int
    epoch: str
    id: str
    nick: str
    text: str
    ts: float
    client_id: str | None = None


class Ack(msgspec.Struct, tag="ack"):
    id: str
    room: str
    seq: int
    epoch: str
    msg_id: str
    ts: float
    duplicate: bool = False


class RoomState(msgspec.Struct, tag="room"):
    """Answer to ``join``: the room as the joiner finds it."""

    room: str
    nick: str
    epoch: str
    seq: int
    members: list[str]


class Resumed(msgspec.Struct, tag="resumed"):
    """End of the missed messages after a ``join`` with ``since``: live from here."""

    room: str
    epoch: str
    since: int
    seq: int
    count: int


class Reset(msgspec.Struct, tag="reset"):
    """The missed range cannot be replayed; the client should reload the room."""

    room: str
    epoch: str
    reason: Literal["retention", "epoch", "too_far"]
    seq: int
    oldest: int


class Joined(msgspec.Struct, tag="joined"):
    room: str
    nick: str
    ts: float


class Left(msgspec.Struct, tag="left"):
    room: str
    nick: str
    ts: float


class Renamed(msgspec.Struct, tag="renamed"):
    room: str
    old: str
    nick: str
    ts: float


class NickSet(msgspec.Struct, tag="nick"):
    nick: str


class TypingEvent(msgspec.Struct, tag="typing"):
    room: str
    nick: str
    active: bool


class DirectMessage(msgspec.Struct, tag="dm"):
    room: str
    id: str
    to: str
    text: str
    ts: float
    client_id: str | None = None
    # ``from`` is a Python keyword: the wire name is set by rename below.
    sender: str = msgspec.field(default="", name="from")


class HistoryPage(msgspec.Struct, tag="history"):
    room: str
    epoch: str
    messages: list[Message]
    has_more: bool
    #: The request's ``before`` (None for the newest page), to match answer and request.
    before: int | None = None


class RoomInfo(msgspec.Struct):
    name: str
    members: int
    seq: int


class RoomList(msgspec.Struct, tag="rooms"):
    rooms: list[RoomInfo]


class Members(msgspec.Struct, tag="members"):
    room: str
    members: list[str]


class Left_(msgspec.Struct, tag="left_room"):
    """Answer to ``leave``."""

    room: str


class Pong(msgspec.Struct, tag="pong"):
    id: str | None = None
    ts: float = 0.0


class Error(msgspec.Struct, tag="error", omit_defaults=True):
    """Something the client sent was refused; the connection stays open."""

    code: str
    message: str
    ref: str | None = None
    room: str | None = None
    id: str | None = None


# Error codes (machine-readable ``code`` of an ``error`` frame).
E_BAD_JSON = "bad_json"
E_BAD_FRAME = "bad_frame"
E_UNKNOWN_TYPE = "unknown_type"
E_NOT_TEXT = "not_text"
E_NICK_TAKEN = "nick_taken"
E_NO_NICK = "nick_required"
E_NOT_IN_ROOM = "not_in_room"
E_ALREADY_IN_ROOM = "already_joined"
E_NO_SUCH_MEMBER = "no_such_member"
E_RATE_LIMITED = "rate_limited"
E_TOO_MANY_ROOMS = "too_many_rooms"
E_UNAVAILABLE = "unavailable"
E_INTERNAL = "internal"

ServerFrame = (
    Welcome
    | Message
    | Ack
    | RoomState
    | Resumed
    | Reset
    | Joined
    | Left
    | Renamed
    | NickSet
    | TypingEvent
    | DirectMessage
    | HistoryPage
    | RoomList
    | Members
    | Left_
    | Pong
    | Error
)

_decoder = msgspec.json.Decoder(ClientFrame)
_encoder = msgspec.json.Encoder()


class ProtocolError(Exception):
    """An incoming frame that does not fit the schema; ``code`` is the error code."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


def decode(data: str | bytes) -> ClientFrame:
    """Parse and validate one client frame, or raise :class:`ProtocolError`."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        ref = _peek_type(data)
        if ref is None or ref not in CLIENT_TYPES:
            if ref is None:
                raise ProtocolError(
                    E_BAD_FRAME, f"frame must be an object with a 'type': {exc}"
                ) from None
            raise ProtocolError(E_UNKNOWN_TYPE, f"unknown frame type {ref!r}", ref) from None
        raise ProtocolError(E_BAD_FRAME, str(exc), ref) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(E_BAD_JSON, f"invalid JSON: {exc}") from None


def _peek_type(data: str | bytes) -> str | None:
    try:
        obj: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("type"), str):
        return str(obj["type"])[:32]
    return None


def encode(frame: ServerFrame) -> bytes:
    """Serialize a server frame to JSON bytes (sent as a text frame)."""
    return _encoder.encode(frame)
