"""Shared test helpers: emitting numbered log records through the SDK, collecting ReadableLogRecords
for direct ``export()`` calls, running an app under ``opentelemetry-instrument``, and checking output
for secrets without printing them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Iterable, Mapping, Optional, Sequence

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZERO_CODE_APP = os.path.join(REPO_ROOT, "examples", "zero_code_app.py")
ALL_SIGNALS_APP = os.path.join(REPO_ROOT, "examples", "all_signals_app.py")
OTEL_CONFIG_EXAMPLE = os.path.join(REPO_ROOT, "examples", "otel-config.yaml")
NUMBERED = re.compile(r"(\d+)$")


class ResultTap(LogRecordExporter):
    """Wraps an exporter so the test sees every export() result (the processor ignores them)."""

    def __init__(self, inner):
        self.inner = inner
        self.results: list = []

    def export(self, batch):
        result = self.inner.export(batch)
        self.results.append(result)
        return result

    def shutdown(self, *args, **kwargs):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _Collect(LogRecordExporter):
    def __init__(self):
        self.records: list = []

    def export(self, batch):
        self.records.extend(batch)
        return LogRecordExportResult.SUCCESS

    def shutdown(self, *args, **kwargs):
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def make_records(bodies: Iterable[str]) -> list:
    """ReadableLogRecords with the given bodies, ready for a direct ``exporter.export(...)``."""
    sink = _Collect()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(sink))
    logger = provider.get_logger("tests")
    for body in bodies:
        logger.emit(body=body, severity_number=SeverityNumber.INFO, severity_text="INFO")
    provider.shutdown()
    return sink.records


def emit_numbered(exporter, count: int, seconds: float = 0.0, prefix: str = "record",
                  schedule_delay_millis: int = 200) -> ResultTap:
    """Emit ``count`` records "<prefix> N" spread over ``seconds`` through a LoggerProvider with a
    BatchLogRecordProcessor around ``exporter``; shut the provider (and exporter) down; return the tap.

    The queue is sized to hold every record: the default (2048) drops the oldest records when the
    producer outruns the exporter, which would be the processor's loss, not the exporter's.
    """
    tap = ResultTap(exporter)
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(
        tap, max_queue_size=max(2048, count + 1), schedule_delay_millis=schedule_delay_millis,
        max_export_batch_size=512))
    logger = provider.get_logger("tests")
    start = time.monotonic()
    try:
        for i in range(count):
            logger.emit(body=f"{prefix} {i}", severity_number=SeverityNumber.INFO,
                        severity_text="INFO")
            if seconds:
                due = start + seconds * (i + 1) / count
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
    finally:
        provider.shutdown()
    return tap


def numbers(bodies: Iterable[str], prefix: str = "record") -> list[int]:
    """The N of every body "<prefix> N" (in order, duplicates kept)."""
    out = []
    for body in bodies:
        if body.startswith(prefix + " "):
            m = NUMBERED.search(body)
            if m:
                out.append(int(m.group(1)))
    return out


def instrument_command() -> str:
    """``opentelemetry-instrument`` of the running interpreter's environment."""
    path = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    if not os.path.exists(path):
        raise RuntimeError(f"opentelemetry-instrument not found next to {sys.executable}")
    return path


def zero_code_env(receiver=None, idp=None, **extra: str) -> dict:
    """Environment for the example app under opentelemetry-instrument with ``token_otlp``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "APP_")) and k != "PYTHONPATH"}
    env.update({
        "OTEL_LOGS_EXPORTER": "token_otlp",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        # the distro defaults the protocol to grpc (setdefault): say http explicitly
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
        "OTEL_SERVICE_NAME": "zero-code-test",
        "PYTHONUNBUFFERED": "1",
    })
    if receiver is not None:
        env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] = receiver.endpoint
    if idp is not None:
        env["OTEL_TOKEN_EXPORTER_TOKEN_URL"] = idp.token_url
        env["OTEL_TOKEN_EXPORTER_CLIENT_ID"] = idp.client_id
        env["OTEL_TOKEN_EXPORTER_CLIENT_SECRET"] = idp.client_secret
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_instrumented(env: Mapping[str, str], script: str = ZERO_CODE_APP,
                     timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``opentelemetry-instrument python script`` with ``env``; output captured as text.
    On timeout the child (our own process, by its pid) is killed and the error re-raised."""
    proc = subprocess.Popen([instrument_command(), sys.executable, script], env=dict(env),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def leaked(text: str, secrets: Sequence[Optional[str]]) -> int:
    """How many of ``secrets`` occur in ``text`` (a count, so an assert never shows a secret)."""
    return sum(1 for s in set(secrets) if s and s in text)


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` s pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class RecordingServer:
    """A loopback HTTP server that answers every request with a token response and records it
    (command, path, headers): the would-be redirect target that must never be reached."""

    def __init__(self, access_token: str = "from-the-redirect-target"):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []
        body = json.dumps({"access_token": access_token, "token_type": "Bearer", "expires_in": 60}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_any(self):
                seen.append((self.command, self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
