"""Brokers: how a room's frames reach every node that has members in it.

The default is in-process (one node); the interface is what a Redis broker
implements for scale-out.
"""

from .base import Broker, Deliver
from .local import LocalBroker

__all__ = ["Broker", "Deliver", "LocalBroker"]
