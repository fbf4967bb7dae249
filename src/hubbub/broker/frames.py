"""The Redis broker's wire forms (one frame, a batch of frames), and what a node id may be.

Wire version 1, one frame: a fixed binary header, then the encoded frame::

    byte 0      0xB1 (magic and version)
    byte 1      flags: bit 0 set when a seq follows
    bytes 2-9   seq, unsigned 64-bit big-endian (0 when there is none)
    byte 10     n, the length of the origin node id (1-64)
    11 .. 11+n  origin node id (ASCII)

Wire version 2 adds the batch: several frames of one room from one node, in the
order published, in one ``PUBLISH``::

    byte 0      0xB2 (magic: a batch)
    byte 1      n, the length of the origin node id (1-64)
    bytes 2-3   count, unsigned 16-bit big-endian (2 .. BATCH_MAX_FRAMES)
    4 .. 4+n    origin node id (ASCII)
    then count times:
      byte      flags: bit 0 set when a seq follows
      8 bytes   seq (0 when there is none)
      4 bytes   length of the encoded frame, unsigned 32-bit big-endian
      ...       the encoded frame

A version 2 node sends a lone frame as version 1, so a version 1 node (which
refuses 0xB2 with a logged "unknown frame version") misses only batches; see
docs/scaling.md, *The wire between nodes*. Room channels and node channels carry
the same single frames (a node payload has no seq and is never batched).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MAGIC = 0xB1
BATCH = 0xB2
#: At most this many frames, and this many bytes of frames (headers included), in
#: one batch; a frame larger than the byte cap goes alone.
BATCH_MAX_FRAMES = 256
BATCH_MAX_BYTES = 256 * 1024

_HEAD = struct.Struct(">BBQB")
_BATCH_HEAD = struct.Struct(">BBH")
_ITEM = struct.Struct(">BQI")
_HAS_SEQ = 0x01
#: What one frame of a batch adds to its payload on the wire.
ITEM_OVERHEAD = _ITEM.size


def encode_frame(node: bytes, payload: bytes, seq: int | None) -> bytes:
    """The wire form of one frame: header, origin node id, payload."""
    flags = _HAS_SEQ if seq is not None else 0
    return _HEAD.pack(MAGIC, flags, seq or 0, len(node)) + node + payload


def frame_size(node: bytes, payload: bytes) -> int:
    """``len(encode_frame(node, payload, seq))`` without encoding it."""
    return _HEAD.size + len(node) + len(payload)


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


def encode_batch(node: bytes, frames: list[tuple[bytes, int | None]]) -> bytes:
    """The wire form of 2 .. BATCH_MAX_FRAMES ``(payload, seq)`` of one room, in order.
    The caller keeps to the byte cap (:data:`BATCH_MAX_BYTES`)."""
    if not 2 <= len(frames) <= BATCH_MAX_FRAMES:
        raise ValueError(f"a batch holds 2 to {BATCH_MAX_FRAMES} frames, not {len(frames)}")
    pack = _ITEM.pack
    parts = [_BATCH_HEAD.pack(BATCH, len(node), len(frames)), node]
    for payload, seq in frames:
        if seq is None:
            parts.append(pack(0, 0, len(payload)))
        else:
            parts.append(pack(_HAS_SEQ, seq, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def batch_origin(data: bytes) -> bytes:
    """The origin node id of a batch, read without decoding the rest (b"" if cut short)."""
    if len(data) < _BATCH_HEAD.size:
        return b""
    return data[_BATCH_HEAD.size : _BATCH_HEAD.size + data[1]]


def decode_batch(data: bytes, max_payload: int) -> tuple[bytes, list[tuple[bytes, int | None]]]:
    """``(origin, [(payload, seq), ...])`` of a whole batch, checked before anything is
    returned; ValueError for anything that is not a batch (or holds a frame over
    ``max_payload`` bytes)."""
    size = len(data)
    if size < _BATCH_HEAD.size:
        raise ValueError("batch shorter than its header")
    magic, n, count = _BATCH_HEAD.unpack_from(data)
    if magic != BATCH:
        raise ValueError(f"unknown frame version 0x{magic:02x}")
    pos = _BATCH_HEAD.size + n
    if not 1 <= n <= 64 or not 2 <= count <= BATCH_MAX_FRAMES or size < pos:
        raise ValueError("malformed batch header")
    origin = data[_BATCH_HEAD.size : pos]
    frames: list[tuple[bytes, int | None]] = []
    unpack = _ITEM.unpack_from
    item = _ITEM.size
    for _ in range(count):
        if size < pos + item:
            raise ValueError("batch cut short")
        flags, seq, length = unpack(data, pos)
        pos += item
        end = pos + length
        if flags & ~_HAS_SEQ or length > max_payload or end > size:
            raise ValueError("malformed frame in a batch")
        frames.append((data[pos:end], seq if flags else None))
        pos = end
    if pos != size:
        raise ValueError("bytes after the last frame of a batch")
    return origin, frames


#: One frame of a publisher's round: channel, payload, seq, and whether it may go in a
#: batch (room frames; a node payload never does).
Queued = tuple[bytes, bytes, int | None, bool]


def pack_round(
    node: bytes, items: Sequence[Queued], *, batches: bool = True
) -> list[tuple[bytes, bytes, list[int]]]:
    """The PUBLISHes of one round: ``(channel, wire form, indexes of the items carried)``.

    With ``batches``, the batchable frames of one channel go in batches (in the order
    queued, each batch at the place of its first frame; at most
    :data:`BATCH_MAX_FRAMES` frames and :data:`BATCH_MAX_BYTES` bytes); node payloads
    and a lone frame go one per PUBLISH as version 1 frames. The order of one channel's
    frames is kept; frames of different channels may be reordered within the round."""
    if not batches or len(items) == 1:
        return [(ch, encode_frame(node, p, seq), [i]) for i, (ch, p, seq, _) in enumerate(items)]
    groups: list[tuple[bytes, list[int]]] = []
    open_batches: dict[bytes, tuple[list[int], int]] = {}  # channel: (indexes, bytes)
    for i, (ch, payload, _, batchable) in enumerate(items):
        if not batchable:
            groups.append((ch, [i]))
            continue
        cost = len(payload) + ITEM_OVERHEAD
        current = open_batches.get(ch)
        if current is not None:
            indexes, size = current
            if len(indexes) < BATCH_MAX_FRAMES and size + cost <= BATCH_MAX_BYTES:
                indexes.append(i)
                open_batches[ch] = (indexes, size + cost)
                continue
        indexes = [i]
        groups.append((ch, indexes))
        open_batches[ch] = (indexes, cost)
    out: list[tuple[bytes, bytes, list[int]]] = []
    for ch, indexes in groups:
        if len(indexes) == 1:
            _, payload, seq, _ = items[indexes[0]]
            out.append((ch, encode_frame(node, payload, seq), indexes))
        else:
            frames = [(items[i][1], items[i][2]) for i in indexes]
            out.append((ch, encode_batch(node, frames), indexes))
    return out


def valid_node_id(node: str) -> bool:
    """1-64 printable ASCII characters without ``/`` (member ids are ``<node>/...``)."""
    return 1 <= len(node) <= 64 and node.isascii() and node.isprintable() and "/" not in node
