"""The ``hubbub.v1`` wire protocol: every frame is a JSON object with a ``type``.

This module is the schema and nothing else: typed frames (msgspec structs,
validated while they are decoded), the error codes, and the encoder/decoder.
``docs/protocol.md`` describes the same frames for client authors.

A client opts in by asking for the WebSocket subprotocol ``hubbub.v1``
(RFC 6455 1.9); a client that does not ask keeps the seed's plain text chat.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

SUBPROTOCOL = "hubbub.v1"
VERSION = 1

# Every rule of a name or a size is defined here, once: the schema types below
# use these constants, the apps and the terminal client import them, and the
# ``welcome`` frame tells clients the ones they need (:func:`welcome_limits`).
MAX_ROOM = 64  #: characters in a room name
MAX_NICK = 32  #: characters in a nickname
MAX_CLIENT_ID = 64  #: characters in a client's message id
MAX_EPOCH = 64  #: characters in the ``epoch`` of a ``join``
MAX_TEXT = 8000  #: characters in a message
HISTORY_PAGE_MAX = 200  #: messages in one history page (``limit``)
HISTORY_PAGE_DEFAULT = 50  #: messages in a history page when no ``limit`` is given
#: Bytes of encoded messages in one history page: a page of long messages is cut
#: (oldest first) to this size, and then says ``has_more``.
HISTORY_PAGE_BYTES = 256 * 1024
ROOMS_PAGE_MAX = 200  #: rooms in one page of the room list (``limit``)
ROOMS_PAGE_DEFAULT = 100  #: rooms in a page of the room list when no ``limit`` is given
MEMBERS_PAGE_MAX = 1000  #: members in one page of a member list (``who`` ``limit``)
#: Members in the first page of a large room's member list: the ``room`` frame and a
#: ``who`` without ``limit`` carry this many (a small room's list is sent whole).
MEMBERS_PAGE_DEFAULT = 100
#: Largest sequence number a client may send (``since``, ``before``): 2**53 - 1, the
#: largest integer a JavaScript number holds exactly; bigger ones are refused.
MAX_SEQ = 2**53 - 1
#: Characters in a connection token (``auth`` frame): a JWT with a few claims is
#: well under 1 KiB; RS256 signatures and a long ``rooms`` list stay under this.
MAX_TOKEN = 8192
#: Python regular expressions (``re.search``, as msgspec applies them).
ROOM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z"
NICK_PATTERN = r"^[^\W_][\w.\-]*\Z"

# Every constrained field's rule, in words: what a user reads when a value is
# refused (never the pattern). The wording sits next to the definition it
# describes (``Meta.description``); ``{field}`` is replaced by the field's name.
ROOM_RULE = (
    f"a room name is 1-{MAX_ROOM} characters: ASCII letters, digits, '.', '-' or '_', "
    "starting with a letter or digit"
)
RoomName = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_ROOM, pattern=ROOM_PATTERN, description=ROOM_RULE),
]
NICK_RULE = (
    f"a nickname is 1-{MAX_NICK} letters, digits, '.', '-' or '_' and starts with a letter or digit"
)
Nick = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_NICK, pattern=NICK_PATTERN, description=NICK_RULE),
]
ClientId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_CLIENT_ID,
        description=f"{{field}} must be 1-{MAX_CLIENT_ID} characters",
    ),
]
Text = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_TEXT,
        description=f"a message is 1-{MAX_TEXT} characters",
    ),
]
Seq = Annotated[
    int,
    msgspec.Meta(
        ge=0, le=MAX_SEQ, description=f"{{field}} must be a whole number from 0 to {MAX_SEQ}"
    ),
]
PageLimit = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=HISTORY_PAGE_MAX,
        description=f"{{field}} must be a whole number from 1 to {HISTORY_PAGE_MAX}",
    ),
]
MembersLimit = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=MEMBERS_PAGE_MAX,
        description=f"{{field}} must be a whole number from 1 to {MEMBERS_PAGE_MAX}",
    ),
]
RoomsLimit = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=ROOMS_PAGE_MAX,
        description=f"{{field}} must be a whole number from 1 to {ROOMS_PAGE_MAX}",
    ),
]
Epoch = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_EPOCH,
        description=f"{{field}} must be a string of at most {MAX_EPOCH} characters",
    ),
]
#: The name rules in words, as the ``welcome`` frame carries them (``rules``).
RULES = {"room": ROOM_RULE, "nick": NICK_RULE}


def welcome_limits(
    max_message_size: int, rate: float, burst: float, max_rooms: int
) -> dict[str, float]:
    """The ``limits`` of the ``welcome`` frame: this server's settings that a client
    needs, and the protocol's own limits (docs/protocol.md, *welcome*)."""
    return {
        "max_message_size": max_message_size,
        "rate": rate,
        "burst": burst,
        "max_rooms": max_rooms,
        "history_page": HISTORY_PAGE_MAX,
        "max_text": MAX_TEXT,
        "max_nick": MAX_NICK,
        "max_room": MAX_ROOM,
        "max_client_id": MAX_CLIENT_ID,
    }


# ---------------------------------------------------------------------------
# Client -> server


class Auth(msgspec.Struct, tag="auth", forbid_unknown_fields=True, omit_defaults=True):
    """A connection token (a JWT), sent as the first frame by clients that cannot
    set ``Authorization`` on the upgrade request (browsers). ``welcome`` follows
    a token that verifies."""

    token: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_TOKEN,
            description=f"a token is 1-{MAX_TOKEN} characters",
        ),
    ]


class Join(msgspec.Struct, tag="join", forbid_unknown_fields=True, omit_defaults=True):
    """Join a room; with ``since``, resume from the last sequence number seen."""

    room: RoomName
    nick: Nick | None = None
    since: Seq | None = None
    epoch: Epoch | None = None


class Leave(msgspec.Struct, tag="leave", forbid_unknown_fields=True, omit_defaults=True):
    room: RoomName


class Send(msgspec.Struct, tag="send", forbid_unknown_fields=True, omit_defaults=True):
    """A room message; ``id`` is the client's own id, used to ack and de-duplicate retries."""

    room: RoomName
    id: ClientId
    text: Text


class SetNick(msgspec.Struct, tag="nick", forbid_unknown_fields=True, omit_defaults=True):
    nick: Nick


class Direct(msgspec.Struct, tag="dm", forbid_unknown_fields=True, omit_defaults=True):
    """A direct message to the member called ``to`` in ``room``."""

    room: RoomName
    to: Nick
    text: Text
    id: ClientId | None = None


class Typing(msgspec.Struct, tag="typing", forbid_unknown_fields=True, omit_defaults=True):
    room: RoomName
    active: bool = True


class History(msgspec.Struct, tag="history", forbid_unknown_fields=True, omit_defaults=True):
    """A page of a room's history, newest first from ``before`` (exclusive)."""

    room: RoomName
    before: Seq | None = None
    limit: PageLimit = HISTORY_PAGE_DEFAULT


class ListRooms(msgspec.Struct, tag="rooms", forbid_unknown_fields=True, omit_defaults=True):
    """A page of the room list, in byte order of name, starting after ``after``."""

    after: RoomName | None = None
    limit: RoomsLimit = ROOMS_PAGE_DEFAULT


class Who(msgspec.Struct, tag="who", forbid_unknown_fields=True, omit_defaults=True):
    """A page of the member list, in order of nickname (NFKC + casefold), starting
    after the member called ``after``; without ``limit``, a small room's whole list
    or a large room's first ``MEMBERS_PAGE_DEFAULT``."""

    room: RoomName
    after: Nick | None = None
    limit: MembersLimit | None = None


class Ping(msgspec.Struct, tag="ping", forbid_unknown_fields=True, omit_defaults=True):
    id: ClientId | None = None


ClientFrame = (
    Auth | Join | Leave | Send | SetNick | Direct | Typing | History | ListRooms | Who | Ping
)
CLIENT_TYPES = (
    "auth",
    "join",
    "leave",
    "send",
    "nick",
    "dm",
    "typing",
    "history",
    "rooms",
    "who",
    "ping",
)


# ---------------------------------------------------------------------------
# Server -> client


# ``user`` fields: the user id (a token's ``sub``) of the connection a frame is
# about. ``UNSET`` (the default) is left out of the JSON: frames about anonymous
# connections (``--auth none``) are exactly what they were before identities.
UserId = str | msgspec.UnsetType


class Welcome(msgspec.Struct, tag="welcome"):
    protocol: str
    fd: int
    nick: str
    limits: dict[str, float] = msgspec.field(default_factory=dict)
    #: The name rules in words (``room``, ``nick``), as ``bad_frame`` errors state them.
    rules: dict[str, str] = msgspec.field(default_factory=lambda: dict(RULES))
    user: UserId = msgspec.UNSET


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
    user: UserId = msgspec.UNSET


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
    #: The whole member list of a small room; the first page of a large one's.
    members: list[str]
    #: Members in the room (on this node), and whether ``members`` is only a first page.
    count: int | msgspec.UnsetType = msgspec.UNSET
    has_more: bool = False
    #: nickname -> user id, for the listed members that have one (omitted when none).
    users: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    user: UserId = msgspec.UNSET


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
    user: UserId = msgspec.UNSET


class Left(msgspec.Struct, tag="left"):
    room: str
    nick: str
    ts: float
    user: UserId = msgspec.UNSET


class Renamed(msgspec.Struct, tag="renamed"):
    room: str
    old: str
    nick: str
    ts: float
    user: UserId = msgspec.UNSET


class Person(msgspec.Struct):
    """A member in a ``presence`` frame."""

    nick: str
    user: UserId = msgspec.UNSET


class Rename(msgspec.Struct):
    """A member's new nickname in a ``presence`` frame."""

    old: str
    nick: str
    user: UserId = msgspec.UNSET


class Presence(msgspec.Struct, tag="presence"):
    """The membership changes of one room during one server loop tick, coalesced.

    Apply it as one step: remove every ``left`` nick and every ``renamed`` ``old``,
    then add every ``renamed`` ``nick`` and every ``joined`` one. In a ``large``
    room the lists are empty: only ``count`` is kept up to date (docs/protocol.md).
    """

    room: str
    count: int
    ts: float
    joined: list[Person] = msgspec.field(default_factory=list)
    left: list[Person] = msgspec.field(default_factory=list)
    renamed: list[Rename] = msgspec.field(default_factory=list)
    large: bool = False


class NickSet(msgspec.Struct, tag="nick"):
    nick: str


class TypingEvent(msgspec.Struct, tag="typing"):
    room: str
    nick: str
    active: bool
    user: UserId = msgspec.UNSET


class DirectMessage(msgspec.Struct, tag="dm"):
    room: str
    id: str
    to: str
    text: str
    ts: float
    client_id: str | None = None
    # ``from`` is a Python keyword: the wire name is set by rename below.
    sender: str = msgspec.field(default="", name="from")
    #: The sender's and the recipient's user ids (when they have one).
    user: UserId = msgspec.UNSET
    to_user: UserId = msgspec.UNSET


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
    #: The ``after`` of the next page (the last name of this one), None on the last page.
    next: str | None = None


class Members(msgspec.Struct, tag="members"):
    """A page of the member list (answer to ``who``), in nickname order."""

    room: str
    members: list[str]
    count: int | msgspec.UnsetType = msgspec.UNSET
    has_more: bool = False
    #: The request's ``after`` (omitted for the first page).
    after: str | msgspec.UnsetType = msgspec.UNSET
    #: nickname -> user id, for the listed members that have one (omitted when none).
    users: dict[str, str] | msgspec.UnsetType = msgspec.UNSET


class Left_(msgspec.Struct, tag="left_room", omit_defaults=True):
    """Answer to ``leave``; also sent, with ``reason: "deleted"``, to every member of a
    room an operator deletes."""

    room: str
    reason: Literal["deleted"] | None = None


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
    #: For ``bad_frame``: the name of the field refused (when there is one).
    field: str | None = None


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
E_NO_SUCH_ROOM = "no_such_room"
E_DM_SELF = "dm_self"
E_RATE_LIMITED = "rate_limited"
E_TOO_MANY_ROOMS = "too_many_rooms"
E_ROOM_LIMIT = "room_limit"
E_UNAVAILABLE = "unavailable"
E_INTERNAL = "internal"
# Identity (docs/security.md): a token refused or missing, a room or action not allowed.
E_AUTH_REQUIRED = "auth_required"  #: this server needs an ``auth`` frame first
E_AUTH_FAILED = "auth_failed"  #: the token does not verify (signature, claims, format)
E_TOKEN_EXPIRED = "token_expired"  #: the token's ``exp`` has passed
E_FORBIDDEN = "forbidden"  #: the token does not allow this room or action
E_READ_ONLY = "read_only"  #: a guest without write access tried to send
E_NICK_CONFUSABLE = "nick_confusable"  #: looks like another member's nickname

# Close codes of the hubbub.v1 protocol (RFC 6455 7.4.2: 4000-4999 are private use).
CLOSE_AUTH_FAILED = 4401  #: no valid token in time (after an ``error`` frame)
CLOSE_TOKEN_EXPIRED = 4402  #: the connection's token expired: refresh it and resume
CLOSE_FORBIDDEN = 4403  #: the token no longer allows this connection
CLOSE_KICKED = 4000  #: an administrator closed the connection: do not reconnect by itself

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
    | Presence
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

    def __init__(
        self, code: str, message: str, ref: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.field = field


_TAGS: dict[str, type[msgspec.Struct]] = {
    str(t.__struct_config__.tag): t
    for t in (Join, Leave, Send, SetNick, Direct, Typing, History, ListRooms, Who, Ping)
}


#: What a frame nested too deep for the decoder is told. Every client frame is one
#: flat object; msgspec refuses deep nesting with RecursionError (at Python's
#: recursion limit, in C, quickly), which must never escape as a traceback.
TOO_DEEP = "a frame is one flat JSON object; this one nests too deep"


def decode(data: str | bytes) -> ClientFrame:
    """Parse and validate one client frame, or raise :class:`ProtocolError`.

    Nothing else escapes: whatever the bytes, the caller gets a frame or a
    ProtocolError to answer with an ``error`` frame.
    """
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        ref = _peek_type(data)
        if ref is None:
            raise ProtocolError(
                E_BAD_FRAME, "a frame must be a JSON object with a string 'type'"
            ) from None
        struct = _TAGS.get(ref)
        if struct is None:
            raise ProtocolError(E_UNKNOWN_TYPE, f"unknown frame type {ref!r}", ref) from None
        message, field = explain(exc, struct)
        raise ProtocolError(E_BAD_FRAME, message, ref, field) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(E_BAD_JSON, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(E_BAD_FRAME, TOO_DEEP) from None
    except Exception as exc:  # anything else the decoder may raise: still an answer
        raise ProtocolError(E_BAD_JSON, f"cannot decode the frame ({type(exc).__name__})") from None


# -- validation errors in words ----------------------------------------------

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"^\.([A-Za-z_]\w*)")
_QUOTED = re.compile(r"`([^`]*)`")
_TYPE_WORDS = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "null": "null",
    "object": "an object",
    "array": "an array",
}
_rules_cache: dict[type, dict[str, str]] = {}


def field_rules(struct: type[msgspec.Struct]) -> dict[str, str]:
    """Wire field name -> its rule in words, for the fields of ``struct`` that have one."""
    rules = _rules_cache.get(struct)
    if rules is None:
        rules = {}
        for info in msgspec.structs.fields(struct):
            rule = _description(info.type)
            if rule is not None:
                rules[info.encode_name] = rule.replace("{field}", f"'{info.encode_name}'")
        _rules_cache[struct] = rules
    return rules


def _description(tp: Any) -> str | None:
    if get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, msgspec.Meta) and meta.description:
                return meta.description
        return _description(get_args(tp)[0])
    for arg in get_args(tp):  # Optional[...] and other unions
        found = _description(arg)
        if found is not None:
            return found
    return None


def explain(exc: msgspec.ValidationError, struct: type[msgspec.Struct]) -> tuple[str, str | None]:
    """A validation error of ``struct`` in words, and the field concerned (or None).

    msgspec's messages show types and regular expressions; users get the
    field's rule instead (``Meta.description`` of its type).
    """
    m = _AT.match(str(exc))
    assert m is not None  # the pattern matches any string
    what, path = m.group("what"), m.group("path") or ""
    named = _FIELD.match(path)
    field = named.group(1) if named else None
    quoted = _QUOTED.findall(what)
    if what.startswith("Object missing required field") and quoted:
        return f"'{quoted[0]}' is required", field or quoted[0]
    if what.startswith("Object contains unknown field") and quoted:
        name = quoted[0]
        return f"unknown field '{name}'", field or name
    if field is None:
        return "the frame does not fit the protocol", None
    rule = field_rules(struct).get(field)
    if rule is not None:
        return rule, field
    if what.startswith("Expected") and quoted:
        kinds = [_TYPE_WORDS.get(k.strip(), k.strip()) for k in quoted[0].split("|")]
        return f"'{field}' must be {' or '.join(kinds)}", field
    return f"'{field}' is invalid", field


def _peek_type(data: str | bytes) -> str | None:
    try:
        obj: Any = msgspec.json.decode(data)
    except Exception:  # DecodeError, RecursionError: no type to name
        return None
    if isinstance(obj, dict) and isinstance(obj.get("type"), str):
        return str(obj["type"])[:32]
    return None


def encode(frame: ServerFrame) -> bytes:
    """Serialize a server frame to JSON bytes (sent as a text frame)."""
    return _encoder.encode(frame)


def fit_page(
    messages: list[Message], has_more: bool, max_bytes: int = HISTORY_PAGE_BYTES
) -> tuple[list[Message], bool]:
    """A history page (oldest first) cut to at most ``max_bytes`` of encoded messages.

    The newest messages are kept (a client pages backwards from the oldest one
    it has); a cut page says ``has_more``. The newest message is always kept, so
    a page is never empty while older messages exist (one message is at most
    ``MAX_TEXT`` characters, far below ``max_bytes``).
    """
    total = 0
    keep = len(messages)
    for i in range(len(messages) - 1, -1, -1):
        total += len(_encoder.encode(messages[i]))
        if total > max_bytes and keep < len(messages):
            break
        keep = i
    if keep == 0:
        return messages, has_more
    return messages[keep:], True


# -- for clients: server frames ------------------------------------------------

_server_decoder = msgspec.json.Decoder(ServerFrame)
SERVER_TYPES = frozenset(str(t.__struct_config__.tag) for t in get_args(ServerFrame))


def decode_server(data: str | bytes) -> ServerFrame | None:
    """Parse one server frame, as a client does.

    Returns None for a frame type this version does not know (clients ignore
    those, see docs/protocol.md); raises :class:`ProtocolError` for anything
    else that does not fit. Fields a client does not know are ignored.
    """
    try:
        return _server_decoder.decode(data)
    except msgspec.ValidationError as exc:
        ref = _peek_type(data)
        if ref is not None and ref not in SERVER_TYPES:
            return None
        raise ProtocolError(E_BAD_FRAME, str(exc), ref) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(E_BAD_JSON, f"invalid JSON: {exc}") from None


def encode_client(frame: ClientFrame) -> bytes:
    """Serialize a client frame to JSON bytes (a client sends it as a text frame)."""
    return _encoder.encode(frame)
