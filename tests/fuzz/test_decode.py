"""Fuzz: ``protocol.decode`` refuses anything with a ProtocolError, never another exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given

from hubbub import protocol as p

from .profile import fuzz_settings
from .strategies import WIRE_BYTES, WIRE_TEXTS, deep_json, frame_texts

ERROR_CODES = {p.E_BAD_JSON, p.E_BAD_FRAME, p.E_UNKNOWN_TYPE}
CLIENT_FRAME_TYPES = tuple(p._TAGS.values())


def check(data: str | bytes) -> None:
    """decode() returns a client frame or raises ProtocolError with a known code and a
    readable message; any other exception propagates and fails the property."""
    try:
        frame: Any = p.decode(data)
    except p.ProtocolError as exc:
        assert exc.code in ERROR_CODES, exc.code
        assert isinstance(exc.message, str) and exc.message
        assert len(exc.message) < 1000, "an error message must stay short"
        assert exc.ref is None or (isinstance(exc.ref, str) and len(exc.ref) <= 32)
        return
    assert isinstance(frame, CLIENT_FRAME_TYPES)
    # What decode accepts obeys the schema's size rules.
    for name in ("room", "nick", "to"):
        value = getattr(frame, name, None)
        assert value is None or 1 <= len(value) <= p.MAX_ROOM
    for name in ("since", "before"):
        value = getattr(frame, name, None)
        assert value is None or value >= 0


@fuzz_settings(300)
@given(WIRE_TEXTS)
def test_decode_text(data: str) -> None:
    check(data)


@fuzz_settings(300)
@given(WIRE_BYTES)
def test_decode_bytes(data: bytes) -> None:
    check(data)


@fuzz_settings(200)
@given(frame_texts())
def test_decode_near_valid_frames(data: str) -> None:
    check(data)
    check(data.encode("utf-8", "surrogatepass"))


@fuzz_settings(60)
@given(deep_json())
def test_decode_deep_nesting(data: str) -> None:
    check(data)


def test_decode_known_hostile_inputs() -> None:
    """The inputs that found bugs, always run (Hypothesis may not draw them again)."""
    for data in (
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        '{"type":"join","room":"a","since":' + "9" * 5000 + "}",
        '{"type":"history","room":"a","before":18446744073709551616}',
        '{"type":"history","room":"a","limit":1e400}',
        r'{"type":"send","room":"a","id":"c","text":"\ud800"}',
        b"\xff\xfe",
        b"",
    ):
        check(data)
