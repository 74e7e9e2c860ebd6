"""A programmatic process for the disk-spool tests (a TokenOTLPLogExporter with a spool directory).

    python tests/spool_worker.py MODE      (settings in SW_* variables, see _exporter())

Modes:
  spool       export SW_REQUESTS requests of SW_PER_REQUEST records "<SW_PREFIX> N" (the endpoint or
              the IdP is down), print "spooled <files>", then wait for a line on stdin: "exit" shuts
              down normally; otherwise the test SIGKILLs it while it waits.
  write-loop  export requests of SW_PER_REQUEST records padded to SW_PAD bytes each, forever,
              printing "exported <i>" after each (the test SIGKILLs it at some moment).
  deliver     print "ready", wait for "go" on stdin (so two workers start at once), build the
              exporter (it takes over what dead owners left), wait until its queue is empty, print
              "result <json>" (files taken over, redelivered, stats), shut down.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from helpers import make_records
from otel_token_exporter import TokenOTLPLogExporter


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _exporter():
    e = os.environ
    return TokenOTLPLogExporter(
        endpoint=e["SW_ENDPOINT"], protocol=e.get("SW_PROTOCOL", "http/protobuf"),
        token_url=e["SW_TOKEN_URL"], client_id=e["SW_CLIENT_ID"], client_secret=e["SW_CLIENT_SECRET"],
        spool_dir=e["SW_SPOOL"], timeout=float(e.get("SW_TIMEOUT", "5")), env={},
    )


def main(mode: str) -> int:
    capture = _Capture()
    ours = logging.getLogger("otel_token_exporter")
    ours.addHandler(capture)
    ours.setLevel(logging.INFO)
    prefix = os.environ.get("SW_PREFIX", "record")
    per = int(os.environ.get("SW_PER_REQUEST", "10"))
    pad = int(os.environ.get("SW_PAD", "0"))

    if mode == "spool":
        exporter = _exporter()
        n = 0
        for _ in range(int(os.environ.get("SW_REQUESTS", "10"))):
            exporter.export(make_records([f"{prefix} {n + i}" for i in range(per)]))
            n += per
        print(f"spooled {exporter.sending_queue.stats().spooled_requests}", flush=True)
        line = sys.stdin.readline()
        if line.strip() == "exit":
            exporter.shutdown()
        return 0

    if mode == "write-loop":
        exporter = _exporter()
        filler = "x" * pad
        i = n = 0
        while True:
            exporter.export(make_records([f"{prefix} {filler} {n + k}" for k in range(per)]))
            n += per
            i += 1
            print(f"exported {i}", flush=True)

    if mode == "deliver":
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 2
        started = time.monotonic()
        exporter = _exporter()
        queue = exporter.sending_queue
        deadline = time.monotonic() + float(os.environ.get("SW_DEADLINE", "30"))
        # what was taken over is queued by the sender thread's first look at the directory:
        # wait until that look is done and the queue is empty
        while time.monotonic() < deadline:
            exporter.force_flush(1000)
            looked = getattr(queue, "_recovered_at", 0.0) != float("-inf")
            if looked and not queue.stats().queued_requests:
                break
            time.sleep(0.05)
        stats = queue.stats()
        took = [m for m in capture.messages if m.startswith("took over")]
        taken = int(took[0].split()[2]) if took else 0
        result = {"taken": taken, "redelivered": stats.redelivered_requests,
                  "queued": stats.queued_requests, "dropped": stats.dropped_records,
                  "warnings": [m for m in capture.messages if "spool" in m and not m.startswith("took over")],
                  "seconds": round(time.monotonic() - started, 3)}
        print("result " + json.dumps(result), flush=True)
        exporter.shutdown()
        return 0

    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
