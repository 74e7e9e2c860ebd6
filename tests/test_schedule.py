"""Refresh and backoff policy (schedule.py): pure functions, fake rng and explicit times only."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from otel_token_exporter.schedule import DEFAULT_POLICY, RefreshPolicy, backoff_delay, refresh_at

P = DEFAULT_POLICY


def _refresh_points(lifetime, n=2000, policy=P, start=1000.0, seed=1):
    rng = random.Random(seed)
    return [refresh_at(start, start + lifetime, policy, rng) for _ in range(n)]


# -- refresh point ----------------------------------------------------------------------------


def test_refresh_happens_at_80_percent_of_lifetime_minus_jitter():
    lifetime = 1000.0
    points = _refresh_points(lifetime)
    offsets = [p - 1000.0 for p in points]
    # 80 % of the lifetime, minus up to 10 % jitter: within [700, 800]
    assert min(offsets) >= 700.0
    assert max(offsets) <= 800.0
    # jitter really is used: the points spread over most of the window
    assert max(offsets) - min(offsets) > 90.0


def test_refresh_without_jitter_is_exactly_80_percent():
    policy = RefreshPolicy(jitter_fraction=0.0)
    assert refresh_at(50.0, 1050.0, policy, random.Random(0)) == pytest.approx(850.0)


def test_short_token_keeps_a_floor_margin():
    # 10 s token: 20 % is 2 s, but min_margin (5 s) or 30 % of the lifetime (3 s) applies
    policy = RefreshPolicy(jitter_fraction=0.0)
    assert refresh_at(0.0, 10.0, policy, random.Random(0)) == pytest.approx(7.0)
    # 100 s token: 20 s margin already beats the 5 s floor
    assert refresh_at(0.0, 100.0, policy, random.Random(0)) == pytest.approx(80.0)


def test_very_short_token_still_refreshes_before_expiry_and_after_half():
    for lifetime in (0.5, 1.0, 3.0):
        for p in _refresh_points(lifetime, n=500):
            assert 1000.0 + lifetime / 2 <= p < 1000.0 + lifetime


def test_very_long_token_margin_is_capped():
    year = 365 * 24 * 3600.0
    policy = RefreshPolicy(jitter_fraction=0.0)
    # 20 % of a year would be 73 days early; the cap is max_margin (1 h)
    assert refresh_at(0.0, year, policy, random.Random(0)) == pytest.approx(year - 3600.0)
    # with jitter: capped at max_jitter (300 s) too
    for p in _refresh_points(year, n=500):
        assert 1000.0 + year - 3600.0 - 300.0 <= p <= 1000.0 + year - 3600.0


def test_jitter_scales_with_lifetime():
    for lifetime in (60.0, 600.0, 3000.0):
        offsets = [p - 1000.0 for p in _refresh_points(lifetime)]
        spread = max(offsets) - min(offsets)
        # up to 10 % of the lifetime, and most of it is used
        assert spread <= 0.1 * lifetime + 1e-9
        assert spread >= 0.08 * lifetime


def test_jitter_never_moves_refresh_before_half_the_lifetime():
    # absurd jitter (the whole lifetime) is clamped at half the lifetime
    policy = RefreshPolicy(jitter_fraction=1.0, max_jitter=1e9)
    points = _refresh_points(100.0, policy=policy)
    assert min(points) >= 1050.0
    assert min(points) == pytest.approx(1050.0)  # the clamp is reached, so the test can fail


def test_expired_or_zero_lifetime_refreshes_at_once():
    assert refresh_at(10.0, 10.0, P, random.Random(0)) == 10.0
    assert refresh_at(10.0, 5.0, P, random.Random(0)) == 10.0


def test_fleet_started_together_spreads_refreshes():
    # 1000 processes that got a 1 h token at the same second
    rng = random.Random(42)
    points = [refresh_at(0.0, 3600.0, P, rng) for _ in range(1000)]
    per_second = Counter(int(p) for p in points)
    assert max(per_second.values()) <= 100
    assert len(per_second) >= 200  # spread over minutes, not a handful of seconds


def test_same_seed_gives_same_schedule():
    assert _refresh_points(600.0, n=20, seed=7) == _refresh_points(600.0, n=20, seed=7)


# -- backoff ------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_full_jitter_bounded():
    rng = random.Random(3)
    for failures in range(1, 12):
        bound = min(P.backoff_cap, P.backoff_base * 2 ** (failures - 1))
        delays = [backoff_delay(failures, P, rng) for _ in range(300)]
        assert max(delays) <= bound
        assert min(delays) > 0
        # full jitter: values over the whole range, so the mean is well below the bound
        if failures >= 2:
            assert min(delays) < bound * 0.25
            assert max(delays) > bound * 0.75


def test_first_retry_waits_at_least_half_the_base():
    rng = random.Random(5)
    delays = [backoff_delay(1, P, rng) for _ in range(500)]
    assert min(delays) >= P.backoff_base / 2
    assert max(delays) <= P.backoff_base


def test_backoff_cap_applies_after_many_failures():
    rng = random.Random(9)
    delays = [backoff_delay(30, P, rng) for _ in range(500)]
    assert max(delays) <= P.backoff_cap
    assert max(delays) > P.backoff_cap * 0.9


def test_backoff_never_overflows_after_very_many_failures():
    # days of outage: the exponent must not overflow a float
    rng = random.Random(1)
    for failures in (1025, 5000, 10**6):
        d = backoff_delay(failures, P, rng)
        assert 0 < d <= P.backoff_cap


def test_backoff_cap_scales_with_token_lifetime():
    rng = random.Random(11)
    # a 3 s token never waits a minute
    delays = [backoff_delay(20, P, rng, lifetime=3.0) for _ in range(500)]
    assert max(delays) <= 3.0
    # but never below one second of cap, even for a tiny lifetime
    delays = [backoff_delay(20, P, rng, lifetime=0.2) for _ in range(500)]
    assert max(delays) <= 1.0
    assert max(delays) > 0.8
    # a long token keeps the policy cap
    delays = [backoff_delay(20, P, rng, lifetime=86400.0) for _ in range(500)]
    assert max(delays) <= P.backoff_cap
    assert max(delays) > 50.0


def test_no_zero_delay_no_hot_loop():
    rng = random.Random(13)
    for failures in range(0, 40):
        for _ in range(200):
            assert backoff_delay(failures, P, rng) >= 0.1
    tiny = RefreshPolicy(backoff_base=0.001)
    assert min(backoff_delay(5, tiny, rng) for _ in range(500)) > 0


def test_retry_after_is_a_floor():
    rng = random.Random(17)
    assert backoff_delay(1, P, rng, retry_after=2.0) == pytest.approx(2.0)
    # a Retry-After shorter than the backoff does not shorten it
    delays = [backoff_delay(30, P, rng, retry_after=0.01) for _ in range(200)]
    assert min(delays) >= 0.1
    assert max(delays) > 10.0
    # also above the lifetime-scaled cap: the server asked for it
    assert backoff_delay(3, P, rng, retry_after=20.0, lifetime=3.0) == pytest.approx(20.0)


def test_retry_after_bounded_by_max_retry_after():
    rng = random.Random(19)
    assert backoff_delay(1, P, rng, retry_after=10**7) == pytest.approx(P.max_retry_after)
    small = RefreshPolicy(max_retry_after=30.0)
    assert backoff_delay(1, small, rng, retry_after=3600.0) == pytest.approx(30.0)


def test_zero_or_negative_retry_after_is_ignored():
    rng = random.Random(23)
    for ra in (0.0, -5.0):
        d = backoff_delay(1, P, rng, retry_after=ra)
        assert P.backoff_base / 2 <= d <= P.backoff_base


def test_fatal_waits_the_fatal_cooldown():
    rng = random.Random(29)
    assert backoff_delay(1, P, rng, fatal=True) == P.fatal_cooldown
    assert backoff_delay(50, P, rng, fatal=True, lifetime=3.0) == P.fatal_cooldown
    policy = RefreshPolicy(fatal_cooldown=7.0)
    assert backoff_delay(1, policy, rng, fatal=True) == 7.0
    # a longer Retry-After still wins
    assert backoff_delay(1, policy, rng, fatal=True, retry_after=20.0) == 20.0


@pytest.mark.parametrize(
    "kw",
    [
        {"refresh_fraction": 0.0},
        {"refresh_fraction": 1.0},
        {"min_margin": 0.0},
        {"backoff_base": 0.0},
        {"backoff_cap": -1.0},
        {"default_lifetime": 0.0},
        {"fatal_cooldown": 0.0},
        {"jitter_fraction": -0.1},
        {"max_jitter": -1.0},
        {"min_forced_interval": -1.0},
        {"max_retry_after": -1.0},
    ],
)
def test_policy_rejects_values_that_would_loop_or_misbehave(kw):
    with pytest.raises(ValueError):
        RefreshPolicy(**kw)
