"""One-room chat server speaking the hubbub seed protocol, on ``picows`` (a benchmark peer).

    python bench/peers/picows_peer.py PORT

On connect: ``Hello, welcome\\n``. A text message T from connection fd goes
to every connected client (the sender too) as ``from <fd>: T``, built once
and sent to each with ``WSTransport.send``; the sender also gets
``server: T``. picows hands over raw frames: this peer joins fragments,
checks that text is valid UTF-8 (1007 otherwise) and answers Close frames.
Runs on uvloop.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys

import uvloop
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

GREETING = b"Hello, welcome\n"
TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CONT = WSMsgType.CONTINUATION
CLOSE = WSMsgType.CLOSE
MAX_MESSAGE = 1 << 20
clients: dict[int, WSTransport] = {}
fds = itertools.count(1)


class Peer(WSListener):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.fd = 0
        self.parts: list[bytes] | None = None
        self.opcode = TEXT

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.fd = next(fds)
        transport.send(TEXT, GREETING)
        clients[self.fd] = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        op = frame.msg_type
        if op == TEXT or op == BINARY:
            if self.parts is not None:
                return self.fail(transport, WSCloseCode.PROTOCOL_ERROR)
            if not frame.fin:
                self.opcode = op
                self.parts = [frame.get_payload_as_bytes()]
                return None
            return self.message(transport, op, frame.get_payload_as_bytes())
        if op == CONT:
            if self.parts is None:
                return self.fail(transport, WSCloseCode.PROTOCOL_ERROR)
            self.parts.append(frame.get_payload_as_bytes())
            if sum(map(len, self.parts)) > MAX_MESSAGE:
                return self.fail(transport, WSCloseCode.MESSAGE_TOO_BIG)
            if frame.fin:
                data = b"".join(self.parts)
                self.parts = None
                return self.message(transport, self.opcode, data)
            return None
        if op == CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        return None

    def message(self, transport: WSTransport, op: WSMsgType, data: bytes) -> None:
        if op == TEXT:
            try:
                data.decode()
            except UnicodeDecodeError:
                return self.fail(transport, WSCloseCode.INVALID_TEXT)
        out = b"from %d: " % self.fd + data
        for peer in clients.values():
            peer.send(op, out)
        transport.send(op, b"server: " + data)
        return None

    def fail(self, transport: WSTransport, code: WSCloseCode) -> None:
        clients.pop(self.fd, None)
        transport.send_close(code)
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        clients.pop(self.fd, None)


def listener_factory(request: WSUpgradeRequest) -> Peer:
    return Peer()


async def main(port: int) -> None:
    server = await ws_create_server(listener_factory, "127.0.0.1", port, backlog=4096)
    print(f"picows peer listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    try:
        await stop
    finally:
        server.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9502))
