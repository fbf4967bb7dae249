"""Transports: HTTP/1.1 and WebSocket on one listening socket."""
