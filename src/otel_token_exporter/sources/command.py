"""A token printed by a command (``OTEL_TOKEN_EXPORTER_TOKEN_COMMAND``), like kubectl exec plugins.

The command line is split like a POSIX shell would split it (:func:`shlex.split`) but run without a
shell: no pipes, globbing or variable expansion (wrap it in ``sh -c '...'`` yourself if you need
them). It gets no stdin, at most ``timeout`` seconds (``..._TOKEN_COMMAND_TIMEOUT``, default 30 s;
on expiry its whole process group is killed). Both pipes are read as the output arrives: more than
256 KiB on stdout, or 1 MiB on stderr, gets the process group killed at once and is a fatal error
(of stderr only the first 64 KiB is kept, for the error message). It must print on stdout either

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
import queue
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone

from .._redact import redact, short
from ..jwt import jwt_expiry
from ..token import MAX_LIFETIME, FatalTokenError, Token, TransientTokenError, lifetime_seconds

__all__ = ["CommandTokenSource", "DEFAULT_TIMEOUT", "parse_token_output"]

DEFAULT_TIMEOUT = 30.0
#: A command printing more than this on stdout is killed at once and its output refused.
MAX_OUTPUT_BYTES = 256 * 1024
#: Likewise for stderr, of which only the first ``STDERR_KEPT_BYTES`` are kept (for the error note).
MAX_STDERR_BYTES = 1024 * 1024
STDERR_KEPT_BYTES = 64 * 1024
_CHUNK = 64 * 1024
_REAP_TIMEOUT = 5.0  # after SIGKILL, how long to wait for the command to be reaped


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
        self._lock = threading.Lock()
        self._running: subprocess.Popen | None = None
        self._streams: _Streams | None = None

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
                bufsize=0,  # raw pipes: we read them in chunks ourselves
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
        streams = None
        try:
            streams = _PipeStreams(proc) if posix else _ThreadStreams(proc)
            with self._lock:
                self._running = proc
                self._streams = streams
            outcome, stdout, stderr = self._collect(proc, streams)
            if outcome != "done":
                self._kill(proc, posix)
        except BaseException:
            self._kill(proc, posix)
            raise
        finally:
            with self._lock:
                self._running = None
                self._streams = None
            if streams is not None:
                streams.close()
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()
            try:
                proc.wait(timeout=_REAP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable child
                pass
        if outcome == "timeout":
            raise TransientTokenError(
                f"{self._what()} did not finish within {self.timeout:g}s and was killed"
                f"{self._stderr_note(stderr)}"
            )
        if outcome in ("stdout", "stderr"):
            limit = MAX_OUTPUT_BYTES if outcome == "stdout" else MAX_STDERR_BYTES
            raise FatalTokenError(
                f"{self._what()} printed more than {limit} bytes on {outcome} (the limit), so it was "
                f"killed and its output refused{self._stderr_note(stderr)}"
            )
        # "done", or "aborted" (then the return code says which signal killed it)
        code = proc.returncode
        if code is None:  # pragma: no cover - an unkillable child
            code = -9
        return stdout, stderr, code

    def _collect(self, proc: subprocess.Popen, streams: _Streams) -> tuple[str, bytes, bytes]:
        """Read both pipes until the command exits, is over a cap, runs out of time or is aborted.

        Returns the outcome (``done``, ``timeout``, ``aborted``, or ``stdout``/``stderr`` for the
        stream that went over its cap), the stdout read (at most ``MAX_OUTPUT_BYTES`` + one chunk)
        and the first ``STDERR_KEPT_BYTES`` of stderr. Never holds more than that in memory.
        """
        deadline = time.monotonic() + self.timeout
        stdout = bytearray()
        stderr = bytearray()
        stderr_total = 0
        while streams.open:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", bytes(stdout), bytes(stderr)
            for name, chunk in streams.read(remaining):
                if name == "wake":
                    return "aborted", bytes(stdout), bytes(stderr)
                if name == "stdout":
                    stdout += chunk
                    if len(stdout) > MAX_OUTPUT_BYTES:
                        return "stdout", b"", bytes(stderr)
                else:
                    stderr_total += len(chunk)
                    if len(stderr) < STDERR_KEPT_BYTES:
                        stderr += chunk[: STDERR_KEPT_BYTES - len(stderr)]
                    if stderr_total > MAX_STDERR_BYTES:
                        return "stderr", b"", bytes(stderr)
        # Both pipes are closed; the command may still be running (it closed them itself).
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            return "timeout", bytes(stdout), bytes(stderr)
        return "done", bytes(stdout), bytes(stderr)

    def abort(self) -> None:
        """Kill a command in flight (called by the manager when it closes)."""
        # Under the lock: _run() clears these before it closes the wake-up pipe and reaps the
        # command, so neither a closed (maybe reused) fd nor a reaped (maybe reused) pid is hit.
        with self._lock:
            if self._streams is not None:
                self._streams.wake()
            if self._running is not None:
                self._kill(self._running, os.name == "posix")

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


class _Streams:
    """A command's stdout and stderr as a series of chunks, plus a wake-up for :meth:`abort`."""

    open: int  # pipes not yet at end of file

    def read(self, timeout: float) -> list[tuple[str, bytes]]:
        """The chunks that arrive within ``timeout`` s: ``(stdout|stderr, data)``, ``(name, b"")``
        at end of file (the pipe then no longer counts as open), ``("wake", b"")`` after wake()."""
        raise NotImplementedError

    def wake(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _PipeStreams(_Streams):
    """POSIX: one selector over both pipes and a self-pipe that wake() writes to."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        self._selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.open = 2
        self._closed = False

    def read(self, timeout: float) -> list[tuple[str, bytes]]:
        chunks = []
        for key, _ in self._selector.select(timeout):
            if key.data == "wake":
                return [("wake", b"")]
            chunk = os.read(key.fd, _CHUNK)
            if not chunk:
                self._selector.unregister(key.fileobj)
                self.open -= 1
            chunks.append((key.data, chunk))
        return chunks

    def wake(self) -> None:
        if not self._closed:
            try:
                os.write(self._wake_w, b"x")
            except OSError:  # full (a wake-up is pending anyway)
                pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)


class _ThreadStreams(_Streams):  # pragma: no cover - not POSIX (selectors cannot wait on pipes)
    """Elsewhere: a reader thread per pipe, each handing chunks over through one queue."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self._queue: queue.Queue = queue.Queue()
        self.open = 2
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            threading.Thread(
                target=self._pump, args=(name, pipe), name=f"otel-token-command-{name}", daemon=True
            ).start()

    def _pump(self, name: str, pipe) -> None:
        try:
            while True:
                chunk = pipe.read(_CHUNK)
                self._queue.put((name, chunk or b""))
                if not chunk:
                    return
        except (OSError, ValueError):  # closed under us after a kill
            self._queue.put((name, b""))

    def read(self, timeout: float) -> list[tuple[str, bytes]]:
        try:
            name, chunk = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if name != "wake" and not chunk:
            self.open -= 1
        return [(name, chunk)]

    def wake(self) -> None:
        self._queue.put(("wake", b""))

    def close(self) -> None:
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
