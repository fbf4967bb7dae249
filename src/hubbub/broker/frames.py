"""The Redis broker's wire form of a frame, and what a node id may be.

Every frame on the wire is a fixed binary header, then the encoded frame::

    byte 0      0xB1 (magic and version)
    byte 1      flags: bit 0 set when a seq follows
    bytes 2-9   seq, unsigned 64-bit big-endian (0 when there is none)
    byte 10     n, the length of the origin node id (1-64)
    11 .. 11+n  origin node id (ASCII)

Room channels and node channels carry the same frames (a node payload has no seq).
"""

from __future__ import annotations

import struct

MAGIC = 0xB1
_HEAD = struct.Struct(">BBQB")
_HAS_SEQ = 0x01


def encode_frame(node: bytes, payload: bytes, seq: int | None) -> bytes:
    """The wire form of one frame: header, origin node id, payload."""
    flags = _HAS_SEQ if seq is not None else 0
    return _HEAD.pack(MAGIC, flags, seq or 0, len(node)) + node + payload


def decode_frame(data: bytes) -> tuple[bytes, bytes, int | None]:
    """``(origin, payload, seq)``; ValueError for anything that is not a frame."""
    if len(data) < _HEAD.size:
        raise ValueError("frame shorter than its header")
    magic, flags, seq, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"unknown frame version 0x{magic:02x}")
    if flags & ~_HAS_SEQ or not 1 <= n <= 64 or len(data) < _HEAD.size + n:
        raise ValueError("malformed frame header")
    start = _HEAD.size + n
    return data[_HEAD.size : start], data[start:], seq if flags & _HAS_SEQ else None


def valid_node_id(node: str) -> bool:
    """1-64 printable ASCII characters without ``/`` (member ids are ``<node>/...``)."""
    return 1 <= len(node) <= 64 and node.isascii() and node.isprintable() and "/" not in node
