"""64 threads logging through a SimpleLogRecordProcessor while the endpoint refuses valid tokens.

SimpleLogRecordProcessor calls export() on the logging thread, so 64 threads call it at once
(2,560 records, 40 each, spread over 3 s). The receiver refuses 20 % of the requests that carry a VALID token with
401 (UNAUTHENTICATED over gRPC), chosen by a seeded random.Random (ReceiverCore.
reject_valid_at_random). By provider.shutdown() every record must have arrived (duplicates
counted), and the token manager must not have refreshed more than once per token generation the
receiver refused: forced refreshes (IdP requests minus the first) <= distinct token ids refused.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

from helpers import numbers
from otel_token_exporter import TokenOTLPLogExporter
from peers.common import RANDOM_REJECT_REASON

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_otel_env")]

THREADS, PER_THREAD = 64, 40
FRACTION = 0.2
SECONDS = 3.0  # each thread spreads its records over this long: many requests, several generations


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_64_threads_with_20_percent_of_valid_tokens_refused_lose_no_record(
        idp, make_http_receiver, make_grpc_receiver, protocol):
    rx = (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")
    exporter = TokenOTLPLogExporter(
        endpoint=rx.endpoint if protocol == "http" else rx.url,
        protocol="http/protobuf" if protocol == "http" else "grpc",
        token_url=idp.token_url, client_id=idp.client_id, client_secret=idp.client_secret, env={},
    )
    exporter.token_manager.get(10)
    fetched = time.time()
    assert idp.token_requests() == 1
    # The IdP's JWTs carry no jti: two fetched within the same wall-clock second are the same
    # string, so the receiver's token ids could not tell their generations apart. Forced
    # refreshes are >= 1 s apart (min_forced_interval); the first must not share the initial
    # token's second either.
    time.sleep(max(0.0, int(fetched) + 1.05 - time.time()))
    rx.reject_valid_at_random(FRACTION, seed=20240607)
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    barrier = threading.Barrier(THREADS)
    errors: list = []

    def worker(k):
        try:
            logger = provider.get_logger(f"thread{k}")
            barrier.wait(10)
            start = time.monotonic() + SECONDS / PER_THREAD * k / THREADS  # staggered
            for i in range(PER_THREAD):
                n = k * PER_THREAD + i
                logger.emit(body=f"conc {n}", severity_number=SeverityNumber.INFO, severity_text="INFO")
                pause = start + SECONDS * (i + 1) / PER_THREAD - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,), name=f"test-logger-{k}") for k in range(THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    emitted_in = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a logging thread is stuck in export()"
    assert not errors, errors
    provider.shutdown()
    took = time.monotonic() - started

    total = THREADS * PER_THREAD
    got = numbers(rx.received_bodies(), "conc")
    seen = set(got)
    missing = sorted(set(range(total)) - seen)
    refused = [r for r in rx.requests if r.reason == RANDOM_REJECT_REASON]
    refused_tokens = {r.token_id for r in refused}
    other_refusals = [r for r in rx.requests if not r.accepted and r.reason != RANDOM_REJECT_REASON]
    forced = idp.token_requests() - 1
    print(f"\nCONCURRENCY | {THREADS} threads x {PER_THREAD} | {protocol} | {len(seen)}/{total} "
          f"delivered | duplicates {len(got) - len(seen)} | requests {len(rx.requests)}, "
          f"{len(refused)} refused at random ({len(refused_tokens)} token generations), "
          f"{len(other_refusals)} other failures | forced refreshes {forced} | "
          f"emitted in {emitted_in:.1f}s, done in {took:.1f}s")

    assert not missing, f"{len(missing)} of {total} records lost, first: {missing[:10]}"
    assert len(refused) >= 3, "the receiver hardly refused anything: the fault did not happen"
    assert forced <= len(refused_tokens), (
        f"{forced} forced refreshes for {len(refused_tokens)} refused token generations: "
        "more than one refresh per refused generation")
    assert forced >= 1, "no refused generation was ever replaced"
    assert not other_refusals, [(r.status, r.reason) for r in other_refusals][:5]
    statuses = {r.status for r in refused}
    assert statuses <= {401, grpc.StatusCode.UNAUTHENTICATED}
