"""The seed's socket.php, ported line for line onto hubbub's Swoole-style API.

Run: python examples/seed_chat.py [port]
"""

import sys

from hubbub import Server

# Create WebSocket server object, listen on 0.0.0.0:9502
ws = Server("0.0.0.0", int(sys.argv[1]) if len(sys.argv) > 1 else 9502)


# Listen for WebSocket connection open event
@ws.on("open")
def on_open(ws, request):
    ws.push(request.fd, "Hello, welcome\n")


# Listen for WebSocket message events
@ws.on("message")
def on_message(ws, frame):
    for fd in ws.connections:
        ws.push(fd, f"from {frame.fd}: {frame.data}")
    ws.push(frame.fd, f"server: {frame.data}")


# Listen for WebSocket connection close events
@ws.on("close")
def on_close(ws, fd):
    print(f"client-{fd} closed", flush=True)


ws.start()
