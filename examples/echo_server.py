"""An echo server on hubbub's API: what the Autobahn|Testsuite drives.

Run: python examples/echo_server.py [port]   (limits raised for Autobahn's 16 MiB cases)
"""

import sys

from hubbub import Server

ws = Server(
    "127.0.0.1",
    int(sys.argv[1]) if len(sys.argv) > 1 else 9001,
    max_message_size=64 * 1024 * 1024,
    max_send_buffer=256 * 1024 * 1024,
    ping_interval=0,
)


@ws.on("message")
def on_message(ws, frame):
    ws.push(frame.fd, frame.data)


ws.start()
