"""Where a bearer token may travel: over TLS, or in plaintext only to this machine (RFC 6750 §5.3).

One place decides for every transport and for the token endpoint. A plaintext endpoint on another
host is refused at construction with a message naming the opt-in (``OTEL_TOKEN_EXPORTER_ALLOW_PLAINTEXT``
or ``allow_plaintext=True``): a local collector or sidecar on loopback needs no opt-in.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .config import ENV_PREFIX, ConfigurationError

__all__ = ["ALLOW_PLAINTEXT_SETTING", "is_loopback", "check_transport", "check_token_url"]

ALLOW_PLAINTEXT_SETTING = ENV_PREFIX + "ALLOW_PLAINTEXT"


def is_loopback(host: str | None) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (no DNS: a name other than localhost is remote)."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(endpoint: str) -> str | None:
    """The host of a URL, or of a bare ``host:port`` (gRPC style)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    return parts.hostname


def check_transport(what: str, endpoint: str, plaintext: bool, allowed: bool) -> None:
    """Refuse to send a token in plaintext to another host unless explicitly allowed."""
    if not plaintext or allowed:
        return
    host = host_of(endpoint)
    if is_loopback(host):
        return
    raise ConfigurationError(
        f"{what} {endpoint!r} is plaintext to a non-loopback host ({host}); tokens and client credentials are only "
        f"sent over TLS or to loopback (RFC 6750 §5.3). Use https, or opt in with "
        f"{ALLOW_PLAINTEXT_SETTING}=true (argument allow_plaintext=True)"
    )


def check_token_url(source: object, allowed: bool) -> None:
    """Client credentials go to the token URL: the same rule, for any source that has one."""
    token_url = getattr(source, "token_url", None)
    if isinstance(token_url, str):
        check_transport("the token URL", token_url, token_url.lower().startswith("http:"), allowed)
