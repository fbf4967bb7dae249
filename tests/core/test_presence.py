"""Coalesced presence: one frame per room per tick, large rooms, member pages, join storms."""

from __future__ import annotations

import random

import msgspec
import pytest

from hubbub import protocol as p
from hubbub.core import ChatCore, ChatLimits, Effect, Publish, Reply

WALL = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, **limits: float) -> ChatCore:
    return ChatCore(
        ChatLimits(rate=0, room_create_rate=0, **limits),  # type: ignore[arg-type]
        clock=clock,
        wallclock=lambda: WALL,
        coalesce_presence=True,
    )


def presences(effects: list[Effect]) -> list[p.Presence]:
    out = []
    for e in effects:
        assert isinstance(e, Publish), e
        assert isinstance(e.frame, p.Presence), e
        out.append(e.frame)
    return out


def published(effects: list[Effect]) -> list[p.ServerFrame]:
    out = []
    for e in effects:
        assert isinstance(e, Publish), e
        out.append(e.frame)
    return out


def nicks(people: list[p.Person]) -> list[str]:
    return [x.nick for x in people]


class View:
    """A client's member list, kept by applying presence frames as docs/protocol.md says."""

    def __init__(self, members: list[str]) -> None:
        self.members = set(members)

    def apply(self, frame: p.ServerFrame) -> None:
        if isinstance(frame, p.Joined):
            self.members.add(frame.nick)
            return
        if isinstance(frame, p.Left):
            self.members.discard(frame.nick)
            return
        if isinstance(frame, p.Renamed):
            self.members.discard(frame.old)
            self.members.add(frame.nick)
            return
        assert isinstance(frame, p.Presence) and not frame.large
        for x in frame.left:
            self.members.discard(x.nick)
        for r in frame.renamed:
            self.members.discard(r.old)
        for r in frame.renamed:
            self.members.add(r.nick)
        for x in frame.joined:
            self.members.add(x.nick)


def test_changes_wait_for_flush_and_come_as_one_frame_per_room(clock: Clock) -> None:
    core = make(clock)
    for fd in (1, 2, 3, 4):
        core.connect(fd)
    out = [*core.handle(1, p.Join("a")), *core.handle(2, p.Join("a")), *core.handle(3, p.Join("b"))]
    assert not [e for e in out if isinstance(e, Publish)]  # nothing until the tick ends
    assert core.presence_due() == 0.0
    a, b = published(core.flush_presence())
    assert isinstance(a, p.Presence)
    assert (a.room, nicks(a.joined), a.count) == ("a", ["user-1", "user-2"], 2)
    # One change alone is told as it always was (clients without presence keep up).
    assert b == p.Joined("b", "user-3", WALL)
    assert core.flush_presence() == [] and core.presence_due() is None


def test_one_change_in_a_tick_is_a_joined_left_or_renamed_frame(clock: Clock) -> None:
    core = make(clock)
    for fd in (1, 2):
        core.connect(fd)
    core.handle(1, p.Join("a", nick="ann"))
    core.handle(2, p.Join("a", nick="bob"))
    core.flush_presence()
    core.handle(1, p.SetNick("anna"))
    assert published(core.flush_presence()) == [p.Renamed("a", "ann", "anna", WALL)]
    core.handle(2, p.Leave("a"))
    assert published(core.flush_presence()) == [p.Left("a", "bob", WALL)]


def test_a_tick_carries_the_net_changes(clock: Clock) -> None:
    core = make(clock)
    for fd in (1, 2, 3, 4):
        core.connect(fd)
    core.handle(1, p.Join("a", nick="ann"))
    core.handle(2, p.Join("a", nick="bob"))
    core.flush_presence()
    core.handle(3, p.Join("a"))
    core.handle(3, p.Leave("a"))  # came and went within the tick: nothing to say
    core.handle(1, p.SetNick("anna"))
    core.handle(1, p.SetNick("annie"))  # two renames: one, from the first to the last
    core.handle(2, p.Leave("a"))
    core.handle(4, p.Join("a", nick="bob"))  # another user takes the freed nick
    (frame,) = presences(core.flush_presence())
    assert nicks(frame.left) == ["bob"]
    assert [(r.old, r.nick) for r in frame.renamed] == [("ann", "annie")]
    assert nicks(frame.joined) == ["bob"]
    assert frame.count == 2 and not frame.large


def test_a_nick_swap_in_one_tick_applies_as_one_step(clock: Clock) -> None:
    core = make(clock)
    for fd in (1, 2):
        core.connect(fd)
    core.handle(1, p.Join("a", nick="x"))
    core.handle(2, p.Join("a", nick="z"))
    core.flush_presence()
    view = View(core.members("a"))
    core.handle(1, p.SetNick("y"))
    core.handle(2, p.SetNick("x"))
    core.handle(1, p.SetNick("z"))
    (frame,) = presences(core.flush_presence())
    assert sorted((r.old, r.nick) for r in frame.renamed) == [("x", "z"), ("z", "x")]
    view.apply(frame)
    assert view.members == {"x", "z"} == set(core.members("a"))


def test_presence_carries_user_ids(clock: Clock) -> None:
    from hubbub.core import Identity

    core = make(clock)
    core.connect(1, identity=Identity("u-ann", "Ann"))
    core.connect(2)
    core.handle(1, p.Join("a"))
    core.handle(2, p.Join("a"))
    (frame,) = presences(core.flush_presence())
    assert [(x.nick, x.user) for x in frame.joined] == [
        ("Ann", "u-ann"),
        ("user-2", msgspec.UNSET),
    ]


@pytest.mark.parametrize("seed", range(5))
def test_presence_converges_under_random_changes(clock: Clock, seed: int) -> None:
    """A watcher's list, kept from the frames alone, is the room's list after every tick."""
    rnd = random.Random(seed)
    core = make(clock)
    core.connect(0)
    core.handle(0, p.Join("a", nick="watcher"))
    core.mark_live(0, "a")
    core.flush_presence()
    view = View(core.members("a"))
    for fd in range(1, 30):
        core.connect(fd)
    for _tick in range(60):
        for _ in range(rnd.randint(0, 8)):
            fd = rnd.randint(1, 29)
            action = rnd.random()
            if action < 0.4:
                core.handle(fd, p.Join("a"))
            elif action < 0.7:
                core.handle(fd, p.Leave("a"))
            else:
                core.handle(fd, p.SetNick(f"n{rnd.randint(0, 40)}"))
        for frame in published(core.flush_presence()):
            view.apply(frame)
            if isinstance(frame, p.Presence):
                assert frame.count == core.member_count("a")
        assert view.members == set(core.members("a"))


# -- large rooms ------------------------------------------------------------------


def test_a_large_room_gets_counts_at_most_once_per_interval(clock: Clock) -> None:
    core = make(clock, large_room=3, large_room_interval=1.0)
    for fd in range(1, 8):
        core.connect(fd)
    for fd in range(1, 6):
        core.handle(fd, p.Join("a"))
    (frame,) = presences(core.flush_presence())
    assert frame.large and frame.count == 5 and frame.joined == [] == frame.left
    core.handle(6, p.Join("a"))
    assert core.flush_presence() == []  # the next count waits for the interval
    assert core.presence_due() == pytest.approx(101.0)
    clock.now = 101.0
    (frame,) = presences(core.flush_presence())
    assert frame.large and frame.count == 6
    assert core.presence_due() is None
    for fd in (1, 2, 3, 4):
        core.handle(fd, p.Leave("a"))
    clock.now = 102.0
    (frame,) = presences(core.flush_presence())
    assert not frame.large and frame.count == 2  # small again: members fetch the list


def _modes(frames: list[p.ServerFrame]) -> list[bool]:
    """Each frame's mode: large (count only) or small."""
    return [isinstance(f, p.Presence) and f.large for f in frames]


def test_a_room_wavering_around_the_threshold_does_not_change_mode(clock: Clock) -> None:
    """One join, one leave, again and again, around ``large_room``: the room enters the
    large mode once and stays in it (without hysteresis, every event was a mode change:
    each member fetched the whole list, then a first page, again and again)."""
    core = make(clock, large_room=500, large_room_interval=1.0)
    for fd in range(501):
        core.connect(fd)
        core.handle(fd, p.Join("a"))
    assert _modes(published(core.flush_presence())) == [True]  # 501: large
    modes: list[bool] = []
    for _ in range(50):
        for frame in (p.Leave("a"), p.Join("a")):  # 500, then 501 members
            clock.now += 1.1  # every count due: only the mode decides what is sent
            core.handle(500, frame)
            modes += _modes(published(core.flush_presence()))
    assert modes == [True] * 100
    # A joiner in the band (500 members, large) reads it as large: a first page.
    core.handle(500, p.Leave("a"))
    state = core.room_state(0, "a", "e", 0)
    assert state is not None and state.count == 500 and state.has_more
    assert len(state.members) == p.MEMBERS_PAGE_DEFAULT
    # Small again at 490 (small_again(500)), not before.
    for fd in range(499, 490, -1):
        core.handle(fd, p.Leave("a"))
    clock.now += 1.1
    (frame,) = presences(core.flush_presence())
    assert frame.large and frame.count == 491
    core.handle(490, p.Leave("a"))
    clock.now += 1.1
    (frame,) = presences(core.flush_presence())
    assert not frame.large and frame.count == 490
    state = core.room_state(0, "a", "e", 0)
    assert state is not None and len(state.members) == 490 and not state.has_more
    # A room that grows from below is small up to large_room itself.
    for fd in range(490, 500):
        core.handle(fd, p.Join("a"))
    clock.now += 1.1
    (frame,) = presences(core.flush_presence())
    assert not frame.large and frame.count == 500
    core.handle(500, p.Join("a"))
    clock.now += 1.1
    (frame,) = presences(core.flush_presence())
    assert frame.large and frame.count == 501
    assert core.room_state(0, "a", "e", 0).has_more  # type: ignore[union-attr]


def test_a_large_rooms_joiner_gets_the_count_and_a_first_page(clock: Clock) -> None:
    core = make(clock, large_room=10)
    n = p.MEMBERS_PAGE_DEFAULT + 50
    for fd in range(n):
        core.connect(fd)
        core.handle(fd, p.Join("a", nick=f"m{fd:04d}"))
    state = core.room_state(5, "a", "e", 0)
    assert state is not None
    assert state.count == n and state.has_more
    assert state.members == [f"m{i:04d}" for i in range(p.MEMBERS_PAGE_DEFAULT)]
    (who,) = core.handle(5, p.Who("a"))
    assert isinstance(who, Reply) and who.frame.members == state.members


def test_who_pages_walk_the_whole_list_once(clock: Clock) -> None:
    core = make(clock, large_room=10)
    names = [f"Nick{i}" for i in range(237)]
    for fd, name in enumerate(names):
        core.connect(fd)
        core.handle(fd, p.Join("a", nick=name))
    seen: list[str] = []
    after = None
    for _ in range(100):  # bounded
        (reply,) = core.handle(0, p.Who("a", after=after, limit=50))
        assert isinstance(reply, Reply) and isinstance(reply.frame, p.Members)
        page = reply.frame
        assert page.count == 237
        seen.extend(page.members)
        if not page.has_more:
            break
        after = page.members[-1]
    assert seen == sorted(names, key=str.casefold) and len(set(seen)) == 237


def test_a_small_room_who_is_the_whole_list(clock: Clock) -> None:
    core = make(clock)
    for fd in range(150):
        core.connect(fd)
        core.handle(fd, p.Join("a"))
    (reply,) = core.handle(0, p.Who("a"))
    assert isinstance(reply.frame, p.Members)
    assert len(reply.frame.members) == 150 and not reply.frame.has_more


# -- the join storm ---------------------------------------------------------------


def _storm(core: ChatCore, clock: Clock, n: int, per_tick: int) -> tuple[int, int]:
    """``n`` connections join one room, ``per_tick`` per loop tick; each joiner goes
    live at once. Returns (effects, frames delivered to connections)."""
    effects = delivered = 0
    for fd in range(n):
        core.connect(fd)
        out = core.handle(fd, p.Join("storm"))
        core.mark_live(fd, "storm")
        if (fd + 1) % per_tick == 0 or fd == n - 1:
            clock.now += 0.01
            out = [*out, *core.flush_presence()]
        effects += len(out)
        for e in out:
            delivered += len(core.live_fds(e.room)) if isinstance(e, Publish) else 1
    return effects, delivered


def test_ten_thousand_joins_cost_linear_frames_and_converge(clock: Clock) -> None:
    n = 10_000
    core = make(clock)
    effects, delivered = _storm(core, clock, n, per_tick=100)
    # Per join: a Catchup (and a room frame, sent by the service). Presence: one frame
    # per live member per tick while small (at most large_room members), then one
    # count per second: far below n * n / 2 = 50,000,000 one frame per join would cost.
    assert effects <= 2 * n
    assert delivered <= 5 * n, delivered
    assert core.member_count("storm") == n
    # Converged: the list is exact and complete, paged or whole; no ghost after leaving.
    assert len(set(core.members("storm"))) == n
    for fd in range(0, n, 2):
        core.disconnect(fd)
    clock.now += 2
    (frame,) = presences(core.flush_presence())
    assert frame.large and frame.count == n // 2
    assert set(core.members("storm")) == {f"user-{fd}" for fd in range(1, n, 2)}
    assert len(core.rooms["storm"].members) == n // 2


def test_without_coalescing_every_join_is_a_frame_to_every_member(clock: Clock) -> None:
    """What the storm test guards against (the core before coalescing): quadratic."""
    core = ChatCore(ChatLimits(rate=0, room_create_rate=0), clock=clock, wallclock=lambda: WALL)
    n = 1_000
    _, delivered = _storm(core, clock, n, per_tick=100)
    assert delivered >= n * (n - 1) // 2


def test_a_waiting_large_room_does_not_hold_back_a_small_one(clock: Clock) -> None:
    core = make(clock, large_room=3, large_room_interval=1.0)
    for fd in range(1, 7):
        core.connect(fd)
    for fd in range(1, 5):
        core.handle(fd, p.Join("big"))
    assert [f.large for f in presences(core.flush_presence())] == [True]
    core.handle(5, p.Join("big"))
    assert core.flush_presence() == [] and core.presence_due() == pytest.approx(101.0)
    core.handle(6, p.Join("small"))
    assert core.presence_due() == 0.0  # at once
    assert published(core.flush_presence()) == [p.Joined("small", "user-6", WALL)]
    assert core.presence_pending() and core.presence_due() == pytest.approx(101.0)
    clock.now = 101.0
    (frame,) = presences(core.flush_presence())
    assert (frame.room, frame.count, frame.large) == ("big", 5, True)
    assert not core.presence_pending() and core.presence_due() is None


def test_a_deleted_or_emptied_room_publishes_nothing(clock: Clock) -> None:
    core = make(clock)
    for fd in (1, 2):
        core.connect(fd)
    core.handle(1, p.Join("a"))
    core.handle(2, p.Join("b"))
    core.handle(1, p.Leave("a"))  # empty: the room is gone
    core.remove_room("b")
    assert core.flush_presence() == [] and not core.presence_pending()
