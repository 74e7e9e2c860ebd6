"""Drains: what is kept reaches the endpoint on a normal exit, and on an explicit flush.

a. An IdP outage that ends 0.5 s before a normal exit: 2-second tokens, the IdP answers 503 from
   just after the first token until 0.3-2.1 s after that token expired (varied over ten runs, so
   the token manager's backoff is in a different phase when the IdP recovers), with records logged
   at 1,000/s throughout (several hundred after the token expired, while no token can be had).
   0.5 s after the IdP recovers, provider.shutdown(): every record must arrive.
b. LoggerProvider.force_flush() reaches our sending queue (the flush hook on the GLOBAL provider):
   the endpoint answers 503, records are exported and kept, the endpoint recovers, and
   provider.force_flush(10000) returns True with every record at the receiver before any shutdown
   (the child process leaves with os._exit, which skips shutdown). Run in a fresh process each
   time (a global provider can be set once per process): a small SDK script, and a plain app under
   opentelemetry-instrument. A second scenario fails only the first attempt, which is made inside
   force_flush itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from helpers import REPO_ROOT, instrument_command, numbers, wait_until, zero_code_env
from otel_token_exporter import TokenOTLPLogExporter

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_otel_env")]


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def rx(protocol, make_http_receiver, make_grpc_receiver):
    return (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")


def endpoint_of(rx, protocol):
    return rx.endpoint if protocol == "http" else rx.url


def otlp_protocol(protocol):
    return "http/protobuf" if protocol == "http" else "grpc"


# ------------------------------------------------------------------------------------------------
# a. an IdP outage ending 0.5 s before a normal exit
# ------------------------------------------------------------------------------------------------

RATE = 1000
LIFETIME = 2
RUNS = 10


@pytest.mark.parametrize("run", range(RUNS))
def test_idp_outage_ending_half_a_second_before_a_normal_exit_loses_no_record(idp, rx, protocol, run):
    idp.control(lifetime=LIFETIME)
    exporter = TokenOTLPLogExporter(
        endpoint=endpoint_of(rx, protocol), protocol=otlp_protocol(protocol),
        token_url=idp.token_url, client_id=idp.client_id, client_secret=idp.client_secret, env={},
    )
    manager = exporter.token_manager
    held = manager.get(10)
    clock = manager.clock  # the manager's monotonic clock (time.monotonic)
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))  # SDK defaults
    logger = provider.get_logger("drain")
    prefix = f"drain{run}"

    after_expiry = 0.3 + 0.2 * run  # how long after the token expired the IdP recovers
    down_at = clock() + 0.2  # before the first scheduled refresh (>= half the lifetime)
    up_at = held.expires_at + after_expiry
    exit_at = up_at + 0.5
    idp_up = threading.Event()

    def idp_outage():
        time.sleep(max(0.0, down_at - clock()))
        idp.control(faults=[{"status": 503, "body": {"error": "temporarily_unavailable"},
                             "count": 100_000}])
        time.sleep(max(0.0, up_at - clock()))
        idp.control(clear_faults=True)
        idp_up.set()

    outage = threading.Thread(target=idp_outage, name="test-idp-outage", daemon=True)
    outage.start()
    start = clock()
    emitted_times = []
    i = 0
    try:
        while clock() < exit_at:
            logger.emit(body=f"{prefix} {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
            emitted_times.append(clock())
            i += 1
            pause = start + i / RATE - clock()
            if pause > 0:
                time.sleep(pause)
        assert idp_up.wait(5), "the IdP outage thread never ended the outage"
        shutdown_started = clock()
        provider.shutdown()
        shutdown_took = clock() - shutdown_started
    finally:
        outage.join(5)
        idp.control(clear_faults=True)
    count = i

    requests = idp.requests()
    failed_fetches = sum(1 for r in requests if r.get("outcome") == "fault")
    without_token = sum(1 for t in emitted_times if held.expires_at <= t < up_at)
    got = numbers(rx.received_bodies(), prefix)
    seen = set(got)
    missing = sorted(set(range(count)) - seen)
    print(f"\nDRAIN | IdP 503 {up_at - down_at:.1f}s, recovered {after_expiry:.1f}s after expiry, exit "
          f"0.5s later | {protocol} | {len(seen)}/{count} delivered | duplicates {len(got) - len(seen)} | "
          f"{without_token} emitted without a token | {failed_fetches} failed token requests | "
          f"shutdown {shutdown_took:.2f}s")
    assert without_token >= 200, "too few records were emitted while no token could be had"
    assert failed_fetches >= 1, "the IdP outage never refused a token request"
    assert not missing, f"{len(missing)} of {count} records lost, first: {missing[:10]}"


# ------------------------------------------------------------------------------------------------
# b. LoggerProvider.force_flush() reaches what our queue keeps
# ------------------------------------------------------------------------------------------------

COUNT = 300  # fewer than a batch (512): the processor exports them on its schedule or on a flush

SDK_APP = r'''
import json, os, sys, time
from opentelemetry._logs import SeverityNumber, set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from otel_token_exporter import TokenOTLPLogExporter

cfg = json.loads(sys.argv[1])

def say(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

provider = LoggerProvider()
set_logger_provider(provider)
exporter = TokenOTLPLogExporter(endpoint=cfg["endpoint"], protocol=cfg["protocol"],
                                token_url=cfg["token_url"], client_id=cfg["client_id"],
                                client_secret=cfg["client_secret"], env={})
provider.add_log_record_processor(BatchLogRecordProcessor(exporter))  # SDK defaults
exporter.token_manager.get(10)
logger = provider.get_logger("flush")
for i in range(cfg["count"]):
    logger.emit(body="flush %d" % i, severity_number=SeverityNumber.INFO, severity_text="INFO")
queue = exporter.sending_queue
if cfg["scenario"] == "kept-before-flush":
    # the processor's own schedule (1 s) exports them; the endpoint refuses: our queue keeps them
    deadline = time.monotonic() + 15
    while not (queue.stats().queued_records == cfg["count"] and queue.failing):
        if time.monotonic() > deadline:
            say(error="the records were never kept", stats=str(queue.stats()))
            os._exit(3)
        time.sleep(0.02)
    say(kept=queue.stats().queued_records)
    sys.stdin.readline()  # the parent lets the endpoint recover
started = time.monotonic()
ok = provider.force_flush(10000)
say(flushed=ok, took=round(time.monotonic() - started, 3), left=queue.stats().queued_records)
os._exit(0)  # no shutdown: only the flush can have delivered them
'''

ZERO_CODE_APP = r'''
import json, logging, os, sys, time
from opentelemetry._logs import get_logger_provider

log = logging.getLogger("flush_app")
logging.getLogger().setLevel(logging.INFO)
count = int(os.environ["APP_RECORDS"])
go = os.environ.get("APP_GO_FILE")
for i in range(count):
    log.info("flush %d", i)
if go:
    deadline = time.monotonic() + 20
    while not os.path.exists(go):  # the parent: the endpoint refused them, then recovered
        if time.monotonic() > deadline:
            print(json.dumps({"error": "no go file"}), flush=True)
            os._exit(3)
        time.sleep(0.02)
started = time.monotonic()
ok = get_logger_provider().force_flush(10000)
print(json.dumps({"flushed": ok, "took": round(time.monotonic() - started, 3)}), flush=True)
os._exit(0)  # no shutdown: only the flush can have delivered them
'''

FIRST_KEEP_IN_FLUSH = (
    "_flush_hook.py adds its processor to the global provider when a request is first kept; when "
    "that happens inside LoggerProvider.force_flush (SynchronousMultiLogRecordProcessor iterates a "
    "tuple taken before), the hook is not called by that flush: it returns True with the records "
    "still kept")


def _failed_requests_with_all(rx) -> bool:
    """The endpoint refused a request carrying all COUNT records (the kept batch, re-sent; under
    opentelemetry-instrument it carries the instrumentation's own startup warning too)."""
    return any(r.n_records >= COUNT and r.status not in (200, grpc.StatusCode.OK) for r in rx.requests)


def _check_flush(rx, report, where):
    got = numbers(rx.received_bodies(), "flush")  # read right after the child's report
    seen = set(got)
    missing = sorted(set(range(COUNT)) - seen)
    print(f"\nFLUSH | {where} | {len(seen)}/{COUNT} at the receiver after force_flush | "
          f"duplicates {len(got) - len(seen)} | report {report}")
    assert report.get("flushed") is True, f"force_flush did not return True: {report}"
    assert not missing, f"{len(missing)} of {COUNT} records not delivered by force_flush"


def _sdk_flush(tmp_path, idp, rx, protocol, scenario):
    script = tmp_path / "flush_app.py"
    script.write_text(SDK_APP)
    cfg = dict(endpoint=endpoint_of(rx, protocol), protocol=otlp_protocol(protocol),
               token_url=idp.token_url, client_id=idp.client_id, client_secret=idp.client_secret,
               count=COUNT, scenario=scenario)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        if scenario == "kept-before-flush":
            line = proc.stdout.readline()
            assert line, f"the child ended early: {proc.stderr.read()[-2000:]}"
            kept = json.loads(line)
            assert kept.get("kept") == COUNT, kept
            assert rx.received_bodies() == [], "records arrived while the endpoint refused them"
            rx.clear_faults()
            proc.stdin.write("go\n")
            proc.stdin.flush()
        line = proc.stdout.readline()
        report = json.loads(line) if line.strip() else {}
        _check_flush(rx, report, f"SDK script, {scenario}, {protocol}")
    finally:
        if proc.poll() is None:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]


def test_provider_force_flush_delivers_what_the_queue_kept(tmp_path, idp, rx, protocol):
    rx.fail_next(100_000, 503)  # until the parent clears it
    _sdk_flush(tmp_path, idp, rx, protocol, "kept-before-flush")


def test_provider_force_flush_delivers_when_the_first_attempt_inside_it_fails(tmp_path, idp, rx,
                                                                            protocol):
    rx.fail_next(1, 503)  # the first attempt, made inside force_flush, fails; the next succeeds
    _sdk_flush(tmp_path, idp, rx, protocol, "fails-during-flush")


def _zero_code_flush(tmp_path, idp, rx, protocol, scenario):
    script = tmp_path / "zero_code_flush_app.py"
    script.write_text(ZERO_CODE_APP)
    go = tmp_path / "go"
    extra = {"APP_RECORDS": COUNT}
    if scenario == "kept-before-flush":
        extra["APP_GO_FILE"] = str(go)
    if protocol == "grpc":
        extra.update(OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=rx.url)
    env = zero_code_env(rx if protocol == "http" else None, idp, **extra)
    proc = subprocess.Popen([instrument_command(), sys.executable, str(script)], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if scenario == "kept-before-flush":
            # the processor's schedule exported them, the endpoint refused them: our queue keeps them
            assert wait_until(lambda: _failed_requests_with_all(rx), 20), \
                "the endpoint never refused a request with all the records"
            assert rx.received_bodies() == []
            rx.clear_faults()
            go.write_text("go")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    assert proc.returncode == 0, err[-2000:]
    _check_flush(rx, report, f"zero-code, {scenario}, {protocol}")


def test_zero_code_force_flush_then_os_exit_delivers_what_the_queue_kept(tmp_path, idp, rx, protocol):
    rx.fail_next(100_000, 503)
    _zero_code_flush(tmp_path, idp, rx, protocol, "kept-before-flush")


def test_zero_code_force_flush_then_os_exit_delivers_when_the_first_attempt_fails(tmp_path, idp, rx,
                                                                                protocol):
    rx.fail_next(1, 503)
    _zero_code_flush(tmp_path, idp, rx, protocol, "fails-during-flush")
