"""One process of the outage benchmarks: a LoggerProvider + BatchLogRecordProcessor (SDK defaults:
queue 2048, batch 512, delay 1 s) with either our exporter or the stock one, producing records at a
fixed rate while the parent breaks something (the IdP, or the endpoint).

    _outage_worker.py ours  --protocol http --base URL --token-url URL --seconds 30 --rate 500   (memory)
    _outage_worker.py stock --protocol grpc --base URL --seconds 20 --rate 1000 --mode endpoint

``--base`` is the receiver's http://host:port. Ours gets its token from the IdP (``--token-url``,
client id/secret in BENCH_CLIENT_ID/BENCH_CLIENT_SECRET) or, without it, the static token in
BENCH_STATIC_TOKEN, which the stock exporter always sends as a header (never argv).

Prints one JSON line "ready" after a first record was delivered (ours, and both sides in endpoint
mode: connections and token are up), waits for "go" on stdin, produces, and prints one JSON line
with its own VmHWM/VmRSS, the time of every export() call (the exporter is wrapped) and what its
exporter and the sending queue saw.

* ``--mode memory`` (the IdP goes down): after producing it reports at once and waits for "exit";
  the outage is still on, so it never drains.
* ``--mode endpoint`` (the endpoint fails for a while, then returns): each record carries its
  number in the attribute "seq"; after producing it drains like an application that exits: the
  provider's force_flush, the exporter's force_flush, then the provider's shutdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def build_exporter(a):
    token = os.environ.get("BENCH_STATIC_TOKEN")
    if a.kind == "ours":
        from otel_token_exporter import TokenOTLPLogExporter

        source = (dict(token_url=a.token_url, client_id=os.environ["BENCH_CLIENT_ID"],
                       client_secret=os.environ["BENCH_CLIENT_SECRET"]) if a.token_url else dict(token=token))
        if a.protocol == "http":
            return TokenOTLPLogExporter(endpoint=a.base + "/v1/logs", protocol="http/protobuf",
                                        allow_plaintext=True, **source)
        return TokenOTLPLogExporter(endpoint=a.base, protocol="grpc", insecure=True, allow_plaintext=True, **source)
    if a.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        return OTLPLogExporter(endpoint=a.base + "/v1/logs", headers={"authorization": "Bearer " + token})
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    return OTLPLogExporter(endpoint=a.base.split("://", 1)[1], insecure=True,
                           headers=(("authorization", "Bearer " + token),))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("ours", "stock"))
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--base", required=True, help="the receiver's http://host:port")
    p.add_argument("--token-url")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--mode", choices=("memory", "endpoint"), default="memory")
    a = p.parse_args()
    import logging

    # The outage makes both exporters log errors (expected here); keep the run's output readable.
    for name in ("opentelemetry", "otel_token_exporter"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult

    inner = build_exporter(a)
    seen = {"records": 0, "batches": 0, "failed_records": 0, "returned": 0}
    calls: list = []  # (start s after go, duration s, records) of every export() call
    clock = {"go": time.monotonic()}

    class Timed(LogRecordExporter):
        def export(self, batch):
            seen["records"] += len(batch)
            seen["batches"] += 1
            t0 = seen["export_started"] = time.monotonic()
            result = None
            try:
                result = inner.export(batch)
                return result
            finally:
                took = time.monotonic() - t0
                seen["returned"] += 1
                seen["export_started"] = None
                calls.append((round(t0 - clock["go"], 4), round(took, 5), len(batch)))
                if result is not LogRecordExportResult.SUCCESS:
                    seen["failed_records"] += len(batch)  # stock: lost; ours: kept (the SDK ignores it)

        def shutdown(self, timeout_millis: float = 30_000, **kw):
            if a.kind == "ours":
                inner.shutdown(timeout_millis=timeout_millis)
            else:
                inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return inner.force_flush(timeout_millis)

    waits: list = []  # ours: (start s after go, duration s) of every sending_queue.submit (the wait in export())
    if a.kind == "ours":
        q = inner.sending_queue
        submit = q.submit

        def timed_submit(request, wait):
            t0 = time.monotonic()
            try:
                return submit(request, wait)
            finally:
                waits.append((round(t0 - clock["go"], 4), round(time.monotonic() - t0, 5)))

        q.submit = timed_submit  # an instance attribute: the exporter's own calls go through it

    queue_peak = {"records": 0, "bytes": 0}
    sampling = threading.Event()

    def sample():  # the sending queue's high-water mark (ours), every 50 ms
        q = inner.sending_queue
        while not sampling.wait(0.05):
            st = q.stats()
            if st.queued_records > queue_peak["records"]:
                queue_peak.update(records=st.queued_records, bytes=st.queued_bytes)

    provider = LoggerProvider()
    processor = BatchLogRecordProcessor(Timed())  # defaults: queue 2048, batch 512, 1 s
    provider.add_log_record_processor(processor)
    logger = provider.get_logger("bench.outage")
    payload = "GET /api/v1/orders/%d 200 in 12.3ms user=alice@example.com trace=4bf92f3577b34da6a3ce929d0e0e4736"
    endpoint_mode = a.mode == "endpoint"

    def emit(i: int) -> None:
        attributes = {"http.method": "GET", "http.status_code": 200, "service.shard": i % 16, "user.id": "alice"}
        if endpoint_mode:
            attributes["seq"] = i
        logger.emit(body=payload % i, severity_number=SeverityNumber.INFO, severity_text="INFO",
                    attributes=attributes)

    if a.kind == "ours" or endpoint_mode:  # deliver one record first: the outage starts later
        emit(-1)
        provider.force_flush()
        if a.kind == "ours":
            inner.force_flush(10_000)
    print(json.dumps({"ready": True, "rss_kib": status_kib("VmRSS")}), flush=True)
    sys.stdin.readline()  # "go"
    seen.update(records=0, batches=0, returned=0, failed_records=0)  # count from here (not the warm-up)
    calls.clear()
    waits.clear()
    if a.kind == "ours":
        threading.Thread(target=sample, daemon=True).start()
    go_wall = time.time()
    start = clock["go"] = time.monotonic()
    n = int(a.seconds * a.rate)
    for i in range(n):
        due = start + i / a.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        emit(i)
    produced_in = time.monotonic() - start
    out = {"produced": n, "produced_in_s": round(produced_in, 2), "go_wall": go_wall}
    if endpoint_mode:
        t0 = time.monotonic()
        provider.force_flush(30_000)
        queue = getattr(getattr(processor, "_batch_processor", None), "_queue", None)  # SDK internal
        out["still_queued"] = len(queue) if queue is not None else 0
        out["processor_dropped"] = n - seen["records"] - out["still_queued"]
        if a.kind == "ours":
            inner.force_flush(30_000)
            st = inner.sending_queue.stats()
            out["left_after_flush"] = st.queued_records
        out["flush_s"] = round(time.monotonic() - t0, 2)
        t1 = time.monotonic()
        sampling.set()
        provider.shutdown()
        out["shutdown_s"] = round(time.monotonic() - t1, 2)
    else:
        time.sleep(1.5)  # let the processor hand over the last batch
        queue = getattr(getattr(processor, "_batch_processor", None), "_queue", None)  # SDK internal
        out["still_queued"] = len(queue) if queue is not None else 0
        out["processor_dropped"] = n - seen["records"] - out["still_queued"]  # the deque drops the oldest
    out.update(exporter_saw=seen["records"], failed_records=seen["failed_records"],
               export_in_progress_s=round(time.monotonic() - seen["export_started"], 2)
               if seen.get("export_started") else 0.0,
               longest_export_s=round(max((c[1] for c in calls), default=0.0), 4),
               calls=calls, waits=waits, hwm_kib=status_kib("VmHWM"), rss_kib=status_kib("VmRSS"))
    if a.kind == "ours":
        st = inner.sending_queue.stats()
        out.update(queued_records=st.queued_records, queued_bytes=st.queued_bytes,
                   queue_dropped=st.dropped_records, redelivered_requests=st.redelivered_requests,
                   queue_peak_records=queue_peak["records"], queue_peak_bytes=queue_peak["bytes"])
    print(json.dumps(out), flush=True)
    if not endpoint_mode:
        sys.stdin.readline()  # "exit": the parent reads /proc/<pid>/status before this
    os._exit(0)  # memory: the outage is still on, do not spend the shutdown budget draining


if __name__ == "__main__":
    main()
