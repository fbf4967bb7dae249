"""Brokers: how a room's frames reach every node that has members in it.

The default is in-process (one node); :class:`hubbub.broker.redis.RedisBroker`
carries frames between nodes over Redis pub/sub.
"""

from .base import NODE_PAYLOAD_MAX, Broker, BrokerError, Deliver, Lost, NodeDeliver
from .local import LocalBroker

__all__ = [
    "NODE_PAYLOAD_MAX",
    "Broker",
    "BrokerError",
    "Deliver",
    "LocalBroker",
    "Lost",
    "NodeDeliver",
]
