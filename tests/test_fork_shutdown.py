"""Fork (gunicorn --preload style) and shutdown behaviour against the real IdP and receivers.

Fork: the parent builds the provider and exporter and exports (so its token manager holds a token,
has a refresher thread and pooled connections), then forks 4 children. Each child logs its own
records for longer than a token lives, so it must refresh on its own; the parent waits with a
deadline (a deadlock fails the test instead of hanging it) and checks that every child's records
arrived and that it still works itself.

Shutdown: returns within its timeout even while the IdP hangs, reports what it could not send, and
leaves no ``otel-token-*`` thread behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from helpers import numbers
from otel_token_exporter import TokenOTLPLogExporter

pytestmark = pytest.mark.usefixtures("no_otel_env")

LIFETIME = 3
CHILDREN = 4



@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def rx(protocol, make_http_receiver, make_grpc_receiver):
    return (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")


def build(idp, rx, protocol, **kw):
    kw.setdefault("timeout", 5)
    return TokenOTLPLogExporter(
        endpoint=rx.endpoint if protocol == "http" else rx.url,
        protocol="http/protobuf" if protocol == "http" else "grpc",
        token_url=idp.token_url,
        client_id=idp.client_id,
        client_secret=idp.client_secret,
        env={},
        **kw,
    )


def our_threads() -> set:
    return {t for t in threading.enumerate() if t.name.startswith("otel-token-") and t.is_alive()}


def emit(logger, prefix, count, seconds=0.0):
    start = time.monotonic()
    for i in range(count):
        logger.emit(body=f"{prefix} {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
        if seconds:
            pause = start + seconds * (i + 1) / count - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def _child(provider, exporter, k, count, seconds, wfd) -> None:
    """Runs in the forked child; reports through ``wfd`` and leaves with os._exit (never returns)."""
    code = 3
    report = {"pid": os.getpid()}
    try:
        manager = exporter.token_manager
        report["refresh_before"] = manager.health().refresh_count
        emit(provider.get_logger("child"), f"child{k}", count, seconds)
        provider.force_flush(20_000)
        report["drained"] = exporter.force_flush(20_000)
        report["refresh_after"] = manager.health().refresh_count
        report["threads"] = sorted(t.name for t in our_threads())
        report["manager_pid"] = manager._pid
        provider.shutdown()
        report["threads_after_shutdown"] = sorted(t.name for t in our_threads())
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            os.write(wfd, json.dumps(report).encode())
            os.close(wfd)
        finally:
            os._exit(code)


def _wait(pid, deadline):
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.05)


def test_forked_children_each_get_a_working_manager_and_deliver_their_records(idp, rx, protocol):
    idp.control(lifetime=LIFETIME)
    exporter = build(idp, rx, protocol)
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, max_queue_size=10_000, schedule_delay_millis=100, max_export_batch_size=64))
    try:
        logger = provider.get_logger("parent")
        emit(logger, "parent-before", 50)
        provider.force_flush(10_000)
        assert rx.wait_for(50, 10), "the parent never exported"
        assert exporter.token_manager.health().has_token
        assert our_threads(), "the parent's manager has no live refresher thread to inherit"

        count, seconds = 300, 4.5  # longer than a token lives: each child must refresh itself
        children = []
        for k in range(CHILDREN):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(provider, exporter, k, count, seconds, w)
            os.close(w)
            children.append((k, pid, r))

        deadline = time.monotonic() + 60
        reports = {}
        for k, pid, r in children:
            code = _wait(pid, deadline)
            with os.fdopen(r, "rb") as f:
                raw = f.read()
            reports[k] = json.loads(raw) if raw else {}
            assert code is not None, f"child {k} did not finish within 60 s (deadlock?)"
            assert code == 0, (k, code, reports[k])

        # the parent still works after the fork
        emit(logger, "parent-after", 50)
        provider.force_flush(10_000)
        assert exporter.force_flush(10_000)
    finally:
        provider.shutdown()

    bodies = rx.received_bodies()
    for k in range(CHILDREN):
        rep = reports[k]
        got = numbers(bodies, f"child{k}")
        print(f"\nchild {k}: {len(set(got))}/{count} delivered ({len(got) - len(set(got))} duplicates), "
              f"{rep['refresh_after'] - rep['refresh_before']} own refreshes, threads {rep['threads']}")
        assert set(got) == set(range(count)), f"child {k} lost {count - len(set(got))} records"
        assert rep["drained"]
        assert rep["manager_pid"] == rep["pid"]  # the manager was reset for this process
        assert rep["refresh_after"] > rep["refresh_before"], "the child's own manager never refreshed"
        assert rep["threads_after_shutdown"] == []
    assert set(numbers(bodies, "parent-before")) == set(range(50))
    assert set(numbers(bodies, "parent-after")) == set(range(50))


def _shutdown_while_idp_hangs(idp, rx, protocol, timeout):
    """Exporter with records kept in its buffer and its token refresh stuck at a hanging IdP;
    returns (seconds shutdown took, our threads left 0.2 s later)."""
    before = our_threads()
    idp.control(lifetime=LIFETIME)
    exporter = build(idp, rx, protocol, timeout=3)
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, schedule_delay_millis=100, max_export_batch_size=64))
    logger = provider.get_logger("shutdown")
    try:
        emit(logger, "early", 20)
        provider.force_flush(10_000)
        assert rx.wait_for(20, 10)

        idp.control(hang=True)
        time.sleep(LIFETIME + 0.5)  # the token expires; its refresh is stuck at the IdP
        emit(logger, "late", 100)
        provider.force_flush(10_000)  # no token: the batch is kept in the outage buffer
        assert exporter.sending_queue.stats().queued_records == 100

        started = time.monotonic()
        exporter.shutdown(timeout_millis=timeout * 1000)
        took = time.monotonic() - started
        time.sleep(0.2)  # threads that were told to stop get a moment to return
        left = our_threads() - before
        print(f"\nshutdown with the IdP hanging ({protocol}): {took:.2f}s for a {timeout:.0f}s "
              f"timeout, threads left: {sorted(t.name for t in left)}")
        return took, left
    finally:
        provider.shutdown()  # the processor's own thread; the exporter is already shut down
        idp.control(hang=False)


def test_shutdown_returns_within_its_timeout_while_the_idp_hangs_and_reports_the_loss(
        idp, rx, protocol, caplog):
    caplog.set_level(logging.WARNING, logger="otel_token_exporter")
    timeout = 2.0
    took, _ = _shutdown_while_idp_hangs(idp, rx, protocol, timeout)
    assert took <= timeout + 0.5, f"shutdown took {took:.1f}s with a {timeout}s timeout"
    assert any("100 log record(s) that could not be delivered" in r.getMessage()
               for r in caplog.records), "shutdown did not report the records it could not send"


@pytest.mark.parametrize("protocol", ["http"])
def test_shutdown_while_the_idp_hangs_leaves_no_thread(idp, rx, protocol):
    _, left = _shutdown_while_idp_hangs(idp, rx, protocol, 2.0)
    assert not left, f"threads left behind: {sorted(t.name for t in left)}"


@pytest.mark.parametrize("protocol", ["http"])  # the SDK's path; the transport is not involved
def test_provider_shutdown_with_an_idp_down_is_bounded_and_leaves_no_thread(idp, rx, protocol):
    """The SDK's own path: LoggerProvider.shutdown -> processor -> exporter.shutdown, IdP hanging
    from the start (no token ever)."""
    before = our_threads()
    idp.control(hang=True)
    exporter = build(idp, rx, protocol, timeout=2)
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, schedule_delay_millis=100))
    emit(provider.get_logger("down"), "never", 10)
    started = time.monotonic()
    provider.shutdown()
    took = time.monotonic() - started
    time.sleep(0.2)
    left = our_threads() - before
    idp.control(hang=False)
    print(f"\nprovider shutdown, IdP hanging ({protocol}): {took:.2f}s, threads left: "
          f"{sorted(t.name for t in left)}")
    # one export attempt waits at most the exporter timeout (2 s) for a token, then shutdown's own
    # bounded drain (at most 10 s); generous margin for a busy machine
    assert took < 2 + 10 + 3
    assert not left, f"threads left behind: {sorted(t.name for t in left)}"
    assert rx.received_bodies() == []
