"""What ``otel-token-exporter check`` makes of an answer: one line that names the setting to fix.

An :class:`~otel_token_exporter.transports.Attempt` that got no usable answer is looked at once
more with a tiny probe of the endpoint (no token, no telemetry): nothing listening there (the
endpoint setting), a server speaking the other OTLP protocol (the protocol setting: gRPC is HTTP/2
with prior knowledge, OTLP/HTTP answers HTTP/1.1), or TLS on one side only (the URL's scheme).
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ._check_targets import Target
from ._redact import redact, short
from .config import ENV_PREFIX
from .settings import GRPC, OWN_SETTINGS, ExporterSettings
from .sources import SOURCE_OPTIONS
from .transports import Attempt

__all__ = ["safe_url", "target_url", "explain", "OPTION_VARIABLES", "in_file_note"]

#: Keyword argument -> the variable it stands for (source and own settings), for messages.
OPTION_VARIABLES = {opt: ENV_PREFIX + opt.upper() for opt in SOURCE_OPTIONS - {"google_credentials", "azure_credential"}}
OPTION_VARIABLES.update({
    "client_private_key_file": ENV_PREFIX + "CLIENT_KEY_FILE",
    "token_client_certificate_file": ENV_PREFIX + "TOKEN_CLIENT_CERTIFICATE",
    "token_client_key_file": ENV_PREFIX + "TOKEN_CLIENT_KEY",
})
OPTION_VARIABLES.update({opt: ENV_PREFIX + suffix for opt, suffix in OWN_SETTINGS.items()})

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
_NO_ANSWER_GRPC = {None, "UNAVAILABLE", "UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED", "CANCELLED"}


def safe_url(url: str) -> str:
    """Scheme, host, port and path: never a password in the URL or its query string."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return short(redact(url), 120)
    if not parts.scheme or not parts.hostname:
        return short(redact(url), 120)
    user = "***@" if parts.username or parts.password else ""
    return f"{parts.scheme}://{user}{parts.hostname}{port}{parts.path}{'?***' if parts.query else ''}"


def target_url(settings: ExporterSettings) -> str:
    if settings.protocol == GRPC:
        return f"{'http' if settings.plaintext else 'https'}://{settings.endpoint}"
    return safe_url(settings.endpoint)


def in_file_note(message: str, target: Target) -> str:
    """With a configuration file, say which of its keys a variable named in ``message`` stands for."""
    if not target.file:
        return message
    found = []  # (where the message names it, the file's key): in the message's own order
    for opt, var in OPTION_VARIABLES.items():
        named = re.search(rf"\b{var}\b", message) if target.kwargs.get(opt) is not None else None
        if named:
            found.append((named.start(), opt))
    if not found:
        return message
    keys = ", ".join(opt for _, opt in sorted(found))
    return f"{message} (in {target.file}: {keys} at {target.origin})"


# -- an attempt's answer ----------------------------------------------------------------------
def explain(target: Target, settings: ExporterSettings, attempt: Attempt, env: Mapping[str, str],
            source: Any, budget: float, send_timeout: float) -> tuple[bool, str]:
    """(got through, one line) for the answer to the test request."""
    url = target_url(settings)
    item = settings.signal.item
    status = _status(attempt)
    if attempt.ok:
        if attempt.partial_rejected:
            return False, (f"{url} answered {status} but rejected {attempt.partial_rejected} {item}(s): "
                           f"{attempt.partial_message or 'no reason given'}")
        return True, f"{url} answered {status}: 1 {item} accepted"
    endpoint = target.setting("endpoint", env)
    if attempt.no_token:
        return False, f"no token to send: {attempt.detail}"
    if attempt.rejected:
        hint = getattr(source, "refusal_hint", None)
        advice = hint() if callable(hint) else (
            "check the token source's audience / scope settings and the issuer the endpoint trusts")
        again = " and a freshly fetched one too" if attempt.resent else ""
        return False, in_file_note(f"{url} refused the token ({_said(attempt)}){again}: {advice}", target)
    if attempt.redirect:
        return False, f"{url}: {attempt.detail}: set {endpoint} to the final address"
    if attempt.config_error:
        return False, (f"{url}: {attempt.detail}: check {target.setting('insecure', env)} "
                       f"and the scheme of {endpoint}")
    if isinstance(attempt.status, int):
        if attempt.status == 404:
            return False, (f"{url} answered HTTP 404 (no OTLP {settings.signal.name} endpoint at that path): "
                           f"check {endpoint} (a signal's endpoint is the full URL, .../{settings.signal.path}; "
                           "OTEL_EXPORTER_OTLP_ENDPOINT is a base URL the path is added to)")
        return False, f"{url} answered {_said(attempt)}: check {endpoint}"
    if attempt.status == "UNIMPLEMENTED":
        return False, f"{url} does not serve OTLP {settings.signal.name} ({_said(attempt)}): check {endpoint}"
    if attempt.status not in _NO_ANSWER_GRPC:
        return False, f"{url} answered {_said(attempt)}: check {endpoint}"
    return False, _no_answer(target, settings, attempt, env, budget, send_timeout)


def _status(attempt: Attempt) -> str:
    return f"HTTP {attempt.status}" if isinstance(attempt.status, int) else str(attempt.status)


def _said(attempt: Attempt) -> str:
    status, detail = _status(attempt), short(attempt.detail or "", 160)
    if not detail or detail == status:
        return status
    return detail if detail.startswith(status) else f"{status}: {detail}"


def _no_answer(target: Target, settings: ExporterSettings, attempt: Attempt, env: Mapping[str, str],
               budget: float, send_timeout: float) -> str:
    url = target_url(settings)
    endpoint = target.setting("endpoint", env)
    detail = short(attempt.detail or _status(attempt), 160)
    host, port = _host_port(settings)
    tls = not settings.plaintext
    deadline = time.monotonic() + max(min(budget, 2.0), 0.2)
    try:
        _connect(host, port, False, deadline).close()
    except OSError as exc:
        return f"cannot reach {url} ({_os_error(exc)}): check {endpoint}"
    if settings.protocol == GRPC and _speaks_http1(host, port, tls, deadline):
        path = urlsplit(str(target.raw("endpoint", env) or "")).path
        ignored = f" (gRPC ignores the URL's path {path})" if path not in ("", "/") else ""
        return (f"protocol mismatch: {url} answers HTTP/1.1 (OTLP/HTTP), not gRPC{ignored}: "
                f"{_protocol_fix(target, env, 'http/protobuf')}, or point {endpoint} at the collector's "
                "gRPC port (4317)")
    if settings.protocol != GRPC and _speaks_http2(host, port, tls, deadline):
        return (f"protocol mismatch: {url} answers gRPC (HTTP/2), not OTLP/HTTP: "
                f"{_protocol_fix(target, env, 'grpc')}, or point {endpoint} at the collector's OTLP/HTTP "
                "port (4318)")
    if tls and not _speaks_tls(host, port, deadline):
        return f"{url}: the server does not speak TLS there: use http:// in {endpoint}"
    if not tls and _speaks_tls(host, port, deadline):
        return f"{url}: the server speaks TLS but the endpoint is plaintext: use https:// in {endpoint}"
    untrusted = _tls_verify_error(host, port, settings.certificate_file, deadline) if tls else None
    if untrusted:
        return (f"{url}: the server's TLS certificate is not accepted ({untrusted}): set "
                f"{target.setting('certificate_file', env)} to the CA that signed it, or check the host name "
                f"in {endpoint}")
    if "tls" in detail.lower() or "ssl" in detail.lower() or "certificate" in detail.lower():
        return f"{url}: {detail}: check {target.setting('certificate_file', env)} and the host name in {endpoint}"
    if "within" in detail or attempt.status == "DEADLINE_EXCEEDED":
        longer = (f"{target.setting('timeout', env)} ({settings.timeout:g}s)" if send_timeout >= settings.timeout
                  else f"--timeout (the check's budget left {send_timeout:.1f}s)")
        return f"{url} did not answer in time ({detail}): check {endpoint}, or allow longer with {longer}"
    return f"{url}: {detail}: check {endpoint} and {target.setting('protocol', env)}"


def _protocol_fix(target: Target, env: Mapping[str, str], wanted: str) -> str:
    """How to switch ``target`` to the ``wanted`` protocol, naming the setting."""
    if target.fixed_protocol:
        variant = "token_otlp_proto_http" if wanted != GRPC else "token_otlp_proto_grpc"
        where = f"the {target.name} key at {target.origin}" if target.file else target.origin
        return f"{where} fixes the protocol to {target.fixed_protocol}: use {variant} instead"
    return f"set {target.setting('protocol', env)} to {wanted}"


def _host_port(settings: ExporterSettings) -> tuple[str, int]:
    if settings.protocol == GRPC:
        parts = urlsplit("//" + settings.endpoint)
        return parts.hostname or settings.endpoint, parts.port or (4317 if settings.plaintext else 443)
    parts = urlsplit(settings.endpoint)
    return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)


def _os_error(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower() if not isinstance(exc, socket.timeout) else "connect timed out"


# -- probes: a few bytes, no token ------------------------------------------------------------
def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.05)


def _connect(host: str, port: int, tls: bool, deadline: float, alpn: list[str] | None = None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=_left(deadline))
    if not tls:
        return sock
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only which protocol is spoken matters here
    if alpn:
        context.set_alpn_protocols(alpn)
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _read(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(_left(deadline))
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _speaks_http1(host: str, port: int, tls: bool, deadline: float) -> bool:
    try:
        with _connect(host, port, tls, deadline, ["http/1.1"]) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii", "replace"))
            return _read(sock, 8, deadline).startswith(b"HTTP/1.")
    except (OSError, ValueError):
        return False


def _speaks_http2(host: str, port: int, tls: bool, deadline: float) -> bool:
    try:
        with _connect(host, port, tls, deadline, ["h2"]) as sock:
            if tls:
                return getattr(sock, "selected_alpn_protocol", lambda: None)() == "h2"
            sock.sendall(_H2_PREFACE)
            frame = _read(sock, 9, deadline)
            return len(frame) == 9 and frame[3] == 0x04  # the server's SETTINGS frame comes first
    except (OSError, ValueError):
        return False


def _tls_verify_error(host: str, port: int, ca_file: str | None, deadline: float) -> str | None:
    """Why the server's certificate fails verification (with ``ca_file``, else the system's CAs)."""
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
        context.set_alpn_protocols(["h2", "http/1.1"])
        sock = socket.create_connection((host, port), timeout=_left(deadline))
    except (OSError, ValueError):
        return None
    try:
        context.wrap_socket(sock, server_hostname=host).close()
    except ssl.SSLCertVerificationError as exc:
        return short(str(exc.verify_message or exc.reason or "verification failed"), 120)
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
    return None


def _speaks_tls(host: str, port: int, deadline: float) -> bool:
    try:
        with _connect(host, port, True, deadline, ["h2", "http/1.1"]):
            return True
    except (OSError, ValueError):
        return False
