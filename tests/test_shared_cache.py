"""The shared token cache (OTEL_TOKEN_EXPORTER_CACHE_DIR): one token per host, not per process.

Against the real test IdP and OTLP/HTTP receiver, with real processes (tests/shared_cache_worker.py):

* 8 children forked from a master after the exporter is set up (gunicorn --preload), and 8
  independently started processes, each logging for 20 s with 3-second tokens, with and without the
  cache, all four groups at once (told apart at the IdP by their scope): every record delivered; the
  IdP's token requests with the cache within what one process alone needs, about 8x that without.
* kill -9 of the process holding the lock in the middle of a slow fetch: another process fetches
  at once (the kernel released the lock), nobody hangs, nothing is lost.
* a 401 storm against the cached token (the receiver revokes it): one forced refresh across all 8
  processes, against 8 without the cache.

In-process, with scripted sources: the lock and its bounded wait, shared failures, refusals, the
file's permissions, owner and format, what reaches the disk and the logs, fork, and the wiring.
"""

from __future__ import annotations

import base64
import glob
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from helpers import leaked, numbers, wait_until
from otel_token_exporter import registry
from otel_token_exporter.cache import CACHE_DIR_SETTING, SharedCacheSource, key_material, shared_cache
from otel_token_exporter.config import ConfigurationError, Env
from otel_token_exporter.manager import TokenManager
from otel_token_exporter.schedule import DEFAULT_POLICY, RefreshPolicy
from otel_token_exporter.sources import FileTokenSource, StaticTokenSource, build_source
from otel_token_exporter.token import FatalTokenError, Token, TransientTokenError
from peers.common import token_id

pytestmark = pytest.mark.usefixtures("no_otel_env")

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shared_cache_worker.py")
E = "OTEL_TOKEN_EXPORTER_"
LOG = "otel_token_exporter"
OTHER_UID = 54321  # no such user here: a file chown'ed to it is "someone else's"


@pytest.fixture
def scratch():
    """A temporary directory of our own, removed at teardown (also what the workers left)."""
    path = tempfile.mkdtemp(prefix="otel-token-cache-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Scripted sources (in-process)
# ---------------------------------------------------------------------------------------------


class Counting:
    """A source handing out "<prefix>-1", "<prefix>-2"... living ``lifetime`` s; counts fetches."""

    timeout = 2.0

    def __init__(self, prefix="tok", lifetime=60.0, same_value=False, error=None, delay=0.0):
        self.prefix, self.lifetime, self.same_value, self.error, self.delay = prefix, lifetime, same_value, error, delay
        self.calls = 0
        self.rejecting: list = []

    def fetch(self) -> Token:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        n = 1 if self.same_value else self.calls
        return Token(f"{self.prefix}-{n}", expires_at=time.monotonic() + self.lifetime)


def cached(inner, directory, **kw):
    kw.setdefault("key", {"source": "test", "token_url": "https://idp.example/token"})
    kw.setdefault("secret_key_material", {"client_secret": "not-on-disk"})
    return SharedCacheSource(inner, directory, **kw)


def test_a_second_process_takes_the_cached_token_with_the_hosts_refresh_point(scratch):
    a_inner, b_inner = Counting("a"), Counting("b")
    a, b = cached(a_inner, scratch), cached(b_inner, scratch)
    first = a.fetch()
    assert a_inner.calls == 1 and first.value == "a-1"
    now = time.monotonic()
    # the host's point: the package's own rule (80 % of 60 s, jitter up to 10 %), drawn once
    assert now + 60 * 0.7 - 1 <= first.refresh_hint <= now + 60 * 0.8
    second = b.fetch()
    assert b_inner.calls == 0, "the second process asked its IdP although a fresh token was cached"
    assert second.value == "a-1"
    assert abs(second.refresh_hint - first.refresh_hint) < 0.05  # the same point in both processes
    assert abs(second.expires_at - first.expires_at) < 0.05
    # asked again before the host's point (its own jittered point came first): the cached token again
    assert b.fetch().value == "a-1" and b_inner.calls == 0


class Clocked:
    """A source on fake clocks: "<prefix>-N" living ``lifetime`` s of ``clock``."""

    def __init__(self, prefix, clock, lifetime=10.0):
        self.prefix, self.clock, self.lifetime, self.calls = prefix, clock, lifetime, 0

    def fetch(self) -> Token:
        self.calls += 1
        now = self.clock[0]
        return Token(f"{self.prefix}-{self.calls}", expires_at=now + self.lifetime, obtained_at=now)


def test_past_the_hosts_refresh_point_exactly_one_fetches_and_the_others_take_its_token(scratch):
    clock, wall = [1000.0], [1_700_000_000.0]
    inners = [Clocked(f"p{i}", clock) for i in range(3)]
    procs = [cached(i, scratch, clock=lambda: clock[0], wall_clock=lambda: wall[0]) for i in inners]
    first = procs[0].fetch()
    hint = first.refresh_hint - clock[0]
    assert 5.99 <= hint <= 7.0  # 10 s token: 3 s margin, minus up to 1 s of jitter
    clock[0] += hint - 0.01
    wall[0] += hint - 0.01
    assert [p.fetch().value for p in procs] == ["p0-1"] * 3  # still fresh for all
    clock[0] += 0.02
    wall[0] += 0.02
    assert procs[1].fetch().value == "p1-1"  # due: the first to ask fetches...
    assert procs[2].fetch().value == "p1-1"  # ...and the others take its token
    assert procs[0].fetch().value == "p1-1"
    assert [i.calls for i in inners] == [1, 1, 0]
    # a wall-clock jump forward makes the entry look old (never younger): it is refreshed
    wall[0] += 3600
    assert procs[2].fetch().value == "p2-1"


def test_a_cached_token_is_not_used_past_this_process_policy_nor_when_obtained_in_the_future(scratch):
    clock, wall = [500.0], [1_700_000_000.0]
    inner = Counting()
    writer = cached(inner, scratch, clock=lambda: clock[0], wall_clock=lambda: wall[0])
    writer._write({"format": 1, "key": writer._check, "value": "late-point", "obtained": wall[0] - 1,
                   "expires": wall[0] + 9, "refresh": wall[0] + 8.5, "id": "x1"})
    # a 10 s token obtained 1 s ago: this package's policy refreshes it 3 s before expiry, so the
    # file's later point (8.5 s from now) is not followed
    reader = cached(Counting("r"), scratch, clock=lambda: clock[0], wall_clock=lambda: wall[0])
    token = reader.fetch()
    assert token.value == "late-point"
    assert token.refresh_hint == pytest.approx(clock[0] + 6.0)
    writer._write({"format": 1, "key": writer._check, "value": "from-the-future", "obtained": wall[0] + 60,
                   "expires": wall[0] + 120, "refresh": wall[0] + 100, "id": "x2"})
    fresh_inner = Counting("fresh")
    assert cached(fresh_inner, scratch, clock=lambda: clock[0], wall_clock=lambda: wall[0]).fetch().value == "fresh-1"


def test_a_token_refused_by_the_endpoint_is_refreshed_once_for_everyone(scratch):
    inners = [Counting(f"p{i}") for i in range(4)]
    procs = [cached(i, scratch) for i in inners]
    old = procs[0].fetch().value
    assert all(p.fetch().value == old for p in procs[1:])
    # every process is refused the same token: the first refreshes it, the rest take the new one
    new = {p.fetch_rejecting(old).value for p in procs}
    assert new == {"p0-2"} and sum(i.calls for i in inners) == 2
    # a late refusal of the old token (or of the new one by someone who already has a newer) is
    # answered from the cache, not the IdP
    assert procs[3].fetch_rejecting(old).value == "p0-2" and sum(i.calls for i in inners) == 2
    # the new token refused too: one more fetch
    assert procs[2].fetch_rejecting("p0-2").value == "p2-1"
    assert sum(i.calls for i in inners) == 3


def test_a_refusal_with_an_idp_that_reissues_the_same_value_still_fetches_only_once(scratch):
    inners = [Counting("same", same_value=True) for _ in range(3)]
    procs = [cached(i, scratch) for i in inners]
    value = procs[0].fetch().value
    for p in procs[1:]:
        p.fetch()
    assert [p.fetch_rejecting(value).value for p in procs] == [value] * 3
    # the first refetched (a new write of the same value); the others saw that write
    assert [i.calls for i in inners] == [2, 0, 0]


def test_the_wait_for_another_process_takes_its_token_as_soon_as_it_is_written(scratch):
    import fcntl

    holder, waiter_inner = cached(Counting("holder"), scratch), Counting("waiter")
    waiter = cached(waiter_inner, scratch)
    fd = os.open(holder.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" is fetching
        got = []
        thread = threading.Thread(target=lambda: got.append(waiter.fetch()))
        thread.start()
        assert not wait_until(lambda: got, 0.3), "the waiter did not wait for the lock holder"
        holder._store(Token("holder-1", expires_at=time.monotonic() + 60))
        thread.join(2)
        assert got and got[0].value == "holder-1"
        assert waiter_inner.calls == 0
    finally:
        os.close(fd)


def test_the_lock_wait_is_bounded_then_it_fetches_anyway_with_one_warning(scratch, caplog):
    import fcntl

    caplog.set_level(logging.WARNING, logger=LOG)
    inner = Counting("alone")
    source = cached(inner, scratch, lock_timeout=0.3)
    fd = os.open(source.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a holder that never finishes
        started = time.monotonic()
        assert source.fetch().value == "alone-1"
        took = time.monotonic() - started
        assert 0.3 <= took < 1.5
        source.fetch_rejecting("alone-1")
        warnings = [r.getMessage() for r in caplog.records if "held the token cache lock" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        os.close(fd)


def test_a_failure_of_the_fetch_we_waited_for_is_shared_not_retried_in_turn(scratch):
    import fcntl

    holder = cached(Counting("h"), scratch)
    waiter_inner = Counting("w")
    waiter = cached(waiter_inner, scratch)
    fd = os.open(holder.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    errors = []

    def wait():
        try:
            waiter.fetch()
        except Exception as exc:  # noqa: BLE001 - examined below
            errors.append(exc)

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        thread = threading.Thread(target=wait)
        thread.start()
        assert not wait_until(lambda: errors, 0.2)
        holder._note_failure(TransientTokenError("token endpoint said 503", retry_after=2.0))
        thread.join(2)
    finally:
        os.close(fd)
    assert len(errors) == 1 and isinstance(errors[0], TransientTokenError)
    assert errors[0].retry_after == 2.0 and "503" in str(errors[0])
    assert waiter_inner.calls == 0
    # a fatal one stays fatal; a later fetch (not waiting for that one) tries itself
    holder._note_failure(FatalTokenError("invalid_client"))
    assert waiter.fetch().value == "w-1"


def test_a_failing_fetch_is_noted_and_the_token_kept_for_the_others(scratch):
    good = cached(Counting("g", lifetime=60), scratch)
    good.fetch()
    failing = cached(Counting(error=TransientTokenError("boom")), scratch)
    with pytest.raises(TransientTokenError):
        failing.fetch_rejecting("g-1")  # refused token, and the refetch fails
    entry = failing._read()
    assert entry.value == "g-1" and entry.failure["message"] == "boom"


# ---------------------------------------------------------------------------------------------
# The files: names, permissions, owner, format, what reaches the disk and the logs
# ---------------------------------------------------------------------------------------------

SECRET = "s3cret-never-on-disk"


def oauth2_env(directory, **extra):
    values = {E + "TOKEN_URL": "https://idp.example/token", E + "CLIENT_ID": "shipper",
              E + "CLIENT_SECRET": SECRET, E + "SCOPE": "logs.write", CACHE_DIR_SETTING: directory}
    values.update(extra)
    return Env(values)


def wrapped(env, inner=None, options=None):
    source = shared_cache(build_source(env, options or {}), env, options or {}, DEFAULT_POLICY)
    assert isinstance(source, SharedCacheSource)
    if inner is not None:
        source.inner = inner
    return source


def disk_bytes(directory) -> bytes:
    out = b""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out += name.encode() + b"\0" + f.read()
    return out


def test_names_hold_no_secret_or_token_and_the_file_only_the_token(scratch, caplog):
    caplog.set_level(logging.DEBUG, logger=LOG)
    directory = os.path.join(scratch, "cache", "nested")
    source = wrapped(oauth2_env(directory), Counting("eyJ-the-token"))
    value = source.fetch().value
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    names = sorted(os.listdir(directory))
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".lock")
    for name in names:
        assert stat.S_IMODE(os.lstat(os.path.join(directory, name)).st_mode) == 0o600
        assert leaked(name, [value, SECRET, "shipper", "logs.write", "idp.example"]) == 0
    data = disk_bytes(directory)
    assert value.encode() in data  # the token is in the cache file (that is the point)...
    assert SECRET.encode() not in data  # ...the secret nowhere
    assert leaked(caplog.text + repr(source), [value, SECRET]) == 0
    assert os.path.getsize(source.lock_path) == 0


def test_the_file_name_follows_the_settings_and_the_secret_without_holding_it(scratch):
    base = wrapped(oauth2_env(scratch))
    same = wrapped(oauth2_env(scratch))
    other_secret = wrapped(oauth2_env(scratch, **{E + "CLIENT_SECRET": "another"}))
    other_scope = wrapped(oauth2_env(scratch, **{E + "SCOPE": "traces.write"}))
    exporter_only = wrapped(oauth2_env(scratch, **{E + "MAX_AUTH_RETRIES": "3"}))
    assert base.path == same.path == exporter_only.path
    assert len({base.path, other_secret.path, other_scope.path}) == 3
    # the same non-secret half of the name for a different secret; the secret half is not a plain hash
    assert os.path.basename(base.path).split("-")[1] == os.path.basename(other_secret.path).split("-")[1]
    import hashlib

    plain = hashlib.sha256(SECRET.encode()).hexdigest()
    assert plain[:16] not in base.path


def test_google_and_azure_keys_include_the_identity_their_libraries_read():
    opts = {"source": "google"}
    a = key_material(Env({"GOOGLE_APPLICATION_CREDENTIALS": "/a.json"}), opts, object())
    b = key_material(Env({"GOOGLE_APPLICATION_CREDENTIALS": "/b.json"}), opts, object())
    assert a[0] == b[0] and a[1] != b[1]
    c = key_material(Env({E + "AZURE_SCOPE": "api://x/.default", "AZURE_CLIENT_ID": "one"}), {"source": "azure"}, object())
    d = key_material(Env({E + "AZURE_SCOPE": "api://x/.default", "AZURE_CLIENT_ID": "two"}), {"source": "azure"}, object())
    assert c[0] == d[0] and c[0]["azure_scope"] == "api://x/.default" and c[1] != d[1]

    class Plugin:
        def __init__(self, who):
            self.who = who

        def fetch(self):  # pragma: no cover - not called
            raise AssertionError

        def cache_key(self):
            return {"who": self.who}

    assert key_material(Env({}), {"source": "mine"}, Plugin(1))[1] != key_material(Env({}), {"source": "mine"}, Plugin(2))[1]


@pytest.mark.parametrize("spoil", ["world_readable", "group_readable", "other_owner", "symlink"])
def test_an_untrusted_cache_file_is_ignored_with_one_warning_and_replaced(scratch, caplog, spoil):
    caplog.set_level(logging.WARNING, logger=LOG)
    writer = wrapped(oauth2_env(scratch), Counting("planted"))
    planted = writer.fetch().value
    if spoil == "world_readable":
        os.chmod(writer.path, 0o644)
    elif spoil == "group_readable":
        os.chmod(writer.path, 0o640)
    elif spoil == "other_owner":
        os.chown(writer.path, OTHER_UID, OTHER_UID)
    else:
        target = os.path.join(scratch, "elsewhere.json")
        os.rename(writer.path, target)
        os.symlink(target, writer.path)
    inner = Counting("own")
    reader = wrapped(oauth2_env(scratch), inner)
    assert reader.fetch().value == "own-1", "an untrusted cache file was used"
    assert inner.calls == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "ignored" in warnings[0] and leaked(warnings[0], [planted, "own-1", SECRET]) == 0
    # replaced by a file of ours, 0600, which the next process trusts
    st = os.lstat(reader.path)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    third = Counting("third")
    assert wrapped(oauth2_env(scratch), third).fetch().value == "own-1" and third.calls == 0


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"format": 99}', b"\xff\xfe",
                                     b'{"format": 1, "key": "someone-else", "value": "x", "obtained": 0,'
                                     b' "expires": 9e99, "refresh": 9e99, "id": "i"}'])
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_replaced(scratch, caplog, content):
    caplog.set_level(logging.WARNING, logger=LOG)
    first = wrapped(oauth2_env(scratch), Counting("first"))
    with open(first.path, "wb") as f:
        f.write(content)
    os.chmod(first.path, 0o600)
    assert first.fetch().value == "first-1"
    assert wrapped(oauth2_env(scratch), Counting("second")).fetch().value == "first-1"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_directory_of_someone_else_or_a_shared_one_is_not_used(scratch, caplog):
    caplog.set_level(logging.WARNING, logger=LOG)
    foreign = os.path.join(scratch, "foreign")
    os.mkdir(foreign, 0o700)
    os.chown(foreign, OTHER_UID, OTHER_UID)
    inner = Counting("direct")
    source = wrapped(oauth2_env(foreign), inner)
    assert source.fetch().value == "direct-1" and source.fetch().value == "direct-2"
    assert os.listdir(foreign) == []
    shared = os.path.join(scratch, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    assert wrapped(oauth2_env(shared), Counting("s")).fetch().value == "s-1"
    assert os.listdir(shared) == [] and stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "uid 54321" in messages[0] and "shared directory" in messages[1]
    # a directory of ours that is too open is tightened (as the spool does)
    loose = os.path.join(scratch, "loose")
    os.mkdir(loose)
    os.chmod(loose, 0o755)
    wrapped(oauth2_env(loose), Counting("l")).fetch()
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700


def test_errors_name_no_token_and_no_secret(scratch):
    holder = cached(Counting("eyJsecret-token"), scratch)
    holder.fetch()
    failing = cached(Counting(error=TransientTokenError("token endpoint https://idp.example/token said 503")), scratch)
    with pytest.raises(TransientTokenError) as info:
        failing.fetch_rejecting("eyJsecret-token-1")
    assert "eyJsecret" not in str(info.value) and "eyJsecret" not in repr(failing)


def test_no_descriptor_or_lock_survives_a_fork(scratch):
    import fcntl

    source = cached(Counting(), scratch)
    fd = source._open_lock()
    fcntl.flock(fd, fcntl.LOCK_EX)  # the parent is mid-fetch when the child is forked
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return
        code = 1
        try:
            os.close(r)
            report = {"open": True, "lock_held_by_parent": None, "fds": len(source._fds)}
            try:
                os.fstat(fd)
            except OSError:
                report["open"] = False
            probe = os.open(source.lock_path, os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                report["lock_held_by_parent"] = False
            except BlockingIOError:
                report["lock_held_by_parent"] = True
            os.write(w, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = json.loads(f.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    source._close_lock(fd, True)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"open": False, "lock_held_by_parent": True, "fds": 0}


# ---------------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------------


def test_without_the_setting_nothing_changes(scratch):
    env = Env({E + "TOKEN_URL": "https://idp.example/token", E + "CLIENT_ID": "c", E + "CLIENT_SECRET": "s"})
    source = build_source(env, {})
    assert shared_cache(source, env, {}) is source
    assert os.listdir(scratch) == []


def test_the_file_and_static_sources_are_not_wrapped(scratch):
    token_file = os.path.join(scratch, "token")
    with open(token_file, "w") as f:
        f.write("file-token")
    for env in (Env({E + "TOKEN_FILE": token_file, CACHE_DIR_SETTING: scratch}),
                Env({E + "TOKEN": "static-token", CACHE_DIR_SETTING: scratch})):
        source = build_source(env, {})
        assert isinstance(source, (FileTokenSource, StaticTokenSource))
        assert shared_cache(source, env, {}) is source


def test_the_registry_wraps_with_the_keyword_or_the_variable_and_the_manager_uses_the_hint(scratch):
    env = Env({E + "TOKEN_URL": "https://idp.example/token", E + "CLIENT_ID": "c", E + "CLIENT_SECRET": "s"})
    lease = registry.acquire(env, {"cache_dir": scratch})
    try:
        assert isinstance(lease.manager._source, SharedCacheSource)
        assert lease.manager._source.name == "oauth2"  # messages still name the source
        assert lease.manager._source.token_url == "https://idp.example/token"
    finally:
        lease.release(timeout=1)
    with pytest.raises(ConfigurationError, match="cache_dir"):
        shared_cache(build_source(env, {}), env, {"cache_dir": 42})
    # a manager refreshes at the host's point when it comes before its own (here: the host's
    # writer refreshes at half the lifetime, 10 s; the manager's own point is 13-15 s)
    host = cached(Counting("host", lifetime=20.0), scratch, policy=RefreshPolicy(refresh_fraction=0.5, jitter_fraction=0))
    host_point = host.fetch().refresh_hint
    late = Counting("late")
    manager = TokenManager(cached(late, scratch))
    try:
        held = manager.get(5)
        assert held.value == "host-1" and late.calls == 0
        assert held.refresh_at == pytest.approx(host_point, abs=0.05)
    finally:
        manager.close()


def test_the_command_source_shares_its_token_too(scratch):
    counter = os.path.join(scratch, "runs")
    script = os.path.join(scratch, "cmd.py")
    with open(script, "w") as f:
        f.write("import json\n"
                f"open({counter!r}, 'a').write('x')\n"
                "print(json.dumps({'access_token': 'cmd-token', 'expires_in': 300}))\n")
    env = Env({E + "TOKEN_COMMAND": f"{sys.executable} {script}", CACHE_DIR_SETTING: os.path.join(scratch, "c")})
    first, second = wrapped(env), wrapped(env)
    assert first.fetch().value == "cmd-token" and second.fetch().value == "cmd-token"
    with open(counter) as f:
        assert f.read() == "x"  # the command ran once for both


# ---------------------------------------------------------------------------------------------
# Real processes against the real IdP and receiver
# ---------------------------------------------------------------------------------------------

LIFETIME = 3
SECONDS = 20.0
RATE = 20.0
PROCESSES = 8


class Workers:
    """Worker processes we started (output to files in ``scratch``); stopped by pid at exit."""

    def __init__(self, scratch):
        self.scratch = scratch
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name, env, *args):
        out = open(os.path.join(self.scratch, f"{name}.out"), "w")
        err = open(os.path.join(self.scratch, f"{name}.err"), "w")
        try:
            self.procs[name] = subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env,
                                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        finally:
            out.close()
            err.close()
        return self.procs[name]

    def wait(self, deadline) -> dict:
        """{name: (exit code, report or None, stderr)}; a process still running at ``deadline`` is killed."""
        results = {}
        for name, proc in self.procs.items():
            try:
                code = proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                code = "timeout"
            with open(os.path.join(self.scratch, f"{name}.out")) as f:
                lines = f.read().strip().splitlines()
            with open(os.path.join(self.scratch, f"{name}.err")) as f:
                err = f.read()
            results[name] = (code, json.loads(lines[-1]) if lines else None, err)
        return results

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def workers(scratch):
    w = Workers(scratch)
    try:
        yield w
    finally:
        w.stop()


def worker_env(idp, rx, scope, cache_dir=None, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": rx.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        E + "TOKEN_URL": idp.token_url,
        E + "CLIENT_ID": idp.client_id,
        E + "CLIENT_SECRET": idp.client_secret,
        E + "SCOPE": scope,
        "PYTHONUNBUFFERED": "1",
    })
    if cache_dir is not None:
        env[CACHE_DIR_SETTING] = cache_dir
    env.update(extra)
    return env


def idp_requests(idp, scope, after=float("-inf")):
    return [r for r in idp.requests() if r.get("scope") == scope and r["time"] >= after]


def reports_of(results):
    """Every process report (prefork masters' children flattened), each with its exit code."""
    out = []
    for name, (code, report, _) in results.items():
        assert code == 0, f"{name} exited with {code}: {(report, results[name][2][-2000:])}"
        if "children" in report:
            for child in report["children"]:
                assert child.get("exit") == 0, (name, child)
                out.append(child)
        else:
            out.append(report)
    return out


def check_delivered(rx, reports):
    bodies = rx.received_bodies()
    for rep in reports:
        got = set(numbers(bodies, rep["prefix"]))
        assert got == set(range(rep["emitted"])), (
            f"{rep['prefix']}: {rep['emitted'] - len(got)} of {rep['emitted']} records lost")
        assert rep["drained"], rep["prefix"]


def claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def scope_claim(token):
    return claims(token).get("scope")


def test_forked_and_independent_processes_share_one_token_per_host(idp, make_http_receiver, workers, scratch):
    idp.control(lifetime=LIFETIME)
    rx = make_http_receiver("jwt")
    groups = {  # scope (tells the groups apart at the IdP) -> (forked?, cache dir or None)
        "fork-cached": (True, os.path.join(scratch, "cache-fork")),
        "fork-uncached": (True, None),
        "spawn-cached": (False, os.path.join(scratch, "cache-spawn")),
        "spawn-uncached": (False, None),
    }
    started = time.monotonic()
    for scope, (forked, cache_dir) in groups.items():
        env = worker_env(idp, rx, scope, cache_dir)
        if forked:
            workers.start(scope, env, "prefork", scope, SECONDS, RATE, PROCESSES)
        else:
            for k in range(PROCESSES):
                workers.start(f"{scope}-{k}", env, "single", f"{scope}-{k}", SECONDS, RATE)
    results = workers.wait(started + SECONDS + 90)
    run_seconds = time.monotonic() - started
    reports = reports_of(results)
    check_delivered(rx, reports)

    counts, per_lifetime, alone = {}, {}, {}
    for scope in groups:
        times = [r["time"] for r in idp_requests(idp, scope)]
        window = max(times) - min(times)  # while the group's processes were alive and refreshing
        counts[scope] = len(times)
        per_lifetime[scope] = len(times) / (window / LIFETIME)
        # what one process alone may need over that window: one per half lifetime + a few
        alone[scope] = window / (LIFETIME / 2) + 3
    print(f"\nshared token cache: {PROCESSES} processes x {SECONDS:.0f} s of logging each, {LIFETIME}-s tokens, "
          f"run {run_seconds:.1f} s:")
    for scope, n in counts.items():
        print(f"  {scope:15s}: {n:3d} IdP token requests ({per_lifetime[scope]:.2f} per token lifetime; "
              f"one process alone: <= {alone[scope]:.0f})")
    print(f"  without/with: forked {counts['fork-uncached'] / counts['fork-cached']:.1f}x, "
          f"independent {counts['spawn-uncached'] / counts['spawn-cached']:.1f}x")
    for kind in ("fork", "spawn"):
        with_cache, without = counts[f"{kind}-cached"], counts[f"{kind}-uncached"]
        assert with_cache <= alone[f"{kind}-cached"], (
            f"{kind}: {with_cache} IdP requests with the cache, one process needs <= {alone[f'{kind}-cached']:.0f}")
        assert without >= PROCESSES * int(SECONDS / LIFETIME), f"{kind}: the uncached run made only {without} requests"
        assert without >= 5 * with_cache, (kind, with_cache, without)
    sources = {rep["prefix"].rsplit("-", 1)[0]: rep["source"] for rep in reports}
    assert sources == {"fork-cached": "SharedCacheSource", "fork-uncached": "ClientCredentialsSource",
                       "spawn-cached": "SharedCacheSource", "spawn-uncached": "ClientCredentialsSource"}

    # what reached the disk and the logs: tokens only inside the cache files, secrets nowhere
    tokens = {r.token for r in rx.requests if r.token}
    assert len(tokens) > 20
    for scope, (_, cache_dir) in groups.items():
        if cache_dir is None:
            continue
        assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
        for path in glob.glob(os.path.join(cache_dir, "*")):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert leaked(os.path.basename(path), list(tokens)) == 0
        assert leaked(disk_bytes(cache_dir).decode("utf-8", "replace"), [idp.client_secret]) == 0
    logs = "\n".join(err for _, _, err in results.values())
    assert leaked(logs, list(tokens) + [idp.client_secret]) == 0


def locked_pid(path):
    """The pid holding a flock on ``path`` (from /proc/locks), or None."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
                return int(parts[4])
    return None


def test_kill_9_of_the_lock_holder_mid_fetch_another_fetches_at_once_nothing_lost(idp, make_http_receiver,
                                                                                  workers, scratch):
    idp.control(lifetime=4)
    rx = make_http_receiver("jwt")
    cache_dir = os.path.join(scratch, "cache")
    env = worker_env(idp, rx, "kill", cache_dir, **{E + "TOKEN_TIMEOUT": "5"})  # lock wait: 6 s
    names = [f"kill-{k}" for k in range(4)]
    procs = {name: workers.start(name, env, "single", name, 14, RATE) for name in names}
    started = time.monotonic()
    assert wait_until(lambda: all(numbers(rx.received_bodies(), n) for n in names), 30), "workers never delivered"

    delay_set = time.time()
    idp.control(delay_ms=2500)  # the next fetch (the host's refresh) takes 2.5 s
    lock_path = glob.glob(os.path.join(cache_dir, "*.lock"))[0]
    holder = []

    def fetching():
        pid = locked_pid(lock_path)
        # a request held for 0.3 s already: the slow one, not a fast one finishing
        slow = [r for r in idp_requests(idp, "kill", delay_set) if r["outcome"] is None and time.time() - r["time"] > 0.3]
        if pid is not None and slow and locked_pid(lock_path) == pid:
            holder.append(pid)
            return True
        return False

    assert wait_until(fetching, 10, step=0.01), "no process held the lock during a slow fetch"
    victim = next(name for name, proc in procs.items() if proc.pid == holder[0])
    killed_at = time.time()
    os.kill(holder[0], signal.SIGKILL)  # our own child, by its pid
    assert wait_until(lambda: idp_requests(idp, "kill", killed_at), 5, step=0.01), "nobody fetched after the kill"
    taken_over = idp_requests(idp, "kill", killed_at)[0]["time"] - killed_at
    idp.control(delay_ms=0)
    results = workers.wait(started + 60)
    print(f"\nkill -9 of the lock holder (pid {holder[0]}) mid-fetch: another process asked the IdP "
          f"{taken_over * 1000:.0f} ms later (lock wait bound 6 s)")

    assert results[victim][0] == -signal.SIGKILL
    survivors = {n: r for n, r in results.items() if n != victim}
    check_delivered(rx, reports_of(survivors))
    assert taken_over < 1.5, "the lock was not released by the kill (the others waited for the timeout)"
    during = idp_requests(idp, "kill", delay_set)
    assert [r["outcome"] for r in during if r["time"] < killed_at] == ["client_gone"]
    # while the second slow fetch ran, nobody else asked
    assert len([r for r in during if killed_at <= r["time"] < killed_at + 2.3]) == 1


def test_a_401_storm_against_the_cached_token_forces_one_refresh_across_all_processes(idp, make_http_receiver,
                                                                                       workers, scratch):
    rx = make_http_receiver("jwt")  # 3600-s tokens: no scheduled refresh during the test
    revoked: set = set()
    validate = rx.validator.validate

    def revoking(token):  # the receiver's validator, with a revocation list
        if token and token_id(token) in revoked:
            return False, "revoked"
        return validate(token)

    rx.validator.validate = revoking
    for scope, cache_dir in (("storm-cached", os.path.join(scratch, "cache")), ("storm-uncached", None)):
        workers.start(scope, worker_env(idp, rx, scope, cache_dir), "prefork", scope, 8, RATE, PROCESSES)
    started = time.monotonic()
    prefixes = [f"{s}-{k}" for s in ("storm-cached", "storm-uncached") for k in range(PROCESSES)]
    assert wait_until(lambda: all(numbers(rx.received_bodies(), p) for p in prefixes), 30), "children never delivered"
    current = {r.token for r in rx.requests if r.token}
    assert {scope_claim(t) for t in current} == {"storm-cached", "storm-uncached"} and len(current) == 2
    # The test IdP's tokens carry no jti: one issued in the same second as the revoked one, for the
    # same client and scope, would be the same token (and refused again). Revoke a second later.
    assert wait_until(lambda: time.time() >= max(claims(t)["iat"] for t in current) + 1.05, 3)
    revoked_at = time.time()
    revoked.update(token_id(t) for t in current)  # every process's current token is refused from now on
    results = workers.wait(started + 60)
    check_delivered(rx, reports_of(results))

    refused = [r for r in rx.requests if r.reason == "revoked"]
    refused_by_scope = {s: len({r.token_id for r in refused if scope_claim(r.token) == s}) for s in ("storm-cached", "storm-uncached")}
    forced = {s: len(idp_requests(idp, s, revoked_at)) for s in ("storm-cached", "storm-uncached")}
    for s in forced:
        print(f"\n{s}: IdP requests at", [round(r["time"] - revoked_at, 2) for r in idp_requests(idp, s, revoked_at)],
              "refreshes per child", [rep["refresh_after"] - rep["refresh_before"] for rep in reports_of(results)
                                      if rep["prefix"].startswith(s + "-")])
    print(f"\n401 storm: {len(refused)} requests refused; IdP requests after the revocation: "
          f"{forced['storm-cached']} with the cache, {forced['storm-uncached']} without ({PROCESSES} processes each)")
    assert refused_by_scope == {"storm-cached": 1, "storm-uncached": 1}
    assert len([r for r in refused if scope_claim(r.token) == "storm-cached"]) >= PROCESSES  # everyone was refused
    assert forced == {"storm-cached": 1, "storm-uncached": PROCESSES}
    # (a request validated just before the revocation may be recorded just after it: not counted)
    new_cached = {r.token_id for r in rx.requests if r.accepted and r.time >= revoked_at and r.token
                  and r.token_id not in revoked and scope_claim(r.token) == "storm-cached"}
    assert len(new_cached) == 1, "the cached group's processes did not all switch to the one new token"
