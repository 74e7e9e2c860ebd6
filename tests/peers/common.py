"""Shared logic of the test OTLP receivers (HTTP and gRPC): bearer token validation, fault queue,
records of what was received, and the per-request decision (``ReceiverCore.decide``).

Tokens are stored on the records (``RequestRecord.token``) so tests can compare them, but they are
kept out of ``repr`` and never logged; compare ``token_id`` (a short SHA-256 fingerprint) in asserts
so a failing assert does not print a token.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import grpc
import jwt

# HTTP status <-> gRPC status code, for faults given in one form and served in the other.
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_GRPC_TO_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def to_grpc_code(status: Any) -> grpc.StatusCode:
    """Accept a grpc.StatusCode, its name ("UNAVAILABLE") or an HTTP status (503)."""
    if isinstance(status, grpc.StatusCode):
        return status
    if isinstance(status, str):
        return grpc.StatusCode[status.upper()]
    if 200 <= int(status) < 300:
        return grpc.StatusCode.OK
    return _HTTP_TO_GRPC.get(int(status), grpc.StatusCode.UNKNOWN)


def to_http_status(status: Any) -> int:
    if isinstance(status, (grpc.StatusCode, str)):
        return _GRPC_TO_HTTP.get(to_grpc_code(status), 500)
    return int(status)


def token_id(token: Optional[str]) -> Optional[str]:
    """Short fingerprint of a token, safe to print."""
    if token is None:
        return None
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Token validation
# --------------------------------------------------------------------------------------------


class TokenValidator:
    """Checks a bearer token.

    mode "static": the token must equal ``static_token``.
    mode "jwt": RS256/ES256... JWT verified against the JWKS at ``jwks_url`` (fetched once at
    construction, re-fetched when a token names an unknown ``kid``, at most every
    ``refetch_interval`` s). ``exp``/``nbf`` are checked against ``time.time() + clock_offset``
    (positive offset: the receiver behaves as if its clock were ahead) with ``leeway`` seconds.
    ``iss``/``aud`` are not verified, except ``audience`` when given.
    mode "none": any token (even none) is accepted.
    ``clock_offset``, ``static_token`` and ``audience`` may be changed at any time.
    """

    def __init__(
        self,
        mode: str = "jwt",
        *,
        static_token: Optional[str] = None,
        jwks_url: Optional[str] = None,
        clock_offset: float = 0.0,
        leeway: float = 0.0,
        audience: Optional[str] = None,
        refetch_interval: float = 0.0,
        algorithms: tuple = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256"),
    ):
        if mode not in ("static", "jwt", "none"):
            raise ValueError(f"unknown token mode {mode!r}")
        if mode == "static" and not static_token:
            raise ValueError("static mode needs static_token")
        if mode == "jwt" and not jwks_url:
            raise ValueError("jwt mode needs jwks_url")
        self.mode = mode
        self.static_token = static_token
        self.jwks_url = jwks_url
        self.clock_offset = clock_offset
        self.leeway = leeway
        self.audience = audience
        self.refetch_interval = refetch_interval
        self.algorithms = list(algorithms)
        self.jwks_fetches = 0
        self._lock = threading.Lock()
        self._keys: dict = {}
        self._last_fetch = 0.0
        if mode == "jwt":
            self._fetch_jwks()

    def _fetch_jwks(self) -> None:
        with urllib.request.urlopen(self.jwks_url, timeout=5) as resp:
            data = json.loads(resp.read())
        keyset = jwt.PyJWKSet.from_dict(data)
        self._keys = {k.key_id: k for k in keyset.keys}
        self._last_fetch = time.monotonic()
        self.jwks_fetches += 1

    def _key_for(self, kid: Optional[str]):
        with self._lock:
            if kid in self._keys:
                return self._keys[kid]
            if time.monotonic() - self._last_fetch >= self.refetch_interval:
                try:
                    self._fetch_jwks()
                except Exception:  # noqa: BLE001 - JWKS unreachable: treat as unknown key
                    return None
            return self._keys.get(kid)

    def validate(self, token: Optional[str]) -> tuple[bool, str]:
        """Return (ok, reason). reason is "ok" or a short description (never the token)."""
        if self.mode == "none":
            return True, "ok"
        if not token:
            return False, "missing token"
        if self.mode == "static":
            return (True, "ok") if token == self.static_token else (False, "wrong token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            return False, f"malformed: {type(e).__name__}"
        key = self._key_for(header.get("kid"))
        if key is None:
            return False, "unknown kid"
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=self.algorithms,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": False, "verify_iss": False},
            )
        except jwt.PyJWTError as e:
            return False, f"invalid: {type(e).__name__}"
        now = time.time() + self.clock_offset
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)):
            return False, "no exp"
        if now >= exp + self.leeway:
            return False, "expired"
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and now + self.leeway < nbf:
            return False, "not yet valid"
        if self.audience is not None:
            aud = claims.get("aud")
            auds = aud if isinstance(aud, list) else [aud]
            if self.audience not in auds:
                return False, "wrong audience"
        return True, "ok"


def extract_bearer(value: Optional[str], scheme: Optional[str] = "Bearer") -> Optional[str]:
    """Token from an Authorization-style value; scheme compared case-insensitively.
    scheme None/"" means the whole value is the token."""
    if value is None:
        return None
    value = value.strip()
    if not scheme:
        return value or None
    parts = value.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != scheme.lower():
        return None
    return parts[1].strip() or None


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What to do with one request instead of (or before) normal processing.

    status: HTTP status or grpc code (name/StatusCode) to answer; None = no answer override
            (with delay: delay, then process normally).
    headers: extra HTTP response headers (Retry-After, Location for a 302, ...).
    trailing_metadata: gRPC trailing metadata pairs.
    body: HTTP response body (bytes/str) / gRPC details (str).
    delay: seconds to wait first.
    reset: drop the connection without an answer (HTTP: TCP RST; gRPC: aborts UNAVAILABLE).
    store: also store the records although the answer is an error (e.g. "stored, then 503").
    """

    status: Any = None
    headers: dict = field(default_factory=dict)
    trailing_metadata: tuple = ()
    body: Any = b""
    delay: float = 0.0
    reset: bool = False
    store: bool = False
    remaining: int = 1


class FaultQueue:
    def __init__(self):
        self._lock = threading.Lock()
        self._q: list[Fault] = []

    def add(self, count: int = 1, **kw) -> None:
        with self._lock:
            self._q.append(Fault(remaining=count, **kw))

    def pop(self) -> Optional[Fault]:
        with self._lock:
            if not self._q:
                return None
            f = self._q[0]
            f.remaining -= 1
            if f.remaining <= 0:
                self._q.pop(0)
            return f

    def clear(self) -> None:
        with self._lock:
            self._q.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._q)


# --------------------------------------------------------------------------------------------
# Records and the shared per-request decision
# --------------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    time: float
    transport: str
    token: Optional[str] = field(repr=False)  # compare token_id in asserts
    token_id: Optional[str] = None
    status: Any = None  # HTTP status (int) or grpc.StatusCode answered; "reset" for a drop
    reason: str = ""
    n_records: int = 0
    accepted: bool = False
    headers: dict = field(default_factory=dict, repr=False)  # request headers/metadata minus auth


@dataclass
class Outcome:
    accept: bool  # True: store the records and answer success
    status: Any = 200  # HTTP status or grpc code
    reason: str = "ok"
    headers: dict = field(default_factory=dict)
    trailing_metadata: tuple = ()
    body: Any = b""
    reset: bool = False
    store: bool = False


def body_string(any_value) -> str:
    """Body of an OTLP LogRecord as a string (string_value as is, anything else as text)."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return any_value.string_value
    if kind == "bytes_value":
        return any_value.bytes_value.decode("utf-8", "replace")
    return str(getattr(any_value, kind)).strip()


class ReceiverCore:
    """State and behaviour shared by the HTTP and gRPC receivers."""

    transport = "?"

    def __init__(self, validator: TokenValidator, *, delay: float = 0.0):
        self.validator = validator
        self.delay = delay  # persistent: every request answered after this many seconds
        self.faults = FaultQueue()  # next N requests, whatever the token
        self.auth_faults = FaultQueue()  # next N requests whose token is valid
        self.requests: list[RequestRecord] = []
        self.log_records: list = []  # opentelemetry.proto.logs.v1.logs_pb2.LogRecord, in order
        self.resource_logs: list = []  # every accepted ResourceLogs, in order
        self._cond = threading.Condition()
        self._stopping = threading.Event()

    # ---- fault injection ----
    def fail_next(self, count: int = 1, status: Any = 503, *, headers: Optional[dict] = None,
                  retry_after: Any = None, location: Optional[str] = None, body: Any = b"",
                  delay: float = 0.0, store: bool = False, trailing_metadata: tuple = ()) -> None:
        """Answer the next ``count`` requests with ``status`` (HTTP int or grpc code name)."""
        h = dict(headers or {})
        if retry_after is not None:
            h["Retry-After"] = str(retry_after)
        if location is not None:
            h["Location"] = location
        self.faults.add(count, status=status, headers=h, body=body, delay=delay, store=store,
                        trailing_metadata=tuple(trailing_metadata))

    def reject_next_valid(self, count: int = 1, status: Any = 401, *,
                          body: Any = b"") -> None:
        """Reject the next ``count`` requests that carry a *valid* token (401/403 or
        UNAUTHENTICATED/PERMISSION_DENIED): a revoked token, a token the receiver dislikes..."""
        h = {}
        if to_http_status(status) == 401:
            h["WWW-Authenticate"] = 'Bearer error="invalid_token", error_description="rejected"'
        self.auth_faults.add(count, status=status, headers=h, body=body)

    def delay_next(self, seconds: float, count: int = 1, *, status: Any = None) -> None:
        """Delay the next ``count`` requests; then process normally (or answer ``status``)."""
        self.faults.add(count, status=status, delay=seconds, store=status is None)

    def reset_next(self, count: int = 1, *, delay: float = 0.0) -> None:
        """Drop the connection of the next ``count`` requests without an answer."""
        self.faults.add(count, reset=True, delay=delay)

    def clear_faults(self) -> None:
        self.faults.clear()
        self.auth_faults.clear()
        self.delay = 0.0

    # ---- the decision ----
    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def decide(self, token: Optional[str]) -> Outcome:
        fault = self.faults.pop()
        if fault is not None:
            self._sleep(fault.delay)
            if fault.reset:
                return Outcome(False, "reset", "fault: reset", reset=True)
            if fault.status is not None:
                return Outcome(False, fault.status, "fault", headers=fault.headers,
                               trailing_metadata=fault.trailing_metadata, body=fault.body,
                               store=fault.store)
        self._sleep(self.delay)
        ok, reason = self.validator.validate(token)
        if not ok:
            return Outcome(False, 401, reason, headers={
                "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'})
        fault = self.auth_faults.pop()
        if fault is not None:
            return Outcome(False, fault.status, "fault: rejected valid token",
                           headers=fault.headers, body=fault.body)
        return Outcome(True, 200, "ok")

    def record(self, token: Optional[str], outcome: Outcome, request_pb, status: Any,
               headers: Optional[dict] = None) -> None:
        """Store the request record (and the log records if accepted/stored); wake waiters."""
        n = 0
        if request_pb is not None:
            n = sum(len(sl.log_records) for rl in request_pb.resource_logs
                    for sl in rl.scope_logs)
        rec = RequestRecord(time=time.time(), transport=self.transport, token=token,
                            token_id=token_id(token), status=status, reason=outcome.reason,
                            n_records=n, accepted=outcome.accept, headers=dict(headers or {}))
        with self._cond:
            self.requests.append(rec)
            if request_pb is not None and (outcome.accept or outcome.store):
                for rl in request_pb.resource_logs:
                    self.resource_logs.append(rl)
                    for sl in rl.scope_logs:
                        self.log_records.extend(sl.log_records)
            self._cond.notify_all()

    # ---- helpers for tests ----
    def received_bodies(self) -> list[str]:
        with self._cond:
            return [body_string(r.body) for r in self.log_records]

    def received_records(self) -> list:
        with self._cond:
            return list(self.log_records)

    def statuses(self) -> list:
        with self._cond:
            return [r.status for r in self.requests]

    def token_ids(self) -> list:
        with self._cond:
            return [r.token_id for r in self.requests]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` log records were accepted."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.log_records) >= count, timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` requests were answered (any outcome)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= count, timeout)

    def wait_until(self, predicate: Callable[["ReceiverCore"], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.log_records.clear()
            self.resource_logs.clear()
