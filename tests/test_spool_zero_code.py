"""Disk spool, zero-code (``opentelemetry-instrument``, ``OTEL_LOGS_EXPORTER=token_otlp``,
``OTEL_TOKEN_EXPORTER_SPOOL_DIR``), over OTLP/HTTP and OTLP/gRPC, against the real IdP and receivers.

1. Crash: the IdP is down from the start (every /token answered 503); the app (tests/spool_app.py)
   logs 1,500 records over 5 s and stays alive; once every record is in the spool directory the
   test SIGKILLs it by its pid. A second process on the same directory, the IdP back, logs 100
   more: all 1,600 arrive.
   Records still in the SDK's BatchLogRecordProcessor queue at a SIGKILL are lost by design; the
   test waits until the spool holds everything (that is what makes it deterministic) and prints
   the bound of that loss from the processor's settings (max_queue_size + one batch in export()).
2. Exit: the same with a normal exit: the first process exits within 2 s of its last record
   (measured from the app's "app done" line), leaving everything on disk; the second delivers it.
3. Two processes started at once on the directory a third left when it was SIGKILLed: every
   spooled record arrives (at-least-once: duplicates counted and printed), none lost.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from helpers import leaked, numbers, wait_until, zero_code_env
from spool_helpers import all_files, is_request_file, read_spool, spooled_numbers, start_app

pytestmark = pytest.mark.slow

FIRST, SECONDS = 1500, 5.0
SECOND = 100
SCHEDULE_DELAY_MS = 100
IDP_DOWN = [{"status": 503, "body": {"error": "temporarily_unavailable"}, "count": 1_000_000}]


def _receiver(protocol, make_http_receiver, make_grpc_receiver):
    return make_http_receiver("jwt") if protocol == "http" else make_grpc_receiver("jwt")


def _env(protocol, rx, idp, spool, **extra):
    if protocol == "grpc":
        extra.update(OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=rx.url)
        return zero_code_env(None, idp, OTEL_TOKEN_EXPORTER_SPOOL_DIR=spool, **extra)
    return zero_code_env(rx, idp, OTEL_TOKEN_EXPORTER_SPOOL_DIR=spool, **extra)


def _sdk_bound(child) -> tuple[dict, int]:
    """The batch processor's settings the app printed, and the most records a SIGKILL can take
    from it: a full queue plus the batch handed to export() and not yet on disk."""
    line = child.wait_line("sdk ", 30)
    assert line is not None, "the app never printed its processor settings: " + child.stderr()[-2000:]
    info = json.loads(line[2][4:])
    processors = info.get("processors") or []
    assert processors, f"no BatchLogRecordProcessor found: {info}"
    p = processors[0]
    return p, p["max_queue_size"] + p["max_export_batch_size"]


def _spool_first(protocol, idp, rx, spool, tmp_path, *, linger):
    """Run the first process with the IdP down until all FIRST records are on disk."""
    idp.control(faults=IDP_DOWN)
    env = _env(protocol, rx, idp, spool, APP_PREFIX="first", APP_RECORDS=FIRST, APP_SECONDS=SECONDS,
               APP_LINGER=linger, OTEL_BLRP_SCHEDULE_DELAY=SCHEDULE_DELAY_MS, OTEL_SERVICE_NAME="spool-first")
    child = start_app(env, str(tmp_path / "first.err"))
    settings, bound = _sdk_bound(child)
    return child, settings, bound


def _second(protocol, idp, rx, spool, tmp_path, prefix="second", name="second"):
    env = _env(protocol, rx, idp, spool, APP_PREFIX=prefix, APP_RECORDS=SECOND, APP_SECONDS=1,
               OTEL_BLRP_SCHEDULE_DELAY=SCHEDULE_DELAY_MS, OTEL_SERVICE_NAME=f"spool-{prefix}")
    return start_app(env, str(tmp_path / f"{name}.err"))


def _second_delivers(protocol, idp, rx, spool, tmp_path) -> str:
    """With the IdP back, a second process on the same spool directory logs its own records and
    exits 0, having delivered the first process's spooled ones. Returns its stderr."""
    idp.control(clear_faults=True)
    second = _second(protocol, idp, rx, spool, tmp_path)
    try:
        rc = second.wait(60)
        assert rc == 0, second.stderr()[-2000:]
        rx.wait_until(lambda r: set(numbers(r.received_bodies(), "first")) >= set(range(FIRST)), 5)
        return second.stderr()
    finally:
        second.close()


def _secrets(idp, rx) -> list:
    return [idp.client_secret] + [r.token for r in rx.requests if r.token]


def _spool_bytes(spool) -> str:
    text = []
    for path in all_files(spool):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                text.append(f.read().decode("latin-1"))
    return "\n".join(text)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sigkill_with_idp_down_then_second_process_delivers_all(idp, make_http_receiver, make_grpc_receiver,
                                                                protocol, tmp_path):
    rx = _receiver(protocol, make_http_receiver, make_grpc_receiver)
    spool = str(tmp_path / "spool")
    first, settings, bound = _spool_first(protocol, idp, rx, spool, tmp_path, linger=120)
    try:
        done = first.wait_line("app done", SECONDS + 30)
        assert done is not None, first.stderr()[-2000:]
        # every record in a file before the kill: then nothing is in the SDK's queue any more
        all_on_disk = wait_until(lambda: set(spooled_numbers(spool, "first")) == set(range(FIRST)), 20, step=0.1)
        on_disk = set(spooled_numbers(spool, "first"))
        assert all_on_disk, f"only {len(on_disk)}/{FIRST} records reached the spool directory"
        assert first.proc.poll() is None, "the first process exited by itself: no crash to test"
        first.kill()
        assert first.proc.returncode == -9
        files = read_spool(spool)
        owners = {f.owner for f in files}
        assert len(owners) == 1 and os.path.exists(os.path.join(spool, f"owner-{owners.pop()}.lock")), \
            "a SIGKILLed owner leaves its lock file (unlocked) behind"
        assert not rx.log_records, "nothing could have been delivered with the IdP down"

        second_err = _second_delivers(protocol, idp, rx, spool, tmp_path)
    finally:
        first.close()

    got_first = numbers(rx.received_bodies(), "first")
    got_second = numbers(rx.received_bodies(), "second")
    rate = FIRST / SECONDS
    print(f"\nSPOOL CRASH | {protocol} | SIGKILL after {len(files)} files ({FIRST} records) were spooled | "
          f"delivered first {len(set(got_first))}/{FIRST} (+{len(got_first) - len(set(got_first))} dup), "
          f"second {len(set(got_second))}/{SECOND} (+{len(got_second) - len(set(got_second))} dup) | "
          f"SDK processor {settings}: at most {bound} records (max_queue_size + max_export_batch_size) "
          f"can be in the SDK and lost at a SIGKILL; at {rate:.0f} records/s with a "
          f"{SCHEDULE_DELAY_MS} ms schedule delay about {rate * SCHEDULE_DELAY_MS / 1000:.0f} are there at any moment")
    assert set(got_first) == set(range(FIRST)), f"{FIRST - len(set(got_first))} spooled records lost"
    assert set(got_second) == set(range(SECOND))
    # taken-over files are queued first, oldest first: the spooled records arrive in order, ahead
    # of the second process's own
    assert got_first == sorted(got_first), "the spooled records did not arrive oldest first"
    order = [b.split()[0] for b in rx.received_bodies() if b.startswith(("first ", "second "))]
    assert order.index("second") > len(order) - 1 - order[::-1].index("first"), \
        "a record of the second process arrived before the spooled ones"
    left = [n for n in os.listdir(spool) if is_request_file(n) or n.endswith(".bad") or n.startswith(".tmp-")]
    assert left == [], f"files left behind after delivery: {left}"
    assert [n for n in os.listdir(spool) if n.startswith("owner-")] == [], "lock files left behind"
    assert leaked(first.stderr() + second_err, _secrets(idp, rx)) == 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_normal_exit_during_outage_is_fast_and_next_process_delivers_all(idp, make_http_receiver,
                                                                          make_grpc_receiver, protocol, tmp_path):
    rx = _receiver(protocol, make_http_receiver, make_grpc_receiver)
    spool = str(tmp_path / "spool")
    first, settings, _ = _spool_first(protocol, idp, rx, spool, tmp_path, linger=0)
    try:
        done = first.wait_line("app done", SECONDS + 30)
        assert done is not None, first.stderr()[-2000:]
        rc = first.wait(30)
        exited = time.monotonic()
        took = exited - done[0]
        err = first.stderr()
        assert rc == 0, err[-2000:]
        on_disk = spooled_numbers(spool, "first")
        files = len(read_spool(spool))

        second_err = _second_delivers(protocol, idp, rx, spool, tmp_path)
    finally:
        first.close()

    got_first = numbers(rx.received_bodies(), "first")
    got_second = numbers(rx.received_bodies(), "second")
    print(f"\nSPOOL EXIT | {protocol} | first process exited {took:.2f}s after its last record, leaving "
          f"{len(set(on_disk))}/{FIRST} records in {files} files | delivered first {len(set(got_first))}/{FIRST} "
          f"(+{len(got_first) - len(set(got_first))} dup), second {len(set(got_second))}/{SECOND}")
    assert took < 2.0, f"the first process took {took:.2f}s to exit after its last record (outage + spool)"
    assert set(on_disk) == set(range(FIRST)), f"{FIRST - len(set(on_disk))} records not on disk after the exit"
    assert "spool directory" in err  # the shutdown said where the records went
    assert set(got_first) == set(range(FIRST)), f"{FIRST - len(set(got_first))} spooled records lost"
    assert set(got_second) == set(range(SECOND))
    assert [n for n in os.listdir(spool) if is_request_file(n)] == []
    assert leaked(err + second_err + _spool_bytes(spool), _secrets(idp, rx)) == 0


def test_two_processes_share_the_spool_of_a_crashed_third(idp, make_http_receiver, tmp_path):
    rx = make_http_receiver("jwt")
    spool = str(tmp_path / "spool")
    crashed_count = 900
    idp.control(faults=IDP_DOWN)
    env = _env("http", rx, idp, spool, APP_PREFIX="crashed", APP_RECORDS=crashed_count, APP_SECONDS=3,
               APP_LINGER=120, OTEL_BLRP_SCHEDULE_DELAY=50, OTEL_SERVICE_NAME="spool-crashed")
    crashed = start_app(env, str(tmp_path / "crashed.err"))
    a = b = None
    try:
        assert crashed.wait_line("app done", 40) is not None, crashed.stderr()[-2000:]
        assert wait_until(lambda: set(spooled_numbers(spool, "crashed")) == set(range(crashed_count)), 20, step=0.1)
        crashed.kill()
        files = len(read_spool(spool))
        idp.control(clear_faults=True)
        a = _second("http", idp, rx, spool, tmp_path, prefix="a", name="a")
        b = _second("http", idp, rx, spool, tmp_path, prefix="b", name="b")
        assert a.wait(60) == 0, a.stderr()[-2000:]
        assert b.wait(60) == 0, b.stderr()[-2000:]
        rx.wait_until(lambda r: set(numbers(r.received_bodies(), "crashed")) >= set(range(crashed_count)), 5)
    finally:
        crashed.close()
        for c in (a, b):
            if c is not None:
                c.close()

    got = numbers(rx.received_bodies(), "crashed")
    dup = len(got) - len(set(got))
    split = _crashed_records_by_process(rx)
    print(f"\nSPOOL SHARED | {files} files ({crashed_count} records) of a SIGKILLed process, two processes "
          f"started at once | delivered {len(set(got))}/{crashed_count}, duplicates {dup} (at-least-once) | "
          f"crashed records delivered by a: {split.get('a', 0)}, by b: {split.get('b', 0)}")
    assert set(got) == set(range(crashed_count)), f"{crashed_count - len(set(got))} spooled records lost"
    assert set(numbers(rx.received_bodies(), "a")) == set(range(SECOND))
    assert set(numbers(rx.received_bodies(), "b")) == set(range(SECOND))
    assert [n for n in os.listdir(spool) if is_request_file(n) or n.endswith(".bad")] == []


def _crashed_records_by_process(rx) -> dict:
    """How many "crashed N" records each of the processes a and b delivered: a process is known by
    its token (each fetched its own), found on the requests that carried its own records."""
    with rx._cond:
        requests = [r for r in rx.requests if r.accepted]
        records = list(rx.log_records)
    per_request, i = [], 0
    for r in requests:
        bodies = [rec.body.string_value for rec in records[i:i + r.n_records]]
        i += r.n_records
        per_request.append((r.token_id, bodies))
    owner = {}
    for token_id, bodies in per_request:
        for name in ("a", "b"):
            if numbers(bodies, name):
                owner[token_id] = name
    counts: dict = {}
    for token_id, bodies in per_request:
        name = owner.get(token_id, "?")
        counts[name] = counts.get(name, 0) + len(numbers(bodies, "crashed"))
    return counts
