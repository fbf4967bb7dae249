"""AuthGate's timers without sockets: expiry at exp + leeway, re-armed for long-lived
tokens, forgotten on close; first-frame state."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hubbub import protocol as p
from hubbub.auth.gate import MAX_TIMER, AuthGate
from hubbub.auth.tokens import LEEWAY, Verifier
from hubbub.core import Identity

from .keys import SECRET


class FakeServer:
    def __init__(self) -> None:
        self.timers: dict[int, tuple[float, Any, tuple[Any, ...]]] = {}
        self.closed: list[tuple[int, int, str]] = []
        self._next = 0

    def after(self, ms: float, fn: Any, *args: Any) -> int:
        self._next += 1
        self.timers[self._next] = (ms, fn, args)
        return self._next

    def clear_timer(self, tid: int) -> bool:
        return self.timers.pop(tid, None) is not None

    def disconnect(self, fd: int, code: int, reason: str) -> bool:
        self.closed.append((fd, code, reason))
        return True

    def fire(self, tid: int) -> None:
        _, fn, args = self.timers.pop(tid)
        fn(*args)


#: The settable clock of each gate made here.
CLOCKS: dict[int, Any] = {}


def make(mode: str = "token", now: float = 1000.0) -> tuple[AuthGate, FakeServer, list[Any]]:
    server = FakeServer()
    out: list[Any] = []
    settings = SimpleNamespace(
        auth=mode, allow_anonymous_seed=False, guest_write=False, auth_timeout=10.0
    )
    clock = SimpleNamespace(now=now)
    gate = AuthGate(
        server,
        settings,
        Verifier(SECRET),
        connect=lambda fd, ident: out.append(("connect", fd, ident)),
        disconnect=lambda fd: out.append(("disconnect", fd)),
        reply=lambda fd, frame: out.append(("reply", fd, frame)),
        clock=lambda: clock.now,
    )
    CLOCKS[id(gate)] = clock
    return gate, server, out


def request(user: Identity | None) -> Any:
    return SimpleNamespace(user=user, subprotocol=p.SUBPROTOCOL, headers={})


def test_expiry_fires_at_exp_plus_leeway_and_closes_4402() -> None:
    gate, server, out = make()
    gate.opened(1, request(Identity("ann", expires=1060.0)))
    ((tid, (ms, _, _)),) = server.timers.items()
    assert ms == (60 + LEEWAY) * 1000
    CLOCKS[id(gate)].now = 1060 + LEEWAY + 0.01
    server.fire(tid)
    assert out[-1][2].code == p.E_TOKEN_EXPIRED
    assert server.closed == [(1, p.CLOSE_TOKEN_EXPIRED, out[-1][2].message[:100])]


def test_a_long_lived_token_is_re_armed_not_closed() -> None:
    gate, server, _ = make()
    gate.opened(1, request(Identity("ann", expires=1000.0 + 3 * MAX_TIMER)))
    ((tid, (ms, _, _)),) = server.timers.items()
    assert ms == MAX_TIMER * 1000
    CLOCKS[id(gate)].now += MAX_TIMER
    server.fire(tid)
    assert not server.closed and len(server.timers) == 1  # a new timer
    assert gate.closed(1) and not server.timers and not gate.identities


def test_no_timer_without_exp_and_pending_state_is_forgotten() -> None:
    gate, server, _ = make()
    gate.opened(1, request(Identity("ann")))
    assert not server.timers
    gate.opened(2, request(None))  # token mode: waits for auth
    assert gate.watching(2) and len(server.timers) == 1
    assert gate.closed(2) is False and not server.timers and not gate.watching(2)


def test_only_the_first_frame_is_watched_in_optional_mode() -> None:
    gate, _, out = make("optional")
    gate.opened(3, request(None))
    assert out[-1][0] == "connect" and out[-1][2].guest and not out[-1][2].can_write
    assert gate.watching(3)
    assert gate.frame(3, '{"type":"ping"}') is False  # handed to the core
    assert not gate.watching(3)
