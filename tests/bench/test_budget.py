"""``make bench`` within 15 minutes: the default plans' estimates fit their budgets, the
budgets fit 15 minutes together, the plan still measures what the issues ask, and the
run waits for a quiet machine or repeats a noisy measurement only with time to spare."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from .helpers import ROOT, load_bench_run
from .test_scaleout import load_scaleout

pytest.importorskip("picows", reason="the bench extra is not installed")

#: Issue 12: a full `make bench` within 15 minutes.
MAKE_BENCH_S = 15 * 60
#: What make itself adds to the two scripts (the install stamps, `npm install` of the
#: two peers when nothing is missing, two interpreters starting), measured: about 10 s.
MAKE_OVERHEAD_S = 20.0


def _default_plan(*argv: str) -> Any:
    run = load_bench_run()
    args = run.build_parser().parse_args(list(argv))
    args.servers = args.servers.split(",")
    args.scenarios = args.scenarios.split(",")
    from benchrun.running import make_plan

    return make_plan(args)


def test_make_bench_runs_the_two_parts_within_15_minutes() -> None:
    """`make bench` is bench-core and bench-scaleout (push against polling, about 17
    minutes alone, is its own target), and their budgets add up to less than 15 minutes."""
    makefile = (ROOT / "Makefile").read_text()
    bench = re.search(r"^bench: (.*)$", makefile, re.M)
    assert bench is not None and bench.group(1).split() == ["bench-core", "bench-scaleout"]
    plan = _default_plan()
    so = load_scaleout()
    scaleout_budget = so.parse([]).budget
    assert plan.budget_s + scaleout_budget + MAKE_OVERHEAD_S <= MAKE_BENCH_S


def test_default_plans_fit_their_budgets_with_time_to_spare() -> None:
    """The estimate leaves room for waits and repeats (at least 20 s each)."""
    plan = _default_plan()
    assert 300 < plan.estimate_s() <= plan.budget_s - 20
    so = load_scaleout()
    args = so.parse([])
    assert 100 < so.estimate_s(args) <= args.budget - 20
    # --quick: a smoke run of a few minutes.
    quick = _default_plan("--quick")
    assert quick.estimate_s() <= quick.budget_s - 20 <= 240
    assert so.estimate_s(so.parse(["--quick"])) <= 120


def test_the_plan_keeps_what_the_issues_ask() -> None:
    """Steady rates of 20 and 80 messages/s into 1,000 clients, at least 5 rounds for hubbub
    and every peer (Node ws and picows in seed mode, Node socket.io in chat mode) even
    behind the budget, both storms at full size, in 2 rounds."""
    plan = _default_plan()
    count: dict[tuple[str, str], int] = {}
    for _r, name, scenario in plan.measurements():
        count[(name, scenario)] = count.get((name, scenario), 0) + 1
    for scenario in ("steady", "chat_steady"):
        assert plan.options[scenario]["rates"] == [20.0, 80.0]
        assert plan.options[scenario]["clients"] == 1000
    for name in ("hubbub", "node_ws", "picows"):
        assert count[(name, "steady")] >= 5 and plan.floor("steady", name) >= 5
    for name in ("hubbub", "socketio_node"):
        assert count[(name, "chat_steady")] >= 5 and plan.floor("chat_steady", name) >= 5
    assert plan.options["join_storm"]["sizes"] == [1000, 2000, 10_000]
    assert plan.options["reconnect_storm"]["clients"] == 10_000
    for name in ("hubbub", "node_ws"):
        assert count[(name, "join_storm")] == count[(name, "reconnect_storm")] == 2


def _fake_plan(budget: float, retries: int = 2, fanout: bool = False) -> Any:
    load_bench_run()
    from benchrun.running import Plan

    steady = {"clients": 10, "rates": [20.0], "warmup": 0.1, "duration": 0.1, "rounds": 2}
    options = {"steady": steady}
    if fanout:
        options["fanout"] = {"clients": 10, "rounds": 2, "min_rounds": 1}
    return Plan(
        rounds=2,
        servers=["hubbub", "node_ws"],
        scenarios=list(options),
        options=options,
        quick=False,
        retries=retries,
        budget_s=budget,
    )


def _run_noisy(monkeypatch: pytest.MonkeyPatch, plan: Any, tmp_path: Path) -> tuple[int, int]:
    """Execute ``plan`` with every measurement noisy: (measurements run, waits for quiet)."""
    import benchrun.running as running

    calls = {"run": 0, "wait": 0}
    now = [1000.0]  # each fake measurement takes 10 s of this clock

    def run_one(spec: Any, scenario: str, _plan: Any, _tmp: Path, r: int) -> dict[str, Any]:
        calls["run"] += 1
        now[0] += 10.0
        return {
            "scenario": scenario,
            "ok": True,
            "errors": [],
            "noisy": True,
            "other_cpu_pct": 80.0,
            "failed_to_run": True,
        }

    def wait_quiet(log: Any, limit: float = 30.0) -> None:
        assert limit > 0
        calls["wait"] += 1

    monkeypatch.setattr(running, "run_one", run_one)
    monkeypatch.setattr(running, "wait_quiet", wait_quiet)
    monkeypatch.setattr(running, "time", SimpleNamespace(monotonic=lambda: now[0]))
    # Each fake measurement is estimated at 10 s.
    monkeypatch.setattr(running, "estimate", lambda plan, name, scenario: 10.0)
    running.execute(plan, tmp_path, lambda text: None)
    return calls["run"], calls["wait"]


def test_no_wait_and_no_repeat_without_time_to_spare(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Four measurements estimated at 40 s in a 35 s budget: none is waited for or repeated
    (a budget counted from the start alone would have allowed both)."""
    runs, waits = _run_noisy(monkeypatch, _fake_plan(35.0), tmp_path)
    assert (runs, waits) == (4, 0)


def test_noisy_measurements_are_repeated_while_the_plan_fits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runs, waits = _run_noisy(monkeypatch, _fake_plan(10_000.0), tmp_path)
    assert runs == 4 * 3  # each run again twice
    assert waits == runs


def test_the_clock_counts_the_pace_of_the_measurements_so_far() -> None:
    load_bench_run()
    from benchrun.running import Clock

    clock = Clock(_fake_plan(100.0))
    clock.remaining = 80.0
    assert clock.pace == 1.0
    clock.done(40.0, 80.0)  # took twice its estimate: the rest will too
    assert clock.pace == 2.0
    assert clock.slack() == pytest.approx(100.0 - 2.0 * 40.0, abs=1.0)
    clock.start = time.monotonic() - 30.0
    assert clock.slack() == pytest.approx(100.0 - 30.0 - 80.0, abs=1.0)


def test_budget_zero_never_waits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runs, waits = _run_noisy(monkeypatch, _fake_plan(0.0), tmp_path)
    assert (runs, waits) == (4, 0)


def test_scaleout_rounds_alternate_the_order() -> None:
    so = load_scaleout()
    assert so.round_order(["a", "b"], 0) == ["a", "b"]
    assert so.round_order(["a", "b"], 1) == ["b", "a"]
    orders = [so.round_order(["a", "b", "c"], r) for r in range(6)]
    # Every server is first, and last, in some round.
    assert {o[0] for o in orders} == {o[-1] for o in orders} == {"a", "b", "c"}


def test_behind_the_budget_rounds_above_the_floor_are_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Eight measurements of 10 s in a 60 s budget: the second round of fan-out (floor 1)
    is skipped for both servers, never a steady-rate round."""
    plan = _fake_plan(60.0, retries=0, fanout=True)
    runs, waits = _run_noisy(monkeypatch, plan, tmp_path)
    assert (runs, waits) == (6, 0)
    assert sorted(plan.skipped) == [(1, "hubbub", "fanout"), (1, "node_ws", "fanout")]
    for per in plan.results.values():
        assert len(per["steady"]) == 2 and len(per["fanout"]) == 1


def test_time_saved_by_a_skip_is_not_spent_on_waits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A 75 s budget for 80 s of measurements: hubbub's second fan-out is skipped, which
    leaves 5 s to spare; they are not spent waiting for a quiet machine or repeating."""
    plan = _fake_plan(75.0, retries=2, fanout=True)
    runs, waits = _run_noisy(monkeypatch, plan, tmp_path)
    assert plan.skipped == [(1, "hubbub", "fanout")]
    assert (runs, waits) == (7, 0)


def test_floors_of_the_default_plan() -> None:
    plan = _default_plan()
    assert plan.floor("steady", "hubbub") == plan.floor("steady", "picows") == 5
    assert plan.floor("chat_steady", "socketio_node") == 5
    assert plan.floor("reconnect_storm", "hubbub") == plan.floor("join_storm", "node_ws") == 1
    assert plan.floor("steady", "hubbub_nospeedups") == 1
    assert plan.floor("fanout", "hubbub") == 1 and plan.floor("connect", "node_ws") == 2
