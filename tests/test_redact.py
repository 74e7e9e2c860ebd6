"""Patterns that keep secrets out of text (_redact.py)."""

from __future__ import annotations

import pytest

from otel_token_exporter._redact import REDACTED, redact, short

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0."
    "eyJzdWIiOiJ0ZXN0LWNsaWVudCIsImV4cCI6MTcwMDAwMDAwMH0."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtX19f"
)


def test_explicit_secret_is_replaced_everywhere():
    out = redact("a s3cret:x b s3cret:x c", ["s3cret:x"])
    assert "s3cret:x" not in out
    assert out.count(REDACTED) == 2


def test_none_and_very_short_secrets_are_skipped():
    # a 1-3 character "secret" would shred ordinary text
    assert redact("abc a b", [None, "", "a"]) == "abc a b"


def test_jwt_is_redacted():
    out = redact(f"token {JWT} was refused")
    assert JWT not in out
    assert "eyJ" not in out
    assert out.startswith("token ") and out.endswith(" was refused")


def test_jwe_five_parts_leave_no_piece_behind():
    jwe = "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5LWVuYw.aXY.Y2lwaGVydGV4dC1zZWNyZXQ.dGFn"
    out = redact(f"x {jwe} y")
    assert "Y2lwaGVydGV4dC1zZWNyZXQ" not in out
    assert out == f"x {REDACTED} y"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Basic", "BASIC"])
def test_authorization_credentials_are_redacted(scheme):
    out = redact(f"Authorization: {scheme} dGVzdC1jbGllbnQ6czNjcmV0== next")
    assert "dGVzdC1jbGllbnQ6czNjcmV0" not in out
    assert out.endswith(" next")
    assert scheme in out


@pytest.mark.parametrize(
    "text, leaked",
    [
        ("grant_type=client_credentials&client_secret=hunter22&scope=x", "hunter22"),
        ('{"access_token": "opaque-token-value", "x": 1}', "opaque-token-value"),
        ("{'refresh_token': 'rt-value'}", "rt-value"),
        ("id_token=idt-value", "idt-value"),
        ("password: pa55word", "pa55word"),
        ("client_assertion=assert-value&x=1", "assert-value"),
        ('{"client_secret":"with spaces inside"}', "spaces inside"),
        ('{"client_secret": "esc\\"aped quote"}', "aped quote"),
        ("token=tok-value", "tok-value"),
        ("api_key=ak-value", "ak-value"),
    ],
)
def test_secret_named_fields_are_redacted(text, leaked):
    out = redact(text)
    assert leaked not in out
    assert REDACTED in out


def test_form_field_redaction_keeps_the_rest_of_the_form():
    out = redact("grant_type=client_credentials&client_secret=hunter22&scope=logs")
    assert out == f"grant_type=client_credentials&client_secret={REDACTED}&scope=logs"


def test_json_field_redaction_keeps_the_structure():
    out = redact('{"access_token": "abc def", "token_type": "Bearer"}')
    assert out == f'{{"access_token": "{REDACTED}", "token_type": "Bearer"}}'


@pytest.mark.parametrize(
    "text",
    [
        "invalid_client: client authentication failed (token_type Bearer expected)",
        "Basic authentication is required",
        'WWW-Authenticate: Bearer realm="logs"',
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_short_makes_one_printable_line():
    assert short("a\nb\tc\x00d") == "a b c d"
    assert short("  padded  ") == "padded"


def test_short_truncates_with_ellipsis():
    out = short("x" * 500, 50)
    assert len(out) == 50
    assert out.endswith("…")
    assert short("y" * 50, 50) == "y" * 50
