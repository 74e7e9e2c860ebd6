"""Done criterion: "a 30-second IdP outage with 3-second tokens loses no record within the default
buffer cap (zero-code, HTTP and gRPC)".

examples/zero_code_app.py runs under ``opentelemetry-instrument`` with ``OTEL_LOGS_EXPORTER=token_otlp``
(default buffer limits: nothing set), logging 6,000 numbered records over 38 s. About 4 s in, the
test takes the IdP down for 30 s (HTTP run: every token request answered 503 with Retry-After;
gRPC run: every token request hangs), ten token lifetimes, then brings it back. Every record must
arrive, and the receiver must have seen the gap (proof the outage really left the app without a
valid token, so the records were kept and re-sent).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from helpers import REPO_ROOT, ZERO_CODE_APP, instrument_command, leaked, numbers, zero_code_env

LIFETIME = 3
OUTAGE = 30.0
COUNT, SECONDS = 6000, 38


def _accepted_gap(rx) -> float:
    times = sorted(r.time for r in rx.requests if r.accepted)
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


@pytest.mark.parametrize("protocol,outage", [("http", "503"), ("grpc", "hang")])
def test_thirty_second_idp_outage_loses_no_record_zero_code(idp, make_http_receiver,
                                                            make_grpc_receiver, protocol, outage):
    rx = make_http_receiver("jwt") if protocol == "http" else make_grpc_receiver("jwt")
    idp.control(lifetime=LIFETIME)
    extra = dict(
        APP_RECORDS=COUNT, APP_SECONDS=SECONDS,
        # the processor's queue must hold what arrives between two exports; our exporter keeps
        # what could not be sent (default cap 20,000 records / 32 MiB: not set here)
        OTEL_BLRP_MAX_QUEUE_SIZE="20000",
        OTEL_BLRP_SCHEDULE_DELAY="200",
    )
    if protocol == "grpc":
        extra.update(OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=rx.url)
    env = zero_code_env(rx if protocol == "http" else None, idp, **extra)
    proc = subprocess.Popen([instrument_command(), sys.executable, ZERO_CODE_APP], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        assert rx.wait_for(1, 20), "the app never delivered a record before the outage"
        time.sleep(max(0.0, started + 4 - time.monotonic()))
        down_at = time.monotonic() - started
        if outage == "503":
            idp.control(faults=[{"status": 503, "retry_after": "2",
                                 "body": {"error": "temporarily_unavailable"}, "count": 100000}])
        else:
            idp.control(hang=True)
        time.sleep(OUTAGE)
        failed = idp.requests()
        if outage == "503":
            idp.control(clear_faults=True)
        else:
            idp.control(hang=False)
        up_at = time.monotonic() - started
        out, err = proc.communicate(timeout=SECONDS + 90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    duration = time.monotonic() - started

    got = numbers(rx.received_bodies(), prefix="app record")
    delivered = len(set(got))
    gap = _accepted_gap(rx)
    outage_requests = sum(1 for r in failed if r.get("outcome") in ("fault", "hang", "client_gone"))
    print(f"\nDELIVERY | zero-code, IdP {outage} for {OUTAGE:.0f}s ({down_at:.1f}s-{up_at:.1f}s), "
          f"{LIFETIME}s tokens | {protocol} | {delivered}/{COUNT} | duplicates {len(got) - delivered} | "
          f"longest gap between accepted requests {gap:.1f}s, {outage_requests} failed token "
          f"requests, run {duration:.1f}s")

    assert proc.returncode == 0, err[-2000:]
    assert "app done" in err
    assert delivered == COUNT, f"{COUNT - delivered} records lost"
    assert gap >= OUTAGE - 2 * LIFETIME - 3, f"no outage seen at the receiver (longest gap {gap:.1f}s)"
    assert outage_requests >= 1
    assert "dropping log records" not in err  # within the default cap nothing was dropped
    assert leaked(out + err, [idp.client_secret] + [r.token for r in rx.requests if r.token]) == 0
