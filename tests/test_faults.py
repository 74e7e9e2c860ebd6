"""Fault injection: every numbered record arrives, whatever breaks between the exporter and its peers.

Each test emits numbered records ("rec N") through LoggerProvider + BatchLogRecordProcessor +
TokenOTLPLogExporter against the real IdP and a real OTLP receiver (HTTP and gRPC), injects a fault
while the records flow, lets the exporter drain (``force_flush``), and asserts that every number
arrived. Duplicates (a receiver that stored a batch but answered too late) are counted and printed,
never hidden. Each test also asserts that its fault really happened, so none can pass vacuously.

Run with ``pytest -m faults -s tests/test_faults.py`` to see the ``DELIVERY`` figure lines that
docs/delivery.md tabulates.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import urllib.request
from urllib.parse import urlencode

import grpc
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from helpers import numbers
from otel_token_exporter import jwt as token_jwt
from otel_token_exporter import TokenOTLPLogExporter

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_otel_env")]

LIFETIME = 3  # seconds; JWT exp is whole seconds, so each token really lives 2-3 s
PREFIX = "rec"


# --------------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------------



@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def receiver(protocol, make_http_receiver, make_grpc_receiver):
    def make(**kw):
        return (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt", **kw)

    return make


@pytest.fixture
def exporters():
    made = []
    yield made
    for exp in made:
        exp.shutdown(timeout_millis=1000)


@pytest.fixture
def make_exporter(idp, protocol, exporters):
    def make(rx, **kw):
        kw.setdefault("timeout", 5)
        exp = TokenOTLPLogExporter(
            endpoint=rx.endpoint if protocol == "http" else rx.url,
            protocol="http/protobuf" if protocol == "http" else "grpc",
            token_url=idp.token_url,
            client_id=idp.client_id,
            client_secret=idp.client_secret,
            env={},
            **kw,
        )
        exporters.append(exp)
        return exp

    return make


def run(exporter, count, seconds, inject=None, *, batch=64, drain=60.0):
    """Emit ``count`` numbered records over ``seconds`` while ``inject(stop_event)`` runs in a
    thread; then flush the processor and drain the exporter's buffer. Returns force_flush's answer."""
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, max_queue_size=count + 1, schedule_delay_millis=100, max_export_batch_size=batch))
    logger = provider.get_logger("faults")
    stop = threading.Event()
    errors: list = []

    def injector():
        try:
            inject(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=injector, name="test-injector", daemon=True) if inject else None
    if thread:
        thread.start()
    start = time.monotonic()
    try:
        for i in range(count):
            logger.emit(body=f"{PREFIX} {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
            pause = start + seconds * (i + 1) / count - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        stop.set()
        if thread:
            thread.join(30)
        provider.force_flush(30_000)
        drained = exporter.force_flush(int(drain * 1000))
    finally:
        stop.set()
        provider.shutdown()
    assert not errors, errors
    return drained


def check(rx, count, fault, protocol, drained=True):
    """Every number arrived (duplicates counted and printed)."""
    got = numbers(rx.received_bodies(), PREFIX)
    seen = set(got)
    missing = sorted(set(range(count)) - seen)
    dups = len(got) - len(seen)
    not_ok = sum(1 for s in rx.statuses() if s not in (200, grpc.StatusCode.OK))
    print(f"\nDELIVERY | {fault} | {protocol} | {len(seen & set(range(count)))}/{count} | "
          f"duplicates {dups} | requests {len(rx.requests)} ({not_ok} not OK)")
    assert drained, "force_flush could not drain the outage buffer"
    assert not missing, f"{len(missing)} of {count} records lost, first: {missing[:10]}"
    return dups


def at_random_times(stop, seconds, times, action, rng=None):
    """Call ``action()`` ``times`` times at random moments within ``seconds`` (stops early on stop)."""
    rng = rng or random.Random()
    moments = sorted(rng.uniform(0.3, seconds * 0.9) for _ in range(times))
    start = time.monotonic()
    for m in moments:
        if stop.wait(max(0.0, start + m - time.monotonic())):
            return
        action()


def wait_first_token(exp, timeout=10.0):
    exp.token_manager.get(timeout)


def rejected_statuses(protocol, status):
    if protocol == "http":
        return status
    return {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
            503: grpc.StatusCode.UNAVAILABLE}[status]


# --------------------------------------------------------------------------------------------
# Faults at the OTLP endpoint
# --------------------------------------------------------------------------------------------


def test_random_401_and_403_on_valid_tokens_lose_no_record(idp, protocol, receiver, make_exporter):
    """401/UNAUTHENTICATED and 403/PERMISSION_DENIED for tokens the receiver would accept."""
    idp.control(lifetime=LIFETIME)
    rx = receiver()
    exp = make_exporter(rx)
    count, seconds = 700, 6
    statuses = iter([401, 403, 401, 403, 401, 403])
    drained = run(exp, count, seconds, lambda stop: at_random_times(
        stop, seconds, 6, lambda: rx.reject_next_valid(1, next(statuses))))
    check(rx, count, "random 401/403 on valid tokens", protocol, drained)
    assert rx.statuses().count(rejected_statuses(protocol, 401)) == 3
    assert rx.statuses().count(rejected_statuses(protocol, 403)) == 3


def test_503_with_retry_after_loses_no_record(idp, protocol, receiver, make_exporter):
    idp.control(lifetime=LIFETIME)
    rx = receiver()
    exp = make_exporter(rx, timeout=3)
    count, seconds = 500, 5

    def inject(stop):
        # A short burst (the stock exporter's own retry copes) and a long one (beyond its deadline:
        # the batch must be kept and re-sent by us).
        stop.wait(1.0)
        rx.fail_next(2, 503, retry_after=1)
        stop.wait(2.0)
        rx.fail_next(8, 503, retry_after=1)

    drained = run(exp, count, seconds, inject)
    check(rx, count, "503/UNAVAILABLE with Retry-After", protocol, drained)
    assert rx.statuses().count(rejected_statuses(protocol, 503)) >= 5
    assert len(rx.faults) == 0  # every injected answer was served


def test_connection_resets_lose_no_record(idp, protocol, receiver, make_exporter):
    idp.control(lifetime=LIFETIME)
    rx = receiver()
    exp = make_exporter(rx, timeout=3)
    count, seconds = 500, 5
    drained = run(exp, count, seconds,
                  lambda stop: at_random_times(stop, seconds, 4, lambda: rx.reset_next(2)))
    check(rx, count, "connection resets", protocol, drained)
    assert len([r for r in rx.requests if r.reason == "fault: reset"]) == 8


def test_responses_slower_than_the_timeout_lose_no_record_and_duplicates_are_counted(
        idp, protocol, receiver, make_exporter):
    # long-lived tokens: the late request must still be valid when the receiver gets to it
    rx = receiver()
    timeout = 2
    exp = make_exporter(rx, timeout=timeout)
    count, seconds = 400, 4

    late = timeout + 1.5
    injected = []

    def inject(stop):
        stop.wait(1.0)
        injected.append(time.monotonic())
        rx.delay_next(late)  # stored after the client gave up: a re-send duplicates it

    drained = run(exp, count, seconds, inject)
    time.sleep(max(0.0, injected[0] + late + 0.5 - time.monotonic()))  # the late store happened
    dups = check(rx, count, f"response slower than the {timeout}s timeout", protocol, drained)
    assert len(rx.faults) == 0
    # the late batch was stored AND re-sent: its records arrive twice (at-least-once, counted)
    assert dups >= 1


# --------------------------------------------------------------------------------------------
# Faults at the IdP
# --------------------------------------------------------------------------------------------

# IDP_BODY_FAULTS: what the IdP answers is parsed by the token source alone, whatever the OTLP
# transport; those tests run over HTTP only to save time. The transport-specific part (no valid
# token: the batch is kept and re-sent) is covered for gRPC by the hang test, the mixed test (IdP
# 5xx/429/HTML too) and tests/test_zero_code_outage.py.


@pytest.mark.parametrize("protocol", ["http"])  # see IDP_BODY_FAULTS
def test_idp_5xx_and_429_with_retry_after_lose_no_record(idp, protocol, receiver, make_exporter):
    idp.control(lifetime=LIFETIME)
    rx = receiver()
    exp = make_exporter(rx)
    wait_first_token(exp)
    count, seconds = 600, 8

    def inject(stop):
        stop.wait(0.5)
        idp.control(faults=[
            {"status": 503, "retry_after": "1", "body": {"error": "temporarily_unavailable"}, "count": 2},
            {"status": 500, "body": "oops", "count": 1},
            {"status": 429, "retry_after": "2", "body": {"error": "slow_down"}, "count": 1},
            {"status": 502, "count": 1},
        ])

    drained = run(exp, count, seconds, inject)
    check(rx, count, "IdP 5xx/429 with Retry-After", protocol, drained)
    assert idp.control()["pending_faults"] == []


def test_idp_hang_longer_than_a_token_lives_loses_no_record(idp, protocol, receiver, make_exporter):
    idp.control(lifetime=LIFETIME)
    rx = receiver()
    exp = make_exporter(rx)
    wait_first_token(exp)
    count, seconds = 600, 8
    hung = []

    def inject(stop):
        stop.wait(1.0)
        idp.control(hang=True)
        stop.wait(4.5)  # longer than a token lives: the exporter has no valid token for a while
        hung.append(idp.control()["held_requests"])
        idp.control(hang=False)

    drained = run(exp, count, seconds, inject)
    check(rx, count, "IdP hangs 4.5 s (3 s tokens)", protocol, drained)
    assert hung and hung[0] >= 1  # a token request really was held


@pytest.mark.parametrize("protocol", ["http"])  # see IDP_BODY_FAULTS
def test_idp_garbage_and_truncated_bodies_lose_no_record(idp, protocol, receiver, make_exporter):
    idp.control(lifetime=LIFETIME)
    rx = receiver()
    exp = make_exporter(rx)
    wait_first_token(exp)
    count, seconds = 600, 8
    faults = [
        {"status": 200, "body": "<html>", "content_type": "text/html"},
        {"status": 200, "body": '{"access_token": "eyJhbGciOi', "content_type": "application/json"},
        {"status": 200, "body": "", "content_type": "application/json"},
        {"status": 200, "body": "\x00\xff garbage", "content_type": "application/octet-stream"},
        {"status": 502, "body": "<html><body>Bad Gateway</body></html>", "content_type": "text/html"},
        {"reset": True},
    ]

    def inject(stop):
        stop.wait(0.5)
        idp.control(faults=faults)

    drained = run(exp, count, seconds, inject)
    check(rx, count, "IdP garbage/truncated bodies, resets", protocol, drained)
    assert idp.control()["pending_faults"] == []


def _real_token(idp) -> str:
    """A genuine access token from the IdP (to embed in crafted responses; never printed)."""
    data = urlencode({"grant_type": "client_credentials", "client_id": idp.client_id,
                      "client_secret": idp.client_secret}).encode()
    with urllib.request.urlopen(urllib.request.Request(idp.token_url, data=data), timeout=10) as r:
        return json.loads(r.read())["access_token"]


@pytest.mark.parametrize("protocol", ["http"])  # see IDP_BODY_FAULTS
def test_malformed_token_responses_lose_no_record(idp, protocol, receiver, make_exporter):
    idp.control(lifetime=LIFETIME)
    rx = receiver()
    exp = make_exporter(rx)
    wait_first_token(exp)
    count, seconds = 600, 8

    def inject(stop):
        stop.wait(0.5)
        real = _real_token(idp)  # a valid 3 s JWT
        bad = [
            {"token_type": "Bearer", "expires_in": 3},  # no access_token
            {"access_token": "", "token_type": "Bearer", "expires_in": 3},
            {"access_token": 12345, "token_type": "Bearer"},
            {"error": "server_error", "access_token": real},  # an error in a 200
            {"access_token": real, "token_type": "Bearer", "expires_in": -5},
            {"access_token": real, "token_type": "Bearer", "expires_in": 0},
            {"access_token": real, "token_type": "Bearer", "expires_in": "soon"},
            [1, 2, 3],
            # accepted: a "huge" lifetime for a JWT that dies in 3 s. The receiver rejects it once it
            # expires; the exporter must refresh on that rejection instead of trusting expires_in.
            {"access_token": real, "token_type": "Bearer", "expires_in": 10**12},
        ]
        idp.control(faults=[{"status": 200, "body": b, "content_type": "application/json"} for b in bad])

    drained = run(exp, count, seconds, inject)
    check(rx, count, "malformed token responses", protocol, drained)
    assert idp.control()["pending_faults"] == []


# --------------------------------------------------------------------------------------------
# Clocks
# --------------------------------------------------------------------------------------------


def test_server_clock_ahead_rejects_tokens_early_and_no_record_is_lost(idp, protocol, receiver,
                                                                      make_exporter):
    idp.control(lifetime=LIFETIME)
    rx = receiver(clock_offset=1.0)  # the receiver thinks every token expires 1 s sooner
    exp = make_exporter(rx)
    count, seconds = 600, 7
    drained = run(exp, count, seconds)
    check(rx, count, "server clock 1 s ahead", protocol, drained)
    expired = [r for r in rx.requests if r.reason == "expired"]
    assert expired, "the receiver never rejected an early-expired token: the fault did not happen"


class _JumpingClock:
    def __init__(self, real):
        self.real = real
        self.offset = 0.0

    def __call__(self):
        return self.real() + self.offset


class _TimeProxy:
    """The ``time`` module as seen through a jumping wall clock."""

    def __init__(self, clock):
        self._clock = clock

    def time(self):
        return self._clock()

    def __getattr__(self, name):
        return getattr(time, name)


def test_wall_clock_jumps_cause_no_refresh_storm_and_no_stale_token(idp, protocol, receiver,
                                                                    make_exporter, monkeypatch):
    """Our wall clock jumps an hour ahead mid-run, then two hours back. The schedule runs on
    time.monotonic, so nothing changes: about one fetch per half lifetime and no expired token
    sent. (We cannot move the system clock: time.time is patched in-process, and the in-process
    receiver gets the opposite ``clock_offset`` so that *its* clock stays true. jwt.py reads the
    wall clock only when it converts a fresh token's ``exp``; it is patched too.)"""
    idp.control(lifetime=LIFETIME)
    rx = receiver()
    exp = make_exporter(rx)
    wait_first_token(exp)
    clock = _JumpingClock(time.time)
    if protocol == "http":
        # the whole process (requests and urllib3 included) sees the jump
        monkeypatch.setattr(time, "time", clock)
        compensate = True
    else:
        # grpc's Python layer turns timeouts into absolute deadlines with time.time() and its C
        # core compares them with the real clock: patching time.time process-wide would fail every
        # call with DEADLINE_EXCEEDED, which no real clock jump does. Our own modules see the jump.
        proxy = _TimeProxy(clock)
        for name, mod in list(sys.modules.items()):
            if name.startswith("otel_token_exporter") and getattr(mod, "time", None) is time:
                monkeypatch.setattr(mod, "time", proxy)
        compensate = False
    monkeypatch.setitem(token_jwt.jwt_expiry.__kwdefaults__, "wall_clock", clock)
    count, seconds = 700, 8
    before = {}

    def jump_to(offset):
        clock.offset = offset
        if compensate:
            rx.validator.clock_offset = -offset  # the receiver's own clock stays true

    def inject(stop):
        stop.wait(1.5)
        before["idp"] = idp.token_requests()
        before["t"] = time.monotonic()
        jump_to(3600.0)
        stop.wait(3.0)
        jump_to(-3600.0)

    drained = run(exp, count, seconds, inject)
    after_jump = idp.token_requests() - before["idp"]
    elapsed = time.monotonic() - before["t"]
    check(rx, count, "our wall clock jumps +1 h, then -2 h", protocol, drained)
    expired = [r for r in rx.requests if r.reason == "expired"]
    tokens = {r.token_id for r in rx.requests}
    print(f"wall clock jumps: {after_jump} IdP requests in {elapsed:.1f} s after the first jump, "
          f"{len(expired)} requests refused as expired, {len(tokens)} tokens")
    # no storm: about one fetch per half lifetime (2 s tokens at worst -> <= 1/s), plus slack
    assert after_jump <= elapsed / 1.0 + 3, (after_jump, elapsed)
    assert after_jump >= 2  # tokens kept rotating after the jumps
    # no stale token: the exporter never keeps sending a token the receiver calls expired. (With the
    # JWT exp unusable as a hint, expires_in alone can run a fraction of a second past the
    # whole-second exp: at most one late refusal per token, then a forced refresh.)
    per_token = {}
    for r in expired:
        per_token[r.token_id] = per_token.get(r.token_id, 0) + 1
    assert all(n <= 2 for n in per_token.values()), sorted(per_token.values())


# --------------------------------------------------------------------------------------------
# Everything at once (done criterion)
# --------------------------------------------------------------------------------------------


def test_mixed_faults_deliver_every_record(idp, protocol, receiver, make_exporter):
    """Random 401s on valid tokens, 503s, IdP errors and a hang, a server clock 1 s ahead."""
    idp.control(lifetime=LIFETIME)
    rx = receiver(clock_offset=1.0)
    exp = make_exporter(rx, timeout=4)
    count, seconds = 2000, 15
    rng = random.Random()
    done = {}
    # which faults happen is fixed (so the asserts below cannot miss), when they happen is random
    events = [(rng.uniform(0.3, seconds - 1), kind) for kind in ["401"] * 6 + ["403"] * 2 + ["503"] * 4]
    events.append((rng.uniform(1, 3), "idp-errors"))
    events.append((rng.uniform(7, 9), "idp-hang"))
    events.sort()

    def inject(stop):
        start = time.monotonic()
        for at, kind in events:
            if stop.wait(max(0.0, start + at - time.monotonic())):
                break
            if kind == "401":
                rx.reject_next_valid(1, 401)
            elif kind == "403":
                rx.reject_next_valid(1, 403)
            elif kind == "503":
                rx.fail_next(rng.randint(1, 3), 503, retry_after=1)
            elif kind == "idp-errors":
                idp.control(faults=[
                    {"status": 503, "retry_after": "1", "count": 2},
                    {"status": 500, "count": 1},
                    {"status": 200, "body": "<html>", "content_type": "text/html"},
                    {"status": 429, "retry_after": "1", "count": 1},
                ])
            else:
                idp.control(hang=True)
                stop.wait(4.0)
                for _ in range(60):  # hold at least one token request before releasing
                    done["held"] = idp.control()["held_requests"]
                    if done["held"]:
                        break
                    time.sleep(0.1)
                idp.control(hang=False)

    drained = run(exp, count, seconds, inject, drain=90.0)
    statuses = rx.statuses()
    check(rx, count, "mixed: random 401/403, 503s, IdP errors + 4 s hang, server clock +1 s",
          protocol, drained)
    assert done.get("held", 0) >= 1
    assert statuses.count(rejected_statuses(protocol, 401)) >= 6
    assert statuses.count(rejected_statuses(protocol, 403)) == 2
    assert statuses.count(rejected_statuses(protocol, 503)) >= 4
