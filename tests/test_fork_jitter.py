"""Preforked workers (gunicorn --preload) spread their token refreshes instead of marching in step.

The parent builds one exporter and exports (its manager holds a 6-second token), then forks 9
children. Every child inherits the same random state and the same token with the same refresh
point; the manager's fork hook must reseed its jitter and re-draw that point. Each child logs until
it has seen its first rotation and reports, through a pipe, when its own manager refreshed (a
listener added in the child). The nine first-rotation refresh times must spread over the jitter
range (0.6 s for a 6 s token: max - min > 100 ms), not fall within a few milliseconds of each other.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from helpers import numbers
from otel_token_exporter import TokenOTLPLogExporter

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_otel_env")]

LIFETIME = 6
CHILDREN = 9
MIN_SPREAD = 0.1


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def rx(protocol, make_http_receiver, make_grpc_receiver):
    return (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")


def _child(provider, exporter, k, wfd, stop_after) -> None:
    """Runs in the forked child; reports through ``wfd`` and leaves with os._exit (never returns)."""
    code = 3
    report: dict = {"pid": os.getpid(), "k": k}
    try:
        manager = exporter.token_manager
        refreshed = threading.Event()
        events: list = []

        def listener(trigger, outcome, duration, held, error):
            now = time.monotonic()
            events.append({"trigger": trigger, "outcome": outcome, "started": now - duration,
                           "ended": now})
            if outcome == "success":
                refreshed.set()

        manager.add_listener(listener)
        health = manager.health()
        report["refresh_due"] = time.monotonic() + health.seconds_until_refresh
        logger = provider.get_logger(f"child{k}")
        i = 0
        deadline = time.monotonic() + stop_after
        while not refreshed.is_set() and time.monotonic() < deadline:
            logger.emit(body=f"fork{k} {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
            i += 1
            refreshed.wait(0.02)
        for _ in range(10):  # a few records with the new token
            logger.emit(body=f"fork{k} {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
            i += 1
        report["emitted"] = i
        report["flushed"] = provider.force_flush(10_000) and exporter.force_flush(10_000)
        report["events"] = list(events)
        report["generation"] = manager.health().generation
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            os.write(wfd, json.dumps(report).encode())
            os.close(wfd)
        finally:
            os._exit(code)


def test_forked_children_spread_their_first_refresh_over_the_jitter_range(idp, rx, protocol):
    idp.control(lifetime=LIFETIME)
    exporter = TokenOTLPLogExporter(
        endpoint=rx.endpoint if protocol == "http" else rx.url,
        protocol="http/protobuf" if protocol == "http" else "grpc",
        token_url=idp.token_url, client_id=idp.client_id, client_secret=idp.client_secret,
        env={}, timeout=5,
    )
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, schedule_delay_millis=200))
    children: dict = {}
    try:
        logger = provider.get_logger("parent")
        for i in range(20):
            logger.emit(body=f"parent {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
        provider.force_flush(10_000)
        assert rx.wait_for(20, 10), "the parent never exported"
        held = exporter.token_manager.get(1)
        assert time.monotonic() < held.refresh_at, "the parent's token is already due"
        stop_after = held.expires_at - time.monotonic() + 3  # past expiry: a rotation was missed

        for k in range(CHILDREN):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(provider, exporter, k, w, stop_after)
            os.close(w)
            children[k] = (pid, r)

        deadline = time.monotonic() + stop_after + 20
        reports, codes = {}, {}
        chunks = {k: b"" for k in children}
        open_fds = {r: k for k, (pid, r) in children.items()}
        while open_fds and time.monotonic() < deadline:  # read while they run: never block them
            ready, _, _ = select.select(list(open_fds), [], [], 0.2)
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    chunks[open_fds[fd]] += data
                else:
                    os.close(fd)
                    del open_fds[fd]
        for fd in open_fds:
            os.close(fd)
        for k, (pid, _) in children.items():
            codes[k] = _reap(pid, deadline)
            reports[k] = json.loads(chunks[k]) if chunks[k] else {}
        children.clear()
    finally:
        for pid, r in children.values():  # only if the test failed while forking
            _reap(pid, time.monotonic())
        provider.shutdown()

    for k in range(CHILDREN):
        assert codes[k] is not None, f"child {k} did not finish in time (killed): {reports[k]}"
        assert codes[k] == 0, (k, codes[k], reports[k])

    firsts = []
    bodies = rx.received_bodies()
    for k in range(CHILDREN):
        rep = reports[k]
        ok = [e for e in rep["events"] if e["outcome"] == "success"]
        assert ok, f"child {k} never refreshed its token: {rep['events']}"
        first = ok[0]
        assert first["trigger"] == "scheduled", f"child {k}'s first refresh was {first['trigger']}"
        assert first["started"] < held.expires_at, f"child {k} refreshed only after the token expired"
        firsts.append(first["started"])
        got = set(numbers(bodies, f"fork{k}"))
        assert rep["flushed"] and got == set(range(rep["emitted"])), \
            f"child {k}: {rep['emitted'] - len(got)} of {rep['emitted']} records missing"
    spread = max(firsts) - min(firsts)
    rel = sorted(round(t - held.obtained_at, 3) for t in firsts)
    jitter = min(held.lifetime * 0.1, 300.0)
    print(f"\nFORK JITTER | {protocol} | {CHILDREN} children, {held.lifetime:.1f}s token | first refresh "
          f"at {rel} s after the parent's fetch | spread {spread * 1000:.0f} ms "
          f"(jitter range {jitter * 1000:.0f} ms, parent due at {held.refresh_at - held.obtained_at:.3f} s)")
    assert spread > MIN_SPREAD, (f"the children refreshed within {spread * 1000:.0f} ms of each other: "
                                 "the fork did not reseed the jitter")


def _reap(pid, deadline):
    """Exit code of our child ``pid``; SIGKILL it (by pid) once ``deadline`` passes (returns None)."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        time.sleep(0.05)
