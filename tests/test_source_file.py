"""The rotating-file token source, against a kubelet-style ``..data`` symlink layout."""

from __future__ import annotations

import base64
import collections
import json
import os
import socket
import tempfile
import threading
import time
from urllib.parse import quote_plus

import pytest
import requests
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor

from otel_token_exporter import FatalTokenError, TokenOTLPHTTPLogExporter, TokenManager, TransientTokenError
from otel_token_exporter.sources import FileTokenSource, build_source
from otel_token_exporter.config import Env
from peers.common import token_id
from helpers import ResultTap

SETTING = "OTEL_TOKEN_EXPORTER_TOKEN_FILE"


class ProjectedToken:
    """A directory laid out like a kubelet projected volume: token -> ..data/token, ..data -> ..<ts>."""

    def __init__(self, root):
        self.root = str(root)
        self.path = os.path.join(self.root, "token")
        self.n = 0

    def write(self, value: str) -> None:
        self.n += 1
        ts = os.path.join(self.root, f"..2026_01_01_00_00_{self.n:02d}.{os.getpid()}")
        os.mkdir(ts)
        with open(os.path.join(ts, "token"), "w") as f:
            f.write(value)
        data = os.path.join(self.root, "..data")
        old = os.path.realpath(data) if os.path.islink(data) else None
        tmp = os.path.join(self.root, "..data_tmp")
        os.symlink(os.path.basename(ts), tmp)
        os.rename(tmp, data)  # the atomic swap
        if not os.path.lexists(self.path):
            os.symlink(os.path.join("..data", "token"), self.path)
        if old:
            os.remove(os.path.join(old, "token"))
            os.rmdir(old)


def idp_token(idp) -> str:
    r = requests.post(idp.token_url, data={"grant_type": "client_credentials"}, timeout=5,
                      auth=(quote_plus(idp.client_id), quote_plus(idp.client_secret)))
    assert r.status_code == 200
    return r.json()["access_token"]


def fake_jwt(exp: float) -> str:
    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{enc({'alg': 'none'})}.{enc({'exp': exp})}.c2ln"




def emitter(exporter):
    tap = ResultTap(exporter)
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(tap))
    return provider, provider.get_logger("file-source-test"), tap


# -- the source on its own ------------------------------------------------------------------------


def test_reads_token_through_the_symlinks_and_takes_expiry_from_jwt_exp(tmp_path):
    vol = ProjectedToken(tmp_path)
    vol.write(fake_jwt(time.time() + 100) + "\n")
    token = FileTokenSource(vol.path).fetch()
    assert token.value == fake_jwt_value(vol)
    assert 95 < token.expires_at - time.monotonic() <= 100


def fake_jwt_value(vol):
    with open(vol.path) as f:
        return f.read().strip()


def test_refresh_hint_is_the_recheck_interval_or_sooner(tmp_path):
    vol = ProjectedToken(tmp_path)
    vol.write(fake_jwt(time.time() + 3600))
    token = FileTokenSource(vol.path, recheck=7).fetch()
    assert 6 < token.refresh_hint - time.monotonic() <= 7
    vol.write(fake_jwt(time.time() + 4))  # a token close to expiry: look again at half its life
    token = FileTokenSource(vol.path, recheck=60).fetch()
    assert token.refresh_hint - time.monotonic() <= 2.0


def test_symlink_swap_is_seen_on_the_next_fetch(tmp_path):
    vol = ProjectedToken(tmp_path)
    a, b = fake_jwt(time.time() + 100), fake_jwt(time.time() + 200)
    vol.write(a)
    source = FileTokenSource(vol.path)
    assert source.fetch().value == a
    vol.write(b)
    assert source.fetch().value == b
    assert source.changes == 2


def test_empty_file_keeps_the_last_good_token(tmp_path):
    path = tmp_path / "token"
    good = fake_jwt(time.time() + 100)
    path.write_text(good)
    source = FileTokenSource(str(path))
    first = source.fetch()
    path.write_text("")
    again = source.fetch()
    assert again.value == good and again.expires_at == first.expires_at


def test_truncated_jwt_keeps_the_last_good_token(tmp_path):
    path = tmp_path / "token"
    good = fake_jwt(time.time() + 100)
    path.write_text(good)
    source = FileTokenSource(str(path))
    source.fetch()
    path.write_text(good[: good.index(".") + 5])  # a writer caught half way
    assert source.fetch().value == good


def test_deleted_file_keeps_the_last_good_token(tmp_path):
    path = tmp_path / "token"
    good = fake_jwt(time.time() + 100)
    path.write_text(good)
    source = FileTokenSource(str(path))
    source.fetch()
    path.unlink()
    assert source.fetch().value == good


def test_missing_file_without_a_last_good_token_is_transient_and_names_the_setting(tmp_path):
    source = FileTokenSource(str(tmp_path / "nope"), setting=SETTING)
    with pytest.raises(TransientTokenError) as err:
        source.fetch()
    assert SETTING in str(err.value) and "does not exist" in str(err.value)


def test_empty_file_without_a_last_good_token_is_an_error_that_does_not_quote_content(tmp_path):
    path = tmp_path / "token"
    path.write_text("two words-secretish")
    with pytest.raises(TransientTokenError) as err:
        FileTokenSource(str(path), setting=SETTING).fetch()
    assert "secretish" not in str(err.value) and "more than one word" in str(err.value)


def test_an_expired_jwt_in_the_file_is_refused_not_given_a_default_lifetime(tmp_path):
    path = tmp_path / "token"
    path.write_text(fake_jwt(time.time() - 10))
    with pytest.raises(TransientTokenError) as err:
        FileTokenSource(str(path)).fetch()
    assert "already expired" in str(err.value)


def test_opaque_token_has_no_expiry_of_its_own(tmp_path):
    path = tmp_path / "token"
    path.write_text("opaque-token-value\n")
    token = FileTokenSource(str(path)).fetch()
    assert token.value == "opaque-token-value" and token.expires_at is None


def test_built_from_env_with_recheck(tmp_path):
    path = tmp_path / "token"
    source = build_source(Env({SETTING: str(path), SETTING + "_RECHECK": "2.5"}))
    assert isinstance(source, FileTokenSource) and source.recheck == 2.5


# -- against real peers -------------------------------------------------------------------------


def test_a_401_forces_a_reread_and_the_batch_is_resent_with_the_new_file_content(tmp_path, make_http_receiver):
    vol = ProjectedToken(tmp_path)
    vol.write("token-generation-a")
    rx = make_http_receiver("static", static_token="token-generation-a")
    exporter = TokenOTLPHTTPLogExporter(endpoint=rx.endpoint, env={SETTING: vol.path})
    provider, logger, tap = emitter(exporter)
    try:
        logger.emit(body="before", severity_number=SeverityNumber.INFO)
        vol.write("token-generation-b")  # rotated; the manager would not look again for 60 s
        rx.validator.static_token = "token-generation-b"
        logger.emit(body="after", severity_number=SeverityNumber.INFO)
    finally:
        provider.shutdown()
    assert tap.results == [LogRecordExportResult.SUCCESS, LogRecordExportResult.SUCCESS]
    assert rx.statuses() == [200, 401, 200]
    a, b = token_id("token-generation-a"), token_id("token-generation-b")
    assert rx.token_ids() == [a, a, b]
    assert rx.received_bodies() == ["before", "after"]


def test_symlink_rotation_during_a_running_export_loses_no_batch(tmp_path, idp, make_http_receiver):
    """Kubelet-style rotation while exporting; the old token expires mid-run (~3 s life)."""
    idp.control(lifetime=4)
    first = idp_token(idp)
    idp.control(lifetime=3600)
    second = idp_token(idp)
    vol = ProjectedToken(tmp_path)
    vol.write(first)
    rx = make_http_receiver("jwt")
    # Default recheck (60 s): the pick-up comes from the token's own refresh point.
    exporter = TokenOTLPHTTPLogExporter(endpoint=rx.endpoint, env={SETTING: vol.path})
    provider, logger, tap = emitter(exporter)
    sent = 0
    rotated = False
    started = time.monotonic()
    try:
        # Export one record every 0.1 s for 6 s: well past the first token's expiry.
        while time.monotonic() - started < 6.0:
            if not rotated and time.monotonic() - started > 1.0:
                vol.write(second)
                rotated = True
            logger.emit(body=f"record {sent}", severity_number=SeverityNumber.INFO)
            sent += 1
            time.sleep(0.1)
    finally:
        provider.shutdown()
    assert rotated and sent > 30
    assert all(r == LogRecordExportResult.SUCCESS for r in tap.results)
    assert rx.received_bodies() == [f"record {i}" for i in range(sent)]
    assert set(rx.statuses()) == {200}, "no request was rejected, not even once"
    ids = rx.token_ids()
    assert ids[0] == token_id(first) and ids[-1] == token_id(second)
    assert ids.index(token_id(second)) == len(ids) - ids[::-1].index(token_id(first))  # one switch


def test_short_recheck_picks_up_a_rotation_of_a_long_lived_token_promptly(tmp_path):
    vol = ProjectedToken(tmp_path)
    a, b = fake_jwt(time.time() + 3600), fake_jwt(time.time() + 3600)
    b = b[:-4] + "c2lo"  # same exp, different token
    vol.write(a)
    manager = TokenManager(FileTokenSource(vol.path, recheck=0.3))
    try:
        manager.start()
        assert manager.get(5).value == a
        vol.write(b)
        deadline = time.monotonic() + 5
        while manager.get(5).value != b and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager.get(5).value == b
    finally:
        manager.close()


# -- only regular files: a FIFO, socket, device or directory is refused without blocking ---------


def _fetch_within(source, seconds, unblock=None):
    """source.fetch() in a thread: (token or None, error or None); fails if it takes longer."""
    result = {}

    def run():
        try:
            result["token"] = source.fetch()
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            unblock()  # let the stuck thread go before failing
        thread.join(5)
        pytest.fail(f"fetch() blocked for more than {seconds}s")
    return result.get("token"), result.get("error"), time.monotonic() - started


def _open_fifo_writer(path):
    """Unblock a reader stuck in open() of a FIFO (and then give it EOF)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_without_a_writer_is_refused_at_once_naming_the_setting(tmp_path):
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    source = FileTokenSource(str(fifo), setting=SETTING)
    token, error, took = _fetch_within(source, 1.0, unblock=lambda: _open_fifo_writer(str(fifo)))
    assert token is None and isinstance(error, FatalTokenError), error
    assert SETTING in str(error) and "is not a regular file (a FIFO)" in str(error)
    assert took < 1.0


def test_a_fifo_behind_the_kubelet_symlinks_is_refused_too(tmp_path):
    vol = ProjectedToken(tmp_path)
    vol.write(fake_jwt(time.time() + 100))
    target = os.path.realpath(vol.path)
    os.remove(target)
    os.mkfifo(target)
    source = FileTokenSource(vol.path, setting=SETTING)
    _, error, _ = _fetch_within(source, 1.0, unblock=lambda: _open_fifo_writer(target))
    assert isinstance(error, FatalTokenError) and "is not a regular file (a FIFO)" in str(error)


def test_a_fifo_after_a_good_token_keeps_the_last_good_token(tmp_path):
    vol = ProjectedToken(tmp_path)
    good = fake_jwt(time.time() + 100)
    vol.write(good)
    source = FileTokenSource(vol.path, setting=SETTING)
    assert source.fetch().value == good
    target = os.path.realpath(vol.path)
    os.remove(target)
    os.mkfifo(target)
    token, error, _ = _fetch_within(source, 1.0, unblock=lambda: _open_fifo_writer(target))
    assert error is None and token.value == good


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_character_device_is_refused(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    _, error, _ = _fetch_within(FileTokenSource(device, setting=SETTING), 1.0)
    assert isinstance(error, FatalTokenError), error
    assert SETTING in str(error) and "is not a regular file (a character device)" in str(error)


def test_a_directory_is_refused(tmp_path):
    _, error, _ = _fetch_within(FileTokenSource(str(tmp_path), setting=SETTING), 1.0)
    assert isinstance(error, FatalTokenError)
    assert SETTING in str(error) and "is not a regular file (a directory)" in str(error)


def test_a_unix_socket_is_refused():
    directory = tempfile.mkdtemp(prefix="ote-", dir="/tmp")  # AF_UNIX paths are short
    path = os.path.join(directory, "sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(1)
        _, error, _ = _fetch_within(FileTokenSource(path, setting=SETTING), 1.0)
        assert isinstance(error, FatalTokenError), error
        assert SETTING in str(error) and "is not a regular file (a socket)" in str(error)
    finally:
        server.close()
        os.unlink(path)
        os.rmdir(directory)


def test_a_symlink_flipping_between_a_file_and_a_fifo_never_blocks_a_fetch(tmp_path):
    """The path swapped to a FIFO between the check and the open must not block the open."""
    regular = tmp_path / "regular"
    good = fake_jwt(time.time() + 100)
    regular.write_text(good)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "token"
    os.symlink("regular", link)
    stop = threading.Event()

    def flip():
        n = 0
        while not stop.is_set():
            n += 1
            tmp = tmp_path / f"link-{n}"
            os.symlink("fifo" if n % 2 else "regular", tmp)
            os.rename(tmp, link)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        outcomes = collections.Counter()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            source = FileTokenSource(str(link), setting=SETTING)
            token, error, _ = _fetch_within(source, 1.0, unblock=lambda: _open_fifo_writer(str(fifo)))
            if token is not None:
                assert token.value == good
                outcomes["token"] += 1
            else:
                assert isinstance(error, FatalTokenError) and "(a FIFO)" in str(error), error
                outcomes["fifo"] += 1
    finally:
        stop.set()
        flipper.join(5)
    assert outcomes["token"] and outcomes["fifo"], outcomes
