"""Disk spool under faults: a full disk, a directory that becomes unwritable, bad files, processes
racing for a dead owner's files, a SIGKILL in the middle of a write, the byte cap and the age cap,
and what shutdown does with a spool.

Mostly in-process (TokenOTLPLogExporter with ``spool_dir=``, shut down, then a second exporter on
the same directory); child processes where a crash or a second process is the point
(tests/spool_worker.py). Outages are the real receiver answering 503 (tokens stay valid) unless the
IdP's outage is the point. The files are read with tests/spool_helpers.py, which parses the format
from its description, not with src/.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import time

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from helpers import make_records, numbers, wait_until
from otel_token_exporter import TokenOTLPLogExporter
from spool_helpers import (
    SETTING,
    file_crc_ok,
    is_request_file,
    parse,
    read_spool,
    rewrite_meta,
    spooled_numbers,
    start_worker,
    warnings_naming,
)

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_otel_env")]

FAIL_ALL = 1_000_000


@pytest.fixture
def exporters(idp):
    """make(rx, spool_dir, **kw) -> a TokenOTLPLogExporter with a first token already fetched;
    all shut down at teardown."""
    made = []

    def make(rx, spool_dir, protocol="http", token=True, **kw):
        kw.setdefault("timeout", 3)
        kw.setdefault("env", {})
        exporter = TokenOTLPLogExporter(
            endpoint=rx.endpoint if protocol == "http" else rx.url,
            protocol="http/protobuf" if protocol == "http" else "grpc",
            token_url=idp.token_url, client_id=idp.client_id, client_secret=idp.client_secret,
            spool_dir=str(spool_dir), **kw)
        made.append(exporter)
        if token:
            exporter.token_manager.get(10)
        return exporter

    yield make
    for exporter in made:
        exporter.shutdown(timeout_millis=1000)


@pytest.fixture
def rx(make_http_receiver):
    return make_http_receiver("jwt")


def _export(exporter, prefix, start, count, pad=0):
    filler = "p" * pad + " " if pad else ""
    bodies = [f"{prefix} {filler}{start + i}" for i in range(count)]
    return exporter.export(make_records(bodies))


def _bad_files(spool) -> list[str]:
    return sorted(n for n in os.listdir(spool) if n.endswith(".bad"))


def _request_files(spool) -> list[str]:
    return sorted(n for n in os.listdir(spool) if is_request_file(n))


def _looked(exporter, timeout=5.0) -> bool:
    """Wait until the exporter's sender has taken its first look at the spool directory."""
    queue = exporter.sending_queue
    return wait_until(lambda: getattr(queue, "_recovered_at", 0.0) != float("-inf"), timeout)


def _dropped(reader, reason) -> int:
    data = reader.get_metrics_data()
    total = 0
    for rm in (data.resource_metrics if data else []):
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "otel_token_exporter.records.dropped":
                    total += sum(p.value for p in metric.data.data_points if p.attributes.get("reason") == reason)
    return total


# -- a full disk, an unwritable directory ---------------------------------------------------------
@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs mounted for the test (root only), unmounted at teardown."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (mount exit {done.returncode}): {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=20).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=20)


def test_disk_full_falls_back_to_memory_with_one_warning_and_delivers(exporters, rx, tiny_tmpfs, caplog):
    spool = tiny_tmpfs / "spool"
    exporter = exporters(rx, spool)
    rx.fail_next(FAIL_ALL, 503)
    requests, per, pad = 14, 30, 1000  # ~31 KB a request: ~430 KB in all, the disk holds 256 KiB
    slowest = 0.0
    with caplog.at_level(logging.INFO, logger="otel_token_exporter"):
        for r in range(requests):
            started = time.monotonic()
            _export(exporter, "full", r * per, per, pad=pad)
            slowest = max(slowest, time.monotonic() - started)
        stats = exporter.sending_queue.stats()
        on_disk = spooled_numbers(str(spool), "full")
        rx.clear_faults()
        flushed = exporter.force_flush(20_000)
    got = numbers(rx.received_bodies(), "full")
    full = warnings_naming(caplog.records, SETTING)
    print(f"\nSPOOL DISK FULL | {stats.spooled_requests}/{requests} requests on the 256 KiB disk "
          f"({stats.spooled_bytes} bytes), {len(set(on_disk))} records; {stats.queued_records} queued; "
          f"slowest export() {slowest:.3f}s; warnings naming {SETTING}: {len(full)}; delivered "
          f"{len(set(got))}/{requests * per} (+{len(got) - len(set(got))} dup)")
    assert 0 < stats.spooled_requests < requests, "the disk should have filled up part of the way"
    assert stats.queued_records == requests * per, "records the disk could not take must stay in memory"
    assert slowest < 1.5, "export() must keep working (no long wait) with the disk full"
    assert len(full) == 1, full
    assert "full" in full[0]
    assert flushed
    assert set(got) == set(range(requests * per)), f"{requests * per - len(set(got))} records lost"
    # a delivered request's file goes right after its answer (flush() may return just before)
    assert wait_until(lambda: not _request_files(spool), 5), _request_files(spool)
    assert [n for n in os.listdir(spool) if n.startswith(".tmp-")] == [], "a failed write left its temp file"


def test_spool_dir_replaced_by_a_file_mid_run_falls_back_to_memory(exporters, rx, tmp_path, caplog):
    spool = tmp_path / "spool"
    exporter = exporters(rx, spool)
    rx.fail_next(FAIL_ALL, 503)
    per = 20
    with caplog.at_level(logging.INFO, logger="otel_token_exporter"):
        for r in range(3):
            _export(exporter, "moved", r * per, per)
        before = exporter.sending_queue.stats()
        shutil.rmtree(spool)
        spool.write_text("not a directory any more\n")
        slowest = 0.0
        for r in range(3, 6):
            started = time.monotonic()
            _export(exporter, "moved", r * per, per)
            slowest = max(slowest, time.monotonic() - started)
        after = exporter.sending_queue.stats()
        rx.clear_faults()
        flushed = exporter.force_flush(20_000)
    got = numbers(rx.received_bodies(), "moved")
    named = warnings_naming(caplog.records, SETTING)
    others = [m for m in warnings_naming(caplog.records, "spool") if SETTING not in m]
    print(f"\nSPOOL DIR REPLACED | spooled before {before.spooled_requests}, after {after.spooled_requests}; "
          f"queued {after.queued_records}; warnings naming {SETTING}: {len(named)}; other spool warnings: "
          f"{len(others)}; delivered {len(set(got))}/{6 * per}")
    assert before.spooled_requests == 3
    assert after.queued_records == 6 * per
    assert slowest < 1.5
    assert len(named) == 1, named
    assert flushed
    assert set(got) == set(range(6 * per))
    assert spool.read_text() == "not a directory any more\n"  # nothing wrote over the user's file


def test_unusable_spool_dir_at_start_warns_once_and_works_in_memory(exporters, rx, tmp_path, caplog):
    spool = tmp_path / "a-file"
    spool.write_text("x")
    rx.fail_next(FAIL_ALL, 503)
    with caplog.at_level(logging.INFO, logger="otel_token_exporter"):
        exporter = exporters(rx, spool)
        for r in range(3):
            _export(exporter, "mem", r * 10, 10)
        rx.clear_faults()
        assert exporter.force_flush(10_000)
    named = warnings_naming(caplog.records, SETTING)
    assert len(named) == 1, named
    assert set(numbers(rx.received_bodies(), "mem")) == set(range(30))


# -- bad files ------------------------------------------------------------------------------------
def _mutate(kind, raw: bytes) -> bytes:
    version, meta, body = parse(raw)
    head = len(raw) - len(body)
    if kind == "corrupt_body":
        mid = head + len(body) // 2
        return raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1:]
    if kind == "corrupt_header":
        i = raw.index(b'"items"') + 2  # inside the JSON header: no longer valid JSON / meta
        return raw[:i] + b"\x00\xff{" + raw[i + 3:]
    if kind == "truncated_body":
        return raw[: head + len(body) // 3]
    if kind == "truncated_header":
        return raw[:7]
    if kind == "empty":
        return b""
    if kind == "future_version":
        return raw[:4] + bytes([2]) + raw[5:]
    if kind == "foreign_bytes":
        return random.Random(7).randbytes(len(raw))
    if kind == "foreign_endpoint":  # a valid spool file, for another endpoint
        return rewrite_meta(raw, endpoint="0123456789abcdef")
    raise ValueError(kind)


BAD_KINDS = ["corrupt_body", "corrupt_header", "truncated_body", "truncated_header", "empty",
             "future_version", "foreign_bytes", "foreign_endpoint"]


def _spool_good_and_bad(exporters, rx, spool, bad_requests=1, good_requests=5, per=10):
    """Leave ``bad_requests`` (oldest) then ``good_requests`` request files in ``spool``; return
    the paths of the files holding "bad" records."""
    rx.fail_next(FAIL_ALL, 503)
    first = exporters(rx, spool)
    for r in range(bad_requests):
        _export(first, "bad", r * per, per)
    for r in range(good_requests):
        _export(first, "good", r * per, per)
    first.shutdown()  # during the outage: everything stays on disk
    rx.clear_faults()
    rx.clear()
    files = read_spool(str(spool))
    assert len(files) == bad_requests + good_requests
    return [f for f in files if numbers(f.bodies(), "bad")]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_is_moved_aside_once_and_never_blocks_good_files(exporters, rx, tmp_path, caplog, kind):
    spool = tmp_path / "spool"
    (bad,) = _spool_good_and_bad(exporters, rx, spool)
    mutated = _mutate(kind, bad.raw)
    with open(bad.path, "wb") as f:
        f.write(mutated)
    with caplog.at_level(logging.INFO, logger="otel_token_exporter"):
        second = exporters(rx, spool)
        delivered = rx.wait_until(lambda r: set(numbers(r.received_bodies(), "good")) == set(range(50)), 10)
        second.force_flush(5000)
        second.shutdown()
        first_round = list(caplog.records)
        caplog.clear()
        third = exporters(rx, spool)
        assert third.force_flush(5000)
        looked = _looked(third)  # the third one's sender has taken its look at the directory
        third.shutdown()
        second_round = list(caplog.records)
    bads = _bad_files(spool)
    aside = [m for m in warnings_naming(first_round, ".bad")]
    again = [m for m in warnings_naming(second_round, ".bad")]
    print(f"\nSPOOL BAD FILE | {kind} | good delivered {len(set(numbers(rx.received_bodies(), 'good')))}/50, "
          f"bad records delivered {len(numbers(rx.received_bodies(), 'bad'))} | moved aside: {bads} | "
          f"warnings {len(aside)} then {len(again)}")
    assert delivered, "the good files were not delivered past a bad one"
    assert numbers(rx.received_bodies(), "bad") == [], "a bad file was delivered"
    assert len(bads) == 1 and bads[0].startswith(bad.base + "."), bads
    with open(os.path.join(spool, bads[0]), "rb") as f:
        assert f.read() == mutated, "the bad file must be moved aside as it was"
    assert len(aside) == 1, aside
    assert looked
    assert again == [], "a file moved aside was looked at again"
    assert _request_files(spool) == []


def test_all_kinds_of_bad_files_together_good_ones_all_delivered(exporters, rx, tmp_path, caplog):
    spool = tmp_path / "spool"
    bads = _spool_good_and_bad(exporters, rx, spool, bad_requests=len(BAD_KINDS), good_requests=6)
    for kind, bad in zip(BAD_KINDS, bads):
        with open(bad.path, "wb") as f:
            f.write(_mutate(kind, bad.raw))
    with caplog.at_level(logging.INFO, logger="otel_token_exporter"):
        second = exporters(rx, spool)
        delivered = rx.wait_until(lambda r: set(numbers(r.received_bodies(), "good")) == set(range(60)), 10)
        second.force_flush(5000)
        second.shutdown()
    aside = warnings_naming(caplog.records, ".bad")
    print(f"\nSPOOL BAD FILES | {len(BAD_KINDS)} bad files + 6 good | moved aside {len(_bad_files(spool))}, "
          f"warnings {len(aside)}")
    assert delivered
    assert numbers(rx.received_bodies(), "bad") == []
    assert len(_bad_files(spool)) == len(BAD_KINDS)
    assert 1 <= len(aside) <= len(BAD_KINDS)
    assert _request_files(spool) == []


# -- processes racing, a crash mid-write ----------------------------------------------------------
def _worker_env(idp, rx, spool, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(SW_ENDPOINT=rx.endpoint, SW_TOKEN_URL=idp.token_url, SW_CLIENT_ID=idp.client_id,
               SW_CLIENT_SECRET=idp.client_secret, SW_SPOOL=str(spool), PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _race_round(idp, rx, spool, tmp_path, rnd, files_n, per):
    """A SIGKILLed owner leaves ``files_n`` files; two deliver workers are released at once."""
    import json

    prefix = f"race{rnd}"
    rx.fail_next(FAIL_ALL, 503)
    dead = start_worker("spool", _worker_env(idp, rx, spool, SW_PREFIX=prefix, SW_REQUESTS=files_n,
                                             SW_PER_REQUEST=per), str(tmp_path / f"dead{rnd}.err"))
    workers = []
    try:
        assert dead.wait_line("spooled", 60) is not None, dead.stderr()[-2000:]
        dead.kill()
        assert len(read_spool(str(spool))) == files_n
        rx.clear_faults()
        workers = [start_worker("deliver", _worker_env(idp, rx, spool), str(tmp_path / f"w{rnd}-{i}.err"))
                   for i in range(2)]
        for w in workers:
            assert w.wait_line("ready", 30) is not None, w.stderr()[-2000:]
        for w in workers:  # released together: both look at the directory at the same moment
            w.send("go\n")
        results = []
        for w in workers:
            line = w.wait_line("result ", 60)
            assert line is not None, w.stderr()[-2000:]
            results.append(json.loads(line[2][len("result "):]))
            assert w.wait(30) == 0, w.stderr()[-2000:]
    finally:
        dead.close()
        for w in workers:
            w.close()
    return prefix, results


def test_two_processes_racing_for_a_dead_owners_files_deliver_each(idp, rx, tmp_path):
    """Up to three rounds (until both processes won some files: a real race), each on the files a
    SIGKILLed owner left: every file delivered at least once, duplicates counted."""
    spool = tmp_path / "spool"
    files_n, per = 300, 2
    rounds = []
    for rnd in range(3):
        prefix, results = _race_round(idp, rx, spool, tmp_path, rnd, files_n, per)
        got = numbers(rx.received_bodies(), prefix)
        taken = [r["taken"] for r in results]
        rounds.append((taken, len(got) - len(set(got))))
        print(f"\nSPOOL RACE round {rnd} | {files_n} files of a SIGKILLed owner, two processes at once | "
              f"taken {taken} | delivered {len(set(got))}/{files_n * per}, duplicates {len(got) - len(set(got))} | "
              f"redelivered {[r['redelivered'] for r in results]} | warnings {[r['warnings'] for r in results]}")
        assert set(got) == set(range(files_n * per)), f"{files_n * per - len(set(got))} records lost"
        assert sum(taken) >= files_n  # every file taken over (at least once)
        assert all(r["queued"] == 0 and r["dropped"] == 0 for r in results), results
        assert _request_files(spool) == [] and _bad_files(spool) == []
        assert [n for n in os.listdir(spool) if n.startswith("owner-")] == []
        if all(taken):
            break
    print(f"SPOOL RACE | rounds {len(rounds)}, contended (both took files): {sum(1 for t, _ in rounds if all(t))}, "
          f"duplicates in all {sum(d for _, d in rounds)}")


def test_sigkill_during_a_spool_write_later_process_delivers_every_complete_file(idp, rx, exporters, tmp_path):
    spool = tmp_path / "spool"
    per, pad = 8, 256 * 1024  # ~2 MiB requests: a write takes a while
    rng = random.Random()
    attempts, partial, kill_at = 0, None, None
    rx.fail_next(FAIL_ALL, 503)
    while partial is None and attempts < 5:
        attempts += 1
        prefix = f"w{attempts}"
        writer = start_worker("write-loop", _worker_env(idp, rx, spool, SW_PREFIX=prefix, SW_PER_REQUEST=per,
                                                        SW_PAD=pad), str(tmp_path / f"writer{attempts}.err"))
        try:
            kill_at = rng.randint(2, 6)  # a random moment: after this many exports, mid-write
            assert writer.wait_line(f"exported {kill_at}", 60) is not None, writer.stderr()[-2000:]
            caught = wait_until(lambda: any(n.startswith(".tmp-") for n in os.listdir(spool)), 10, step=0.0005)
            writer.kill()
        finally:
            writer.close()
        temps = [n for n in os.listdir(spool) if n.startswith(".tmp-")]
        if caught and temps:
            partial = temps[0]
    assert partial is not None, "never caught a write in progress"
    partial_size = os.path.getsize(spool / partial)
    complete = read_spool(str(spool))
    assert all(file_crc_ok(f.raw) for f in complete), "a file under its final name is incomplete"
    expected = {(f"w{i}", n) for f in complete for i in range(1, attempts + 1) for n in numbers(f.bodies(), f"w{i}")}
    rx.clear_faults()
    later = exporters(rx, spool)
    rx.wait_until(lambda r: _pairs(r, attempts) >= expected, 20)
    later.force_flush(10_000)
    later.shutdown()
    got = _pairs(rx, attempts)
    print(f"\nSPOOL SIGKILL MID-WRITE | {attempts} attempt(s), killed after {kill_at} exports | partial temp "
          f"file {partial_size} bytes | {len(complete)} complete files ({len(expected)} records) | delivered "
          f"{len(got & expected)}/{len(expected)} | left: {sorted(os.listdir(spool))}")
    assert got >= expected, f"{len(expected - got)} records of complete files lost"
    assert not any(n.startswith(".tmp-") for n in os.listdir(spool)), "the partial temp file was not cleaned up"
    assert _bad_files(spool) == []
    assert _request_files(spool) == []


def _pairs(rx, attempts) -> set:
    bodies = rx.received_bodies()
    return {(f"w{i}", n) for i in range(1, attempts + 1) for n in numbers(bodies, f"w{i}")}


# -- the caps -------------------------------------------------------------------------------------
def test_spool_max_bytes_drops_the_oldest_and_counts(exporters, rx, tmp_path, caplog):
    spool = tmp_path / "spool"
    reader = InMemoryMetricReader()
    cap = 64 * 1024  # the smallest allowed
    exporter = exporters(rx, spool, spool_max_bytes=cap, meter_provider=MeterProvider(metric_readers=[reader]))
    rx.fail_next(FAIL_ALL, 503)
    requests, per, pad = 20, 10, 800  # ~8.5 KB a request: ~170 KB in all
    peak_bytes = peak_disk = 0
    with caplog.at_level(logging.INFO, logger="otel_token_exporter"):
        for r in range(requests):
            _export(exporter, "cap", r * per, per, pad=pad)
            stats = exporter.sending_queue.stats()
            peak_bytes = max(peak_bytes, stats.spooled_bytes)
            peak_disk = max(peak_disk, sum(os.path.getsize(spool / n) for n in _request_files(spool)))
        stats = exporter.sending_queue.stats()
        rx.clear_faults()
        assert exporter.force_flush(10_000)
    got = set(numbers(rx.received_bodies(), "cap"))
    lost = set(range(requests * per)) - got
    metric = _dropped(reader, "spool_full")
    said = warnings_naming(caplog.records, "OTEL_TOKEN_EXPORTER_SPOOL_MAX_BYTES")
    print(f"\nSPOOL CAP | cap {cap} bytes | peak spooled {peak_bytes} (stats), {peak_disk} (on disk) | "
          f"dropped {stats.dropped_records} (metric spool_full {metric}) | delivered {len(got)}/{requests * per} | "
          f"warnings {len(said)}")
    assert peak_bytes <= cap and peak_disk <= cap
    assert stats.dropped_records > 0
    assert stats.dropped_records == len(lost) == metric, "every record dropped is counted, none more"
    assert max(lost) < min(got), "the oldest must go first"
    assert len(said) == 1, said


def test_spool_cap_never_loses_the_request_in_flight_uncounted(exporters, rx, tmp_path, caplog):
    """The oldest file is the request in flight when the cap is reached (the endpoint holds that
    attempt, then fails it). Whatever the cap does with it, its records must end up delivered or
    counted as dropped, and shutdown must not report records "in the spool directory" that are not.
    Then a second process delivers what is on disk."""
    spool = tmp_path / "spool"
    cap, requests, per, pad = 64 * 1024, 12, 10, 800  # ~8.5 KB a request
    exporter = exporters(rx, spool, spool_max_bytes=cap, timeout=3)
    rx.hang_next(1)  # the first attempt: no answer until its timeout (3 s) ...
    rx.fail_next(FAIL_ALL, 503)  # ... then every attempt is refused (no drain at shutdown)
    queue = exporter.sending_queue
    with caplog.at_level(logging.INFO, logger="otel_token_exporter"):
        _export(exporter, "inflight", 0, per, pad=pad)  # in flight, held by the endpoint
        for r in range(1, requests):
            _export(exporter, "inflight", r * per, per, pad=pad)
        assert getattr(queue, "_inflight_since", None) is not None, "the first attempt should still be in flight"
        on_disk = set(spooled_numbers(str(spool), "inflight"))
        assert wait_until(lambda: queue.failing, 10)
        dropped = queue.stats().dropped_records
        exporter.shutdown()
    said = [m for m in warnings_naming(caplog.records, "in the spool directory")]
    claimed = int(said[0].split("with ")[1].split()[0]) if said else 0
    after = set(spooled_numbers(str(spool), "inflight"))
    rx.clear_faults()
    second = exporters(rx, spool)
    rx.wait_until(lambda r: set(numbers(r.received_bodies(), "inflight")) >= after, 10)
    second.force_flush(5000)
    got = set(numbers(rx.received_bodies(), "inflight"))
    total = requests * per
    unaccounted = total - len(got) - dropped
    print(f"\nSPOOL CAP IN FLIGHT | {total} records, cap {cap} | on disk while the head was in flight: "
          f"{len(on_disk)} (head {'on disk' if set(range(per)) <= on_disk else 'NOT on disk'}) | dropped (counted) "
          f"{dropped} | shutdown claimed {claimed} in the spool, {len(after)} really there | delivered by the "
          f"second process {len(got)} | unaccounted {unaccounted}")
    assert claimed == len(after), f"shutdown said {claimed} records are in the spool directory, {len(after)} are"
    assert unaccounted == 0, f"{unaccounted} records neither delivered nor counted as dropped"


def test_one_request_larger_than_the_cap_does_not_wipe_the_spool(exporters, rx, tmp_path):
    spool = tmp_path / "spool"
    cap = 64 * 1024
    exporter = exporters(rx, spool, spool_max_bytes=cap)
    rx.fail_next(FAIL_ALL, 503)
    for r in range(3):
        _export(exporter, "small", r * 10, 10, pad=800)  # ~8.5 KB each: 26 KB, well within the cap
    before = exporter.sending_queue.stats()
    _export(exporter, "huge", 0, 10, pad=10_000)  # ~100 KB: alone larger than the cap
    after = exporter.sending_queue.stats()
    rx.clear_faults()
    exporter.force_flush(10_000)
    small = set(numbers(rx.received_bodies(), "small"))
    huge = set(numbers(rx.received_bodies(), "huge"))
    print(f"\nSPOOL OVERSIZED REQUEST | cap {cap} | before: {before.spooled_requests} files, {before.queued_records} "
          f"queued | after one ~100 KB request: {after.spooled_requests} files, {after.queued_records} queued, "
          f"{after.dropped_records} dropped | delivered small {len(small)}/30, huge {len(huge)}/10")
    assert before.spooled_requests == 3 and before.spooled_bytes < cap
    assert small == set(range(30)), "requests that fit in the spool were dropped for one that never can"
    assert len(huge) + after.dropped_records >= 10  # the oversized one: delivered or counted


def test_file_name_and_header_follow_the_format(exporters, rx, tmp_path):
    import re
    import zlib

    spool = tmp_path / "spool"
    exporter = exporters(rx, spool)
    rx.fail_next(FAIL_ALL, 503)
    for r in range(3):
        _export(exporter, "fmt", r * 4, 4)
    files = read_spool(str(spool))
    owner = exporter.sending_queue.spool.instance
    pattern = re.compile(r"^logs-[0-9a-f]{16}-(\d{17})-(\d{8})\.otlp\.([0-9a-f]+)$")
    assert len(files) == 3
    seqs = []
    for f in files:
        m = pattern.match(f.name)
        assert m, f.name
        assert m.group(3) == owner
        assert os.path.exists(spool / f"owner-{owner}.lock")
        assert f.raw[:4] == b"OTSP" and f.version == 1
        meta = f.meta
        assert meta["signal"] == "logs" and meta["items"] == 4 and meta["size"] == len(f.body)
        assert meta["crc32"] == zlib.crc32(f.body)
        assert abs(int(m.group(1)) / 1e6 - meta["created"]) < 1e-3
        assert abs(meta["created"] - time.time()) < 60
        seqs.append(int(m.group(2)))
        assert sorted(numbers(f.bodies(), "fmt")) == list(range(len(seqs) * 4 - 4, len(seqs) * 4))
    assert seqs == sorted(seqs) and len(set(f.name.split("-")[1] for f in files)) == 1


def test_spool_max_age_deletes_old_files_and_counts(exporters, rx, tmp_path, caplog):
    spool = tmp_path / "spool"
    rx.fail_next(FAIL_ALL, 503)
    first = exporters(rx, spool)
    for r in range(3):
        _export(first, "old", r * 10, 10)
    for r in range(3):
        _export(first, "fresh", r * 10, 10)
    first.shutdown()
    rx.clear_faults()
    old = [f for f in read_spool(str(spool)) if numbers(f.bodies(), "old")]
    assert len(old) == 3
    two_hours_ago = time.time() - 7200
    for f in old:
        with open(f.path, "wb") as out:
            out.write(rewrite_meta(f.raw, created=two_hours_ago))
    reader = InMemoryMetricReader()
    with caplog.at_level(logging.INFO, logger="otel_token_exporter"):
        second = exporters(rx, spool, env={"OTEL_TOKEN_EXPORTER_SPOOL_MAX_AGE": "3600"},
                           meter_provider=MeterProvider(metric_readers=[reader]))
        delivered = rx.wait_until(lambda r: set(numbers(r.received_bodies(), "fresh")) == set(range(30)), 10)
        second.force_flush(5000)
        # a delivered request's file goes right after its answer (flush() may return just before)
        wait_until(lambda: not _request_files(spool), 5)
    metric = _dropped(reader, "spool_expired")
    said = warnings_naming(caplog.records, "OTEL_TOKEN_EXPORTER_SPOOL_MAX_AGE")
    stats = second.sending_queue.stats()
    print(f"\nSPOOL MAX AGE | 3 files (30 records) 2 h old, max age 1 h | metric spool_expired {metric} | "
          f"stats().dropped_records {stats.dropped_records} | warnings {len(said)} | fresh delivered {delivered}")
    assert delivered
    assert numbers(rx.received_bodies(), "old") == []
    assert all(not os.path.exists(f.path) for f in old)
    assert _request_files(spool) == [] and _bad_files(spool) == []
    assert metric == 30
    assert len(said) == 1, said


# -- shutdown with a spool ------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shutdown_during_outage_leaves_the_rest_on_disk_at_once(exporters, make_http_receiver, make_grpc_receiver,
                                                                tmp_path, protocol):
    rx = (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")
    spool = tmp_path / "spool"
    exporter = exporters(rx, spool, protocol=protocol)
    rx.fail_next(FAIL_ALL, 503)
    for r in range(5):
        _export(exporter, "out", r * 10, 10)
    assert exporter.sending_queue.failing
    started = time.monotonic()
    exporter.shutdown()
    took = time.monotonic() - started
    on_disk = spooled_numbers(str(spool), "out")
    print(f"\nSPOOL SHUTDOWN OUTAGE | {protocol} | shutdown {took * 1000:.0f} ms, {len(set(on_disk))}/50 records on disk")
    assert took < 0.5
    assert sorted(on_disk) == list(range(50))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shutdown_while_an_attempt_hangs_during_outage_returns_at_once(exporters, make_http_receiver,
                                                                       make_grpc_receiver, tmp_path, protocol):
    """The endpoint does not answer at all: the first attempt times out (3 s), the queue is failing,
    the next attempt hangs as well. Shutdown must not wait for the attempt in flight: the request
    is on disk already."""
    rx = (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")
    spool = tmp_path / "spool"
    exporter = exporters(rx, spool, protocol=protocol, timeout=3)
    rx.hang_next(FAIL_ALL)
    _export(exporter, "hang", 0, 10)
    queue = exporter.sending_queue
    assert wait_until(lambda: queue.failing, 10), "the first attempt never failed"
    assert wait_until(lambda: getattr(queue, "_inflight_since", None) is not None, 10)
    started = time.monotonic()
    exporter.shutdown()
    took = time.monotonic() - started
    on_disk = spooled_numbers(str(spool), "hang")
    rx.release_hangs()
    print(f"\nSPOOL SHUTDOWN HANG | {protocol} | shutdown {took * 1000:.0f} ms with an attempt in flight, "
          f"{len(set(on_disk))}/10 records on disk")
    assert sorted(on_disk) == list(range(10))
    assert took < 1.0, f"shutdown waited {took:.2f}s for an attempt in flight although everything was on disk"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shutdown_while_the_first_attempt_hangs_waits_at_most_the_patience(exporters, make_http_receiver,
                                                                           make_grpc_receiver, tmp_path, protocol):
    """No attempt has failed yet (the endpoint took the connection and never answers, the export
    timeout is the default 10 s): the queue does not know it is failing. With everything on disk,
    shutdown waits for that answer only SPOOLED_SHUTDOWN_PATIENCE, not its 9-s drain budget."""
    from otel_token_exporter.exporter import SPOOLED_SHUTDOWN_PATIENCE

    rx = (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")
    spool = tmp_path / "spool"
    exporter = exporters(rx, spool, protocol=protocol, timeout=10)
    rx.hang_next(FAIL_ALL)
    _export(exporter, "first", 0, 10)  # waits its 1 s, then the request is written to disk
    queue = exporter.sending_queue
    assert not queue.failing and queue.inflight_for > 0, "the attempt should still be in flight"
    started = time.monotonic()
    exporter.shutdown()
    took = time.monotonic() - started
    on_disk = spooled_numbers(str(spool), "first")
    rx.release_hangs()
    print(f"\nSPOOL SHUTDOWN FIRST HANG | {protocol} | shutdown {took:.2f} s with the first attempt in flight "
          f"(patience {SPOOLED_SHUTDOWN_PATIENCE:.0f} s, drain budget 9 s), {len(set(on_disk))}/10 records on disk")
    assert sorted(on_disk) == list(range(10))
    assert took < SPOOLED_SHUTDOWN_PATIENCE + 0.5, f"shutdown waited {took:.2f}s for a hanging first attempt"


def test_shutdown_with_healthy_endpoint_drains_and_deletes_the_files(exporters, make_http_receiver, tmp_path):
    rx = make_http_receiver("jwt", delay=1.5)  # slower than export()'s wait (1 s): requests get spooled
    spool = tmp_path / "spool"
    exporter = exporters(rx, spool)
    for r in range(2):
        _export(exporter, "slow", r * 10, 10)
    spooled = exporter.sending_queue.stats().spooled_requests
    started = time.monotonic()
    exporter.shutdown()
    took = time.monotonic() - started
    print(f"\nSPOOL SHUTDOWN HEALTHY | {spooled} request(s) spooled behind a slow endpoint | drained in {took:.2f}s")
    assert spooled >= 1, "nothing was spooled: the test did not test the drain"
    assert set(numbers(rx.received_bodies(), "slow")) == set(range(20))
    assert _request_files(spool) == []


# -- leftovers of crashed processes, and what stats() says ----------------------------------------
def test_leftovers_of_dead_processes_are_cleaned_and_a_live_ones_kept(exporters, rx, tmp_path):
    spool = tmp_path / "spool"
    live = exporters(rx, spool)  # a live owner in the same directory (its lock is held)
    live_id = live.sending_queue.spool.instance
    planted = {
        f".tmp-{live_id}-999": b"a write in progress of a live process",
        ".tmp-deadbeef0000-7": b"a write cut short by a crash",
        ".lock-feedface0000": b"",  # a process that died while starting
    }
    for name, data in planted.items():
        (spool / name).write_bytes(data)
    second = exporters(rx, spool)
    assert _looked(second)
    left = set(os.listdir(spool))
    print(f"\nSPOOL LEFTOVERS | left after a start: {sorted(n for n in left if n in planted)}")
    assert f".tmp-{live_id}-999" in left, "a live process's temporary file was deleted"
    assert ".tmp-deadbeef0000-7" not in left
    assert ".lock-feedface0000" not in left
    assert f"owner-{live_id}.lock" in left, "a live owner's lock was removed"


def test_stats_report_the_files_on_disk(exporters, rx, tmp_path):
    spool = tmp_path / "spool"
    exporter = exporters(rx, spool)
    rx.fail_next(FAIL_ALL, 503)
    for r in range(7):
        _export(exporter, "st", r * 9, 9)
        stats = exporter.sending_queue.stats()
        files = _request_files(spool)
        assert stats.spooled_requests == len(files) == r + 1
        assert stats.spooled_bytes == sum(os.path.getsize(spool / n) for n in files)
        assert stats.queued_records == (r + 1) * 9
    rx.clear_faults()
    assert exporter.force_flush(10_000)
    assert wait_until(lambda: exporter.sending_queue.stats().spooled_requests == 0 and not _request_files(spool), 5)
    assert exporter.sending_queue.stats().spooled_bytes == 0


def test_idle_process_takes_over_files_left_later_by_another(exporters, rx, tmp_path, monkeypatch):
    """While idle, a process looks for files of processes that died meanwhile (every RESCAN s;
    shortened here) and delivers them without any new data of its own."""
    from otel_token_exporter import sending

    monkeypatch.setattr(sending, "RESCAN", 0.5)
    spool = tmp_path / "spool"
    idle = exporters(rx, spool)
    assert _looked(idle)
    rx.fail_next(FAIL_ALL, 503)
    gone = exporters(rx, spool)
    for r in range(4):
        _export(gone, "later", r * 10, 10)
    gone.shutdown()  # in the outage: its files stay for the next owner
    assert len(_request_files(spool)) == 4
    rx.clear_faults()
    started = time.monotonic()
    delivered = rx.wait_until(lambda r: set(numbers(r.received_bodies(), "later")) == set(range(40)), 10)
    took = time.monotonic() - started
    print(f"\nSPOOL RESCAN | an idle process delivered files left after its start in {took:.2f}s (RESCAN 0.5 s)")
    assert delivered
    assert wait_until(lambda: not _request_files(spool), 5)
