"""ClientCredentialsSource (sources/oauth2.py) against the real test IdP on loopback."""

from __future__ import annotations

import base64
import json
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, quote_plus

import pytest

from otel_token_exporter.jwt import jwt_expiry
from otel_token_exporter.manager import TokenManager
from otel_token_exporter.schedule import RefreshPolicy
from otel_token_exporter.sources.oauth2 import ClientCredentialsSource
from otel_token_exporter.token import FatalTokenError, TokenError, TransientTokenError
from helpers import RecordingServer


def make_source(idp, **kw):
    kw.setdefault("client_secret", idp.client_secret)
    kw.setdefault("timeout", 5.0)
    return ClientCredentialsSource(idp.token_url, idp.client_id, **kw)


def last_request(idp):
    reqs = idp.requests()
    assert reqs, "the IdP saw no token request"
    return reqs[-1]


def assert_clean(text, idp, *values):
    """No secret or token in ``text``; the token endpoint is named."""
    assert idp.token_url in text
    secret = idp.client_secret
    for s in (secret, quote(secret, safe=""), quote_plus(secret), *values):
        if s:
            assert s not in text
    assert "eyJ" not in text


def fake_jwt(claims):
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.c2ln"


# -- client authentication and request parameters -----------------------------------------------


def test_basic_auth_is_form_urlencoded_per_rfc6749(idp):
    assert any(c in idp.client_secret for c in ":/+%")  # the fixture secret has odd characters
    token = make_source(idp).fetch()
    rec = last_request(idp)
    assert rec["auth_method"] == "basic"
    assert rec["client_auth_ok"] is True
    assert rec["basic_rfc_ok"] is True
    assert rec["basic_raw_ok"] is False  # the raw secret would have been wrong
    assert rec["grant_type"] == "client_credentials"
    assert token.value.startswith("eyJ")


def test_body_auth_sends_id_and_secret_in_the_form(idp):
    make_source(idp, auth_method="post").fetch()
    rec = last_request(idp)
    assert rec["auth_method"] == "body"
    assert rec["client_auth_ok"] is True
    assert rec["client_id"] == idp.client_id


def test_scope_audience_and_extra_params_are_sent(idp):
    src = make_source(idp, scope="logs.write metrics", audience="https://otlp.example",
                      extra_params={"resource": "urn:otlp"})
    src.fetch()
    rec = last_request(idp)
    assert rec["scope"] == "logs.write metrics"
    assert rec["audience"] == "https://otlp.example"
    assert rec["resource"] == "urn:otlp"


def test_no_scope_or_audience_when_not_configured(idp):
    make_source(idp).fetch()
    rec = last_request(idp)
    assert rec["scope"] is None and rec["audience"] is None and rec["resource"] is None


# -- expiry -------------------------------------------------------------------------------------


def test_expires_in_is_counted_from_send_time(idp):
    idp.control(lifetime=3600, delay_ms=1500)
    before = time.monotonic()
    token = make_source(idp).fetch()
    after = time.monotonic()
    assert after - before >= 1.4
    assert token.obtained_at <= before + 0.2
    assert token.expires_at <= before + 3600 + 0.2
    # counted from the answer it would be >= after + 3600 - rounding
    assert token.expires_at < after + 3600 - 1.0


def test_jwt_exp_used_when_expires_in_omitted(idp):
    idp.control(lifetime=600, expires_in="omit")
    token = make_source(idp).fetch()
    now = time.monotonic()
    # exp is whole seconds: 599-600 s left
    assert now + 597 < token.expires_at <= now + 601


def test_default_lifetime_when_neither_expires_in_nor_jwt(idp):
    idp.control(faults=[{"status": 200, "body": {"access_token": "opaque-abc-123", "token_type": "Bearer"}}])
    token = make_source(idp).fetch()
    assert token.expires_at is None
    # ... and the manager applies its default lifetime
    idp.control(faults=[{"status": 200, "body": {"access_token": "opaque-abc-456", "token_type": "Bearer"}}])
    m = TokenManager(make_source(idp), policy=RefreshPolicy(default_lifetime=123.0))
    try:
        held = m.get(timeout=10)
        assert held.lifetime == pytest.approx(123.0)
    finally:
        m.close()


def test_string_expires_in_is_accepted(idp):
    # Azure AD v1 and others send expires_in as a numeric string
    idp.control(expires_in="1800")
    token = make_source(idp).fetch()
    assert token.lifetime == pytest.approx(1800, abs=1.0)


def test_huge_expires_in_is_capped_at_366_days(idp):
    idp.control(expires_in=10**12)
    token = make_source(idp).fetch()
    assert token.lifetime <= 366 * 24 * 3600.0 + 1


@pytest.mark.parametrize("value", [-60, 0, "soon", True, [3600], {"s": 1}, "NaN", "inf"])
def test_invalid_expires_in_is_a_clear_error(idp, value):
    idp.control(expires_in=value)
    with pytest.raises(TransientTokenError) as ei:
        make_source(idp).fetch()
    text = str(ei.value)
    assert "expires_in" in text
    assert_clean(text, idp)


def test_jwt_expiry_helper_ignores_absurd_exp():
    assert jwt_expiry("not.a.jwt") is None
    assert jwt_expiry(fake_jwt({"exp": "tomorrow"})) is None
    assert jwt_expiry(fake_jwt({"exp": 10**400})) is None  # does not fit a float
    assert jwt_expiry(fake_jwt({"exp": 1})) is None  # already past
    deep = "[" * 100000 + "]" * 100000
    b = base64.urlsafe_b64encode(deep.encode()).rstrip(b"=").decode()
    assert jwt_expiry(f"eyJhbGciOiJub25lIn0.{b}.x") is None
    at = jwt_expiry(fake_jwt({"exp": 2_000_000_000}), wall_clock=lambda: 1_999_999_000.0,
                    monotonic=lambda: 50.0)
    assert at == pytest.approx(1050.0)


def test_far_future_jwt_exp_is_capped(idp):
    token_value = fake_jwt({"exp": 10**15})
    idp.control(faults=[{"status": 200, "body": {"access_token": token_value, "token_type": "bearer"}}])
    token = make_source(idp).fetch()
    assert token.lifetime <= 366 * 24 * 3600.0 + 1


# -- secret file ----------------------------------------------------------------------------------


def test_client_secret_file_is_reread_at_each_fetch(idp, tmp_path):
    path = tmp_path / "secret"
    path.write_text(idp.client_secret + "\n")
    src = ClientCredentialsSource(idp.token_url, idp.client_id, client_secret_file=str(path), timeout=5)
    first = src.fetch()
    new_secret = "rotated/secret+2%:x"
    idp.control(client_secret=new_secret)
    # the file still has the old secret: refused
    with pytest.raises(FatalTokenError) as ei:
        src.fetch()
    assert_clean(str(ei.value), idp, new_secret)
    path.write_text(new_secret)
    second = src.fetch()
    assert first.value and second.value
    assert [r["client_auth_ok"] for r in idp.requests()] == [True, False, True]


def test_missing_secret_file_is_fatal_and_named(tmp_path, idp):
    path = tmp_path / "nope"
    src = ClientCredentialsSource(idp.token_url, idp.client_id, client_secret_file=str(path))
    with pytest.raises(FatalTokenError, match="nope"):
        src.fetch()
    assert idp.token_requests() == 0


# -- malformed responses --------------------------------------------------------------------------


def fault_error(idp, fault, exc_type=TokenError, **src_kw):
    idp.control(faults=[fault])
    with pytest.raises(exc_type) as ei:
        make_source(idp, **src_kw).fetch()
    assert_clean(str(ei.value), idp)
    return ei.value


def test_html_200_is_a_clear_error(idp):
    idp.control(garbage="<html><body>Login</body></html>")
    with pytest.raises(TransientTokenError) as ei:
        make_source(idp).fetch()
    assert "200" in str(ei.value) and "text/html" in str(ei.value)
    assert_clean(str(ei.value), idp)


def test_truncated_json_is_a_clear_error(idp):
    err = fault_error(idp, {"status": 200, "body": '{"access_token": "abc', "content_type": "application/json"},
                      TransientTokenError)
    assert "JSON" in str(err)


def test_error_in_a_200_is_reported(idp):
    err = fault_error(idp, {"status": 200, "body": {"error": "invalid_scope"}}, FatalTokenError)
    assert "invalid_scope" in str(err)


def test_missing_access_token_is_a_clear_error(idp):
    err = fault_error(idp, {"status": 200, "body": {"token_type": "Bearer", "expires_in": 60}},
                      TransientTokenError)
    assert "access_token" in str(err)


def test_non_bearer_token_type_is_refused(idp):
    err = fault_error(idp, {"status": 200, "body": {"access_token": "mac-token-1", "token_type": "mac",
                                                    "expires_in": 60}}, FatalTokenError)
    assert "bearer" in str(err)
    assert "mac-token-1" not in str(err)


def test_oversize_body_is_refused(idp):
    big = {"access_token": "x" * (70 * 1024), "token_type": "Bearer"}
    err = fault_error(idp, {"status": 200, "body": big}, TransientTokenError)
    assert "65536" in str(err)
    assert "xxxxxxxx" not in str(err)



@pytest.mark.parametrize("status", [302, 307, 308])
def test_redirect_is_not_followed(idp, status):
    target = RecordingServer("stolen")
    try:
        err = fault_error(idp, {"status": status, "headers": {"Location": target.url}}, FatalTokenError)
        assert str(status) in str(err) and "redirect" in str(err)
        assert target.seen == []
    finally:
        target.stop()


def test_connection_reset_is_transient(idp):
    idp.control(reset=True)
    with pytest.raises(TransientTokenError) as ei:
        make_source(idp).fetch()
    assert_clean(str(ei.value), idp)


def test_hang_is_bounded_by_timeout(idp):
    idp.control(faults=[{"hang": True}])
    t0 = time.monotonic()
    with pytest.raises(TransientTokenError) as ei:
        make_source(idp, timeout=1.0).fetch()
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 10.0
    assert "1s" in str(ei.value)
    assert_clean(str(ei.value), idp)


@pytest.mark.parametrize("error", ["invalid_client", "invalid_grant", "invalid_scope", "unauthorized_client"])
def test_rfc6749_client_errors_are_fatal(idp, error):
    err = fault_error(idp, {"status": 400, "body": {"error": error, "error_description": "nope"}},
                      FatalTokenError)
    assert error in str(err)


def test_wrong_secret_is_fatal(idp):
    src = ClientCredentialsSource(idp.token_url, idp.client_id, client_secret="wrong-secret-value")
    with pytest.raises(FatalTokenError) as ei:
        src.fetch()
    assert "invalid_client" in str(ei.value)
    assert "wrong-secret-value" not in str(ei.value)
    assert_clean(str(ei.value), idp)


@pytest.mark.parametrize("status", [503, 429, 500])
@pytest.mark.parametrize("error", ["server_error", "temporarily_unavailable", None])
def test_server_errors_are_transient_with_retry_after_seconds(idp, status, error):
    body = {"error": error} if error else ""
    err = fault_error(idp, {"status": status, "body": body, "retry_after": "7"}, TransientTokenError)
    assert err.retry_after == pytest.approx(7.0)


def test_retry_after_http_date_is_parsed(idp):
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    err = fault_error(idp, {"status": 503, "body": {"error": "temporarily_unavailable"},
                            "headers": {"Retry-After": when}}, TransientTokenError)
    assert 115 <= err.retry_after <= 121


def test_unparseable_retry_after_is_ignored(idp):
    err = fault_error(idp, {"status": 429, "retry_after": "soon"}, TransientTokenError)
    assert err.retry_after is None


def test_error_body_echoing_secret_and_jwt_is_redacted(idp):
    secret = idp.client_secret
    jwt_value = fake_jwt({"sub": "x", "exp": 2_000_000_000})
    basic = base64.b64encode(f"{idp.client_id}:{quote(secret, safe='')}".encode()).decode()
    description = (f"bad request: secret {secret} form client_secret={quote_plus(secret)} "
                   f"raw {quote(secret, safe='')} header {basic} token {jwt_value}")
    err = fault_error(idp, {"status": 400, "body": {"error": "invalid_request",
                                                    "error_description": description}}, FatalTokenError)
    text = str(err)
    assert "invalid_request" in text and "bad request" in text
    assert basic not in text
    assert jwt_value not in text


def test_exception_has_no_chained_context_with_secrets(idp):
    idp.control(reset=True)
    with pytest.raises(TransientTokenError) as ei:
        make_source(idp).fetch()
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_repr_names_endpoint_not_secret(idp):
    src = make_source(idp)
    text = repr(src)
    assert idp.client_id in text
    assert idp.client_secret not in text
