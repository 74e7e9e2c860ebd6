"""A token printed by a command (``OTEL_TOKEN_EXPORTER_TOKEN_COMMAND``), like kubectl exec plugins.

The command line is split like a POSIX shell would split it (:func:`shlex.split`) but run without a
shell: no pipes, globbing or variable expansion (wrap it in ``sh -c '...'`` yourself if you need
them). It gets no stdin, at most ``timeout`` seconds (``..._TOKEN_COMMAND_TIMEOUT``, default 30 s;
on expiry its whole process group is killed) and must print on stdout either

* a bare token, or
* a JSON object with ``access_token`` or ``token`` and optionally ``expires_in`` (seconds) or
  ``expires_at`` (RFC 3339), or
* a Kubernetes ``ExecCredential`` (``{"status": {"token": ..., "expirationTimestamp": ...}}``).

Without an expiry the JWT ``exp`` claim is used, else the manager's default lifetime. A non-zero
exit, a timeout or unusable output is an error that quotes the command's stderr (shortened and with
anything secret-shaped redacted), never its stdout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone

from .._redact import redact, short
from ..jwt import jwt_expiry
from ..token import MAX_LIFETIME, FatalTokenError, Token, TransientTokenError, lifetime_seconds

__all__ = ["CommandTokenSource", "DEFAULT_TIMEOUT", "parse_token_output"]

DEFAULT_TIMEOUT = 30.0
MAX_OUTPUT_BYTES = 256 * 1024


class CommandTokenSource:
    """Runs ``command`` on every fetch and reads the token it prints."""

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        setting: str = "token_command",
        cwd: str | None = None,
    ) -> None:
        if isinstance(command, str):
            try:
                argv = shlex.split(command)
            except ValueError as exc:
                raise ValueError(f"{setting} cannot be split into arguments: {exc}") from None
        else:
            argv = [str(a) for a in command]
        if not argv:
            raise ValueError(f"{setting} is empty")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.argv = argv
        self.timeout = float(timeout)
        self.cwd = cwd
        self._setting = setting
        self.runs = 0

    def __repr__(self) -> str:
        return f"CommandTokenSource({self._name!r})"

    @property
    def _name(self) -> str:
        # Only the program: arguments may carry secrets (--password=...).
        return os.path.basename(self.argv[0])

    def _what(self) -> str:
        return f"token command {self._name!r} ({self._setting})"

    def fetch(self) -> Token:
        started = time.monotonic()
        wall_started = time.time()
        stdout, stderr, code = self._run()
        self.runs += 1
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise TransientTokenError(f"{self._what()} {how}{self._stderr_note(stderr)}")
        try:
            return parse_token_output(stdout, started=started, wall_started=wall_started)
        except _BadOutput as exc:
            raise FatalTokenError(f"{self._what()} {exc}{self._stderr_note(stderr)}") from None
        except _EmptyOutput as exc:
            raise TransientTokenError(f"{self._what()} {exc}{self._stderr_note(stderr)}") from None

    def _stderr_note(self, stderr: bytes) -> str:
        text = stderr.decode("utf-8", "replace").strip()
        if not text:
            return ""
        return f"; stderr: {short(redact(text), 300)}"

    def _run(self) -> tuple[bytes, bytes, int]:
        posix = os.name == "posix"
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                start_new_session=posix,  # its own process group, so a timeout kills helpers too
            )
        except FileNotFoundError:
            raise FatalTokenError(f"{self._what()} was not found (check the path and PATH)") from None
        except PermissionError:
            raise FatalTokenError(f"{self._what()} is not executable (permission denied)") from None
        except OSError as exc:
            raise FatalTokenError(
                f"{self._what()} could not be started: {exc.strerror or type(exc).__name__}"
            ) from None
        self._running = proc
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc, posix)
            try:
                _, stderr = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable child
                stderr = b""
            raise TransientTokenError(
                f"{self._what()} did not finish within {self.timeout:g}s and was killed"
                f"{self._stderr_note(stderr or b'')}"
            ) from None
        except BaseException:
            self._kill(proc, posix)
            proc.wait()
            raise
        finally:
            self._running = None
        if len(stdout) > MAX_OUTPUT_BYTES:
            raise FatalTokenError(f"{self._what()} printed more than {MAX_OUTPUT_BYTES} bytes; refused")
        return stdout, stderr, proc.returncode

    def abort(self) -> None:
        """Kill a command in flight (called by the manager when it closes)."""
        proc = getattr(self, "_running", None)
        if proc is not None:
            self._kill(proc, os.name == "posix")

    @staticmethod
    def _kill(proc: subprocess.Popen, posix: bool) -> None:
        try:
            if posix:
                # Our child leads its own session/group (start_new_session): this kills exactly
                # the command and what it started, nothing else.
                os.killpg(proc.pid, signal.SIGKILL)
            else:  # pragma: no cover - not POSIX
                proc.kill()
        except (ProcessLookupError, PermissionError):
            pass


class _BadOutput(Exception):
    pass


class _EmptyOutput(Exception):
    pass


def parse_token_output(stdout: bytes, *, started: float, wall_started: float) -> Token:
    """The token in a command's stdout (bare or JSON), with its expiry on the monotonic clock.

    Raises ``_BadOutput``/``_EmptyOutput`` with a message that never quotes the output.
    """
    try:
        text = stdout.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _BadOutput("printed output that is not UTF-8 text") from None
    if not text:
        raise _EmptyOutput("printed nothing on stdout")
    if text.startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError:
            raise _BadOutput(f"printed {len(text)} characters that start like JSON but do not parse") from None
        return _from_json(payload, started, wall_started)
    if any(c.isspace() for c in text):
        raise _BadOutput(
            f"printed {len(text.split())} words on stdout: expected a single token or a JSON object "
            "with access_token or token"
        )
    return _token(text, None, started)


def _from_json(payload: object, started: float, wall_started: float) -> Token:
    if not isinstance(payload, dict):
        raise _BadOutput("printed JSON that is not an object")
    source = payload
    status = payload.get("status")
    if payload.get("kind") == "ExecCredential" or (isinstance(status, dict) and "token" in status):
        if not isinstance(status, dict):
            raise _BadOutput("printed an ExecCredential without a status")
        source = status
    value = None
    for key in ("access_token", "token"):
        if isinstance(source.get(key), str) and source[key].strip():
            value = source[key].strip()
            break
    if value is None:
        keys = ", ".join(sorted(str(k) for k in source)[:10]) or "none"
        raise _BadOutput(f"printed JSON without an access_token or token field (fields: {short(keys, 120)})")
    token_type = source.get("token_type")
    if isinstance(token_type, str) and token_type.lower() not in ("bearer", ""):
        raise _BadOutput(f"printed a {short(token_type, 30)!r} token; only bearer tokens are supported")
    expires_at = None
    expires_in = source.get("expires_in")
    if expires_in is not None:
        seconds = lifetime_seconds(expires_in)
        if seconds is None:
            raise _BadOutput("printed an expires_in that is not a positive number of seconds")
        expires_at = started + seconds
    else:
        for key in ("expires_at", "expirationTimestamp", "expiration", "Expiration"):
            raw = source.get(key)
            if raw is None:
                continue
            when = _rfc3339(raw) if isinstance(raw, str) else None
            if when is None:
                raise _BadOutput(f"printed a {key} that is not an RFC 3339 time")
            remaining = when - wall_started
            if remaining <= 0:
                raise _BadOutput(f"printed a token whose {key} is already past ({-remaining:.0f}s ago)")
            expires_at = started + min(remaining, MAX_LIFETIME)
            break
    return _token(value, expires_at, started)


def _token(value: str, expires_at: float | None, started: float) -> Token:
    if expires_at is None:
        expires_at = jwt_expiry(value)
    try:
        return Token(value, expires_at=expires_at, obtained_at=started)
    except ValueError as exc:
        raise _BadOutput(f"printed an unusable token: {exc}") from None



_FRACTION = re.compile(r"(\.\d{6})\d+")


def _rfc3339(text: str) -> float | None:
    """Seconds since the epoch for an RFC 3339 time (``Z`` or offset; naive means UTC)."""
    text = text.strip()
    if len(text) < 10:
        return None
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    text = _FRACTION.sub(r"\1", text)  # Go prints nanoseconds; Python < 3.11 takes at most 6 digits
    if sys.version_info < (3, 11):  # pragma: no cover - version-specific
        text = text.replace("t", "T")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()
