"""The chat core's limits: every bound of the core, with its default."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChatLimits:
    #: Frames per second one connection may send (token bucket refill); 0 disables.
    rate: float = 20.0
    #: Frames one connection may send in a burst (bucket size).
    burst: float = 40.0
    #: Rooms one connection may be in at once.
    max_rooms_per_connection: int = 50
    #: Members one room may hold (joins beyond get ``unavailable``).
    max_members_per_room: int = 10_000
    #: Rooms the server holds; a join that would create one more gets ``room_limit``.
    #: 0: no limit.
    max_rooms: int = 10_000
    #: New rooms per second one connection may create (bucket refill); 0 disables.
    room_create_rate: float = 0.2
    #: New rooms one connection may create in a burst (bucket size).
    room_create_burst: float = 5.0
    #: Invalid frames (bad JSON, bad or unknown frame, binary) one connection may send
    #: in a burst, forgiven at ``max_invalid_frames`` per ``invalid_frame_window``
    #: seconds (at least 1); one more closes the connection with 1008. 0 disables.
    max_invalid_frames: int = 10
    invalid_frame_window: float = 60.0
    #: Members above which a room is *large*: its presence frames carry only the
    #: member count (at most one per ``large_room_interval`` seconds) and its member
    #: list is read in pages (``who``); the ``room`` frame carries the first page.
    large_room: int = 500
    large_room_interval: float = 1.0
    #: Users whose nicknames are remembered (owned) while they are away; past it the
    #: user gone longest is forgotten first. About 800 bytes each (core/users.py).
    max_nick_owners: int = 100_000
