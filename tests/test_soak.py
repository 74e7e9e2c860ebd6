"""Soak: thousands of token rotations in a couple of minutes, without growth in threads, file
descriptors or memory, and without losing a record.

The rotation soak uses an in-process token source whose tokens live 0.5 s and ask (``refresh_hint``)
to be replaced after 20 ms, so the manager rotates ~50 times a second; the receiver accepts only a
token the source issued that has not expired yet. The real-IdP run is shorter (JWT ``exp`` is whole
seconds, so the IdP cannot issue sub-second tokens): 2 s tokens for 14 s.

Figures (rotations, threads, fds, traced memory, RSS) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import collections
import os
import secrets
import threading
import time
import tracemalloc

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from peers.common import TokenValidator
from peers.otlp_grpc import OTLPGrpcReceiver
from peers.otlp_http import OTLPHttpReceiver

from helpers import NUMBERED
from otel_token_exporter import TokenOTLPLogExporter
from otel_token_exporter.schedule import RefreshPolicy
from otel_token_exporter.token import Token

pytestmark = pytest.mark.usefixtures("no_otel_env")

PREFIX = "soak"



class RotatingSource:
    """Sub-second tokens, replaced every ``every`` s; remembers the last few it issued."""

    def __init__(self, lifetime=0.5, every=0.02, keep=512):
        self.lifetime = lifetime
        self.every = every
        self.issued = 0
        self._valid: dict = {}
        self._order: collections.deque = collections.deque()
        self._keep = keep
        self._lock = threading.Lock()

    def fetch(self) -> Token:
        now = time.monotonic()
        value = f"soak-{secrets.token_hex(12)}"
        with self._lock:
            self.issued += 1
            self._valid[value] = now + self.lifetime
            self._order.append(value)
            while len(self._order) > self._keep:
                self._valid.pop(self._order.popleft(), None)
        return Token(value, expires_at=now + self.lifetime, refresh_hint=now + self.every, obtained_at=now)

    def valid(self, token) -> bool:
        with self._lock:
            expires = self._valid.get(token)
        return expires is not None and time.monotonic() < expires


class SourceValidator(TokenValidator):
    def __init__(self, source):
        super().__init__("none")
        self.source = source

    def validate(self, token):
        if not token:
            return False, "missing token"
        return (True, "ok") if self.source.valid(token) else (False, "expired")


class Harvest:
    """Moves what the receiver stored into a fixed-size bitmap, so the receiver does not grow."""

    def __init__(self, rx, count):
        self.rx = rx
        self.seen = bytearray(count)
        self.duplicates = 0
        self.requests = 0
        self.not_ok = 0
        self.tokens = 0
        self._last_token = None

    def __call__(self):
        rx = self.rx
        with rx._cond:
            records, rx.log_records = rx.log_records, []
            requests, rx.requests = rx.requests, []
            rx.resource_logs.clear()
        for rec in requests:
            self.requests += 1
            self.not_ok += not rec.accepted
            if rec.token_id != self._last_token:
                self.tokens += 1
                self._last_token = rec.token_id
        for r in records:
            m = NUMBERED.search(r.body.string_value)
            if m and r.body.string_value.startswith(PREFIX + " "):
                n = int(m.group(1))
                if self.seen[n]:
                    self.duplicates += 1
                self.seen[n] = 1

    def missing(self):
        return self.seen.count(0)


def sample():
    rss = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])  # kB
    return {
        # The in-process HTTP receiver runs one handler thread per connection, and an old one can
        # linger while its socket closes: count every thread but those.
        "threads": sum(1 for t in threading.enumerate() if "process_request_thread" not in t.name),
        "ours": sorted(t.name for t in threading.enumerate() if t.name.startswith("otel-token")),
        "fds": len(os.listdir("/proc/self/fd")),
        "traced_kb": tracemalloc.get_traced_memory()[0] // 1024 if tracemalloc.is_tracing() else 0,
        "rss_kb": rss,
    }


def soak(exporter, rx, *, seconds, rate, warmup, label, rotations):
    """Emit ``rate`` records/s for ``seconds``; sample resources after ``warmup`` s and at the end."""
    count = int(seconds * rate)
    harvest = Harvest(rx, count)
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, max_queue_size=count + 1, schedule_delay_millis=100, max_export_batch_size=128))
    logger = provider.get_logger("soak")
    samples = []
    start = time.monotonic()
    next_harvest = start + 1.0
    warm = None
    try:
        for i in range(count):
            logger.emit(body=f"{PREFIX} {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
            now = time.monotonic()
            if now >= next_harvest:
                harvest()
                next_harvest = now + 1.0
                if warm is None and now - start >= warmup:
                    warm = sample()
                    warm["rotations"] = rotations()
                    warm["t"] = now - start
                    samples.append(warm)
                elif warm is not None and len(samples) < 20 and now - start >= warm["t"] + 5 * len(samples):
                    s = sample()
                    s["rotations"] = rotations()
                    s["t"] = now - start
                    samples.append(s)
            pause = start + (i + 1) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        provider.force_flush(30_000)
        drained = exporter.force_flush(30_000)
        harvest()
        end = sample()
        end["rotations"] = rotations()
        end["t"] = time.monotonic() - start
        samples.append(end)
    finally:
        provider.shutdown()
    harvest()
    after = sample()
    for s in samples:
        print(f"  t={s['t']:5.1f}s rotations={s['rotations']:5d} threads={s['threads']} "
              f"fds={s['fds']} traced={s['traced_kb']}kB rss={s['rss_kb']}kB")
    print(f"SOAK | {label} | {count - harvest.missing()}/{count} delivered, {harvest.duplicates} "
          f"duplicates | {end['rotations']} rotations in {end['t']:.0f}s | {harvest.requests} requests "
          f"({harvest.not_ok} refused) | threads {warm['threads']}->{end['threads']} | fds "
          f"{warm['fds']}->{end['fds']} | traced {warm['traced_kb']}->{end['traced_kb']} kB | rss "
          f"{warm['rss_kb']}->{end['rss_kb']} kB | after shutdown: our threads {after['ours']}")
    return count, harvest, warm, end, after, drained


def _assert_no_growth(warm, end, after, *, traced_kb, fds=2):
    # Threads: only this package's own (named "otel-token...") must be exactly the same set at the
    # end as after the warm-up. Other threads (the receivers', grpc's, the SDK's) are not ours to
    # count exactly: one of them may end during the run, so of the total we only require that it
    # did not grow.
    assert end["ours"] == warm["ours"], (warm["ours"], end["ours"])
    assert end["threads"] <= warm["threads"], (warm["threads"], end["threads"], end["ours"])
    assert end["fds"] <= warm["fds"] + fds, (warm["fds"], end["fds"])
    if traced_kb is not None:
        assert end["traced_kb"] - warm["traced_kb"] <= traced_kb, (warm["traced_kb"], end["traced_kb"])
    assert after["ours"] == []


def _thread_until_stopped(name):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name=name, daemon=True)
    thread.start()
    return stop, thread


def test_a_thread_that_is_not_ours_ending_during_the_run_is_no_growth():
    stop, thread = _thread_until_stopped("someone-elses-worker")
    warm = sample()
    stop.set()
    thread.join(5)
    end = after = sample()
    after = dict(after, ours=[])  # as if our threads had all ended at shutdown
    _assert_no_growth(warm, end, after, traced_kb=None)


def test_a_thread_more_or_a_thread_of_ours_ending_is_still_caught():
    warm = sample()
    done = dict(warm, ours=[])
    grown = dict(warm, threads=warm["threads"] + 1)
    with pytest.raises(AssertionError):  # the total grew
        _assert_no_growth(warm, grown, done, traced_kb=None)
    ours = dict(warm, ours=sorted(warm["ours"] + ["otel-token-refresh[gone-during-the-run]"]))
    with pytest.raises(AssertionError):  # one of ours ended, though the total did not grow
        _assert_no_growth(ours, dict(ours, ours=warm["ours"], threads=ours["threads"] - 1), done,
                          traced_kb=None)
    with pytest.raises(AssertionError):  # one of ours started, in place of a foreign one that ended
        _assert_no_growth(warm, ours, done, traced_kb=None)


@pytest.fixture
def traced():
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    yield
    if not was:
        tracemalloc.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_thousands_of_sub_second_token_rotations_without_leaks(protocol, traced):
    source = RotatingSource()
    validator = SourceValidator(source)
    rx = OTLPHttpReceiver(validator) if protocol == "http" else OTLPGrpcReceiver(validator)
    try:
        exporter = TokenOTLPLogExporter(
            endpoint=rx.endpoint if protocol == "http" else rx.url,
            protocol="http/protobuf" if protocol == "http" else "grpc",
            token_source=source, timeout=5, env={},
            refresh_policy=RefreshPolicy(min_margin=0.1, backoff_base=0.05),
        )
        count, harvest, warm, end, after, drained = soak(
            exporter, rx, seconds=26, rate=250, warmup=6, label=f"{protocol}, 0.5 s tokens rotated every 20 ms",
            rotations=lambda: source.issued)
    finally:
        rx.stop()
    assert drained
    assert harvest.missing() == 0, f"{harvest.missing()} records lost"
    assert end["rotations"] >= 1000, end["rotations"]  # really thousands over the suite
    assert harvest.tokens >= 100  # the requests really used many different tokens
    _assert_no_growth(warm, end, after, traced_kb=1024)


def test_real_idp_two_second_tokens_without_leaks(idp, otlp_grpc_receiver):
    idp.control(lifetime=2)
    rx = otlp_grpc_receiver
    exporter = TokenOTLPLogExporter(
        endpoint=rx.url, protocol="grpc", token_url=idp.token_url, client_id=idp.client_id,
        client_secret=idp.client_secret, timeout=5, env={},
    )
    count, harvest, warm, end, after, drained = soak(
        exporter, rx, seconds=14, rate=250, warmup=4, label="grpc, real IdP, 2 s tokens",
        rotations=lambda: exporter.token_manager.health().refresh_count)
    assert drained
    assert harvest.missing() == 0, f"{harvest.missing()} records lost"
    assert end["rotations"] >= 8
    _assert_no_growth(warm, end, after, traced_kb=None, fds=3)
