"""Who a hubbub.v1 connection is, under the ``--auth`` mode: the service layer of
identity between the transports (``upgrade``, frames, timers) and the chat core.

How a connection gets its identity (docs/security.md, *Auth modes*):

* ``Authorization: Bearer <token>`` on the upgrade request: checked in the
  ``upgrade`` event, before the ``101``; a bad token is refused with ``401``,
  the reason, and ``WWW-Authenticate: Bearer error="invalid_token",
  error_description="<reason>"`` (RFC 6750 3; the token is never logged nor
  echoed). A 401 without a bearer token (a plain client in ``token`` mode,
  another scheme) carries ``WWW-Authenticate: Bearer``.
* Otherwise, in ``token`` mode, the connection gets no ``welcome`` until its
  first frame ``{"type":"auth","token":...}`` verifies. Any other first frame
  gets ``auth_required`` and close 4401; no frame within ``auth_timeout``
  seconds, close 4401; a bad token, ``auth_failed`` (or ``token_expired``) and
  close 4401 (4402).
* In ``optional`` and ``none`` modes the connection is greeted at once (as a
  guest ``guest-<fd>`` in ``optional``, anonymous in ``none``); an ``auth``
  frame sent as its first frame replaces that identity (a second ``welcome``
  follows, with the user). Without any key (``none`` mode only) that frame is
  answered ``auth_failed`` "this server has no tokens" and the connection goes on.

A connection whose token has an ``exp`` gets ``token_expired`` and close 4402
when it passes (one server timer per such connection, cleared on close).

Nothing here assumes a WebSocket: a fallback session that opens with the same
events (``open`` with a request, text frames, ``close``) is handled the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import protocol as p
from ..core import Identity
from ..transport.contract import Refusal
from .tokens import TokenError, Verifier

#: The reason a plain (seed-protocol) client gets in ``token`` mode.
SEED_REFUSED = "this server requires a token (hubbub.v1 with Authorization: Bearer)"
AUTH_FIRST = 'authenticate first: send {"type":"auth","token":"..."} as the first frame'
NO_TOKENS = "this server has no tokens (no --jwt-secret or --jwt-public-key)"
NOT_BEARER = "the Authorization header must be 'Bearer <token>'"
#: Longest single expiry timer (s); a token living longer is re-armed then.
MAX_TIMER = 86400.0
#: Longest error_description of a challenge (the reason is in the body too).
MAX_DESCRIPTION = 200
#: What a quoted error_description may hold (RFC 6750 3: %x20-21 / %x23-5B / %x5D-7E).
_DESCRIPTION_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


def bearer_challenge(error: str | None = None, description: str = "") -> tuple[str, str]:
    """The ``WWW-Authenticate`` header of a 401 (RFC 6750 3): ``Bearer`` when no token
    was given, ``Bearer error="invalid_token", error_description="..."`` when one was
    refused. The description keeps only the characters RFC 6750 allows there
    (others become ``?``) and at most MAX_DESCRIPTION of them."""
    if error is None:
        return ("WWW-Authenticate", "Bearer")
    text = "".join(c if c in _DESCRIPTION_CHARS else "?" for c in description[:MAX_DESCRIPTION])
    value = f'Bearer error="{error}"'
    if text:
        value += f', error_description="{text}"'
    return ("WWW-Authenticate", value)


class AuthGate:
    """Per-connection identity state of one node (see the module docstring).

    ``connect(fd, identity)`` opens the connection in the chat core (it sends
    ``welcome``), ``disconnect(fd)`` takes it out again (before a re-auth),
    ``reply(fd, frame)`` sends a frame. Memory: one set entry per connection
    waiting for its first frame, one timer per connection with an ``exp``.
    """

    def __init__(
        self,
        server: Any,
        settings: Any,
        verifier: Verifier | None,
        *,
        connect: Callable[[int, Identity | None], None],
        disconnect: Callable[[int], None],
        reply: Callable[[int, p.ServerFrame], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.mode: str = settings.auth
        self.allow_anonymous_seed: bool = settings.allow_anonymous_seed
        self.guest_write: bool = settings.guest_write
        self.auth_timeout: float = settings.auth_timeout
        self.verifier = verifier
        self._connect = connect
        self._disconnect = disconnect
        self._reply = reply
        self.clock = clock
        #: Connections that get no welcome before a valid ``auth`` (token mode) -> timer.
        self.pending: dict[int, int] = {}
        #: Greeted connections whose first frame may still be an ``auth``.
        self.first: set[int] = set()
        #: Connection -> (identity, expiry timer id or 0).
        self.identities: dict[int, tuple[Identity, int]] = {}

    # -- the upgrade request ---------------------------------------------------

    def upgrade(self, server: Any, request: Any) -> Refusal | None:
        """The ``upgrade`` event: None to accept, a :class:`Refusal` (status, reason,
        headers) to refuse; a 401 carries ``WWW-Authenticate`` (:func:`bearer_challenge`)."""
        if request.subprotocol != p.SUBPROTOCOL:
            if self.mode == "token" and not self.allow_anonymous_seed:
                return Refusal(401, SEED_REFUSED, (bearer_challenge(),))
            return None
        header = request.headers.get("authorization")
        if header is None or self.verifier is None:
            return None  # none mode without keys ignores a header it cannot check
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            # No bearer token given: the challenge names the scheme, no error (RFC 6750 3.1).
            return Refusal(401, NOT_BEARER, (bearer_challenge(),))
        try:
            request.user = self.verifier.verify(token)
        except TokenError as exc:
            return Refusal(401, exc.reason, (bearer_challenge("invalid_token", exc.reason),))
        return None

    # -- connection events ---------------------------------------------------

    def opened(self, fd: int, request: Any) -> None:
        """A hubbub.v1 connection opened: greet it, or wait for its ``auth`` frame."""
        identity = request.user if isinstance(request.user, Identity) else None
        if identity is not None:
            self._admit(fd, identity)
        elif self.mode == "token":
            self.pending[fd] = self.server.after(self.auth_timeout * 1000, self._timed_out, fd)
        else:
            self.first.add(fd)
            self._admit(fd, self._guest(fd) if self.mode == "optional" else None)

    def watching(self, fd: int) -> bool:
        """Does the next frame of ``fd`` go to :meth:`frame` (not to the core)?"""
        return fd in self.pending or fd in self.first

    def frame(self, fd: int, data: str | bytes) -> bool:
        """The first frame of a watched connection; True if it was taken here
        (an ``auth`` frame, or a refusal), False to hand it to the core."""
        if fd in self.first:
            self.first.discard(fd)
            # Most first frames are not an auth: skip decoding them twice (an auth
            # spelt with escapes reaches the core, which answers bad_frame).
            if not isinstance(data, str) or '"auth"' not in data:
                return False
            frame = self._decode(data)
            if not isinstance(frame, p.Auth):
                return False
            self._reauth(fd, frame.token)
            return True
        timer = self.pending.pop(fd, None)
        if timer is None:
            return False
        self.server.clear_timer(timer)
        frame = self._decode(data)
        if not isinstance(frame, p.Auth):
            self._refuse(fd, p.E_AUTH_REQUIRED, AUTH_FIRST, p.CLOSE_AUTH_FAILED)
            return True
        identity = self._verify(fd, frame.token)
        if identity is not None:
            self._admit(fd, identity)
        return True

    def closed(self, fd: int) -> bool:
        """Forget ``fd``; True if it had been greeted (the core knows it)."""
        self.first.discard(fd)
        timer = self.pending.pop(fd, None)
        if timer is not None:
            self.server.clear_timer(timer)
            return False
        self._forget_identity(fd)
        return True

    def identity(self, fd: int) -> Identity | None:
        found = self.identities.get(fd)
        return found[0] if found is not None else None

    # -- internals -------------------------------------------------------------

    @staticmethod
    def _decode(data: str | bytes) -> p.ClientFrame | None:
        if not isinstance(data, str):
            return None
        try:
            return p.decode(data)
        except p.ProtocolError:
            return None

    def _guest(self, fd: int) -> Identity:
        name = f"guest-{fd}"
        return Identity(user=name, name=name, guest=True, can_write=self.guest_write)

    def _verify(self, fd: int, token: str) -> Identity | None:
        if self.verifier is None:
            self._reply(fd, p.Error(p.E_AUTH_FAILED, NO_TOKENS, "auth"))
            return None
        try:
            return self.verifier.verify(token)
        except TokenError as exc:
            close = p.CLOSE_TOKEN_EXPIRED if exc.code == p.E_TOKEN_EXPIRED else p.CLOSE_AUTH_FAILED
            self._refuse(fd, exc.code, exc.reason, close)
            return None

    def _reauth(self, fd: int, token: str) -> None:
        identity = self._verify(fd, token)
        if identity is None:
            return  # refused and closing, or answered "no tokens" and going on
        self._forget_identity(fd)
        self._disconnect(fd)
        self._admit(fd, identity)

    def _admit(self, fd: int, identity: Identity | None) -> None:
        if identity is not None:
            self.identities[fd] = (identity, self._arm(fd, identity))
        self._connect(fd, identity)

    def _arm(self, fd: int, identity: Identity) -> int:
        if identity.expires is None:
            return 0
        left = identity.expires + (self.verifier.leeway if self.verifier else 0) - self.clock()
        delay = min(max(left, 0.001), MAX_TIMER)
        return int(self.server.after(delay * 1000, self._expiry, fd, identity))

    def _expiry(self, fd: int, identity: Identity) -> None:
        found = self.identities.get(fd)
        if found is None or found[0] is not identity:
            return
        assert identity.expires is not None
        leeway = self.verifier.leeway if self.verifier else 0
        if identity.expires + leeway > self.clock():
            self.identities[fd] = (identity, self._arm(fd, identity))  # a long-lived token
            return
        self.identities[fd] = (identity, 0)
        self._refuse(
            fd,
            p.E_TOKEN_EXPIRED,
            "your token expired: get a new one and reconnect",
            p.CLOSE_TOKEN_EXPIRED,
        )

    def _timed_out(self, fd: int) -> None:
        if self.pending.pop(fd, None) is None:
            return
        self._refuse(
            fd,
            p.E_AUTH_REQUIRED,
            f"no auth frame within {self.auth_timeout:g}s",
            p.CLOSE_AUTH_FAILED,
        )

    def _refuse(self, fd: int, code: str, reason: str, close: int) -> None:
        self._reply(fd, p.Error(code, reason, "auth"))
        self.server.disconnect(fd, close, reason[:100])

    def _forget_identity(self, fd: int) -> None:
        found = self.identities.pop(fd, None)
        if found is not None and found[1]:
            self.server.clear_timer(found[1])
