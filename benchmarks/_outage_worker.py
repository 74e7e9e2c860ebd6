"""One process of the memory benchmark: a LoggerProvider + BatchLogRecordProcessor (defaults) with
either our exporter or the stock one, producing records at a fixed rate through an outage.

    _outage_worker.py ours  --endpoint URL --token-url URL --seconds 30 --rate 500
    _outage_worker.py stock --endpoint URL --seconds 30 --rate 500     (token in BENCH_STATIC_TOKEN)

Prints "ready" after the first record was delivered (ours) or at once (stock), waits for "go" on
stdin (the parent then takes the IdP down / lets the token expire), produces, and prints one JSON
line with its own VmHWM/VmRSS and what its exporter saw. Client id/secret come from env.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("ours", "stock"))
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token-url")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=500.0)
    a = p.parse_args()
    import logging

    # The outage makes both exporters log errors (expected here); keep the run's output readable.
    for name in ("opentelemetry", "otel_token_exporter"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter

    if a.kind == "ours":
        from otel_token_exporter import TokenOTLPLogExporter

        inner = TokenOTLPLogExporter(endpoint=a.endpoint, protocol="http/protobuf", token_url=a.token_url,
                                     client_id=os.environ["BENCH_CLIENT_ID"],
                                     client_secret=os.environ["BENCH_CLIENT_SECRET"], allow_plaintext=True)
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        inner = OTLPLogExporter(endpoint=a.endpoint,
                                headers={"authorization": "Bearer " + os.environ["BENCH_STATIC_TOKEN"]})

    seen = {"records": 0, "batches": 0}

    class Counting(LogRecordExporter):
        def export(self, batch):
            seen["records"] += len(batch)
            seen["batches"] += 1
            t0 = seen["export_started"] = time.monotonic()
            try:
                return inner.export(batch)
            finally:
                seen["returned"] = seen.get("returned", 0) + 1
                seen["export_started"] = None
                seen["longest_export_s"] = max(seen.get("longest_export_s", 0.0), time.monotonic() - t0)

        def shutdown(self, *args, **kw):
            inner.shutdown(*args, **kw)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return inner.force_flush(timeout_millis)

    provider = LoggerProvider()
    processor = BatchLogRecordProcessor(Counting())  # defaults: queue 2048, batch 512, 1 s
    provider.add_log_record_processor(processor)
    logger = provider.get_logger("bench.outage")
    payload = "GET /api/v1/orders/%d 200 in 12.3ms user=alice@example.com trace=4bf92f3577b34da6a3ce929d0e0e4736"

    def emit(i: int) -> None:
        logger.emit(body=payload % i, severity_number=SeverityNumber.INFO, severity_text="INFO",
                    attributes={"http.method": "GET", "http.status_code": 200, "service.shard": i % 16,
                                "user.id": "alice"})

    if a.kind == "ours":  # deliver one record with a valid token first: the outage starts later
        emit(-1)
        provider.force_flush()
    print(json.dumps({"ready": True, "rss_kib": status_kib("VmRSS")}), flush=True)
    sys.stdin.readline()  # "go"
    seen.update(records=0, batches=0, returned=0)  # count from here (not the warm-up record)
    start = time.monotonic()
    n = int(a.seconds * a.rate)
    for i in range(n):
        due = start + i / a.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        emit(i)
    time.sleep(1.5)  # let the processor hand over the last batch
    queue = getattr(getattr(processor, "_batch_processor", None), "_queue", None)  # SDK internal
    queued = len(queue) if queue is not None else 0
    out = {"produced": n, "exporter_saw": seen["records"], "still_queued": queued,
           "processor_dropped": n - seen["records"] - queued,  # the deque drops the oldest when full
           "export_in_progress_s": round(time.monotonic() - seen["export_started"], 2)
           if seen.get("export_started") else 0.0,
           "longest_export_s": round(seen.get("longest_export_s", 0.0), 2),
           "hwm_kib": status_kib("VmHWM"), "rss_kib": status_kib("VmRSS")}
    if a.kind == "ours":
        st = inner.delivery.stats()
        out.update(buffered_records=st.buffered_records, buffered_bytes=st.buffered_bytes,
                   buffer_dropped=st.dropped_records)
    print(json.dumps(out), flush=True)
    sys.stdin.readline()  # "exit": the parent reads /proc/<pid>/status before this
    os._exit(0)  # the outage is still on: do not spend the shutdown budget draining


if __name__ == "__main__":
    main()
