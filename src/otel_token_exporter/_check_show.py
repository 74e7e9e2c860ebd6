"""What ``otel-token-exporter check`` shows, and what it never shows.

Resolved exporter settings (header values masked), the token settings in use (values of the
harmless ones; ``***`` for secrets, tokens, command lines and anything unknown), a JWT's
``iss``/``aud``/``scope``/``exp`` read without verifying (never the token or its signature), and
the library's own log lines only with ``--verbose`` (the check says everything in its own lines).
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ._check_diagnose import OPTION_VARIABLES, safe_url, target_url
from ._check_targets import Target
from ._redact import redact, short
from .config import ENV_PREFIX
from .settings import ExporterSettings

__all__ = ["settings_doc", "settings_line", "source_settings", "jwt_claims", "claim_text", "LogCapture", "MASK"]

#: Settings whose values are shown; every other OTEL_TOKEN_EXPORTER_* value (a secret, a token,
#: a command line, extra parameters) is shown as ***.
_SHOWN_OPTIONS = {
    "source", "token_url", "client_id", "scope", "audience", "resource", "client_auth", "client_secret_file",
    "client_private_key_file", "client_key_id", "client_key_alg", "client_assertion_file",
    "token_client_certificate_file", "token_client_key_file", "subject_token_file", "subject_token_type",
    "token_ca_file", "token_timeout", "token_file", "token_file_recheck", "token_command_timeout",
    "google_scopes", "azure_scope", "azure_tenant_id", "header_name", "scheme", "max_auth_retries",
    "allow_plaintext", "buffer_max_records", "buffer_max_bytes",
}
_SHOWN_VARIABLES = {OPTION_VARIABLES[o] for o in _SHOWN_OPTIONS} | {ENV_PREFIX + "DEFAULT_LIFETIME", ENV_PREFIX + "FATAL_COOLDOWN"}
MASK = "***"


# -- settings --------------------------------------------------------------------------
def settings_doc(s: ExporterSettings) -> dict[str, Any]:
    doc = {
        "protocol": s.protocol, "endpoint": target_url(s), "tls": not s.plaintext, "timeout": s.timeout,
        "compression": s.compression, "auth_header": f"{s.header_name}: {s.scheme + ' ' if s.scheme else ''}<token>",
        "headers": {name: MASK for name, _ in s.headers}, "max_auth_retries": s.max_auth_retries,
    }
    for name in ("certificate_file", "client_certificate_file", "client_key_file"):
        if getattr(s, name):
            doc[name] = getattr(s, name)
    if s.allow_plaintext:
        doc["allow_plaintext"] = True
    return doc


def settings_line(s: ExporterSettings) -> str:
    doc = settings_doc(s)
    parts = [f"{s.protocol} {doc['endpoint']}" + ("" if doc["tls"] else " (plaintext)"),
             f"timeout {s.timeout:g}s", f"compression {s.compression}", f"header {doc['auth_header']}"]
    if doc["headers"]:
        parts.append("headers " + ",".join(f"{k}={MASK}" for k in doc["headers"]))
    parts += [f"{k} {doc[k]}" for k in ("certificate_file", "client_certificate_file", "client_key_file") if k in doc]
    return ", ".join(parts)


def source_settings(env: Mapping[str, str], target: Target) -> dict[str, str]:
    """The token settings in use, as given: values of the safe ones, *** for the rest."""
    shown: dict[str, str] = {}
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and (env[name] or "").strip():
            shown[name] = _shown(name in _SHOWN_VARIABLES, env[name])
    for option, value in target.kwargs.items():
        if option in OPTION_VARIABLES and value is not None:
            shown[f"{target.name}.{option}"] = _shown(option in _SHOWN_OPTIONS, value)
    return shown


def _shown(safe: bool, value: Any) -> str:
    if not safe:
        return MASK
    text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value).strip()
    return safe_url(text) if text.lower().startswith(("http://", "https://")) else short(text, 200)


def jwt_claims(value: str) -> dict[str, Any] | None:
    """iss, aud, scope and exp of a JWT's payload, read without verifying; None for another token."""
    parts = value.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeError, RecursionError):
        return None
    if not isinstance(claims, dict):
        return None
    scope = claims.get("scope", claims.get("scp"))
    return {"iss": claims.get("iss"), "aud": claims.get("aud"), "scope": scope, "exp": claims.get("exp")}


def claim_text(name: str, value: Any) -> str:
    if value is None:
        return "(none)"
    if name == "exp" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            when = datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            return short(str(value), 40)
        return f"{when} (in {value - time.time():.0f}s)"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return short(str(value), 120)


class LogCapture(logging.Handler):
    """Keeps the library's and the SDK's log lines off the output (the check says it in its own
    lines); with ``--verbose`` they go to stderr."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.DEBUG if verbose else logging.WARNING)
        self.verbose = verbose
        self._saved: list[tuple[logging.Logger, bool, int]] = []

    def install(self) -> None:
        root = logging.getLogger()
        root.addHandler(self)
        if self.verbose and root.level > logging.INFO:
            self._saved.append((root, root.propagate, root.level))
            root.setLevel(logging.INFO)

    def remove(self) -> None:
        logging.getLogger().removeHandler(self)
        for logger, _propagate, level in self._saved:
            logger.setLevel(level)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.verbose:
            return
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string in a library's message
            message = f"{record.msg} {record.args}"
        if not record.name.startswith("otel_token_exporter"):  # ours are written never to hold a secret
            message = redact(message)
        sys.stderr.write(f"log     {record.levelname.lower()} {record.name}: {short(message, 500)}\n")
