"""The health snapshot (TokenManager.health() -> Health) against the real IdP, through an outage."""

from __future__ import annotations


import pytest

from otel_token_exporter import TokenOTLPLogExporter
from otel_token_exporter.manager import Health, TokenManager
from otel_token_exporter.sources.oauth2 import ClientCredentialsSource
from otel_token_exporter.token import TokenError
from helpers import wait_until



@pytest.fixture
def manager(idp):
    idp.control(lifetime=3)  # a token really lives 2-3 s
    source = ClientCredentialsSource(idp.token_url, idp.client_id, idp.client_secret, timeout=5.0)
    m = TokenManager(source)
    yield m
    m.close(timeout=5.0)


def test_before_the_first_token_the_snapshot_says_so(idp):
    idp.control(hang=True)
    source = ClientCredentialsSource(idp.token_url, idp.client_id, idp.client_secret, timeout=5.0)
    m = TokenManager(source)
    try:
        h = m.health()
        assert (h.generation, h.has_token, h.seconds_until_expiry, h.seconds_until_refresh) == (0, False, None, None)
        assert (h.consecutive_failures, h.last_error, h.refresh_count, h.failure_count) == (0, None, 0, 0)
        m.start()
        assert wait_until(lambda: m.health().refreshing, 5)
        assert m.health().generation == 0
    finally:
        idp.control(hang=False)
        m.close(timeout=5.0)


def test_generation_and_times_follow_scheduled_refreshes(manager):
    manager.start()
    assert wait_until(lambda: manager.health().generation >= 1, 10)
    h = manager.health()
    assert h.has_token and h.generation == 1 and h.refresh_count == 1
    assert 0 < h.seconds_until_expiry <= 3.0
    assert 0 <= h.seconds_until_refresh < h.seconds_until_expiry
    assert (h.consecutive_failures, h.last_error, h.failure_count) == (0, None, 0)

    assert wait_until(lambda: manager.health().generation >= 3, 15)
    h2 = manager.health()
    assert h2.refresh_count == h2.generation >= 3
    assert h2.has_token and 0 < h2.seconds_until_expiry <= 3.0
    assert h2.failure_count == 0 and h2.consecutive_failures == 0


def test_outage_counts_consecutive_failures_and_recovery_resets_them(idp, manager):
    manager.start()
    assert wait_until(lambda: manager.health().generation >= 1, 10)
    gen = manager.health().generation
    idp.control(faults=[{"status": 503, "count": 10_000}])  # the IdP is down from now on

    assert wait_until(lambda: manager.health().consecutive_failures >= 3, 20), manager.health()
    h = manager.health()
    assert h.last_error == "TransientTokenError"
    assert h.failure_count >= h.consecutive_failures >= 3
    assert h.generation == gen  # no new token while the IdP is down
    assert wait_until(lambda: not manager.health().has_token, 10)  # the last token ran out
    assert manager.health().seconds_until_expiry <= 0

    idp.control(clear_faults=True)
    assert wait_until(lambda: manager.health().consecutive_failures == 0, 20), manager.health()
    h = manager.health()
    assert h.last_error is None
    assert h.has_token and h.generation > gen
    assert h.failure_count >= 3  # the running total is kept


def test_last_error_is_a_class_name_never_the_message():
    secret = "do-not-show-this-secret"

    class Failing:
        def fetch(self):
            raise TokenError(f"the IdP said: bad secret {secret}")

    m = TokenManager(Failing())
    try:
        m.start()
        assert wait_until(lambda: m.health().consecutive_failures >= 1, 5)
        h = m.health()
        assert h.last_error == "TokenError"
        assert secret not in repr(h) and secret not in str(h) and secret not in repr(m)
    finally:
        m.close()


def test_snapshot_never_contains_the_token(idp, otlp_http_receiver):
    exp = TokenOTLPLogExporter(endpoint=otlp_http_receiver.endpoint, token_url=idp.token_url,
                               client_id=idp.client_id, client_secret=idp.client_secret, env={})
    try:
        token = exp.token_manager.get(10).value
        h = exp.token_manager.health()
        assert isinstance(h, Health) and h.generation == 1
        for text in (repr(h), str(h), repr(exp.token_manager), repr(exp), str(vars(h))):
            assert token not in text
            assert idp.client_secret not in text
        # only numbers, booleans and the error class name: nothing that could carry a token
        assert all(isinstance(v, (int, float, bool, type(None))) for k, v in vars(h).items() if k != "last_error")
    finally:
        exp.shutdown(timeout_millis=3000)
