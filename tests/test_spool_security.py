"""Disk spool security: the directory is 0700 and every file in it 0600 (whatever the umask, and
also for a directory that existed with looser bits), and no token, client secret, configured
header value or Authorization header ever reaches a spool file (over HTTP and gRPC, with real
tokens in use while the files are written: the endpoint refuses requests, tokens stay valid).
"""

from __future__ import annotations

import os
import time
import stat

import pytest

from helpers import leaked, make_records, numbers
from otel_token_exporter import TokenOTLPLogExporter
from spool_helpers import all_files, is_request_file, read_spool

pytestmark = pytest.mark.usefixtures("no_otel_env")

HEADER_SECRET = "hdr-secret-7f3a9c"


def _exporter(idp, rx, spool, protocol="http", **kw):
    return TokenOTLPLogExporter(
        endpoint=rx.endpoint if protocol == "http" else rx.url,
        protocol="http/protobuf" if protocol == "http" else "grpc",
        token_url=idp.token_url, client_id=idp.client_id, client_secret=idp.client_secret,
        spool_dir=str(spool), env={}, timeout=3, **kw)


@pytest.fixture
def open_umask():
    old = os.umask(0)  # modes must come from the code, not from a kind umask
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "existing-0755-dir"])
def test_spool_dir_is_0700_and_files_0600(idp, make_http_receiver, tmp_path, open_umask, existing):
    rx = make_http_receiver("jwt")
    spool = tmp_path / "parent" / "spool"
    if existing:
        spool.mkdir(parents=True)
        os.chmod(spool, 0o755)
    exporter = _exporter(idp, rx, spool)
    try:
        exporter.token_manager.get(10)
        rx.fail_next(1_000_000, 503)
        for r in range(3):
            exporter.export(make_records([f"mode {r * 5 + i}" for i in range(5)]))
        live = {n: _mode(spool / n) for n in os.listdir(spool)}
        dir_mode = _mode(spool)
    finally:
        exporter.shutdown()
    # one file moved aside, as a later process does with a bad one: the mode must survive
    files = read_spool(str(spool))
    with open(files[0].path, "r+b") as f:
        f.write(b"XXXX")
    rx.clear_faults()
    second = _exporter(idp, rx, spool)
    try:
        assert rx.wait_until(lambda r: len(set(numbers(r.received_bodies(), "mode"))) == 10, 10)
        bad = [n for n in os.listdir(spool) if n.endswith(".bad")]
        modes_after = {n: _mode(spool / n) for n in os.listdir(spool)}
    finally:
        second.shutdown()
    print(f"\nSPOOL MODES | {'existing 0755' if existing else 'new'} dir -> {oct(dir_mode)} | files {sorted(set(map(oct, live.values())))} "
          f"| after a take-over {sorted(set(map(oct, modes_after.values())))}")
    assert dir_mode == 0o700
    assert _mode(spool) == 0o700
    assert any(is_request_file(n) for n in live) and any(n.startswith("owner-") for n in live)
    assert all(m == 0o600 for m in live.values()), {n: oct(m) for n, m in live.items()}
    assert len(bad) == 1
    assert all(m == 0o600 for m in modes_after.values()), {n: oct(m) for n, m in modes_after.items()}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_no_token_secret_or_authorization_header_in_any_spool_file(idp, make_http_receiver, make_grpc_receiver,
                                                                  tmp_path, protocol, caplog):
    rx = (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")
    spool = tmp_path / "spool"
    idp.control(lifetime=2)  # several tokens in use while files are written
    headers = {"x-api-key": HEADER_SECRET}
    exporter = _exporter(idp, rx, spool, protocol=protocol, headers=headers)
    snapshots = []
    caplog.set_level("DEBUG", logger="otel_token_exporter")
    try:
        exporter.token_manager.get(10)
        rx.fail_next(1_000_000, 503)  # tokens valid, requests refused: kept, spooled, re-sent with tokens
        # export and probe (a flush probes at once) until requests went out with 2+ tokens
        r = 0
        deadline = time.monotonic() + 15  # 2-s tokens: a second one is in use within a few seconds
        while time.monotonic() < deadline and (r < 4 or len({x.token_id for x in rx.requests if x.token}) < 2):
            exporter.export(make_records([f"sec {r * 5 + i}" for i in range(5)]))
            exporter.force_flush(250)  # one probe (a flush with a spool stops after a failed one)
            snapshots.append(_contents(spool))
            r += 1
            time.sleep(0.1)  # let the token age between probes
    finally:
        exporter.shutdown()
    snapshots.append(_contents(spool))
    tokens = [r.token for r in rx.requests if r.token]
    secrets = [idp.client_secret, HEADER_SECRET] + tokens
    text = "\n".join(snapshots)
    files = sorted({os.path.basename(p) for p in all_files(str(spool))})
    print(f"\nSPOOL SECRETS | {protocol} | {len(set(tokens))} distinct tokens seen by the receiver on "
          f"{len(rx.requests)} requests | {len(files)} files scanned in {len(snapshots)} snapshots")
    assert len(set(tokens)) >= 2, "the test needs real tokens in use while the files were written"
    assert any(is_request_file(n) for n in files)
    assert leaked(text, secrets) == 0, "a secret or token is in a spool file"
    assert leaked(caplog.text, secrets) == 0, "a secret or token is in what the exporter logged"
    for word in ("authorization", "bearer", "x-api-key", "client_secret"):
        assert word not in text.lower(), f"{word!r} appears in a spool file"


def _contents(spool) -> str:
    out = []
    for path in all_files(str(spool)):
        try:
            with open(path, "rb") as f:
                out.append(f.read().decode("latin-1"))
        except (FileNotFoundError, IsADirectoryError):
            continue
    return "\n".join(out)
