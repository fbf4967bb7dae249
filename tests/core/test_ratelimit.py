"""Token buckets with an explicit clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubbub.core import TokenBucket


def test_starts_full_and_empties() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens == 0.0


def test_refills_at_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0, now=10.0)
    assert bucket.take(10.0) and bucket.take(10.0)
    assert not bucket.take(10.0)
    assert not bucket.take(10.2)  # 0.8 tokens
    assert bucket.take(10.25)  # 1.0 token
    assert not bucket.take(10.25)
    assert bucket.take(10.5)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    # A long idle period does not save up more than ``burst``.
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens == pytest.approx(0.0)


def test_failed_take_keeps_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.0, cost=2.0)
    assert bucket.tokens == 1.0
    assert bucket.take(0.0)


def test_cost_greater_than_one() -> None:
    bucket = TokenBucket(rate=1.0, burst=5.0, now=0.0)
    assert bucket.take(0.0, cost=5.0)
    assert not bucket.take(2.0, cost=3.0)
    assert bucket.take(3.0, cost=3.0)


def test_clock_going_backwards_does_not_refill() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0, now=100.0)
    bucket.take(100.0)
    bucket.take(100.0)
    assert not bucket.take(50.0)
    assert bucket.stamp == 100.0


def test_rate_zero_disables_limiting() -> None:
    bucket = TokenBucket(rate=0.0, burst=1.0, now=0.0)
    assert all(bucket.take(0.0) for _ in range(1000))
    assert bucket.retry_after() == 0.0
    negative = TokenBucket(rate=-1.0, burst=0.0, now=0.0)
    assert negative.take(0.0)


def test_retry_after() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert bucket.retry_after() == 0.0
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.retry_after() == pytest.approx(0.5)
    assert bucket.retry_after(cost=2.0) == pytest.approx(1.0)
    bucket.take(0.25)  # refills to 0.5 token, not enough
    assert bucket.retry_after() == pytest.approx(0.25)
    assert not bucket.take(0.49)
    assert bucket.take(0.5)


@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(0, 2), min_size=1, max_size=50),
)
def test_never_exceeds_burst_plus_refill(rate: float, burst: int, steps: list[float]) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    taken = 0
    for dt in steps:
        now += dt
        while bucket.take(now):
            taken += 1
        assert 0.0 <= bucket.tokens <= burst
        assert bucket.retry_after() > 0
    # Everything granted fits in the initial burst plus what the rate refilled.
    assert taken <= burst + rate * now + 1e-6
