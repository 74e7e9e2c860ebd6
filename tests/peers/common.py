"""Shared logic of the test OTLP receivers (HTTP and gRPC): bearer token validation, fault queues,
records of what was received (logs, traces and metrics), and the per-request decision
(``ReceiverCore.decide``).

Tokens are stored on the records (``RequestRecord.token``) so tests can compare them, but they are
kept out of ``repr`` and never logged; compare ``token_id`` (a short SHA-256 fingerprint) in asserts
so a failing assert does not print a token.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import grpc
import jwt
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

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
# Signals
# --------------------------------------------------------------------------------------------

SIGNALS = ("logs", "traces", "metrics")
REQUEST_TYPES = {
    "logs": ExportLogsServiceRequest,
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
RESPONSE_TYPES = {
    "logs": ExportLogsServiceResponse,
    "traces": ExportTraceServiceResponse,
    "metrics": ExportMetricsServiceResponse,
}
# the partial_success field naming what was rejected, per signal
REJECTED_FIELD = {
    "logs": "rejected_log_records",
    "traces": "rejected_spans",
    "metrics": "rejected_data_points",
}
RETRY_INFO_KEY = "google.rpc.retryinfo-bin"
#: RequestRecord.reason of a request refused by ReceiverCore.reject_valid_at_random().
RANDOM_REJECT_REASON = "random: rejected valid token"


def check_signal(signal: Optional[str]) -> Optional[str]:
    if signal is not None and signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r} (one of {', '.join(SIGNALS)})")
    return signal


def signal_of(request_pb) -> Optional[str]:
    """"logs"/"traces"/"metrics" for an Export*ServiceRequest, None for anything else."""
    for signal, cls in REQUEST_TYPES.items():
        if isinstance(request_pb, cls):
            return signal
    return None


def metric_data_points(metric) -> list:
    """The data points of one opentelemetry.proto.metrics.v1.Metric, whatever its kind."""
    kind = metric.WhichOneof("data")
    return list(getattr(metric, kind).data_points) if kind else []


def count_items(signal: str, request_pb) -> int:
    """Log records / spans / metric data points in a request."""
    if request_pb is None:
        return 0
    if signal == "logs":
        return sum(len(sl.log_records) for rl in request_pb.resource_logs for sl in rl.scope_logs)
    if signal == "traces":
        return sum(len(ss.spans) for rs in request_pb.resource_spans for ss in rs.scope_spans)
    return sum(len(metric_data_points(m)) for rm in request_pb.resource_metrics
               for sm in rm.scope_metrics for m in sm.metrics)


def make_response(signal: str, partial: Optional[tuple] = None):
    """The Export*ServiceResponse for ``signal``; ``partial`` = (rejected, error_message) fills
    ``partial_success``."""
    resp = RESPONSE_TYPES[signal]()
    if partial is not None:
        rejected, message = partial
        setattr(resp.partial_success, REJECTED_FIELD[signal], int(rejected))
        resp.partial_success.error_message = message or ""
    return resp


def retry_info_bin(seconds: float) -> bytes:
    """A serialized google.rpc.RetryInfo asking the client to wait ``seconds``."""
    whole = int(seconds)
    return RetryInfo(retry_delay=Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))
                     ).SerializeToString()


def retry_after_value(seconds: float) -> str:
    """Retry-After for ``seconds``: an integer when whole, else a decimal ("0.2"). A fraction is
    not RFC 9110 delay-seconds, but the stock OTLP/HTTP exporter reads it (float()); give
    ``retry_after=`` for an exact header."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What to do with one request instead of (or before) normal processing.

    status: HTTP status or grpc code (name/StatusCode) to answer; None = no answer override
            (with delay: delay, then process normally).
    headers: extra HTTP response headers (Retry-After, Location for a 302, ...).
    trailing_metadata: gRPC trailing metadata pairs (``-bin`` keys take bytes).
    body: HTTP response body (bytes/str) / gRPC details (str).
    delay: seconds to wait first.
    reset: drop the connection without an answer (HTTP: TCP RST; gRPC: aborts UNAVAILABLE).
    store: also store the records although the answer is an error (e.g. "stored, then 503").
    signal: only requests of this signal ("logs"/"traces"/"metrics") take the fault; None = any.
    hang: hold the request without an answer (until ``hang_seconds`` after arrival, the wall-clock
          time ``hang_until``, ``release_hangs()``, the client going away, or stop()/pause()),
          then drop it without an answer.
    partial: (rejected, error_message): accept and store, answer partial_success.
    """

    status: Any = None
    headers: dict = field(default_factory=dict)
    trailing_metadata: tuple = ()
    body: Any = b""
    delay: float = 0.0
    reset: bool = False
    store: bool = False
    remaining: int = 1
    signal: Optional[str] = None
    hang: bool = False
    hang_seconds: Optional[float] = None
    hang_until: Optional[float] = None
    partial: Optional[tuple] = None


class FaultQueue:
    """FIFO of faults; ``pop(signal)`` takes the first one meant for that signal (or for any)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._q: list[Fault] = []

    def add(self, count: int = 1, **kw) -> None:
        check_signal(kw.get("signal"))
        with self._lock:
            self._q.append(Fault(remaining=count, **kw))

    def pop(self, signal: Optional[str] = None) -> Optional[Fault]:
        with self._lock:
            for i, f in enumerate(self._q):
                if f.signal is None or signal is None or f.signal == signal:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._q.pop(i)
                    return f
            return None

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
    n_records: int = 0  # log records / spans / metric data points in the request
    accepted: bool = False
    headers: dict = field(default_factory=dict, repr=False)  # request headers/metadata minus auth
    signal: str = "logs"  # "logs" / "traces" / "metrics"
    rejected: int = 0  # partial success: how many the answer said were rejected


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
    partial: Optional[tuple] = None  # (rejected, error_message) for a partial-success answer


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


def any_value_py(any_value):
    """An OTLP AnyValue as a Python value (str/bool/int/float/bytes/list/dict; None if empty)."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value_py(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes_dict(any_value.kvlist_value.values)
    return getattr(any_value, kind)


def attributes_dict(key_values) -> dict:
    """Repeated KeyValue (attributes) as a dict."""
    return {kv.key: any_value_py(kv.value) for kv in key_values}


class ReceiverCore:
    """State and behaviour shared by the HTTP and gRPC receivers (all three OTLP signals)."""

    transport = "?"

    def __init__(self, validator: TokenValidator, *, delay: float = 0.0):
        self.validator = validator
        self.delay = delay  # persistent: every request answered after this many seconds
        self.faults = FaultQueue()  # next N requests, whatever the token
        self.auth_faults = FaultQueue()  # next N requests whose token is valid
        self.requests: list[RequestRecord] = []
        self.log_records: list = []  # opentelemetry.proto.logs.v1.logs_pb2.LogRecord, in order
        self.resource_logs: list = []  # every accepted ResourceLogs, in order
        self.spans: list = []  # opentelemetry.proto.trace.v1.trace_pb2.Span, in order
        self.resource_spans: list = []  # every accepted ResourceSpans, in order
        self.metric_requests: list = []  # every accepted ExportMetricsServiceRequest, in order
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._wake_lock = threading.Lock()
        self._wake = threading.Event()
        self._epoch = 0  # bumped by pause()
        self._release_gen = 0  # bumped by release_hangs()
        # reject_valid_at_random(): this fraction of requests with a valid token (and no queued
        # auth fault) is refused with ``reject_valid_status``; 0 (the default) refuses none.
        self.reject_valid_fraction = 0.0
        self.reject_valid_status: Any = 401
        self._reject_rng = random.Random(0)
        self._reject_lock = threading.Lock()

    # ---- fault injection ----
    # ``signal`` ("logs"/"traces"/"metrics"): only requests of that signal take the fault; the
    # default None lets the next request of any signal take it. Faults of one queue are served in
    # the order they were added, each to the first request it applies to.
    def fail_next(self, count: int = 1, status: Any = 503, *, headers: Optional[dict] = None,
                  retry_after: Any = None, location: Optional[str] = None, body: Any = b"",
                  delay: float = 0.0, store: bool = False, trailing_metadata: tuple = (),
                  retry_delay: Optional[float] = None, signal: Optional[str] = None) -> None:
        """Answer the next ``count`` requests with ``status`` (HTTP int or grpc code name).

        retry_delay: seconds the client should wait: gRPC trailing metadata
        ``google.rpc.retryinfo-bin`` (a google.rpc.RetryInfo) and, unless ``retry_after`` is
        given, HTTP ``Retry-After``. ``trailing_metadata`` may carry a RetryInfo of its own."""
        h = dict(headers or {})
        md = tuple(trailing_metadata)
        if retry_delay is not None:
            if retry_after is None:
                retry_after = retry_after_value(retry_delay)
            md = tuple(p for p in md if p[0] != RETRY_INFO_KEY) + (
                (RETRY_INFO_KEY, retry_info_bin(retry_delay)),)
        if retry_after is not None:
            h["Retry-After"] = str(retry_after)
        if location is not None:
            h["Location"] = location
        self.faults.add(count, status=status, headers=h, body=body, delay=delay, store=store,
                        trailing_metadata=md, signal=signal)

    def reject_next_valid(self, count: int = 1, status: Any = 401, *,
                          body: Any = b"", signal: Optional[str] = None) -> None:
        """Reject the next ``count`` requests that carry a *valid* token (401/403 or
        UNAUTHENTICATED/PERMISSION_DENIED): a revoked token, a token the receiver dislikes..."""
        h = {}
        if to_http_status(status) == 401:
            h["WWW-Authenticate"] = 'Bearer error="invalid_token", error_description="rejected"'
        self.auth_faults.add(count, status=status, headers=h, body=body, signal=signal)

    def reject_valid_at_random(self, fraction: float, *, seed: Optional[int] = 0,
                               status: Any = 401) -> None:
        """From now on refuse ``fraction`` (0..1) of the requests that carry a *valid* token and
        take no queued auth fault, chosen by a ``random.Random(seed)`` (reproducible draws), with
        ``status`` (401 -> UNAUTHENTICATED over gRPC). Recorded with reason
        ``RANDOM_REJECT_REASON``; ``reject_valid_at_random(0)`` stops it."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be between 0 and 1")
        with self._reject_lock:
            self._reject_rng = random.Random(seed)
            self.reject_valid_fraction = float(fraction)
            self.reject_valid_status = status

    def _reject_at_random(self) -> bool:
        if self.reject_valid_fraction <= 0.0:
            return False
        with self._reject_lock:
            return self._reject_rng.random() < self.reject_valid_fraction

    def partial_success_next(self, count: int = 1, rejected: int = 1, message: str = "",
                             *, signal: Optional[str] = None) -> None:
        """The next ``count`` requests with a valid token are accepted and stored, but answered
        with ``partial_success`` {rejected_log_records | rejected_spans | rejected_data_points:
        ``rejected``, error_message: ``message``} (HTTP 200 / gRPC OK). Shares the queue of
        ``reject_next_valid``."""
        self.auth_faults.add(count, partial=(int(rejected), message), signal=signal)

    def delay_next(self, seconds: float, count: int = 1, *, status: Any = None,
                   signal: Optional[str] = None) -> None:
        """Delay the next ``count`` requests; then process normally (or answer ``status``).
        The request is processed (and stored) even if the client gave up meanwhile; stop() or
        pause() end the wait at once and the request is dropped without an answer."""
        self.faults.add(count, status=status, delay=seconds, store=status is None, signal=signal)

    def hang_next(self, count: int = 1, seconds: Optional[float] = None, *,
                  until: Optional[float] = None, signal: Optional[str] = None) -> None:
        """Hold the next ``count`` requests without an answer, then drop them unanswered
        (HTTP: TCP RST; gRPC: UNAVAILABLE if the client still waits). The hold ends after
        ``seconds`` from the request's arrival, at wall-clock time ``until`` (time.time()),
        on ``release_hangs()``, when the client goes away (gRPC cancel/deadline; HTTP: plain TCP
        close), or on stop()/pause(); without ``seconds``/``until`` only the latter three.
        Nothing is stored. For "no answer for N s, then a normal answer" use ``delay_next``."""
        self.faults.add(count, hang=True, hang_seconds=seconds, hang_until=until, signal=signal)

    def release_hangs(self) -> None:
        """End every request held by ``hang_next`` now (they are dropped unanswered)."""
        self._release_gen += 1
        self._wake_all()

    def reset_next(self, count: int = 1, *, delay: float = 0.0,
                   signal: Optional[str] = None) -> None:
        """Drop the connection of the next ``count`` requests without an answer."""
        self.faults.add(count, reset=True, delay=delay, signal=signal)

    def clear_faults(self) -> None:
        self.faults.clear()
        self.auth_faults.clear()
        self.delay = 0.0

    # ---- the decision ----
    # Waits (delays, hangs) end early on stop() and pause(): ``_epoch`` counts pauses, and
    # ``_wake`` is an Event swapped for a fresh one (the old one set) on every stop / pause /
    # release_hangs, so a sleeper that captured it before checking its condition cannot miss one.
    def _wake_all(self) -> None:
        with self._wake_lock:
            ev, self._wake = self._wake, threading.Event()
        ev.set()

    def _begin_stop(self) -> None:
        """For stop(): every wait ends, held and delayed requests are dropped unanswered."""
        self._stopping.set()
        self._wake_all()

    def _interrupt(self) -> None:
        """For pause(): requests waiting in a delay or hang are dropped unanswered."""
        self._epoch += 1
        self._wake_all()

    def _interrupted(self, epoch: int) -> bool:
        return self._stopping.is_set() or self._epoch != epoch

    def _sleep(self, seconds: float, epoch: Optional[int] = None) -> None:
        if seconds <= 0:
            return
        epoch = self._epoch if epoch is None else epoch
        end = time.monotonic() + seconds
        while True:
            ev = self._wake
            left = end - time.monotonic()
            if left <= 0 or self._interrupted(epoch):
                return
            ev.wait(left)

    def _hold(self, deadline: Optional[float], gone: Optional[Callable[[], bool]],
              epoch: int) -> str:
        """Wait until ``deadline`` (monotonic; None = no limit), release_hangs(), ``gone()`` or
        stop()/pause(); return which."""
        gen = self._release_gen
        while True:
            ev = self._wake
            if self._interrupted(epoch):
                return "receiver stopped or paused"
            if self._release_gen != gen:
                return "released"
            if gone is not None and gone():
                return "client gone"
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return "time up"
            if gone is not None:
                left = 0.05 if left is None else min(left, 0.05)
            ev.wait(left)

    def decide(self, token: Optional[str], signal: str = "logs", *,
               gone: Optional[Callable[[], bool]] = None) -> Outcome:
        """What to answer to one request of ``signal``; ``gone()`` tells whether the client has
        gone away (ends a hang early)."""
        epoch = self._epoch
        fault = self.faults.pop(signal)
        if fault is not None:
            if fault.hang:
                deadline = None
                if fault.hang_seconds is not None:
                    deadline = time.monotonic() + fault.hang_seconds
                if fault.hang_until is not None:
                    at = time.monotonic() + (fault.hang_until - time.time())
                    deadline = at if deadline is None else min(deadline, at)
                why = self._hold(deadline, gone, epoch)
                return Outcome(False, "reset", f"fault: hang ended ({why})", reset=True)
            self._sleep(fault.delay, epoch)
            if fault.delay > 0 and self._interrupted(epoch):
                return Outcome(False, "reset", "receiver stopped or paused while delaying",
                               reset=True)
            if fault.reset:
                return Outcome(False, "reset", "fault: reset", reset=True)
            if fault.status is not None:
                return Outcome(False, fault.status, "fault", headers=fault.headers,
                               trailing_metadata=fault.trailing_metadata, body=fault.body,
                               store=fault.store)
        delay = self.delay
        self._sleep(delay, epoch)
        if delay > 0 and self._interrupted(epoch):
            return Outcome(False, "reset", "receiver stopped or paused while delaying", reset=True)
        ok, reason = self.validator.validate(token)
        if not ok:
            return Outcome(False, 401, reason, headers={
                "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'})
        fault = self.auth_faults.pop(signal)
        if fault is not None:
            if fault.partial is not None:
                return Outcome(True, 200, f"partial success: {fault.partial[0]} rejected",
                               partial=fault.partial)
            return Outcome(False, fault.status, "fault: rejected valid token",
                           headers=fault.headers, body=fault.body)
        if self._reject_at_random():
            status = self.reject_valid_status
            h = {}
            if to_http_status(status) == 401:
                h["WWW-Authenticate"] = ('Bearer error="invalid_token", '
                                         'error_description="rejected at random"')
            return Outcome(False, status, RANDOM_REJECT_REASON, headers=h)
        return Outcome(True, 200, "ok")

    def record(self, token: Optional[str], outcome: Outcome, request_pb, status: Any,
               headers: Optional[dict] = None, *, signal: Optional[str] = None) -> None:
        """Store the request record (and its log records / spans / metrics if accepted or
        stored); wake waiters. ``signal`` defaults to the type of ``request_pb`` (else logs)."""
        signal = signal or signal_of(request_pb) or "logs"
        rec = RequestRecord(time=time.time(), transport=self.transport, token=token,
                            token_id=token_id(token), status=status, reason=outcome.reason,
                            n_records=count_items(signal, request_pb), accepted=outcome.accept,
                            headers=dict(headers or {}), signal=signal,
                            rejected=outcome.partial[0] if outcome.partial else 0)
        with self._cond:
            self.requests.append(rec)
            if request_pb is not None and (outcome.accept or outcome.store):
                if signal == "logs":
                    for rl in request_pb.resource_logs:
                        self.resource_logs.append(rl)
                        for sl in rl.scope_logs:
                            self.log_records.extend(sl.log_records)
                elif signal == "traces":
                    for rs in request_pb.resource_spans:
                        self.resource_spans.append(rs)
                        for ss in rs.scope_spans:
                            self.spans.extend(ss.spans)
                else:
                    self.metric_requests.append(request_pb)
            self._cond.notify_all()

    # ---- helpers for tests ----
    def received_bodies(self) -> list[str]:
        with self._cond:
            return [body_string(r.body) for r in self.log_records]

    def received_records(self) -> list:
        with self._cond:
            return list(self.log_records)

    def received_span_names(self) -> list[str]:
        with self._cond:
            return [s.name for s in self.spans]

    def metric_names(self) -> list[str]:
        """Names of the metrics received, each once, in order of first arrival."""
        with self._cond:
            names = [m.name for req in self.metric_requests for rm in req.resource_metrics
                     for sm in rm.scope_metrics for m in sm.metrics]
        return list(dict.fromkeys(names))

    def metric_points(self, name: str, attributes: Optional[dict] = None) -> list:
        """Data points (Number/Histogram/... DataPoint) of the metric ``name`` in arrival order,
        whatever its kind (sum, gauge, histogram, ...); ``attributes``: only points whose
        attributes equal this dict."""
        with self._cond:
            reqs = list(self.metric_requests)
        points = []
        for req in reqs:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name == name:
                            points.extend(metric_data_points(m))
        if attributes is not None:
            points = [p for p in points if attributes_dict(p.attributes) == attributes]
        return points

    def last_sum_value(self, name: str, attributes: Optional[dict] = None):
        """Value (int or float) of the last data point of the sum (counter) ``name``; None if
        none arrived. For a cumulative counter that is its total at the last export."""
        with self._cond:
            reqs = list(self.metric_requests)
        last = None
        for req in reqs:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name == name and m.WhichOneof("data") == "sum":
                            for p in m.sum.data_points:
                                if attributes is None or attributes_dict(p.attributes) == attributes:
                                    last = p
        if last is None:
            return None
        return getattr(last, last.WhichOneof("value")) if last.WhichOneof("value") else 0

    def requests_for(self, signal: str) -> list:
        with self._cond:
            return [r for r in self.requests if r.signal == signal]

    def statuses(self, signal: Optional[str] = None) -> list:
        with self._cond:
            return [r.status for r in self.requests if signal is None or r.signal == signal]

    def token_ids(self) -> list:
        with self._cond:
            return [r.token_id for r in self.requests]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` log records were accepted."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.log_records) >= count, timeout)

    def wait_for_spans(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` spans were accepted."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.spans) >= count, timeout)

    def wait_for_points(self, name: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` data points of the metric ``name`` were accepted."""
        return self.wait_until(lambda rx: len(rx.metric_points(name)) >= count, timeout)

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
            self.spans.clear()
            self.resource_spans.clear()
            self.metric_requests.clear()
