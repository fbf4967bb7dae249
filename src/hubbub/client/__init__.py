"""Clients: the terminal chat (``hubbub chat``)."""
