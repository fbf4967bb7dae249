"""``GET /readyz``: can this node serve clients (its store and its broker answer)?

``/healthz`` says the process is alive; ``/readyz`` answers ``200 ready`` or
``503`` with the reasons, so a load balancer stops sending clients to a node
that cannot store or fan out their messages.
"""

from __future__ import annotations

import asyncio

from ..broker import Broker, BrokerError
from ..store import Store, StoreError
from ..transport.http import Response

#: Seconds /readyz gives the store and the broker to answer.
READY_TIMEOUT = 2.0
#: The room /readyz reads and the broker subscription it makes (not a valid room
#: name: never a real room).
READY_PROBE = "-readyz"


async def answer_readyz(store: Store, broker: Broker, response: Response) -> None:
    problems = []
    try:
        await asyncio.wait_for(store.room(READY_PROBE), READY_TIMEOUT)
    except (StoreError, TimeoutError) as exc:
        problems.append(f"store unreachable: {exc or 'no answer'}")
    if not await broker_ready(broker):
        problems.append("broker unreachable")
    response.header("Content-Type", "text/plain; charset=utf-8")
    response.header("Cache-Control", "no-store")
    if problems:
        response.status(503)
        response.end("; ".join(problems) + "\n")
    else:
        response.end("ready\n")


async def broker_ready(broker: Broker) -> bool:
    """Can this node still subscribe (Redis confirms a subscription in time)?"""
    try:
        await asyncio.wait_for(broker.subscribe(READY_PROBE), READY_TIMEOUT)
    except BrokerError:
        return False  # the count is unchanged
    except TimeoutError:
        broker.unsubscribe(READY_PROBE)  # cancelled after it counted
        return False
    broker.unsubscribe(READY_PROBE)
    return True
