"""The README's code blocks run, as pasted, against the local peers: the README cannot rot.

Every fenced block preceded by ``<!-- runnable: NAME -->`` is run (``runnable: NAME (after OTHER)``
runs in the same shell after OTHER's block, as a user pasting both would; ``runnable: never`` is
what CI itself runs). The placeholders a newcomer replaces are mapped to the local peers: the
endpoint ``https://otlp.example.com`` to a real OTLP/HTTP receiver, the token URL to the real test
IdP (whose client is ``my-service``), the secret file to a file holding its secret. The YAML
excerpt must be a verbatim part of the example file it says it comes from.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from peers.common import TokenValidator
from peers.idp_process import IdP
from peers.otlp_http import OTLPHttpReceiver

README = os.path.join(REPO_ROOT, "README.md")
ENDPOINT, TOKEN_URL = "https://otlp.example.com", "https://idp.example.com/oauth2/token"
SECRET_FILE, CLIENT_ID, SECRET = "/run/secrets/otel-client-secret", "my-service", "readme-secret"
MARKER = re.compile(r"<!-- runnable: ([\w-]+)(?: \(after ([\w-]+)\))?[^>]*-->\n```(\w+)\n(.*?)```", re.S)


def blocks() -> dict[str, tuple[str | None, str, str]]:
    """name -> (after, language, code) for every marked block."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = {m.group(1): (m.group(2), m.group(3), m.group(4)) for m in MARKER.finditer(text)}
    assert found, "no runnable block found: the marker format changed?"
    return found


def test_every_bash_and_python_block_is_marked():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    fences = re.findall(r"(?:<!-- runnable: [^\n]*-->\n)?```(bash|python)\n", text)
    marked = re.findall(r"<!-- runnable: [^\n]*-->\n```(?:bash|python)\n", text)
    assert len(marked) == len(fences), "a bash/python block in the README is not marked runnable"


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    idp = IdP.start(client_id=CLIENT_ID, client_secret=SECRET, lifetime=3)
    rx = OTLPHttpReceiver(TokenValidator("jwt", jwks_url=idp.jwks_url))
    work = tmp_path_factory.mktemp("readme")
    shutil.copy(os.path.join(REPO_ROOT, "examples", "all_signals_app.py"), work / "app.py")
    os.makedirs(work / "examples")
    shutil.copy(os.path.join(REPO_ROOT, "examples", "otel-config.yaml"), work / "examples" / "otel-config.yaml")
    secret = work / "client-secret"
    secret.write_text(SECRET)
    try:
        yield idp, rx, work, str(secret)
    finally:
        rx.stop()
        idp.stop()


def localize(code: str, idp, rx, secret: str) -> str:
    return (code.replace(TOKEN_URL, idp.token_url)
                .replace(ENDPOINT, rx.base_url)
                .replace(SECRET_FILE, secret))


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APP_")) and k != "PYTHONPATH"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(APP_SECONDS="2", APP_RATE="25", APP_LOG_LEVEL="INFO", OTEL_METRIC_EXPORT_INTERVAL="500",
               OTEL_BSP_SCHEDULE_DELAY="200", OTEL_BLRP_SCHEDULE_DELAY="200", **extra)
    return env


def run_block(name: str, peers, timeout: float = 120.0) -> subprocess.CompletedProcess:
    idp, rx, work, secret = peers
    found = blocks()
    after, language, code = found[name]
    code = localize(code, idp, rx, secret)
    if after is not None:
        code = localize(found[after][2], idp, rx, secret) + "\n" + code
    if language == "python":
        script = work / f"{name}.py"
        script.write_text(code)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(argv, cwd=work, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"README block {name!r} failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    assert SECRET not in proc.stdout + proc.stderr
    return proc


def test_zero_code_block_exports_all_three_signals(peers):
    _, rx, _, _ = peers
    before_spans, before_logs = len(rx.spans), len(rx.received_bodies())
    proc = run_block("zero-code", peers)
    assert "app done" in proc.stdout, proc.stdout[-500:]
    assert len(rx.spans) > before_spans
    assert len(rx.received_bodies()) > before_logs
    assert rx.metric_points("app.items")


def test_check_block_passes_after_the_zero_code_settings(peers):
    proc = run_block("check", peers, timeout=60)
    assert "logs" in proc.stdout and "traces" in proc.stdout and "metrics" in proc.stdout, proc.stdout


def test_programmatic_block_delivers_its_record(peers):
    _, rx, _, _ = peers
    run_block("programmatic", peers)
    assert "hello, with a fresh token" in rx.received_bodies()


def test_programmatic_traces_and_metrics_block_delivers(peers):
    _, rx, _, _ = peers
    run_block("programmatic-traces-metrics", peers)
    assert "work" in rx.received_span_names()
    assert rx.metric_points("work.done")


def test_config_file_block_checks_and_exports(peers):
    _, rx, _, _ = peers
    before = len(rx.spans)
    proc = run_block("config-file", peers)
    assert "app done" in proc.stdout
    assert len(rx.spans) > before


def test_yaml_excerpt_is_part_of_the_example_file():
    with open(README, encoding="utf-8") as f:
        excerpt = re.search(r"```yaml\n(.*?)```", f.read(), re.S).group(1)
    with open(os.path.join(REPO_ROOT, "examples", "otel-config.yaml"), encoding="utf-8") as f:
        assert excerpt in f.read()


@pytest.mark.slow
def test_install_and_wheel_blocks_work_in_a_fresh_venv(tmp_path):
    """`pip install .` and the wheel recipe, in a new virtualenv, from a clean copy of the tree."""
    tree = tmp_path / "tree"
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if os.path.exists(os.path.join(REPO_ROOT, rel)):
            os.makedirs(tree / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(os.path.join(REPO_ROOT, rel), tree / rel)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    found = blocks()
    script = f". {venv}/bin/activate\n" + found["install"][2] + found["wheel"][2]
    script += "python -c 'import otel_token_exporter, sys; print(otel_token_exporter.__version__)'\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("0.1.0")
