"""Hypothesis strategies for hostile input: hubbub.v1 frames that are almost
right, JSON that is deep, huge or oddly encoded, and HTTP requests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from hubbub import protocol as p

# -- JSON values and hubbub.v1 frames ---------------------------------------------

FIELDS = ("room", "nick", "since", "epoch", "id", "text", "to", "active", "before", "limit")
TYPES = (*p.CLIENT_TYPES, "bogus", "", "JOIN", "message", "welcome", "ack", "error")

#: Integers at and beyond every boundary a decoder or a database may have.
BIG_INTS = st.sampled_from(
    [0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**64 + 1]
)
EDGE_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\u0000",
            "\u202e",  # right-to-left override
            "\ufeff",
            "\uffff",
            "e\u0301",  # combining accent
            "\U0001f600",
            "lobby\n",
            "lobby\x00",
            "..",
            "-a",
            "é" * 40,
            "ǅ",
            "١٢٣",  # Arabic-Indic digits
        ]
    ),
    # Every size rule at its limit and one past it.
    st.sampled_from([p.MAX_ROOM, p.MAX_NICK, p.MAX_CLIENT_ID, p.MAX_TEXT]).flatmap(
        lambda n: st.sampled_from(["a" * n, "a" * (n + 1)])
    ),
)
TEXTS = st.one_of(EDGE_TEXT, st.text(max_size=80), st.text(min_size=1, max_size=20))
NUMBERS = st.one_of(
    st.integers(),
    BIG_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS) | TEXTS, kids, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def frame_objects(draw: st.DrawFn) -> Any:
    """A dict shaped like a client frame: a known (or not) type and fields of any type."""
    obj: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        obj["type"] = draw(st.sampled_from(TYPES) | JSON_VALUES)
    for name in draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=8), max_size=5)):
        obj[name] = draw(JSON_VALUES)
    return obj


#: Literal JSON text that json.dumps cannot produce.
ODD_NUMBERS = st.sampled_from(
    ["1e400", "-1e400", "1E-400", "-0", "0.0", "1.0", "9" * 500, "-" + "9" * 5000, "1e2", "0e0"]
)
ODD_STRINGS = st.sampled_from(
    [r'"\ud800"', r'"\udfff\ud800"', r'"\u0000"', r'"\uD83D\uDE00"', '"\\/"', '"\\u00e9"']
)


@st.composite
def frame_texts(draw: st.DrawFn) -> str:
    """JSON text of a frame, sometimes with a field's value swapped for odd literal JSON
    (numbers too big for any integer type, lone surrogate escapes) or a repeated key."""
    obj = draw(frame_objects())
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        field = draw(st.sampled_from(FIELDS))
        odd = draw(ODD_NUMBERS | ODD_STRINGS)
        kind = draw(st.sampled_from(p.CLIENT_TYPES))
        extra = f'"room":"lobby","type":"{kind}","{field}":{odd}'
        text = "{" + extra + ("," + text[1:] if len(text) > 2 and text[0] == "{" else "}")
    return text


@st.composite
def deep_json(draw: st.DrawFn) -> str:
    """Nesting from shallow to far deeper than any stack: arrays, objects, mixed."""
    depth = draw(st.sampled_from([1, 10, 100, 1000, 5000, 20000, 100000]) | st.integers(1, 3000))
    kind = draw(st.sampled_from(["array", "object", "frame"]))
    if kind == "array":
        inner = "[" * depth + "]" * depth
    elif kind == "object":
        inner = '{"a":' * depth + "1" + "}" * depth
    else:
        inner = '{"type":"send","room":"a","id":"c","text":' + "[" * depth + "]" * depth + "}"
    if draw(st.booleans()):  # truncated
        inner = inner[: draw(st.integers(0, len(inner)))]
    return inner


def mutated(frames: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """Valid-looking frame bytes with a few bytes flipped, inserted or cut."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(frames).encode("utf-8", "surrogatepass"))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "insert", "cut"]))
            at = draw(st.integers(0, len(data)))
            if op == "flip" and data:
                data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=4))
            else:
                del data[at : at + draw(st.integers(1, 8))]
        return bytes(data)

    return build()


VALID_FRAMES = st.sampled_from(
    [
        '{"type":"join","room":"lobby","nick":"ann"}',
        '{"type":"join","room":"lobby","since":3,"epoch":"abc"}',
        '{"type":"send","room":"lobby","id":"c-1","text":"hello"}',
        '{"type":"dm","room":"lobby","to":"bob","text":"hi","id":"d1"}',
        '{"type":"history","room":"lobby","before":10,"limit":5}',
        '{"type":"typing","room":"lobby","active":false}',
        '{"type":"nick","nick":"zed"}',
        '{"type":"who","room":"lobby"}',
        '{"type":"rooms"}',
        '{"type":"leave","room":"lobby"}',
        '{"type":"ping","id":"p"}',
    ]
)

#: Anything a WebSocket text frame (valid UTF-8) may carry that claims to be a frame.
WIRE_TEXTS = st.one_of(
    VALID_FRAMES,
    frame_texts(),
    deep_json(),
    st.text(max_size=200),
    mutated(VALID_FRAMES).map(lambda b: b.decode("utf-8", "replace")),
)
#: Anything at all as bytes (decode accepts bytes too).
WIRE_BYTES = st.one_of(
    st.binary(max_size=300),
    mutated(VALID_FRAMES | frame_texts()),
    WIRE_TEXTS.map(lambda t: t.encode("utf-8", "surrogatepass")),
)


# -- HTTP ----------------------------------------------------------------------------

API_KEY = "fuzz-key"
PATHS = st.sampled_from(
    [
        "/",
        "/healthz",
        "/seed.html",
        "/app.js",
        "/api/rooms",
        "/api/rooms/lobby/messages",
        "/api/rooms/lobby/messages?limit=5&before=3",
        "/api/rooms/nope/messages?limit=-1",
        "/api/rooms/lobby/messages?limit=99999999999999999999&before=-5",
        "/api/rooms/lobby/messages?before=1e400",
        "/api/rooms/%00/messages",
        "/api/rooms/" + "a" * 300 + "/messages",
        "/api/rooms/lobby",
        "/../../etc/passwd",
        "/static/../../pyproject.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "*",
        "http://example.com/",
        "//",
        "/?" + "a=1&" * 50,
    ]
)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT", "OPTIONS", "PATCH", "CONNECT"])
TOKEN = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12
)
#: RFC 9110 token characters (a well-formed header name).
TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HEADER_VALUE = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1").replace("\r", "").replace("\n", "")),
)
BODIES = st.one_of(
    st.just(""),
    frame_texts(),
    st.builds(
        lambda text, nick: json.dumps({"text": text, "nick": nick}),
        JSON_VALUES,
        JSON_VALUES,
    ),
    st.just('{"text":"hi","nick":"ci"}'),
    deep_json(),
    st.text(max_size=100),
)
KNOWN_HEADERS = st.sampled_from(
    [
        ("Host", "127.0.0.1"),
        ("Connection", "close"),
        ("Connection", "keep-alive"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Key", "short"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Version", "8"),
        ("Sec-WebSocket-Protocol", "hubbub.v1"),
        ("Sec-WebSocket-Protocol", ",,,"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=99"),
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Authorization", f"Bearer {API_KEY}"),
        ("Authorization", "Bearer wrong"),
        ("Authorization", "Basic !!!"),
        ("Content-Type", "application/json"),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Expect", "100-continue"),
        ("If-None-Match", "*"),
        ("Accept-Encoding", "gzip"),
        ("X-Forwarded-For", "1.2.3.4"),
    ]
)

#: Framing headers that make most requests malformed (400), drawn rarely.
FRAMING_HEADERS = st.sampled_from(
    [
        ("Transfer-Encoding", "chunked"),
        ("Transfer-Encoding", "gzip, chunked"),
        ("Content-Length", "-1"),
        ("Content-Length", "99999999999999999999999"),
        ("Content-Length", "1, 2"),
    ]
)


def rarely(draw: st.DrawFn) -> bool:
    """True one time in eight: most requests are well formed, so that the handlers
    behind the parser see hostile values too, not just 400s."""
    return draw(st.integers(0, 7)) == 0


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    """One request: mostly well formed, with hostile parts mixed in."""
    method = draw(TOKEN) if rarely(draw) else draw(METHODS)
    path = draw(TOKEN.map(lambda t: "/" + t)) if rarely(draw) else draw(PATHS)
    version = (
        draw(st.sampled_from(["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x"])) if rarely(draw) else "HTTP/1.1"
    )
    headers = draw(st.lists(KNOWN_HEADERS, max_size=6))
    if rarely(draw):
        headers.append(draw(FRAMING_HEADERS))
    if rarely(draw):
        names = TOKEN | st.text(alphabet=TCHAR, min_size=1, max_size=12)
        headers += draw(st.lists(st.tuples(names, HEADER_VALUE), min_size=1, max_size=3))
    body = draw(BODIES).encode("utf-8", "surrogatepass")
    if not rarely(draw) and not any(n.lower() == "content-length" for n, _ in headers):
        headers.append(("Content-Length", str(len(body))))
    lines = [f"{method} {path} {version}"] + [f"{n}: {v}" for n, v in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return head + body


@st.composite
def http_streams(draw: st.DrawFn) -> bytes:
    """What a client sends on one connection: pipelined requests, maybe truncated,
    maybe raw garbage."""
    kind = draw(st.sampled_from(["pipelined"] * 5 + ["garbage", "mutated"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=400))
    data = b"".join(draw(st.lists(http_requests(), min_size=1, max_size=4)))
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(max_size=3)) + data[at + draw(st.integers(0, 3)) :]
    if draw(st.integers(0, 3)) == 0:  # truncated
        data = data[: draw(st.integers(1, max(1, len(data))))]
    return data
