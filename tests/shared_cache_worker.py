"""A worker process for tests/test_shared_cache.py: logs numbered records through token_otlp.

    python shared_cache_worker.py single  PREFIX SECONDS RATE
    python shared_cache_worker.py prefork PREFIX SECONDS RATE CHILDREN

The exporter is configured from the environment alone (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT and the
OTEL_TOKEN_EXPORTER_* variables, OTEL_TOKEN_EXPORTER_CACHE_DIR among them), as a deployed service
would be. ``single`` logs "PREFIX N" for SECONDS at RATE records/s, flushes and prints one JSON line
(its report). ``prefork`` is a gunicorn --preload master: it sets the exporter up, exports once (so
its manager holds a token), forks CHILDREN children that each log "PREFIX-K N" like ``single``,
shuts its own exporter down, waits for them and prints {"master": ..., "children": [...]}.
Our logger goes to stderr at DEBUG (the test checks it for tokens and secrets).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from otel_token_exporter import TokenOTLPLogExporter


def setup():
    exporter = TokenOTLPLogExporter(protocol="http/protobuf", timeout=5)
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, max_queue_size=100_000, schedule_delay_millis=200, max_export_batch_size=256))
    return provider, exporter


def run(provider, exporter, prefix: str, seconds: float, rate: float) -> dict:
    manager = exporter.token_manager
    report = {"pid": os.getpid(), "prefix": prefix, "refresh_before": manager.health().refresh_count}
    logger = provider.get_logger("shared-cache-worker")
    count = max(1, int(seconds * rate))
    start = time.monotonic()
    for i in range(count):
        logger.emit(body=f"{prefix} {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
        pause = start + (i + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    report["emitted"] = count
    provider.force_flush(30_000)
    report["drained"] = exporter.force_flush(30_000)
    report["refresh_after"] = manager.health().refresh_count
    report["source"] = type(manager._source).__name__
    provider.shutdown()
    return report


def _child(provider, exporter, prefix, seconds, rate, wfd) -> None:
    code = 3
    report: dict = {"pid": os.getpid(), "prefix": prefix}
    try:
        report = run(provider, exporter, prefix, seconds, rate)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the master
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            os.write(wfd, json.dumps(report).encode())
            os.close(wfd)
        finally:
            os._exit(code)


def prefork(prefix: str, seconds: float, rate: float, children: int) -> dict:
    provider, exporter = setup()
    provider.get_logger("master").emit(body=f"{prefix}-master 0", severity_number=SeverityNumber.INFO)
    provider.force_flush(30_000)
    master = {"pid": os.getpid(), "drained": exporter.force_flush(30_000),
              "has_token": exporter.token_manager.health().has_token}
    kids = []
    for k in range(children):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child(provider, exporter, f"{prefix}-{k}", seconds, rate, w)
        os.close(w)
        kids.append((pid, r))
    provider.shutdown()  # the master itself sends nothing more (its manager stops refreshing)
    deadline = time.monotonic() + seconds + 60
    reports = []
    for pid, r in kids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)  # our own child, by its pid
                os.waitpid(pid, 0)
                code = None
                break
            time.sleep(0.05)
        with os.fdopen(r, "rb") as f:
            raw = f.read()
        rep = json.loads(raw) if raw else {"pid": pid}
        rep["exit"] = code
        reports.append(rep)
    return {"master": master, "children": reports}


def main(argv: list[str]) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(process)d %(levelname)s %(name)s: %(message)s")
    logging.getLogger("otel_token_exporter").setLevel(logging.DEBUG)
    mode, prefix, seconds, rate = argv[1], argv[2], float(argv[3]), float(argv[4])
    if mode == "single":
        provider, exporter = setup()
        out = run(provider, exporter, prefix, seconds, rate)
    else:
        out = prefork(prefix, seconds, rate, int(argv[5]))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
