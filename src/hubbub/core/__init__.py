"""The chat core: rooms, nicknames, presence, permissions, rate limits. No I/O.

The core is plain Python: it takes decoded frames and returns *effects*
(reply to a connection, publish to a room, persist a message, replay history)
that the service layer (:mod:`hubbub.apps.chat`) carries out with a store and
a broker. Unit tests drive it without sockets or a database.
"""

from .chat import ChatCore, ChatLimits
from .effects import Catchup, Close, Effect, LoadHistory, Persist, Publish, Reply, RoomsQuery
from .identity import Identity
from .ratelimit import TokenBucket

__all__ = [
    "Catchup",
    "ChatCore",
    "ChatLimits",
    "Close",
    "Effect",
    "Identity",
    "LoadHistory",
    "Persist",
    "Publish",
    "Reply",
    "RoomsQuery",
    "TokenBucket",
]
