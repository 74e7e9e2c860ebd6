"""The exec-command token source, with real small Python scripts as commands."""

from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from otel_token_exporter import FatalTokenError, TokenManager, TransientTokenError
from otel_token_exporter.config import ConfigurationError, Env
from otel_token_exporter.sources import CommandTokenSource, build_source

SETTING = "OTEL_TOKEN_EXPORTER_TOKEN_COMMAND"


def script(tmp_path, body: str, name="cmd.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}"


def printing(tmp_path, out: str, *, code=0, err="") -> str:
    return script(tmp_path, f"""
        import sys
        sys.stdout.write({out!r})
        sys.stderr.write({err!r})
        sys.exit({code})
    """)


def test_bare_token_on_stdout(tmp_path):
    token = CommandTokenSource(printing(tmp_path, "opaque-abc\n")).fetch()
    assert token.value == "opaque-abc" and token.expires_at is None


def test_arguments_are_split_like_a_shell_but_not_run_by_one(tmp_path):
    cmd = script(tmp_path, "import sys; print(sys.argv[1])") + " 'two words;$HOME'"
    with pytest.raises(FatalTokenError):  # the argument arrives verbatim: two words, not expanded
        CommandTokenSource(cmd).fetch()
    cmd = script(tmp_path, "import sys; print(sys.argv[1] + sys.argv[2])") + " 'tok;$HOME' '|x'"
    assert CommandTokenSource(cmd).fetch().value == "tok;$HOME|x"


def test_json_access_token_with_expires_in(tmp_path):
    out = json.dumps({"access_token": "json-tok", "token_type": "Bearer", "expires_in": 120})
    token = CommandTokenSource(printing(tmp_path, out)).fetch()
    assert token.value == "json-tok"
    assert 115 < token.expires_at - time.monotonic() <= 120


def test_json_token_with_rfc3339_expires_at(tmp_path):
    when = (datetime.now(timezone.utc) + timedelta(seconds=300)).strftime("%Y-%m-%dT%H:%M:%S.%f123Z")
    token = CommandTokenSource(printing(tmp_path, json.dumps({"token": "t2", "expires_at": when}))).fetch()
    assert token.value == "t2" and 290 < token.expires_at - time.monotonic() <= 300


def test_kubectl_exec_credential(tmp_path):
    when = (datetime.now(timezone.utc) + timedelta(seconds=600)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                      "status": {"token": "k8s-tok", "expirationTimestamp": when}})
    token = CommandTokenSource(printing(tmp_path, out)).fetch()
    assert token.value == "k8s-tok" and 590 < token.expires_at - time.monotonic() <= 601


def test_non_zero_exit_is_transient_and_quotes_redacted_stderr(tmp_path, caplog):
    err = "vault: permission denied for token=hunter2secret Bearer abc.def.ghi123\n"
    with pytest.raises(TransientTokenError) as exc:
        CommandTokenSource(printing(tmp_path, "", code=3, err=err), setting=SETTING).fetch()
    text = str(exc.value)
    assert "exited with status 3" in text and SETTING in text and "permission denied" in text
    assert "hunter2secret" not in text and "ghi123" not in text


def test_stdout_is_never_quoted_in_errors(tmp_path):
    out = json.dumps({"id_token": "leaky-secret-value"})
    with pytest.raises(FatalTokenError) as exc:
        CommandTokenSource(printing(tmp_path, out)).fetch()
    assert "without an access_token or token" in str(exc.value)
    assert "leaky-secret-value" not in str(exc.value)


def test_empty_output_is_transient(tmp_path):
    with pytest.raises(TransientTokenError, match="printed nothing"):
        CommandTokenSource(printing(tmp_path, "")).fetch()


def test_expired_expires_at_is_refused(tmp_path):
    out = json.dumps({"token": "t", "expires_at": "2001-01-01T00:00:00Z"})
    with pytest.raises(FatalTokenError, match="already past"):
        CommandTokenSource(printing(tmp_path, out)).fetch()


def test_timeout_kills_the_command_and_its_children(tmp_path):
    marker = tmp_path / "child-alive"
    cmd = script(tmp_path, f"""
        import subprocess, sys, time
        # a helper that would outlive us and hold stdout open
        subprocess.Popen([sys.executable, "-c",
            "import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).write_text('x')"])
        time.sleep(30)
    """)
    started = time.monotonic()
    with pytest.raises(TransientTokenError, match="did not finish within 0.5s"):
        CommandTokenSource(cmd, timeout=0.5).fetch()
    assert time.monotonic() - started < 10
    time.sleep(3.5)
    assert not marker.exists(), "the command's child survived the timeout"


def test_missing_program_is_fatal_and_names_only_the_program(tmp_path):
    with pytest.raises(FatalTokenError) as exc:
        CommandTokenSource("/no/such/tool --password=hunter2", setting=SETTING).fetch()
    assert "'tool'" in str(exc.value) and "not found" in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_refreshes_on_schedule_through_the_manager(tmp_path):
    counter = tmp_path / "n"
    cmd = script(tmp_path, f"""
        import json, pathlib
        p = pathlib.Path({str(counter)!r})
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        print(json.dumps({{"access_token": f"tok-{{n}}", "expires_in": 1.5}}))
    """)
    manager = TokenManager(CommandTokenSource(cmd))
    try:
        manager.start()
        assert manager.get(10).value == "tok-1"
        deadline = time.monotonic() + 10
        while manager.get(10).value in ("tok-1", "tok-2") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager.get(10).value.startswith("tok-") and manager.get(10).value not in ("tok-1", "tok-2")
        assert manager.health().refresh_count >= 3
    finally:
        manager.close()


def test_failures_reach_the_manager_log_clearly_without_secrets(tmp_path, caplog):
    cmd = printing(tmp_path, "", code=1, err="login failed: password=topsecret1")
    manager = TokenManager(CommandTokenSource(cmd, setting=SETTING))
    try:
        with caplog.at_level("WARNING", logger="otel_token_exporter"):
            manager.start()
            deadline = time.monotonic() + 5
            while manager.health().failure_count == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        manager.close()
    assert "exited with status 1" in caplog.text and "login failed" in caplog.text
    assert "topsecret1" not in caplog.text


def test_built_from_env_with_timeout():
    source = build_source(Env({SETTING: "vault read -field=token secret/x", SETTING + "_TIMEOUT": "5"}))
    assert isinstance(source, CommandTokenSource)
    assert source.argv == ["vault", "read", "-field=token", "secret/x"] and source.timeout == 5


def test_unbalanced_quotes_are_a_configuration_error():
    with pytest.raises(ConfigurationError, match=SETTING):
        build_source(Env({SETTING: "tool 'unclosed"}))


# -- bounded output: a command that never stops printing ------------------------------------------


def _status(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":", 1) for line in f if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return {}


def _rss_kb() -> tuple[int, int]:
    """(current, peak) resident set size of this process in kB."""
    s = _status(os.getpid())
    return int(s["VmRSS"].split()[0]), int(s["VmHWM"].split()[0])


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
            f.write("5")
        return True
    except OSError:
        return False


def _alive_in_group(pgid: int) -> list[int]:
    """Processes (not zombies) in process group ``pgid``."""
    alive = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            alive.append(int(name))
    return alive


def _pid_written_to(path, deadline=5.0) -> int:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError("the command never wrote its pid")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_endless_output_is_cut_off_at_the_cap_at_once_and_the_command_killed(tmp_path, stream):
    pidfile = tmp_path / "pid"
    # sh records its pid, starts a helper in the same group (holding the pipe too), then becomes
    # `yes`: the same pid, which leads the command's process group.
    redirect = "" if stream == "stdout" else " >&2"
    cmd = ["sh", "-c", f"echo $$ > {shlex.quote(str(pidfile))}; sleep 60 & exec yes{redirect}"]
    source = CommandTokenSource(cmd, timeout=20, setting=SETTING)
    peak_tracked = _reset_peak_rss()
    rss_before, peak_before = _rss_kb()
    started = time.monotonic()
    with pytest.raises(FatalTokenError) as exc:
        source.fetch()
    elapsed = time.monotonic() - started
    rss_after, peak_after = _rss_kb()
    growth_mb = (max(rss_after, peak_after if peak_tracked else 0) - rss_before) / 1024
    print(f"\n{stream}: refused after {elapsed:.3f}s; RSS {rss_before} -> {rss_after} kB, "
          f"peak {peak_before} -> {peak_after} kB (growth {growth_mb:.1f} MB)")
    text = str(exc.value)
    assert SETTING in text and "more than" in text and stream in text, text
    assert "y\ny" not in text  # stdout is never quoted; endless stderr is shortened
    assert len(text) < 1000
    assert elapsed < 1.5, elapsed
    assert growth_mb < 50, growth_mb
    pid = _pid_written_to(pidfile)
    deadline = time.monotonic() + 2
    while _alive_in_group(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _alive_in_group(pid) == [], "the command or its helper is still running"
    state = _status(pid).get("State", "gone")
    assert not state.strip().startswith(("R", "S", "D")), state


def test_output_just_under_the_cap_is_still_read_whole(tmp_path):
    from otel_token_exporter.sources.command import MAX_OUTPUT_BYTES

    # A long (but single-word) token, plus chatty stderr: neither is over its cap.
    value = "t" * (MAX_OUTPUT_BYTES - 10)
    cmd = script(tmp_path, f"""
        import sys
        sys.stderr.write("progress\\n" * 20000)
        sys.stdout.write({value!r} + "\\n")
    """)
    assert CommandTokenSource(cmd).fetch().value == value


def test_a_slow_trickle_is_read_until_the_command_exits(tmp_path):
    cmd = script(tmp_path, """
        import sys, time
        for part in ("tok", "en-", "123"):
            sys.stdout.write(part); sys.stdout.flush(); time.sleep(0.1)
    """)
    assert CommandTokenSource(cmd, timeout=5).fetch().value == "token-123"


def test_abort_from_another_thread_kills_a_running_command_at_once(tmp_path):
    cmd = script(tmp_path, "import time; time.sleep(30)")
    source = CommandTokenSource(cmd, timeout=20)
    errors = []

    def run():
        try:
            source.fetch()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    deadline = time.monotonic() + 5
    while getattr(source, "_running", None) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    source.abort()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert len(errors) == 1 and isinstance(errors[0], TransientTokenError)
    assert "killed by signal" in str(errors[0])


def test_timeout_quotes_stderr_printed_before_the_deadline(tmp_path):
    cmd = script(tmp_path, """
        import sys, time
        sys.stderr.write("waiting for the vault agent\\n"); sys.stderr.flush()
        time.sleep(30)
    """)
    with pytest.raises(TransientTokenError) as exc:
        CommandTokenSource(cmd, timeout=0.5).fetch()
    assert "did not finish within 0.5s" in str(exc.value)
    assert "waiting for the vault agent" in str(exc.value)
