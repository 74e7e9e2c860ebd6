"""TokenManager (manager.py): single flight, generations, reject(), backoff, fork, close, health.

Real IdP tests use the ``idp`` fixture with a ClientCredentialsSource; pure-unit tests use a counting
source and, where scheduling is the point, a fake monotonic clock.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import threading
import time

import pytest

from otel_token_exporter.manager import TokenManager
from otel_token_exporter.schedule import RefreshPolicy
from otel_token_exporter.sources.oauth2 import ClientCredentialsSource
from otel_token_exporter.token import NoTokenAvailable, Token, TransientTokenError


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, dt):
        self.t += dt


class CountingSource:
    """Counts fetches; tokens live ``lifetime`` s on ``clock``; ``gate`` can hold a fetch."""

    def __init__(self, clock=time.monotonic, lifetime=3600.0, fail=None):
        self.clock = clock
        self.lifetime = lifetime
        self.fail = fail
        self.count = 0
        self.started = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def fetch(self):
        with self.lock:
            self.started += 1
        self.gate.wait(30)
        with self.lock:
            self.count += 1
            n = self.count
        if self.fail is not None:
            raise self.fail
        now = self.clock()
        return Token(f"secret-token-value-{n}-{os.getpid()}", expires_at=now + self.lifetime, obtained_at=now)


def wake(m):
    """Wake the refresher (it waits on real time; a fake clock does not notify it)."""
    with m._cond:
        m._cond.notify_all()


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def managers():
    made = []

    def make(source, **kw):
        m = TokenManager(source, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close(timeout=5)
        if m._thread is not None:
            m._thread.join(5)


def idp_source(idp, **kw):
    kw.setdefault("timeout", 10.0)
    return ClientCredentialsSource(idp.token_url, idp.client_id, idp.client_secret, **kw)


def run_threads(n, target):
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait(10)
            results[i] = target()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


# -- single flight --------------------------------------------------------------------------------


def test_32_threads_at_cold_start_cause_one_idp_request(idp, managers):
    idp.control(delay_ms=300)  # the fetch is in flight while all 32 ask
    m = managers(idp_source(idp))
    held = run_threads(32, lambda: m.get(timeout=15))
    assert {h.generation for h in held} == {1}
    assert idp.token_requests() == 1


def test_32_threads_on_an_expired_token_cause_one_idp_request(idp, managers):
    offset = [0.0]
    m = managers(idp_source(idp), clock=lambda: time.monotonic() + offset[0])
    assert m.get(timeout=15).generation == 1
    # jump the manager's clock past the 1 h token's expiry; the next token lives 2 h
    idp.control(lifetime=7200, delay_ms=300)
    offset[0] = 3700.0
    assert not m.health().has_token
    held = run_threads(32, lambda: m.get(timeout=15))
    assert {h.generation for h in held} == {2}
    assert idp.token_requests() == 2


def test_32_threads_one_fetch_unit(managers):
    src = CountingSource()
    src.gate.clear()
    m = managers(src)
    opener = threading.Timer(0.3, src.gate.set)
    opener.start()
    held = run_threads(32, lambda: m.get(timeout=15))
    opener.join()
    assert {h.generation for h in held} == {1}
    assert src.count == 1


# -- reject() -------------------------------------------------------------------------------------


def test_late_rejection_returns_true_and_causes_no_second_refresh(managers):
    src = CountingSource()
    m = managers(src)
    assert m.get(timeout=5).generation == 1
    assert m.reject(1) is True
    assert m.get(timeout=5).generation == 2
    assert src.count == 2
    # a request sent with generation 1 comes back 401 late
    assert m.reject(1) is True
    time.sleep(0.3)
    assert src.count == 2
    assert m.get(timeout=5).generation == 2


def test_reject_current_from_many_threads_forces_exactly_one_refresh(managers):
    src = CountingSource()
    m = managers(src)
    assert m.get(timeout=5).generation == 1
    src.gate.clear()
    answers = run_threads(32, lambda: m.reject(1))
    assert answers == [True] * 32
    wait_until(lambda: src.started == 2, what="the forced fetch")
    src.gate.set()
    assert m.get(timeout=5).generation == 2
    time.sleep(0.3)
    assert src.count == 2
    assert src.started == 2


def test_rejected_token_is_not_handed_out_while_a_refresh_is_possible(managers):
    src = CountingSource()
    m = managers(src)
    m.get(timeout=5)
    src.gate.clear()
    m.reject(1)
    threading.Timer(0.3, src.gate.set).start()
    assert m.get(timeout=5).generation == 2


def test_forced_refreshes_are_rate_limited(managers):
    clock = FakeClock()
    src = CountingSource(clock=clock)
    m = managers(src, clock=clock, policy=RefreshPolicy(min_forced_interval=1.0))
    assert m.get(timeout=5).generation == 1
    assert m.reject(1) is True
    assert m.get(timeout=5).generation == 2
    # a second 401 right away: no new fetch, the caller must not retry with the same token
    assert m.reject(2) is False
    wake(m)
    time.sleep(0.3)
    assert src.count == 2
    clock.advance(1.5)
    assert m.reject(2) is True
    assert m.get(timeout=5).generation == 3
    assert src.count == 3


# -- IdP outages ------------------------------------------------------------------------------------


def test_idp_down_old_token_used_until_expiry_then_recovery(idp, managers):
    idp.control(lifetime=4)
    m = managers(idp_source(idp, timeout=2.0))
    first = m.get(timeout=15)
    assert first.generation == 1
    idp.control(faults=[{"status": 503, "body": {"error": "temporarily_unavailable"}, "count": 10000}])
    seen = set()
    while time.monotonic() < first.expires_at - 0.2:
        h = m.get(timeout=0)
        seen.add(h.generation)
        time.sleep(0.05)
    assert seen == {1}
    failed = [r for r in idp.requests() if r.get("status") == 503]
    assert len(failed) >= 1  # refresh was attempted (and failed) before expiry
    wait_until(lambda: time.monotonic() > first.expires_at + 0.05, what="expiry")
    t0 = time.monotonic()
    with pytest.raises(NoTokenAvailable) as ei:
        m.get(timeout=0.3)
    assert time.monotonic() - t0 < 5.0
    assert "temporarily_unavailable" in str(ei.value)
    assert idp.client_secret not in str(ei.value)
    assert m.health().consecutive_failures >= 1
    idp.control(clear_faults=True)
    recovered = m.get(timeout=15)
    assert recovered.generation == 2
    assert m.health().consecutive_failures == 0


def test_retry_after_is_honoured(idp, managers):
    idp.control(faults=[{"status": 503, "retry_after": "2", "body": {"error": "temporarily_unavailable"}}])
    m = managers(idp_source(idp))
    assert m.get(timeout=15).generation == 1
    reqs = idp.requests()
    assert len(reqs) == 2
    assert reqs[0]["status"] == 503
    gap = reqs[1]["time"] - reqs[0]["time"]
    assert gap >= 1.9, gap


def test_fatal_error_logged_once_at_error_and_cooled_down(idp, managers, caplog):
    caplog.set_level(logging.DEBUG, logger="otel_token_exporter")
    src = ClientCredentialsSource(idp.token_url, idp.client_id, "wrong-secret-xyz", timeout=5)
    m = managers(src, policy=RefreshPolicy(fatal_cooldown=0.7))
    m.start()
    wait_until(lambda: idp.token_requests() >= 3, timeout=15, what="three attempts")
    times = [r["time"] for r in idp.requests()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.6, gaps
    errors = [r for r in caplog.records if r.name == "otel_token_exporter" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "invalid_client" in errors[0].getMessage()
    assert "wrong-secret-xyz" not in caplog.text
    assert idp.client_secret not in caplog.text


def test_fatal_error_recovers_once_fixed(idp, managers, caplog):
    caplog.set_level(logging.INFO, logger="otel_token_exporter")
    configured = idp.client_secret
    m = managers(idp_source(idp), policy=RefreshPolicy(fatal_cooldown=0.5))
    idp.control(client_secret="other-secret")  # the IdP no longer accepts ours
    m.start()
    wait_until(lambda: idp.token_requests() >= 1, what="first attempt")
    idp.control(client_secret=configured)
    assert m.get(timeout=10).generation == 1
    assert [r["client_auth_ok"] for r in idp.requests()][:2] == [False, True]
    assert any("recovered" in r.getMessage() for r in caplog.records)


def test_failures_back_off_without_a_hot_loop(managers):
    clock = FakeClock()
    src = CountingSource(clock=clock, fail=TransientTokenError("idp down"))
    m = managers(src, clock=clock)
    m.start()
    wait_until(lambda: src.count == 1, what="first attempt")
    for _ in range(5):
        m._kick()
        wake(m)
        time.sleep(0.1)
    assert src.count == 1  # the fake clock has not reached the backoff
    clock.advance(61.0)  # beyond any backoff cap
    wake(m)
    wait_until(lambda: src.count == 2, what="retry after backoff")


# -- clock ------------------------------------------------------------------------------------------


def test_scheduled_refresh_follows_the_monotonic_clock(managers):
    clock = FakeClock()
    src = CountingSource(clock=clock, lifetime=100.0)
    m = managers(src, clock=clock, rng=random.Random(1))
    held = m.get(timeout=5)
    assert 1050.0 <= held.refresh_at <= 1080.0
    clock.t = held.refresh_at - 0.5
    assert m.get(timeout=1).generation == 1
    wake(m)
    time.sleep(0.3)
    assert src.count == 1
    clock.t = held.refresh_at + 0.01
    assert m.get(timeout=1).generation == 1  # still valid: handed out while refreshing
    wait_until(lambda: src.count == 2, what="scheduled refresh")
    wait_until(lambda: m.get(timeout=1).generation == 2, what="generation 2")


def test_wall_clock_jump_changes_nothing(managers, monkeypatch):
    clock = FakeClock()
    src = CountingSource(clock=clock, lifetime=100.0)
    m = managers(src, clock=clock)
    held = m.get(timeout=5)
    real_time = time.time
    for jump in (+3 * 86400.0, -3 * 86400.0):
        monkeypatch.setattr(time, "time", lambda: real_time() + jump)
        for _ in range(3):
            assert m.get(timeout=1).generation == 1
        wake(m)
        time.sleep(0.2)
        assert src.count == 1
        h = m.health()
        assert h.has_token
        assert h.seconds_until_expiry == pytest.approx(held.expires_at - clock.t)


# -- fork, close, health ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_gets_a_token_after_fork_while_parent_lock_was_held(managers):
    src = CountingSource()
    m = managers(src)
    m.start()
    assert m.get(timeout=5).generation == 1
    assert m.reject(1) is True  # the child must fetch: the current token is rejected
    src.gate.clear()  # parent's forced fetch stays in flight
    wait_until(lambda: src.started == 2, what="parent fetch in flight")
    held_lock, release = threading.Event(), threading.Event()

    def hold():
        with m._lock:
            held_lock.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held_lock.wait(5)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(r)
            src.gate.set()
            h = m.get(timeout=5)
            os.write(w, f"ok {h.generation} {src.count}".encode())
            code = 0
        except BaseException as e:  # noqa: BLE001
            os.write(w, f"err {type(e).__name__}".encode())
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 20)
        out = os.read(r, 200).decode() if ready else "timeout"
    finally:
        os.close(r)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        release.set()
        holder.join(5)
        src.gate.set()
    status, *rest = out.split()
    assert status == "ok", out
    assert int(rest[0]) >= 1


def test_close_aborts_a_hanging_fetch_and_leaves_no_thread(idp):
    idp.control(hang=True)
    m = TokenManager(idp_source(idp, timeout=20.0))
    m.start()
    wait_until(lambda: idp.token_requests() == 1, what="the hanging request")
    wait_until(lambda: m.health().refreshing, what="the fetch in flight")
    thread = m._thread
    t0 = time.monotonic()
    m.close(timeout=1.0)
    elapsed = time.monotonic() - t0
    try:
        assert elapsed < 1.5, elapsed
        assert not thread.is_alive()  # the 20 s fetch was interrupted, not waited out
        with pytest.raises(NoTokenAvailable):
            m.get(timeout=0.1)
    finally:
        idp.control(hang=False)
        thread.join(10)


def test_closed_manager_starts_no_thread(managers):
    src = CountingSource()
    m = managers(src)
    m.close()
    with pytest.raises(NoTokenAvailable):
        m.get(timeout=0.5)
    assert m._thread is None and src.count == 0


def test_health_never_contains_the_token(managers):
    src = CountingSource()
    m = managers(src)
    held = m.get(timeout=5)
    h = m.health()
    assert h.generation == 1 and h.has_token and h.refresh_count == 1
    for text in (repr(h), str(h), repr(m), str(m), repr(held), str(held)):
        assert held.value not in text
        assert "secret-token-value" not in text


def test_health_after_failure_names_the_error_type_only(managers):
    src = CountingSource(fail=TransientTokenError("idp says secret-token-value-x"))
    m = managers(src)
    m.start()
    wait_until(lambda: m.health().failure_count >= 1, what="a failure")
    h = m.health()
    assert h.last_error == "TransientTokenError"
    assert "secret-token-value" not in repr(h)


class _RotatingSource:
    """Asks to be re-read soon (like a token file); its value changes on the third read."""

    def __init__(self):
        self.reads = 0

    def fetch(self) -> Token:
        self.reads += 1
        now = time.monotonic()
        value = "token-A" if self.reads < 3 else "token-B"
        return Token(value, expires_at=now + 60, refresh_hint=now + 0.2, obtained_at=now)


def test_source_hinted_rereads_are_rechecks_and_a_changed_value_is_a_source_change():
    seen = []
    manager = TokenManager(_RotatingSource())
    manager.add_listener(lambda trigger, outcome, *_: seen.append((trigger, outcome)))
    try:
        manager.start()
        deadline = time.monotonic() + 5
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        manager.close()
    assert seen[:4] == [
        ("initial", "success"),
        ("recheck", "success"),
        ("source_change", "success"),
        ("recheck", "success"),
    ]
